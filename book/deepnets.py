"""Deep stacks of layers, with and without residual paths and LayerNorm, and their gradients.

One layer has width ``w`` and one branch, F(x) = W2 relu(W1 x + b1) + b2 (an MLP of width w).
The four variants wire it as:

    plain      x <- F(x)
    residual   x <- x + F(x)
    pre_ln     x <- x + F(LN(x))          (GPT-2 and later; Xiong et al. 2020)
    post_ln    x <- LN(x + F(x))          (the original transformer; Vaswani et al. 2017)

Initialisation is PyTorch's default for ``nn.Linear`` unless ``init="kaiming"``:
W and b uniform in (-1/sqrt(w), 1/sqrt(w)), so Var(W_ij) = 1/(3w). Then W x has a third of
x's mean square, and the ReLU halves it: the branch maps a mean square m to about m/18, and
so each plain layer shrinks the signal (and the gradient) by about sqrt(18). ``init="kaiming"``
(He initialisation) draws W1 with Var = 2/w, W2 with Var = 1/w and zero biases, which keeps a
plain layer's mean square constant in expectation.

``WindowLM`` puts a stack to work: it predicts the next character from the previous
``context`` characters (embedded, concatenated, projected to width w), through the stack,
to a linear read-out over the vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from book.data import TokenDataset, get_batch

VARIANTS = ("plain", "residual", "pre_ln", "post_ln")
INITS = ("default", "kaiming")


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


class DeepLayer(nn.Module):
    """One layer of width ``width``: the branch F(x) = W2 relu(W1 x + b1) + b2, wired as ``variant`` says."""

    def __init__(self, width: int, variant: str = "residual"):
        super().__init__()
        _check_positive_int("width", width)
        _check_choice("variant", variant, VARIANTS)
        self.variant = variant
        self.up = nn.Linear(width, width)
        self.down = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width) if variant in ("pre_ln", "post_ln") else None

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "plain":
            return self.branch(x)
        if self.variant == "residual":
            return x + self.branch(x)
        if self.variant == "pre_ln":
            return x + self.branch(self.norm(x))
        return self.norm(x + self.branch(x))  # post_ln


class DeepStack(nn.Module):
    """``n_layer`` layers of width ``width``, all of one ``variant``."""

    def __init__(self, n_layer: int, width: int, variant: str = "residual", init: str = "default"):
        super().__init__()
        _check_positive_int("n_layer", n_layer)
        _check_positive_int("width", width)
        _check_choice("variant", variant, VARIANTS)
        _check_choice("init", init, INITS)
        self.variant, self.width = variant, width
        self.layers = nn.ModuleList(DeepLayer(width, variant) for _ in range(n_layer))
        if init == "kaiming":
            for layer in self.layers:
                # Var(W) = gain^2 / fan_in: 2/w before the ReLU (which halves the mean square), 1/w after it
                nn.init.kaiming_normal_(layer.up.weight, nonlinearity="relu")
                nn.init.kaiming_normal_(layer.down.weight, nonlinearity="linear")
                nn.init.zeros_(layer.up.bias)
                nn.init.zeros_(layer.down.bias)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """The stack's output; with ``return_hidden`` also [x_0, x_1, ..., x_L] (input, then each layer's output)."""
        if x.shape[-1] != self.width:
            raise ValueError(f"x must have last dimension width={self.width}, got shape {tuple(x.shape)}")
        hidden = [x]
        for layer in self.layers:
            x = layer(x)
            hidden.append(x)
        return (x, hidden) if return_hidden else x


def stack_params(n_layer: int, width: int, variant: str) -> int:
    """Exact parameter count of ``DeepStack(n_layer, width, variant)``: two W and b per layer, and LN's gain and bias."""
    _check_positive_int("n_layer", n_layer)
    _check_positive_int("width", width)
    _check_choice("variant", variant, VARIANTS)
    per_layer = 2 * (width * width + width) + (2 * width if variant in ("pre_ln", "post_ln") else 0)
    return n_layer * per_layer


def layer_grad_norms(stack: DeepStack, x: torch.Tensor, loss_fn) -> torch.Tensor:
    """Norms of d loss / d x_l for l = 0..n_layer, where x_0 = ``x`` and x_l is layer l's output.

    ``loss_fn`` maps the stack's output to a scalar loss. Each norm is the Frobenius norm
    over the whole batch. Parameters' ``.grad`` are left untouched (``torch.autograd.grad``).
    """
    if not isinstance(stack, DeepStack):
        raise ValueError(f"stack must be a DeepStack, got {type(stack).__name__}")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be a callable mapping the stack's output to a scalar loss")
    if not x.requires_grad:  # x_0 is then a leaf, which needs requires_grad to get a gradient
        x = x.detach().requires_grad_(True)
    out, hidden = stack(x, return_hidden=True)
    loss = loss_fn(out)
    if loss.ndim != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss, hidden)
    return torch.stack([g.norm() for g in grads]).detach()


def weight_grad_norms(stack: DeepStack) -> torch.Tensor:
    """Norm of each layer's gradient of W1 (``up.weight.grad``, after a backward pass), bottom layer first."""
    if not isinstance(stack, DeepStack):
        raise ValueError(f"stack must be a DeepStack, got {type(stack).__name__}")
    grads = [layer.up.weight.grad for layer in stack.layers]
    if any(g is None for g in grads):
        raise ValueError("the stack has no weight gradients: call loss.backward() first")
    return torch.stack([g.norm() for g in grads]).detach()


# --------------------------------------------------------------------------- a task for the stacks


class WindowLM(nn.Module):
    """Next-character prediction from a fixed window of ``context`` previous characters.

    idx (B, context) -> embeddings (B, context, d_embed) -> flattened -> Linear to ``width``
    -> the deep stack -> Linear to ``vocab_size`` logits. Only the stack differs between variants.
    """

    def __init__(self, vocab_size: int, context: int, width: int, n_layer: int, variant: str = "residual",
                 d_embed: int = 16, init: str = "default"):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context", context), ("d_embed", d_embed)):
            _check_positive_int(name, value)
        self.context = context
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.proj_in = nn.Linear(context * d_embed, width)
        self.stack = DeepStack(n_layer, width, variant, init)
        self.head = nn.Linear(width, vocab_size)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """The stack's input x_0 for windows ``idx`` (B, context)."""
        if idx.ndim != 2 or idx.shape[1] != self.context:
            raise ValueError(f"idx must have shape (batch, context={self.context}), got {tuple(idx.shape)}")
        return self.proj_in(self.embed(idx).flatten(1))

    def loss_from_output(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the read-out of the stack's output ``h`` against ``targets`` (B,)."""
        return F.cross_entropy(self.head(h), targets)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.head(self.stack(self.features(idx)))
        return logits, (None if targets is None else F.cross_entropy(logits, targets))

    def grad_norms(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``layer_grad_norms`` of this model's stack for windows ``idx`` and next characters ``targets``."""
        return layer_grad_norms(self.stack, self.features(idx), lambda h: self.loss_from_output(h, targets))


def window_batch(tokens: torch.Tensor, context: int, batch_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``context`` tokens (B, context) and the token after each (B,)."""
    x, y = get_batch(tokens, batch_size, context, generator, device)
    return x, y[:, -1]  # y is x shifted by one: its last column is the next token after the window


@torch.no_grad()
def window_loss(model: WindowLM, tokens: torch.Tensor, n_windows: int = 4096, seed: int = 1234,
                chunk: int = 1024) -> float:
    """Mean cross-entropy (nats) on ``n_windows`` windows of ``tokens``, the same ones every call."""
    _check_positive_int("n_windows", n_windows)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    x, y = window_batch(tokens, model.context, n_windows, torch.Generator().manual_seed(seed))
    total = sum(F.cross_entropy(model(xc.to(dev))[0], yc.to(dev), reduction="sum").item()
                for xc, yc in zip(x.split(chunk), y.split(chunk)))
    model.train(was_training)
    return total / n_windows


def _adam(params: list, lr: float) -> torch.optim.Adam:
    try:  # fused: one kernel for all parameters, several times faster than a loop over 200 small tensors
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a torch without fused Adam on this device
        return torch.optim.Adam(params, lr=lr)


def train_window_lm(model: WindowLM, data: TokenDataset, steps: int, lr: float, batch_size: int = 64,
                    seed: int = 0, eval_windows: int = 4096, log_every: int | None = None) -> dict:
    """Train ``model`` in place with Adam at a constant ``lr`` (no clipping, no decay, no schedule).

    The same optimizer for every variant, so that differences come from the stack. Returns
    ``{"curve": [(step, train loss of that step's batch)], "train_loss", "val_loss", "diverged"}``;
    the final losses are ``window_loss`` on fixed windows of each split (inf if training diverged).
    """
    if not isinstance(model, WindowLM):
        raise ValueError(f"model must be a WindowLM, got {type(model).__name__}")
    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    log_every = log_every or max(1, steps // 50)
    dev = next(model.parameters()).device
    optimizer = _adam(list(model.parameters()), lr)
    sampler = torch.Generator().manual_seed(seed)
    model.train()
    curve = []
    for step in range(steps):
        x, y = window_batch(data.train, model.context, batch_size, sampler, dev)
        _, loss = model(x, y)
        if not torch.isfinite(loss):
            return {"curve": curve, "train_loss": math.inf, "val_loss": math.inf, "diverged": True}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            curve.append((step, loss.item()))
    train_loss, val_loss = (window_loss(model, data.split(s), eval_windows) for s in ("train", "val"))
    diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
    return {"curve": curve, "train_loss": train_loss if not diverged else math.inf,
            "val_loss": val_loss if not diverged else math.inf, "diverged": diverged}

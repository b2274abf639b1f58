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
to a linear read-out over the vocabulary. It has the GPT's forward contract
(``model(idx, targets) -> (logits, loss)``, ``model.config.n_ctx``), so ``book.train.train``
trains it and ``book.train.evaluate`` scores it on fixed windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from book import checks
from book.data import get_batch

VARIANTS = ("plain", "residual", "pre_ln", "post_ln")
INITS = ("default", "kaiming")


class DeepLayer(nn.Module):
    """One layer of width ``width``: the branch F(x) = W2 relu(W1 x + b1) + b2, wired as ``variant`` says."""

    def __init__(self, width: int, variant: str = "residual"):
        super().__init__()
        checks.positive_int("width", width)
        checks.one_of("variant", variant, VARIANTS)
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
        checks.positive_int("n_layer", n_layer)
        checks.positive_int("width", width)
        checks.one_of("variant", variant, VARIANTS)
        checks.one_of("init", init, INITS)
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
    checks.positive_int("n_layer", n_layer)
    checks.positive_int("width", width)
    checks.one_of("variant", variant, VARIANTS)
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


@dataclass(frozen=True)
class WindowLMConfig:
    """A ``WindowLM``'s sizes; ``n_ctx`` (= context) is the window a training batch is cut into."""

    vocab_size: int
    n_ctx: int
    width: int
    n_layer: int
    variant: str
    d_embed: int
    init: str

    def to_dict(self) -> dict:
        return asdict(self)


class WindowLM(nn.Module):
    """Next-character prediction from a fixed window of ``context`` previous characters.

    idx (B, context) -> embeddings (B, context, d_embed) -> flattened -> Linear to ``width``
    -> the deep stack -> Linear to ``vocab_size`` logits. Only the stack differs between variants.
    """

    def __init__(self, vocab_size: int, context: int, width: int, n_layer: int, variant: str = "residual",
                 d_embed: int = 16, init: str = "default"):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context", context), ("d_embed", d_embed)):
            checks.positive_int(name, value)
        self.context = context
        self.config = WindowLMConfig(vocab_size, context, width, n_layer, variant, d_embed, init)
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
        """Logits for the token after each window, and the loss against ``targets``.

        ``targets`` is either the next token of each window (B,) or, as ``book.data.get_batch`` and
        ``book.train`` give it, the window shifted by one (B, context), whose last column is that token.
        """
        logits = self.head(self.stack(self.features(idx)))
        if targets is not None and targets.ndim == 2:
            targets = targets[:, -1]
        return logits, (None if targets is None else F.cross_entropy(logits, targets))

    def grad_norms(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``layer_grad_norms`` of this model's stack for windows ``idx`` and next characters ``targets``."""
        if targets.ndim == 2:
            targets = targets[:, -1]
        return layer_grad_norms(self.stack, self.features(idx), lambda h: self.loss_from_output(h, targets))


def window_batch(tokens: torch.Tensor, context: int, batch_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``context`` tokens (B, context) and the token after each (B,)."""
    x, y = get_batch(tokens, batch_size, context, generator, device)
    return x, y[:, -1]  # y is x shifted by one: its last column is the next token after the window

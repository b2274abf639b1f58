"""A mixture-of-experts (MoE) layer: a drop-in replacement for the GPT's MLP.

A router scores every token against ``n_experts`` expert MLPs; each token is sent
to its ``k`` best experts only, and their outputs are summed with the gate weights:

    logits = x @ W_router                      # (tokens, n_experts)
    weights, experts = top_k_gating(logits, k)  # (tokens, k) each
    y = sum_j weights[:, j] * Expert_{experts[:, j]}(x)

Parameters grow with ``n_experts`` while the compute per token grows with ``k``
(Shazeer et al., 2017; GShard, Lepikhin et al., 2020; Switch, Fedus et al., 2022).

Dispatch never loops over tokens: the (token, choice) slots are sorted by expert
so each expert runs once on one contiguous batch, and the results are added back
with ``index_add_``. An expert takes at most ``capacity`` slots; the rest are
dropped, contribute zero, and the block's residual connection carries the token.
``MoE.forward_reference`` is the obvious loop over tokens, kept to check against.

After each forward the layer exposes ``aux_loss`` (Switch load balancing),
``z_loss`` (ST-MoE router z-loss) and ``stats`` (a ``MoEStats``); the training
loss adds them with small coefficients (Switch: 1e-2 and 1e-3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from book import checks

ROUTINGS = ("token_choice", "expert_choice")


def _check_k(k, n_experts: int) -> None:
    if checks.positive_int("k", k) > n_experts:
        raise ValueError(f"k must be an int in [1, n_experts={n_experts}], got {k!r}")


def _check_sizes(d_model, d_ff, n_experts) -> None:
    for name, value in (("d_model", d_model), ("d_ff", d_ff), ("n_experts", n_experts)):
        checks.positive_int(name, value)


# --------------------------------------------------------------------------- routing


def top_k_gating(logits: torch.Tensor, k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's ``k`` best experts and their gate weights.

    ``logits`` (..., n_experts) -> ``(weights, expert_indices)``, both (..., k), indices in
    order of descending logit. By default the weights are a softmax over the k chosen
    logits only, so they sum to 1 (Shazeer et al., 2017; GShard; Mixtral).

    With ``renormalize=False`` they are the chosen experts' probabilities under the
    softmax over *all* experts (Switch). This matters for k = 1: a softmax over one
    logit is always 1, so the router would get no gradient from the task loss.
    """
    if logits.ndim < 1:
        raise ValueError("logits must have a last dimension of size n_experts")
    _check_k(k, logits.shape[-1])
    if renormalize:
        top_logits, expert_indices = torch.topk(logits, k, dim=-1)
        return F.softmax(top_logits, dim=-1), expert_indices
    weights, expert_indices = torch.topk(F.softmax(logits, dim=-1), k, dim=-1)
    return weights, expert_indices


def noisy_top_k_gating(logits: torch.Tensor, noise_logits: torch.Tensor, k: int, training: bool = True,
                       generator: torch.Generator | None = None,
                       renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Shazeer et al. (2017): while training, add softplus(noise_logits) * N(0, 1) before the top-k.

    The noise lets experts that are just behind the leaders win some tokens, which
    spreads the load; ``noise_logits`` comes from a second, learned linear map of the token.
    """
    if noise_logits.shape != logits.shape:
        raise ValueError(f"noise_logits must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(noise_logits.shape)}")
    if training:
        noise = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        logits = logits + F.softplus(noise_logits) * noise
    return top_k_gating(logits, k, renormalize=renormalize)


def expert_choice_routing(logits: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhou et al. (2022): each expert picks its ``capacity`` best tokens, instead of tokens picking experts.

    ``logits`` (n_tokens, n_experts) -> ``(weights, token_indices)``, both (n_experts, capacity):
    ``token_indices[e]`` are the tokens expert e takes, ``weights[e]`` their softmax
    (over experts) probability of e. Every expert is exactly full; a token may be taken
    by several experts or by none. The choice looks at all tokens in the batch at once,
    so in a decoder a token's routing depends on later tokens: fine for a lesson, not causal.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (n_tokens, n_experts), got {tuple(logits.shape)}")
    n_tokens = logits.shape[0]
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= n_tokens:
        raise ValueError(f"capacity must be an int in [1, n_tokens={n_tokens}], got {capacity!r}")
    probs = F.softmax(logits, dim=-1)
    weights, token_indices = torch.topk(probs.t(), capacity, dim=-1)
    return weights, token_indices


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """Slots one expert takes: ceil(capacity_factor * tokens * k / n_experts); 1.0 is an exactly even share."""
    checks.positive_int("n_tokens", n_tokens)
    checks.positive_int("n_experts", n_experts)
    _check_k(k, n_experts)
    checks.positive_float("capacity_factor", capacity_factor)
    slots = checks.finite_result(capacity_factor * n_tokens * k / n_experts, "capacity_factor", "n_tokens")
    return math.ceil(slots)


# --------------------------------------------------------------------------- auxiliary losses


def load_balancing_loss(router_probs: torch.Tensor, expert_indices: torch.Tensor,
                        n_experts: int) -> torch.Tensor:
    """Switch's load-balancing loss, n_experts * sum_i f_i * P_i (Fedus et al., 2022, eq. 4).

    ``f_i`` is the fraction of token-slots dispatched to expert i: all k choices of each
    token count, normalised by tokens * k (with k = 1 this is exactly Switch's top-1
    fraction). ``P_i`` is the mean router probability of expert i, from ``router_probs``
    (..., n_experts), the softmax over all experts. ``expert_indices`` is (..., k), or
    (...) for top-1. The loss is 1 when routing is uniform and up to n_experts when it
    collapses onto one expert. ``f`` is a count, so the gradient flows through ``P``.
    """
    checks.positive_int("n_experts", n_experts)
    if router_probs.ndim < 1 or router_probs.shape[-1] != n_experts:
        raise ValueError(f"router_probs must have shape (..., n_experts={n_experts}), "
                         f"got {tuple(router_probs.shape)}")
    if expert_indices.ndim == router_probs.ndim - 1:
        expert_indices = expert_indices.unsqueeze(-1)  # top-1 indices without a k dimension
    if expert_indices.shape[:-1] != router_probs.shape[:-1] or expert_indices.dtype.is_floating_point:
        raise ValueError(f"expert_indices must be integers of shape {tuple(router_probs.shape[:-1])} + (k,), "
                         f"got {expert_indices.dtype} {tuple(expert_indices.shape)}")
    if expert_indices.numel() and not 0 <= int(expert_indices.min()) <= int(expert_indices.max()) < n_experts:
        raise ValueError(f"expert_indices must lie in [0, n_experts={n_experts})")
    slots = F.one_hot(expert_indices.reshape(-1), n_experts)
    fraction_dispatched = slots.sum(0) / slots.shape[0]
    mean_prob = router_probs.reshape(-1, n_experts).float().mean(0)
    return n_experts * (fraction_dispatched * mean_prob).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss (Zoph et al., 2022): mean of logsumexp(logits)^2 over tokens.

    It keeps the router's logits small, where the softmax (and bf16 rounding) behaves.
    """
    if logits.ndim < 1:
        raise ValueError("logits must have a last dimension of size n_experts")
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


# --------------------------------------------------------------------------- the layer


class Experts(nn.Module):
    """``n_experts`` MLPs like ``book.model.MLP`` (d_model -> d_ff -> d_model, GELU), weights stacked.

    One (n_experts, d_model, d_ff) tensor per role rather than a ModuleList of MLPs:
    all experts can run as one batched matmul (expert choice), expert parallelism
    shards them by slicing dim 0, and the parameter list does not grow with n_experts.
    Weights are stored (in, out), so ``x @ w_up[e]`` (nn.Linear stores the transpose).
    """

    def __init__(self, n_experts: int, d_model: int, d_ff: int, bias: bool = True):
        super().__init__()
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.b_up = nn.Parameter(torch.zeros(n_experts, d_ff)) if bias else None
        self.b_down = nn.Parameter(torch.zeros(n_experts, d_model)) if bias else None
        # GPT-2's initialisation, as book.model.GPT gives its nn.Linear layers
        nn.init.normal_(self.w_up, mean=0.0, std=0.02)
        nn.init.normal_(self.w_down, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """Rows ``x`` (rows, d_model) through expert number ``expert``."""
        h = x @ self.w_up[expert]
        if self.b_up is not None:
            h = h + self.b_up[expert]
        y = F.gelu(h) @ self.w_down[expert]
        return y + self.b_down[expert] if self.b_down is not None else y

    def batched(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (n_experts, rows, d_model): slice e through expert e, all in one batched matmul."""
        h = x @ self.w_up
        if self.b_up is not None:
            h = h + self.b_up[:, None]
        y = F.gelu(h) @ self.w_down
        return y + self.b_down[:, None] if self.b_down is not None else y


@dataclass
class MoEStats:
    """What one forward pass of an ``MoE`` did with its tokens."""
    tokens_per_expert: torch.Tensor  # (n_experts,) token-slots routed to each expert, before capacity
    dropped_fraction: float  # token choice: token-slots over capacity; expert choice: tokens no expert took
    capacity: int | None  # slots per expert; None: unlimited
    router_entropy: float  # mean entropy (nats) of the router's softmax; log(n_experts) means no preference


class MoE(nn.Module):
    """A mixture-of-experts MLP: (..., d_model) -> (..., d_model), a drop-in for ``book.model.MLP``.

    - ``k``: experts per token (token choice); for expert choice, the average number
      of experts per token, which sets the capacity.
    - ``capacity_factor``: each expert takes at most ceil(capacity_factor * tokens * k /
      n_experts) token-slots; the rest are dropped (output 0 for that slot). None: no
      dropping (expert choice then uses 1.0). First choices outrank second choices,
      then earlier tokens outrank later ones (GShard).
    - ``renormalize``: gate weights as a softmax over the k chosen logits (sum to 1);
      False gives Switch's weights (probabilities over all experts). With k = 1 and
      renormalize=True the weight is always 1 and the router learns only from aux_loss.
    - ``router_noise``: Shazeer's noisy top-k gating, with a learned noise scale, in training.
    - ``routing``: "token_choice" (tokens pick experts) or "expert_choice" (Zhou et al., 2022).

    After each forward: ``aux_loss`` (load balancing; 0 for expert choice, which is balanced
    by construction), ``z_loss`` (router z-loss) and ``stats`` (``MoEStats``).
    The router runs in float32 even under autocast (Switch's "selective precision").
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int, capacity_factor: float | None = None,
                 bias: bool = True, router_noise: bool = False, renormalize: bool = True,
                 routing: str = "token_choice"):
        super().__init__()
        _check_sizes(d_model, d_ff, n_experts)
        _check_k(k, n_experts)
        if capacity_factor is not None:
            checks.positive_float("capacity_factor", capacity_factor)
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        self.d_model, self.n_experts, self.k = d_model, n_experts, k
        self.capacity_factor, self.renormalize, self.routing = capacity_factor, renormalize, routing
        self.router = nn.Linear(d_model, n_experts, bias=False)
        # Shazeer's W_noise: softplus of its logits is the std of the noise added to each logit
        self.noise_router = nn.Linear(d_model, n_experts, bias=False) if router_noise else None
        self.experts = Experts(n_experts, d_model, d_ff, bias)
        self.aux_loss = self.z_loss = None
        self.stats: MoEStats | None = None

    @classmethod
    def from_dense(cls, mlp: nn.Module, n_experts: int, k: int, **kwargs) -> MoE:
        """An MoE whose experts are all copies of a dense MLP's ``up``/``down`` layers ("sparse upcycling")."""
        moe = cls(mlp.up.in_features, mlp.up.out_features, n_experts, k, bias=mlp.up.bias is not None, **kwargs)
        with torch.no_grad():
            moe.experts.w_up.copy_(mlp.up.weight.t().expand_as(moe.experts.w_up))
            moe.experts.w_down.copy_(mlp.down.weight.t().expand_as(moe.experts.w_down))
            if moe.experts.b_up is not None:
                moe.experts.b_up.copy_(mlp.up.bias.expand_as(moe.experts.b_up))
                moe.experts.b_down.copy_(mlp.down.bias.expand_as(moe.experts.b_down))
        return moe

    def capacity(self, n_tokens: int) -> int | None:
        """Token-slots one expert takes in a batch of ``n_tokens`` tokens; None means unlimited."""
        if self.routing == "expert_choice":
            return min(n_tokens, expert_capacity(n_tokens, self.n_experts, self.k, self.capacity_factor or 1.0))
        if self.capacity_factor is None:
            return None
        return expert_capacity(n_tokens, self.n_experts, self.k, self.capacity_factor)

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape (..., d_model={self.d_model}), got {tuple(x.shape)}")
        return x.reshape(-1, self.d_model)

    def _router_logits(self, x: torch.Tensor) -> torch.Tensor:
        # bf16 logits would flip near-ties in the top-k and overflow exp() in the z-loss
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.router.weight.float())

    def _gate(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token choice: (weights, expert_indices), both (tokens, k)."""
        if self.noise_router is None:
            return top_k_gating(logits, self.k, self.renormalize)
        with torch.autocast(x.device.type, enabled=False):
            noise_logits = F.linear(x.float(), self.noise_router.weight.float())
        return noisy_top_k_gating(logits, noise_logits, self.k, self.training, renormalize=self.renormalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._flatten(x)
        logits = self._router_logits(tokens)
        probs = F.softmax(logits, dim=-1)
        capacity = self.capacity(tokens.shape[0])
        if self.routing == "expert_choice":
            out, routed, dropped_fraction = self._expert_choice(tokens, logits, capacity)
            self.aux_loss = logits.new_zeros(())  # every expert is exactly full: nothing to balance
        else:
            weights, expert_indices = self._gate(tokens, logits)
            out, routed, dropped_fraction = self._token_choice(tokens, weights, expert_indices, capacity)
            # f from the (possibly noisy) choices, P from the clean router probabilities
            self.aux_loss = load_balancing_loss(probs, expert_indices, self.n_experts)
        self.z_loss = router_z_loss(logits)
        p = probs.detach()
        entropy = -(p * torch.log(p.clamp_min(1e-20))).sum(-1).mean()
        self.stats = MoEStats(tokens_per_expert=routed.detach(), dropped_fraction=dropped_fraction,
                              capacity=capacity, router_entropy=float(entropy))
        return out.reshape(x.shape)

    def _token_choice(self, x: torch.Tensor, weights: torch.Tensor, expert_indices: torch.Tensor,
                      capacity: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        n_tokens, n_slots = x.shape[0], x.shape[0] * self.k
        # One slot per (token, choice), choice-major: every token's first choice, then every second choice...
        slot_expert = expert_indices.t().reshape(-1)
        slot_token = torch.arange(n_tokens, device=x.device).repeat(self.k)
        slot_weight = weights.t().reshape(-1)
        # ... so a stable sort groups the slots by expert and keeps that order (the priority) inside each group.
        order = torch.argsort(slot_expert, stable=True)
        slot_expert, slot_token, slot_weight = slot_expert[order], slot_token[order], slot_weight[order]
        routed = torch.bincount(slot_expert, minlength=self.n_experts)

        kept = routed
        if capacity is not None:
            # a slot's place in its expert's queue; past the capacity it is dropped
            queue_start = torch.cumsum(routed, 0) - routed
            place = torch.arange(n_slots, device=x.device) - queue_start[slot_expert]
            keep = place < capacity
            slot_token, slot_weight = slot_token[keep], slot_weight[keep]
            kept = routed.clamp(max=capacity)

        # one batch per expert, contiguous after the sort: loop over experts, never over tokens
        batches = x[slot_token].split(kept.tolist())
        y = torch.cat([self.experts(batch, e) for e, batch in enumerate(batches)])
        # under autocast y may be bf16 while x is fp32: the output takes the experts' dtype, as nn.Linear's does
        out = y.new_zeros(x.shape).index_add_(0, slot_token, y * slot_weight[:, None].to(y.dtype))
        return out, routed, 1 - slot_token.numel() / n_slots

    def _expert_choice(self, x: torch.Tensor, logits: torch.Tensor,
                       capacity: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        weights, token_indices = expert_choice_routing(logits, capacity)  # (n_experts, capacity)
        # every expert holds exactly `capacity` tokens, so all of them run as one batched matmul
        y = self.experts.batched(x[token_indices])
        y = y * weights[..., None].to(y.dtype)
        out = y.new_zeros(x.shape).index_add_(0, token_indices.reshape(-1), y.reshape(-1, self.d_model))
        routed = torch.full((self.n_experts,), capacity, device=x.device)
        return out, routed, 1 - token_indices.unique().numel() / x.shape[0]

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer written the obvious way, one token at a time: slow, for checking ``forward``.

        Same routing as ``forward``; with ``router_noise`` compare in ``eval()`` mode, where
        the noise is off. Leaves ``aux_loss``, ``z_loss`` and ``stats`` untouched.
        """
        tokens = self._flatten(x)
        logits = self._router_logits(tokens)
        out = torch.zeros_like(tokens)
        capacity = self.capacity(tokens.shape[0])
        if self.routing == "expert_choice":
            weights, token_indices = expert_choice_routing(logits, capacity)
            chosen = [dict(zip(token_indices[e].tolist(), weights[e])) for e in range(self.n_experts)]
            for t in range(tokens.shape[0]):
                for e in range(self.n_experts):
                    if t in chosen[e]:  # expert e took token t
                        out[t] += chosen[e][t] * self.experts(tokens[t:t + 1], e)[0]
            return out.reshape(x.shape)
        weights, expert_indices = self._gate(tokens, logits)
        used = [0] * self.n_experts
        for choice in range(self.k):  # all first choices before any second choice, as in forward
            for t in range(tokens.shape[0]):
                e = int(expert_indices[t, choice])
                if capacity is None or used[e] < capacity:
                    used[e] += 1
                    out[t] += weights[t, choice] * self.experts(tokens[t:t + 1], e)[0]
        return out.reshape(x.shape)


# --------------------------------------------------------------------------- counting


def _expert_params(d_model: int, d_ff: int, bias: bool) -> int:
    return d_model * d_ff + d_ff * d_model + bias * (d_ff + d_model)


def moe_params(d_model: int, d_ff: int, n_experts: int, bias: bool = True, router_noise: bool = False) -> int:
    """Exact parameter count of one ``MoE`` layer: n_experts expert MLPs plus the router (and noise map)."""
    _check_sizes(d_model, d_ff, n_experts)
    router = d_model * n_experts * (2 if router_noise else 1)
    return n_experts * _expert_params(d_model, d_ff, bias) + router


def active_params(d_model: int, d_ff: int, n_experts: int, k: int, bias: bool = True,
                  router_noise: bool = False) -> int:
    """Parameters one token uses in an ``MoE`` layer: its k experts plus the router (and noise map)."""
    _check_sizes(d_model, d_ff, n_experts)
    _check_k(k, n_experts)
    router = d_model * n_experts * (2 if router_noise else 1)
    return k * _expert_params(d_model, d_ff, bias) + router


# --------------------------------------------------------------------------- memory to train and to serve


def training_bytes(n_params: int | float) -> dict[str, int]:
    """Bytes the model states take to train ``n_params`` parameters with Adam in mixed precision, by part
    (activations not included): ``book.memory.training_bytes``, 16 bytes a parameter (ZeRO, section 3.1).

    Every parameter of an MoE counts, active or not: each expert has its own weights,
    gradients and optimizer moments, whether a given token used it or not.
    """
    from book.memory import training_bytes as model_state_bytes  # book.memory imports book.model, which imports us

    return model_state_bytes(round(checks.positive_float("n_params", n_params)), optimizer="adam", precision="mixed")


def serving_bytes(n_params: int | float, bytes_per_param: float = 2.0) -> float:
    """Bytes the weights take to serve: every parameter must be in memory (bf16: 2 bytes; int8: 1), KV cache apart."""
    n_params = checks.positive_float("n_params", n_params)
    bytes_per_param = checks.positive_float("bytes_per_param", bytes_per_param)
    return float(n_params * bytes_per_param)

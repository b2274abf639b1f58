"""A decoder-only GPT, its exact parameter count, and its FLOPs per token.

The architecture is GPT-2's with pre-LN blocks (Xiong et al., 2020):

    x = token_embedding + position_embedding
    for each of n_layer blocks:
        x = x + Attention(LayerNorm(x))      # causal, multi-head; F.scaled_dot_product_attention by default
        x = x + MLP(LayerNorm(x))            # d_model -> d_ff -> d_model, GELU
    logits = LayerNorm(x) @ token_embedding^T

Embeddings are **tied** by default: the output layer reuses the token-embedding
matrix (as GPT-2 does), so it adds no parameters. With ``tie_embeddings=False``
the output layer has its own V x d matrix, which we count as an embedding
parameter too.

``GPTConfig.attention`` picks how attention is computed (book.attention): "sdpa"
(PyTorch's fused kernel, the default), the exact "naive" and "flash" references, or the
approximations "sliding_window", "linear" and "lsh", each causal. Linformer is refused:
its projections mix future positions into every key, so it cannot be causal.

Kaplan et al. (2020) count N = non-embedding parameters ~ 12 n_layer d^2:
``count_params(config, embedding=False)`` is that N, exactly, for this model.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from book import attention as _attention
from book import checks
from book.moe import ROUTINGS, MoE, active_params, moe_params

# GPTConfig.attention: each variant is causal. "sdpa" is F.scaled_dot_product_attention.
ATTENTIONS = ("sdpa", "naive", "flash", "sliding_window", "linear", "lsh")


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    d_model: int
    n_head: int
    n_ctx: int
    vocab_size: int
    d_ff: int | None = None  # None means 4 * d_model
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    # Mixture of experts (book.moe): 0 experts keeps every MLP dense.
    n_experts: int = 0
    moe_every: int = 1  # 1: every layer's MLP is an MoE; 2: every other one (layers 1, 3, ...; GShard, Switch)
    expert_k: int = 2  # experts per token (for expert choice: on average)
    capacity_factor: float | None = None  # None: no token-slot is dropped
    routing: str = "token_choice"  # or "expert_choice" (not causal: see book.moe.expert_choice_routing)
    aux_loss_coef: float = 0.01  # weight of Switch's load-balancing loss
    z_loss_coef: float = 0.001  # weight of ST-MoE's router z-loss
    # Attention variant (book.attention), one of ATTENTIONS, and its options.
    attention: str = "sdpa"
    attention_window: int = 64  # sliding_window: each query sees itself and the window - 1 keys before it
    flash_block: int = 64  # flash: block_q = block_k
    linear_chunk: int = 64  # linear: chunk of the causal prefix sums
    lsh_buckets: int = 8  # lsh: buckets per round (1 or even)
    lsh_rounds: int = 1  # lsh: rounds of hashing
    lsh_chunk: int | None = None  # lsh: chunk size; None means ceil(n / lsh_buckets)

    def __post_init__(self):
        for name in ("n_layer", "d_model", "n_head", "n_ctx", "vocab_size", "moe_every",
                     "lsh_rounds", "attention_window", "flash_block", "linear_chunk", "lsh_buckets"):
            checks.positive_int(name, getattr(self, name))
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.d_ff is None:  # None means 4 * d_model
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        checks.positive_int("d_ff", self.d_ff)
        for name in ("bias", "tie_embeddings"):
            checks.instance(name, getattr(self, name), bool)
        checks.probability("dropout", self.dropout, open_high=True)
        checks.nonnegative_int("n_experts", self.n_experts)  # 0: dense
        if self.n_experts and not 1 <= checks.integer("expert_k", self.expert_k) <= self.n_experts:
            raise ValueError(f"expert_k must be an int in [1, n_experts={self.n_experts}], got {self.expert_k!r}")
        # capacity_factor None: no token is dropped; lsh_chunk None: ceil(n / lsh_buckets).
        checks.optional(checks.positive_float, "capacity_factor", self.capacity_factor)
        checks.one_of("routing", self.routing, ROUTINGS)
        checks.nonnegative_float("aux_loss_coef", self.aux_loss_coef)
        checks.nonnegative_float("z_loss_coef", self.z_loss_coef)
        if self.attention == "linformer":
            raise ValueError("attention='linformer' cannot be used in a GPT: Linformer projects the n keys and "
                             "values into rank mixtures of ALL positions, future ones included, so no causal mask "
                             "can hide the future from a query; a causal language model must not see it")
        checks.one_of("attention", self.attention, ATTENTIONS)
        if self.lsh_buckets > 1 and self.lsh_buckets % 2:
            raise ValueError(f"lsh_buckets must be 1 or even (LSH buckets come in pairs), got {self.lsh_buckets}")
        checks.optional(checks.positive_int, "lsh_chunk", self.lsh_chunk)
        if self.attention != "sdpa" and self.dropout > 0:
            raise ValueError(f"dropout={self.dropout} on the attention weights is supported only with "
                             f"attention='sdpa', got attention={self.attention!r}: set dropout=0")

    def __repr__(self) -> str:
        # Only what differs from the defaults (d_ff's is 4 * d_model): a config reads at a glance.
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            default = 4 * self.d_model if f.name == "d_ff" else f.default
            if f.default is MISSING or value != default:
                shown.append(f"{f.name}={value!r}")
        return f"GPTConfig({', '.join(shown)})"

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based) has an MoE instead of a dense MLP."""
        return self.n_experts > 0 and (layer + 1) % self.moe_every == 0

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(layer) for layer in range(self.n_layer))

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- the model


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: GPTConfig, dropout: float = 0.0,
                     seed: int = 0) -> torch.Tensor:
    """Causal attention of (batch, heads, n, d_head) tensors, computed the way ``cfg.attention`` says.

    ``seed`` fixes LSH's random rotations (the model passes its layer index): the hash is the same
    at every step, so training and evaluation see the same buckets. LSH is causal in what it
    attends to (never a later value), but not in which earlier keys it sees: the sort into chunks
    counts every position, so a later token can move a chunk boundary (see tests/test_model.py).
    """
    kind = cfg.attention
    if kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    if kind == "naive":
        return _attention.naive_attention(q, k, v, causal=True)
    if kind == "flash":
        return _attention.flash_attention(q, k, v, causal=True, block_q=cfg.flash_block, block_k=cfg.flash_block)
    if kind == "sliding_window":
        return _attention.sliding_window_attention(q, k, v, window=cfg.attention_window, causal=True)
    if kind == "linear":
        return _attention.linear_attention(q, k, v, causal=True, chunk_size=cfg.linear_chunk)
    if kind == "lsh":
        return _attention.lsh_attention(q, k, v, n_buckets=cfg.lsh_buckets, n_rounds=cfg.lsh_rounds,
                                        chunk_size=cfg.lsh_chunk, causal=True, seed=seed)
    raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")


# Attention variants that can run on a KV cache (book.inference.KVCache): the exact ones.
CACHE_ATTENTIONS = ("sdpa", "naive")


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: GPTConfig) -> torch.Tensor:
    """Causal attention of t new queries, the last t of the n positions whose keys ``k`` holds (t <= n).

    Query i sits at position n - t + i and sees keys 0 .. n - t + i. ``is_causal`` masks as if the
    queries started at position 0, right only when t == n; one new token sees every key, no mask.
    """
    checks.one_of("attention (with a KV cache)", cfg.attention, CACHE_ATTENTIONS)
    t, n = q.shape[2], k.shape[2]
    if t == n:  # nothing cached before these queries: the ordinary causal case
        return causal_attention(q, k, v, cfg)
    mask = None if t == 1 else torch.ones(t, n, dtype=torch.bool, device=q.device).tril(n - t)
    if cfg.attention == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # naive: the scores written out
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.config = cfg
        self.layer = layer
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, d_head)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv_cache is None:
            y = causal_attention(q, k, v, self.config, dropout=self.dropout if self.training else 0.0,
                                 seed=self.layer)
        else:  # store this step's keys and values; attend over every position cached so far
            k, v = kv_cache.append(self.layer, k, v)
            y = cached_attention(q, k, v, self.config)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        if cfg.is_moe_layer(layer):
            self.mlp = MoE(cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.expert_k, cfg.capacity_factor,
                           bias=cfg.bias, routing=cfg.routing)
        else:
            self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x), kv_cache))
        return x + self.drop(self.mlp(self.ln_mlp(x)))


def _check_idx_shape(idx: torch.Tensor) -> None:
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must have shape (batch, time), time >= 1, got {tuple(idx.shape)}")


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position_embedding = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.ln_final = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 n_layer),
        # so the stream's variance does not grow with depth at initialisation.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight", "mlp.experts.w_down")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_cache=None):
        """Logits (B, T, V) for token ids ``idx`` (B, T); and the mean cross-entropy if ``targets`` are given.

        ``kv_cache`` (a ``book.inference.KVCache``): ``idx`` continues the ``kv_cache.length`` tokens
        cached so far, at positions length .. length + T - 1; each layer appends its keys and values.
        """
        checks.instance("idx", idx, torch.Tensor)
        _check_idx_shape(idx)
        T = idx.shape[1]
        past = 0 if kv_cache is None else kv_cache.length
        if kv_cache is not None:
            checks.one_of("attention (with a KV cache)", self.config.attention, CACHE_ATTENTIONS)
        if past + T > self.config.n_ctx:
            cached = f" after {past} cached tokens" if kv_cache is not None else ""
            raise ValueError(f"idx has sequence length {T}{cached}, more than n_ctx={self.config.n_ctx}")
        if targets is not None and (not isinstance(targets, torch.Tensor)
                                    or targets.shape != idx.shape):
            raise ValueError(f"targets must be a tensor of idx's shape {tuple(idx.shape)}, "
                             f"got {getattr(targets, 'shape', targets)!r}")
        # Ids outside the vocabulary fail here, named, not as an IndexError deep in the embedding.
        checks.token_ids(self.config.vocab_size, idx=idx, targets=targets)
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.token_embedding(idx) + self.position_embedding(pos))
        for block in self.blocks:
            x = block(x, kv_cache)
        logits = self.lm_head(self.ln_final(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def auxiliary_loss(self) -> torch.Tensor | float:
        """The MoE layers' weighted load-balancing and z-losses from the last forward; 0 for a dense model.

        Training minimises ``loss + model.auxiliary_loss()``; the reported loss stays the cross-entropy.
        """
        cfg, total = self.config, 0.0
        for block in self.blocks:
            if isinstance(block.mlp, MoE):
                total = total + cfg.aux_loss_coef * block.mlp.aux_loss + cfg.z_loss_coef * block.mlp.z_loss
        return total

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after the prompt ``idx`` (B, T)."""
        checks.token_ids(self.config.vocab_size, idx=idx)
        _check_idx_shape(idx)
        checks.nonnegative_int("max_new_tokens", max_new_tokens)
        checks.positive_float("temperature", temperature)
        checks.optional(checks.positive_int, "top_k", top_k)
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.n_ctx:])
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits.float(), dim=-1)
            next_id = torch.multinomial(probs.cpu(), 1, generator=generator).to(idx.device)
            idx = torch.cat([idx, next_id], dim=1)
        return idx


# --------------------------------------------------------------------------- counting


def param_breakdown(cfg: GPTConfig, active: bool = False) -> dict[str, int]:
    """Exact parameter count of ``GPT(cfg)`` by component (all layers together).

    With ``active``, an MoE layer counts only what one token uses: k experts and the router.
    """
    checks.instance("cfg", cfg, GPTConfig)
    d, f, L, b = cfg.d_model, cfg.d_ff, cfg.n_layer, int(cfg.bias)
    layer_norm = d + b * d  # weight, and bias when cfg.bias
    n_moe = cfg.n_moe_layers
    if n_moe and active:
        moe_layer = active_params(d, f, cfg.n_experts, cfg.expert_k, cfg.bias)
    elif n_moe:
        moe_layer = moe_params(d, f, cfg.n_experts, cfg.bias)
    else:
        moe_layer = 0
    return {
        "token_embedding": cfg.vocab_size * d,
        "position_embedding": cfg.n_ctx * d,
        "attention": L * (3 * d * d + b * 3 * d + d * d + b * d),  # qkv and output projection
        "mlp": (L - n_moe) * (d * f + b * f + f * d + b * d) + n_moe * moe_layer,  # MoE: experts, router
        "layer_norms": L * 2 * layer_norm + layer_norm,  # two per block, one final
        "lm_head": 0 if cfg.tie_embeddings else cfg.vocab_size * d,
    }


EMBEDDING_PARTS = ("token_embedding", "position_embedding", "lm_head")


def count_params(cfg: GPTConfig, embedding: bool = True, active: bool = False) -> int:
    """Parameters of ``GPT(cfg)``; with ``embedding=False``, Kaplan's N (no embedding matrices).

    With ``active``, MoE layers count the parameters one token uses (k experts and the router).
    """
    parts = param_breakdown(cfg, active=active)
    if not embedding:
        parts = {k: v for k, v in parts.items() if k not in EMBEDDING_PARTS}
    return sum(parts.values())


def flops_per_token(cfg: GPTConfig, training: bool = False, context: bool = True,
                    unembedding: bool = False) -> int:
    """FLOPs to process one token, following Kaplan et al. (2020), Table 1.

    Forward: 2N (every non-embedding weight does one multiply-add per token) plus,
    with ``context``, 2 n_layer n_ctx d for the attention scores QK^T. Training
    (forward + backward) costs 3x the forward pass, so ~6N. Like Kaplan we leave
    out the output layer (2 d V) unless ``unembedding`` is set, and the
    attention-weighted sum of values, softmax, norms and biases' adds.
    """
    forward = 2 * count_params(cfg, embedding=False, active=True)  # an MoE token runs k experts, not all
    if context:
        forward += 2 * cfg.n_layer * cfg.n_ctx * cfg.d_model
    if unembedding:
        forward += 2 * cfg.d_model * cfg.vocab_size
    return 3 * forward if training else forward


def layer_matmuls(cfg: GPTConfig, batch_size: int) -> dict[str, tuple[int, int, int, int]]:
    """The matrix products of one transformer layer's forward pass on ``batch_size`` sequences.

    Each entry is ``(m, n, k, count)``: ``count`` products of (m x k) @ (k x n). The
    weight matmuls act on all ``batch_size * n_ctx`` token rows at once; the attention
    scores QK^T are one n_ctx x d_head x n_ctx product per sequence and head.
    """
    checks.instance("cfg", cfg, GPTConfig)
    checks.positive_int("batch_size", batch_size)
    d, f, rows = cfg.d_model, cfg.d_ff, batch_size * cfg.n_ctx
    return {
        "QKV projection": (rows, 3 * d, d, 1),
        "attention output": (rows, d, d, 1),
        "MLP up": (rows, f, d, 1),
        "MLP down": (rows, d, f, 1),
        "attention scores": (cfg.n_ctx, cfg.n_ctx, cfg.d_head, batch_size * cfg.n_head),
    }

"""Inference: the KV cache, greedy and sampled generation, and speculative decoding.

A decoder generates one token per forward pass. Without a cache, step n recomputes the keys and
values of all n earlier tokens; with one, each layer keeps them (``KVCache``) and a step runs only
the new token. Its size, ``kv_cache_bytes``, is 2 (keys and values) x layers x KV heads x d_head x
bytes per value, per token and sequence (Kwon et al., 2023, sec. 3).

Speculative decoding (Leviathan et al., 2023) lets a small draft model propose ``gamma`` tokens and
the target score them all in one forward pass. Under greedy decoding the longest prefix that agrees
with the target's own choices is kept, plus the target's next token: the output is exactly the
target's, and a step yields ``expected_tokens_per_step(alpha, gamma)`` tokens when each draft token
is accepted independently with probability alpha (their eq. 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from book import checks
from book.model import GPT, GPTConfig, count_params


def kv_cache_bytes(n_layer: int, n_kv_heads: int, d_head: int, n_tokens: int, *, batch_size: int = 1,
                   bytes_per_value: int = 2) -> int:
    """Bytes of a KV cache: a key and a value of ``n_kv_heads * d_head`` numbers per layer and token.

    With grouped-query attention ``n_kv_heads`` is smaller than the query heads; with multi-head
    attention they are equal. ``bytes_per_value``: 2 for fp16/bf16, 4 for fp32, 1 for int8.
    """
    for name, value in (("n_layer", n_layer), ("n_kv_heads", n_kv_heads), ("d_head", d_head),
                        ("batch_size", batch_size), ("bytes_per_value", bytes_per_value)):
        checks.positive_int(name, value)
    checks.nonnegative_int("n_tokens", n_tokens)
    return 2 * n_layer * n_kv_heads * d_head * bytes_per_value * n_tokens * batch_size


class KVCache:
    """Preallocated keys and values of every layer, (batch, n_head, n_ctx, d_head) each, and a length.

    ``GPT.forward(idx, kv_cache=cache)`` calls ``append`` once per layer and reads ``length`` for the
    positions of the new tokens. ``truncate`` forgets the last tokens (speculative decoding does,
    when the target rejects a draft).
    """

    def __init__(self, config: GPTConfig, batch_size: int, *, n_ctx: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        checks.instance("config", config, GPTConfig)
        checks.positive_int("batch_size", batch_size)
        n_ctx = config.n_ctx if n_ctx is None else checks.positive_int("n_ctx", n_ctx)
        if n_ctx > config.n_ctx:
            raise ValueError(f"n_ctx must be at most the model's n_ctx={config.n_ctx}, got {n_ctx}")
        checks.instance("dtype", dtype, torch.dtype)
        shape = (batch_size, config.n_head, n_ctx, config.d_head)
        self.config, self.batch_size, self.n_ctx = config, batch_size, n_ctx
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self._lengths = [0] * config.n_layer  # per layer: during a forward pass, layer l is ahead of l + 1

    @property
    def length(self) -> int:
        """Tokens cached in every layer: the position of the next token."""
        return min(self._lengths)

    @property
    def nbytes(self) -> int:
        """Bytes the preallocated tensors hold (all of n_ctx, used or not)."""
        return sum(t.nbytes for t in self.k + self.v)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer ``layer``'s keys and values of t new tokens, (batch, n_head, t, d_head); return
        all of that layer's cached keys and values so far, new ones included (views, not copies)."""
        if not 0 <= checks.integer("layer", layer) < self.config.n_layer:
            raise ValueError(f"layer must be in [0, {self.config.n_layer}), got {layer}")
        checks.instance("k", k, torch.Tensor)
        checks.instance("v", v, torch.Tensor)
        cache_k, cache_v = self.k[layer], self.v[layer]
        if (k.ndim != 4 or k.shape != v.shape or k.shape[:2] != cache_k.shape[:2]
                or k.shape[3] != cache_k.shape[3]):
            raise ValueError(f"k and v must both have shape (batch={self.batch_size}, "
                             f"n_head={self.config.n_head}, t, d_head={self.config.d_head}), "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        start, end = self._lengths[layer], self._lengths[layer] + k.shape[2]
        if end > self.n_ctx:
            raise ValueError(f"the cache holds n_ctx={self.n_ctx} tokens: {start} cached plus "
                             f"{k.shape[2]} new is {end}")
        cache_k[:, :, start:end] = k
        cache_v[:, :, start:end] = v
        self._lengths[layer] = end
        return cache_k[:, :, :end], cache_v[:, :, :end]

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` tokens of every layer; later appends overwrite the rest."""
        if checks.nonnegative_int("length", length) > self.length:
            raise ValueError(f"length must be at most the cached length {self.length}, got {length}")
        self._lengths = [length] * self.config.n_layer


def _check_prompt(model: GPT, prompt) -> None:
    checks.instance("prompt", prompt, torch.Tensor)
    checks.token_ids(model.config.vocab_size, prompt=prompt)
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must have shape (batch, time), time >= 1, got {tuple(prompt.shape)}")
    if prompt.shape[1] > model.config.n_ctx:
        raise ValueError(f"prompt has {prompt.shape[1]} tokens, more than the model's "
                         f"n_ctx={model.config.n_ctx}")


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    # logits (B, V) of the last position -> (B, 1) ids: argmax when temperature is 0, else a sample.
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).to(logits.device)


def _dtype(model: GPT) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def generate(model: GPT, prompt: torch.Tensor, max_new_tokens: int, *, kv_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The prompt (batch, T) followed by ``max_new_tokens`` generated tokens: (batch, T + max_new_tokens).

    Greedy (the argmax) when ``temperature`` is 0, the default; else sampled from softmax(logits /
    temperature), restricted to the ``top_k`` likeliest tokens if given. With ``kv_cache`` each step
    runs one token on a ``KVCache`` (so prompt and new tokens must fit in n_ctx); without, each step
    runs the whole sequence, its last n_ctx tokens once it is longer.
    """
    checks.instance("model", model, GPT)
    _check_prompt(model, prompt)
    checks.nonnegative_int("max_new_tokens", max_new_tokens)
    checks.instance("kv_cache", kv_cache, bool)
    checks.nonnegative_float("temperature", temperature)
    checks.optional(checks.positive_int, "top_k", top_k)
    if generator is not None:
        checks.instance("generator", generator, torch.Generator)
    n_ctx = model.config.n_ctx
    if kv_cache and prompt.shape[1] + max_new_tokens > n_ctx:
        raise ValueError(f"max_new_tokens={max_new_tokens} after a prompt of {prompt.shape[1]} tokens "
                         f"exceeds n_ctx={n_ctx}: a KV cache holds n_ctx tokens "
                         "(kv_cache=False slides a window instead)")
    was_training = model.training
    model.eval()
    tokens = prompt
    cache = None
    if kv_cache:
        cache = KVCache(model.config, prompt.shape[0], device=prompt.device, dtype=_dtype(model))
    for _ in range(max_new_tokens):
        if cache is None:
            logits = model(tokens[:, -n_ctx:])[0]
        else:  # the tokens not cached yet: the whole prompt first, then one at a time
            logits = model(tokens[:, cache.length:], kv_cache=cache)[0]
        tokens = torch.cat([tokens, _next_token(logits[:, -1], temperature, top_k, generator)], dim=1)
    model.train(was_training)
    return tokens


@dataclass(frozen=True)
class SpeculativeResult:
    """What ``speculative_generate`` produced, and how often the target accepted the draft.

    ``acceptance_rate`` is accepted / (accepted + rejected): of the draft tokens the target judged,
    the fraction it agreed with (drafts after the first rejection of a step are never judged).
    ``tokens_per_step``: new tokens per target forward pass (the prompt's prefill not counted).
    """

    tokens: torch.Tensor  # (1, T + max_new_tokens): the prompt and the new tokens
    proposed: int  # draft tokens proposed, over all steps
    accepted: int  # of those, kept
    rejected: int  # steps that ended at a rejected draft token (the others accepted all of theirs)
    target_steps: int  # target forward passes after the prefill, one per step
    acceptance_rate: float
    tokens_per_step: float


def _check_pair(target: GPT, draft: GPT) -> None:
    checks.instance("target", target, GPT)
    checks.instance("draft", draft, GPT)
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft must share the target's vocabulary: vocab_size {draft.config.vocab_size} "
                         f"!= {target.config.vocab_size}")


def accept_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, torch.Tensor]:
    """One greedy acceptance step: how many of the g ``draft_tokens`` (g,) the target keeps; the new tokens.

    ``target_logits`` (g + 1, V): the target's logits after the last accepted token and after each
    draft token. The longest prefix of drafts equal to the target's argmax is kept, then the
    target's own token at the first disagreement (or after the last draft): n_accepted + 1 tokens.
    """
    checks.instance("draft_tokens", draft_tokens, torch.Tensor)
    checks.instance("target_logits", target_logits, torch.Tensor)
    g = draft_tokens.shape[0] if draft_tokens.ndim == 1 else -1
    if g < 0 or target_logits.ndim != 2 or target_logits.shape[0] != g + 1:
        raise ValueError(f"draft_tokens must be (g,) and target_logits (g + 1, vocab), got "
                         f"{tuple(draft_tokens.shape)} and {tuple(target_logits.shape)}")
    choice = target_logits.argmax(dim=-1)  # the target's greedy token at each of the g + 1 positions
    agree = (draft_tokens == choice[:g]).long()
    n_accepted = int(agree.cumprod(dim=0).sum())  # the length of the agreeing prefix
    return n_accepted, torch.cat([draft_tokens[:n_accepted], choice[n_accepted:n_accepted + 1]])


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, prompt: torch.Tensor, max_new_tokens: int,
                         gamma: int) -> SpeculativeResult:
    """Greedy speculative decoding of one sequence: exactly ``generate(target, prompt, max_new_tokens)``.

    Each step the draft proposes ``gamma`` tokens, one forward pass each on its KV cache; the target
    scores the last token and all of them in one forward pass on its own cache; ``accept_greedy``
    keeps the agreeing prefix plus the target's next token, and both caches forget the rest. Near
    the end a step proposes fewer, so that no token beyond ``max_new_tokens`` is made.
    """
    _check_pair(target, draft)
    _check_prompt(target, prompt)
    checks.nonnegative_int("max_new_tokens", max_new_tokens)
    checks.positive_int("gamma", gamma)
    if prompt.shape[0] != 1:
        raise ValueError(f"prompt must hold one sequence (batch 1), got batch {prompt.shape[0]}")
    n_ctx = min(target.config.n_ctx, draft.config.n_ctx)
    if prompt.shape[1] + max_new_tokens > n_ctx:
        raise ValueError(f"max_new_tokens={max_new_tokens} after a prompt of {prompt.shape[1]} tokens "
                         f"exceeds n_ctx={n_ctx} (the smaller of the two models')")
    modes = target.training, draft.training
    target.eval()
    draft.eval()
    # One cache each (even when draft is target): both hold every token but the last, run next step.
    t_cache, d_cache = (KVCache(m.config, 1, device=prompt.device, dtype=_dtype(m)) for m in (target, draft))
    if prompt.shape[1] > 1:
        target(prompt[:, :-1], kv_cache=t_cache)
        draft(prompt[:, :-1], kv_cache=d_cache)
    tokens, proposed, accepted, rejected, steps = prompt, 0, 0, 0, 0
    while tokens.shape[1] - prompt.shape[1] < max_new_tokens:
        g = min(gamma, max_new_tokens - (tokens.shape[1] - prompt.shape[1]) - 1)
        extended = tokens
        for _ in range(g):  # the draft's greedy proposals, one token at a time
            logits = draft(extended[:, d_cache.length:], kv_cache=d_cache)[0]
            extended = torch.cat([extended, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
        # One target pass over the last accepted token and the g drafts: g + 1 next-token logits.
        logits = target(extended[:, t_cache.length:], kv_cache=t_cache)[0][0]
        n_accepted, new = accept_greedy(extended[0, tokens.shape[1]:], logits)
        tokens = torch.cat([tokens, new[None]], dim=1)
        proposed, accepted, steps = proposed + g, accepted + n_accepted, steps + 1
        rejected += int(n_accepted < g)
        for cache in (t_cache, d_cache):  # forget the rejected drafts; the newest token is run next step
            cache.truncate(min(cache.length, tokens.shape[1] - 1))
    target.train(modes[0])
    draft.train(modes[1])
    judged = accepted + rejected
    return SpeculativeResult(tokens=tokens, proposed=proposed, accepted=accepted, rejected=rejected,
                             target_steps=steps, acceptance_rate=accepted / judged if judged else math.nan,
                             tokens_per_step=max_new_tokens / steps if steps else math.nan)


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """Leviathan et al. (2023), eq. 1: tokens per target pass, (1 - alpha^(gamma+1)) / (1 - alpha).

    Each of the ``gamma`` draft tokens is accepted with probability ``alpha``, independently; the
    step ends at the first rejection and adds the target's token. ``alpha = 1`` gives gamma + 1.
    """
    alpha = checks.probability("alpha", alpha)
    gamma = checks.positive_int("gamma", gamma)
    if alpha == 1:
        return float(gamma + 1)
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def step_cost(config: GPTConfig, *, batch_size: int, new_tokens: int, past_tokens: int = 0,
              bytes_per_value: int = 4) -> tuple[int, int]:
    """(FLOPs, bytes moved) of one forward pass of ``new_tokens`` per sequence after ``past_tokens`` cached.

    FLOPs: 2 per weight of the blocks and of the output layer for every token, plus 4 d per
    (query, key) pair in each layer (scores QK^T and the weighted sum of V). Bytes: every weight of
    the blocks and the output layer read once, the cache read (past and new keys and values) and
    the new keys and values written. Norms, biases' adds, softmax and activations are left out.
    """
    checks.instance("config", config, GPTConfig)
    b = checks.positive_int("batch_size", batch_size)
    t = checks.positive_int("new_tokens", new_tokens)
    past = checks.nonnegative_int("past_tokens", past_tokens)
    checks.positive_int("bytes_per_value", bytes_per_value)
    d, L = config.d_model, config.n_layer
    weights = count_params(config, embedding=False, active=True) + config.vocab_size * d  # blocks + output
    pairs = t * past + t * (t + 1) // 2  # query i at position past + i sees past + i + 1 keys
    flops = 2 * weights * b * t + 4 * d * L * pairs * b
    moved = bytes_per_value * (weights + kv_cache_bytes(L, config.n_head, config.d_head, past + t,
                                                        batch_size=b, bytes_per_value=1)
                               + kv_cache_bytes(L, config.n_head, config.d_head, t, batch_size=b,
                                                bytes_per_value=1))
    return flops, moved

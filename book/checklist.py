"""The checks to run on a small model before scaling it up, one function per question.

Each question of the scaling checklist becomes a function that measures one number and compares it with
a stated threshold:

- ``loss_is_smooth``: does the training loss fall, without spikes or divergence?
- ``mask_is_causal``: does any position's output depend on a later token?
- ``gradients_are_finite``: after a backward pass, is every gradient entry finite?
- ``loader_keeps_up``: is loading a batch much faster than training on it?
- ``validation_is_reliable``: is the validation text absent from the training text, and its loss not
  suspiciously below the training loss?
- ``memory_breakdown``: which part fills memory (model state, activations or the KV cache), and does
  it fit on the device?
- ``data_balance``: tokens per parameter against Chinchilla's compute-optimal ~20: undertrained,
  balanced or capacity-limited?

Each returns a ``CheckResult``: whether it passed, the measured value and a sentence saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from book import checks, inference, memory
from book.model import GPTConfig, count_params

# Hoffmann et al. (2022): compute-optimal training uses about 20 tokens per parameter.
CHINCHILLA_TOKENS_PER_PARAM = 20.0
MODES = ("training", "inference")


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: ``passed``, the measured ``value``, a ``message``; ``details`` by part."""

    name: str
    passed: bool
    value: float
    message: str
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"[{'pass' if self.passed else 'FAIL'}] {self.name}: {self.message}"


# --------------------------------------------------------------------------- the loss curve


def loss_is_smooth(losses: Sequence[float], *, min_drop: float = 0.05, max_spike: float = 0.1) -> CheckResult:
    """Does the loss fall by at least ``min_drop`` (relative) and never rise ``max_spike`` above its best?

    ``losses`` are the points of a training curve in order (at least 3). The drop compares the first
    point with the mean of the last tenth; a spike is a point above the lowest loss before it, as a
    fraction of that lowest loss (the value returned). A non-finite point fails at once: divergence.
    """
    if isinstance(losses, (str, bytes)) or not isinstance(losses, (Sequence, np.ndarray, torch.Tensor)):
        raise TypeError(f"losses must be a sequence of numbers, got {losses!r}")
    values = [checks.real("losses", v) for v in (losses.tolist() if hasattr(losses, "tolist") else losses)]
    if len(values) < 3:
        raise ValueError(f"losses must have at least 3 points, got {len(values)}")
    checks.probability("min_drop", min_drop)
    checks.positive_float("max_spike", max_spike)
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        return CheckResult("loss is smooth", False, math.inf,
                           f"the loss became {values[bad[0]]} at point {bad[0]}: the run diverged")
    tail = values[-max(1, len(values) // 10):]
    drop = (values[0] - sum(tail) / len(tail)) / abs(values[0])
    best, spike, where = values[0], 0.0, 0
    for i, v in enumerate(values[1:], start=1):
        if (v - best) / abs(best) > spike:
            spike, where = (v - best) / abs(best), i
        best = min(best, v)
    passed = drop >= min_drop and spike <= max_spike
    message = (f"fell {drop:.1%} (needs >= {min_drop:.0%}); worst rise {spike:.1%} above the best "
               f"loss so far, at point {where} (allowed <= {max_spike:.0%})")
    return CheckResult("loss is smooth", passed, spike, message, {"drop": drop, "spike_at": where})


# --------------------------------------------------------------------------- the causal mask


def _logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def mask_is_causal(model: nn.Module, *, seq_len: int | None = None, seed: int = 0,
                   rtol: float = 1e-4) -> CheckResult:
    """Does changing the token at position t leave every earlier position's logits unchanged?

    One forward pass of ``seq_len + 1`` sequences (default ``model.config.n_ctx`` tokens): a random
    sequence and, for each t, a copy with token t changed. The value is the largest change of the logits
    at positions before t, relative to the largest change at t itself (which must change); it must be
    at most ``rtol``. Comparing rows of one batch keeps the kernels, and so the rounding, the same.
    """
    checks.instance("model", model, nn.Module)
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"model must have a GPTConfig as .config (a book.model.GPT), got {cfg!r}")
    T = cfg.n_ctx if seq_len is None else checks.positive_int("seq_len", seq_len)
    if not 2 <= T <= cfg.n_ctx:
        raise ValueError(f"seq_len must be in [2, n_ctx={cfg.n_ctx}], got {T}")
    checks.nonnegative_int("seed", seed)
    checks.positive_float("rtol", rtol)
    dev = next(model.parameters()).device
    base = torch.randint(0, cfg.vocab_size, (T,), generator=torch.Generator().manual_seed(seed))
    batch = base.repeat(T + 1, 1)
    positions = torch.arange(T)
    batch[positions + 1, positions] = (base + 1) % cfg.vocab_size  # row t + 1: token t changed
    was_training = model.training
    model.eval()
    try:
        logits = _logits(model, batch.to(dev)).float().cpu()
    finally:
        model.train(was_training)
    change = (logits[1:] - logits[:1]).abs().amax(dim=-1)  # (t, position): how much each position moved
    at_t = change[positions, positions].max().item()
    earlier = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1).T  # [t, j]: j < t
    leak = change[earlier].max().item()
    if at_t == 0:
        return CheckResult("mask is causal", False, math.nan,
                           "changing a token did not change even its own position's logits: nothing tested")
    ratio = leak / at_t
    rows, cols = torch.nonzero(change * earlier == leak, as_tuple=True)
    where = "" if leak == 0 else f"; worst: position {cols[0].item()} sees token {rows[0].item()}"
    message = (f"earlier logits moved by {ratio:.2e} of the change at the edited position "
               f"(allowed <= {rtol:g}){where}")
    return CheckResult("mask is causal", ratio <= rtol, ratio, message)


# --------------------------------------------------------------------------- gradients


def gradients_are_finite(model: nn.Module) -> CheckResult:
    """After a backward pass: is every gradient entry finite? The value is how many are not."""
    checks.instance("model", model, nn.Module)
    grads = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not grads:
        raise ValueError("model has no gradients: call loss.backward() before gradients_are_finite(model)")
    bad = {name: int((~torch.isfinite(g)).sum().item()) for name, g in grads}
    bad = {name: n for name, n in bad.items() if n}
    total = sum(g.numel() for _, g in grads)
    if bad:
        first = next(iter(bad))
        message = (f"{sum(bad.values()):,} of {total:,} gradient entries are inf or nan, "
                   f"in {len(bad)} tensors, the first {first}")
        return CheckResult("gradients are finite", False, float(sum(bad.values())), message, bad)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for _, g in grads]))
    return CheckResult("gradients are finite", True, 0.0,
                       f"all {total:,} gradient entries finite; global norm {norm.item():.3g}")


# --------------------------------------------------------------------------- data loading


def loader_keeps_up(loader_seconds: float, step_seconds: float, *, max_ratio: float = 0.5) -> CheckResult:
    """Is loading a batch at most ``max_ratio`` of a training step's time? The value is the ratio.

    A loader that prefetches in the background is hidden while it is faster than a step (ratio < 1); one
    that runs between steps leaves the accelerator idle ``loader / (loader + step)`` of the time (in
    ``details``). The default, half a step, keeps that idle share under a third and leaves a margin.
    """
    loader_seconds = checks.nonnegative_float("loader_seconds", loader_seconds)
    step_seconds = checks.positive_float("step_seconds", step_seconds)
    max_ratio = checks.positive_float("max_ratio", max_ratio)
    ratio = loader_seconds / step_seconds
    idle = loader_seconds / (loader_seconds + step_seconds)
    message = (f"a batch takes {ratio:.3g} x a step to load (allowed <= {max_ratio:g}); loading "
               f"between steps would leave the accelerator idle {idle:.1%} of the time")
    return CheckResult("loader keeps up", ratio <= max_ratio, ratio, message, {"idle_fraction": idle})


# --------------------------------------------------------------------------- validation


def _ids(name: str, tokens) -> np.ndarray:
    checks.instance(name, tokens, torch.Tensor, "a 1-D tensor of token ids")
    checks.token_ids(2**62, **{name: tokens})
    if tokens.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor of token ids, got shape {tuple(tokens.shape)}")
    return tokens.cpu().numpy().astype(np.uint64)


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    # A polynomial hash of every n-gram, modulo 2^64 (numpy's uint64 wraps): a collision between two
    # different n-grams is about as likely as 1 in 2^64 per pair, so a match means the same text.
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    prime = np.uint64(1099511628211)
    for j in range(n):
        h *= prime
        h += ids[j:j + m]
    return h


def ngram_overlap(train: torch.Tensor, val: torch.Tensor, n: int = 32) -> float:
    """The fraction of ``val``'s n-grams (every window of ``n`` tokens) that also occur in ``train``."""
    a, b = _ids("train", train), _ids("val", val)
    n = checks.positive_int("n", n)
    if min(len(a), len(b)) < n:
        raise ValueError(f"n={n} is longer than a split: train has {len(a)} tokens, val {len(b)}")
    seen = np.sort(_ngram_hashes(a, n))
    grams = _ngram_hashes(b, n)
    found = seen[np.minimum(np.searchsorted(seen, grams), len(seen) - 1)] == grams
    return float(found.mean())


def validation_is_reliable(train: torch.Tensor, val: torch.Tensor, *, n: int = 32, max_overlap: float = 0.05,
                           train_loss: float | None = None, val_loss: float | None = None,
                           tolerance: float = 0.05) -> CheckResult:
    """Is the validation text held out? At most ``max_overlap`` of its ``n``-grams may occur in training.

    With both losses given, validation loss must also not sit more than ``tolerance`` (nats) below
    the training loss: held-out text should be at least as hard as text the model has trained on.
    The value is the overlap.
    """
    overlap = ngram_overlap(train, val, n)
    checks.probability("max_overlap", max_overlap)
    checks.nonnegative_float("tolerance", tolerance)
    checks.optional(checks.finite_float, "train_loss", train_loss)
    checks.optional(checks.finite_float, "val_loss", val_loss)
    if (train_loss is None) != (val_loss is None):
        raise ValueError("give both train_loss and val_loss, or neither")
    passed = overlap <= max_overlap
    message = (f"{overlap:.2%} of validation {n}-grams occur in the training text "
               f"(allowed <= {max_overlap:.0%})")
    if train_loss is not None:
        gap = val_loss - train_loss
        passed = passed and gap >= -tolerance
        message += f"; val - train loss = {gap:+.3f} nats (allowed >= {-tolerance:+g})"
    return CheckResult("validation is reliable", passed, overlap, message)


# --------------------------------------------------------------------------- memory


def _readable(n_bytes: float) -> str:
    unit = next((u for u in ("TB", "GB", "MB", "kB") if n_bytes >= _UNITS[u]), "B")
    return f"{n_bytes / _UNITS[unit]:,.3g} {unit}"


_UNITS = {"TB": 1e12, "GB": 1e9, "MB": 1e6, "kB": 1e3, "B": 1}


def memory_breakdown(config: GPTConfig, batch_size: int, device_bytes: float, *,
                     seq_len: int | None = None, mode: str = "training", optimizer: str = "adam",
                     precision: str = "mixed") -> CheckResult:
    """Which part dominates memory, and does the total fit in ``device_bytes``? The value is its share.

    Training: the model state of ``book.memory.training_bytes`` (parameters, gradients, optimizer state,
    master weights) and the activations of ``book.memory.activation_bytes`` (as the course's GPT saves
    them, in fp32) for ``batch_size`` sequences of ``seq_len`` tokens (default ``n_ctx``). Inference:
    16-bit weights and a 16-bit KV cache of ``seq_len`` tokens per sequence.
    """
    checks.instance("config", config, GPTConfig)
    checks.positive_int("batch_size", batch_size)
    device_bytes = checks.positive_float("device_bytes", device_bytes)
    seq_len = config.n_ctx if seq_len is None else checks.positive_int("seq_len", seq_len)
    checks.one_of("mode", mode, MODES)
    n_params = count_params(config)
    if mode == "training":
        parts = memory.training_bytes(n_params, optimizer=optimizer, precision=precision)
        parts["activations"] = sum(memory.activation_bytes(config, batch_size, seq_len).values())
    else:
        parts = {"parameters": 2 * n_params, "kv_cache": inference.kv_cache_bytes(
            config.n_layer, config.n_head, config.d_head, seq_len, batch_size=batch_size)}
    total = sum(parts.values())
    dominant = max(parts, key=parts.get)
    share = parts[dominant] / total
    devices = memory.devices_needed(total, device_bytes)
    message = (f"{mode}: {_readable(total)}, {dominant} the largest part ({share:.0%}); "
               + ("fits on one device" if devices == 1 else f"needs at least {devices:,} devices")
               + f" of {_readable(device_bytes)}")
    return CheckResult("memory fits", devices == 1, share, message,
                       parts | {"total": total, "dominant": dominant, "devices": devices})


# --------------------------------------------------------------------------- data against parameters


def data_balance(n_params: float, n_tokens: float, *, target: float = CHINCHILLA_TOKENS_PER_PARAM,
                 tolerance: float = 4.0) -> CheckResult:
    """Tokens per parameter against ``target``: within a factor ``tolerance`` of it is balanced.

    Far fewer tokens than the target and the model is undertrained (the same compute would buy a lower
    loss with a smaller model on more data); far more and it is capacity-limited (a larger model would
    gain more). The value is tokens per parameter.
    """
    n_params = checks.positive_float("n_params", n_params)
    n_tokens = checks.positive_float("n_tokens", n_tokens)
    target = checks.positive_float("target", target)
    tolerance = checks.finite_float("tolerance", tolerance)
    if tolerance < 1:
        raise ValueError(f"tolerance must be a factor >= 1, got {tolerance}")
    ratio = checks.finite_result(n_tokens / n_params, "n_tokens", "n_params")
    if ratio < target / tolerance:
        verdict = "undertrained"
    elif ratio > target * tolerance:
        verdict = "capacity-limited"
    else:
        verdict = "balanced"
    message = (f"{ratio:,.3g} tokens per parameter against {target:g}: {verdict} "
               f"(balanced within a factor {tolerance:g})")
    return CheckResult("data balance", verdict == "balanced", ratio, message, {"verdict": verdict})

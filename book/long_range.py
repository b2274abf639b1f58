"""Chapter 5's measuring tools and experiments: attention's cost against n, and a task that needs long range.

- `peak_tensor_bytes(fn)`: the peak of live tensor memory while ``fn()`` runs. On CUDA, the
  allocator's own counter (``torch.cuda.max_memory_allocated``). On the CPU torch keeps no such
  counter, so we count: a dispatch mode sees every tensor an operator creates, adds its storage's
  bytes, and subtracts them when the storage is freed. That is what the tensors hold, measured,
  not what the process's resident memory (allocator caches, Python) happens to be.
- `measure_attention(fn, n, ...)`: seconds and peak bytes of one attention call on random inputs.
- `copy_task(...)`: a delayed copy, a token stream in which a token repeats the one ``lag`` positions
  back (or is fresh noise); `copy_floor` is the best loss any model can reach on it, `copy_accuracy`
  scores a model on it.
- `copy_runs`, `shakespeare_runs`: lesson 5's tiny GPTs, one per attention variant, for ``book.sweep``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from book import hardware
from book.data import TokenDataset
from book.device import by_profile
from book.model import GPT, GPTConfig
from book.sweep import Run
from book.train import TrainConfig


# --------------------------------------------------------------------------- memory


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the storages that operators create while active, and the peak of that count."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type == "cpu"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            # A view (of an input, or of a storage already counted) allocates nothing.
            if key in self.live or storage.nbytes() == 0 or storage.data_ptr() in inputs:
                continue
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out


def peak_tensor_bytes(fn, device: torch.device | str = "cpu"):
    """Run ``fn()`` once; return (its result, the peak bytes of tensors it allocated, above what existed before).

    CPU: counted by a dispatch mode (every operator's new storages, minus those freed); views and
    inputs cost nothing. Tensors a C++ kernel allocates internally and frees before returning
    (scratch space inside a fused kernel) are invisible to it. CUDA: ``max_memory_allocated``,
    which sees everything the caching allocator hands out.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {device}")
    with _LiveTensorBytes() as tracker:
        result = fn()
    return result, tracker.peak


def random_qkv(n: int, batch: int = 1, heads: int = 4, d_head: int = 64, device="cpu", dtype=torch.float32,
               seed: int = 0):
    """Random q, k, v of shape (batch, heads, n, d_head), reproducible from ``seed``."""
    for name, value in (("n", n), ("batch", batch), ("heads", heads), ("d_head", d_head)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, d_head, generator=generator).to(device, dtype) for _ in range(3))


def measure_attention(fn, n: int, batch: int = 1, heads: int = 4, d_head: int = 64, device="cpu",
                      dtype=torch.float32, min_run_time: float = 0.05, memory: bool = True) -> dict:
    """Median seconds of ``fn(q, k, v)`` on random inputs of length ``n``, and its peak tensor bytes.

    Returns {"n", "seconds", "peak_bytes"} (``peak_bytes`` None when ``memory`` is False).
    """
    q, k, v = random_qkv(n, batch, heads, d_head, device, dtype)
    with torch.no_grad():
        seconds = hardware.measure_seconds(lambda: fn(q, k, v), min_run_time=min_run_time)
        peak = peak_tensor_bytes(lambda: fn(q, k, v), device)[1] if memory else None
    return {"n": n, "seconds": seconds, "peak_bytes": peak}


def crossover(n_values, seconds_a, seconds_b):
    """The first n at which ``a`` is faster than ``b`` and stays faster for every larger n measured; None if never."""
    n_values, faster = list(n_values), [a < b for a, b in zip(seconds_a, seconds_b)]
    if len(n_values) != len(faster) or len(n_values) != len(list(seconds_b)):
        raise ValueError("n_values, seconds_a and seconds_b must have one length")
    for i in range(len(faster)):
        if all(faster[i:]):
            return n_values[i]
    return None


# --------------------------------------------------------------------------- a task that needs long range


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def copy_entropy(n_values: int, p_fresh: float) -> float:
    """Nats per token that no model can predict once the token ``lag`` back is in view.

    The token is a copy with probability 1 - p, else uniform over V (which repeats the copy 1/V of the
    time): the right token has probability 1 - p + p/V, each of the V - 1 others p/V.
    """
    _positive("n_values", n_values)
    if not 0 < p_fresh <= 1:
        raise ValueError(f"p_fresh must be in (0, 1], got {p_fresh!r}")
    hit, miss = 1 - p_fresh + p_fresh / n_values, p_fresh / n_values
    return -hit * math.log(hit) - (n_values - 1) * miss * math.log(miss)


def copy_task(n_values: int = 16, lag: int = 24, p_fresh: float = 0.2, n_train: int = 200_000, n_val: int = 20_000,
              seed: int = 0) -> TokenDataset:
    """A delayed copy: token t repeats token t - ``lag`` with probability 1 - ``p_fresh``, else it is fresh.

    The first ``lag`` tokens, and every fresh token, are uniform over ``n_values`` symbols. Given the
    token ``lag`` back, nothing else in the past tells anything more (the stream is a Markov chain of
    order ``lag`` that looks only at that one position); without it, and without the tokens 2, 3, ...
    lags back (further still), a token is uniform: log V nats.
    So a model beats log V only by attending exactly ``lag`` - 1 positions back from the query (its
    input is token t - 1, its target token t). ``entropy_rate``: `copy_entropy`.
    """
    for name, value in (("n_values", n_values), ("lag", lag), ("n_train", n_train), ("n_val", n_val)):
        _positive(name, value)
    if n_values < 2:
        raise ValueError(f"n_values must be at least 2 (one value carries no information), got {n_values}")
    entropy = copy_entropy(n_values, p_fresh)
    if min(n_train, n_val) <= 2 * lag:
        raise ValueError(f"n_train and n_val must be longer than two lags ({2 * lag} tokens)")
    generator = torch.Generator().manual_seed(seed)

    def stream(n_tokens):
        x = torch.randint(0, n_values, (n_tokens,), generator=generator)
        keep = torch.rand(n_tokens, generator=generator) >= p_fresh
        for start in range(lag, n_tokens, lag):  # one lag-long segment at a time: it copies the one before
            stop = min(start + lag, n_tokens)
            x[start:stop] = torch.where(keep[start:stop], x[start - lag:stop - lag], x[start:stop])
        return x

    return TokenDataset(train=stream(n_train), val=stream(n_val), vocab_size=n_values,
                        name=f"copy-V{n_values}-lag{lag}-p{p_fresh:g}-s{seed}", entropy_rate=entropy)


def copy_shape(data: TokenDataset) -> dict:
    """{"n_values", "lag", "p_fresh"} of a `copy_task` dataset, read from its name."""
    parts = data.name.split("-")
    if len(parts) != 5 or parts[0] != "copy" or not (parts[1].startswith("V") and parts[2].startswith("lag")
                                                      and parts[3].startswith("p")):
        raise ValueError(f"data is not a copy_task dataset (name {data.name!r})")
    return {"n_values": int(parts[1][1:]), "lag": int(parts[2][3:]), "p_fresh": float(parts[3][1:])}


def copy_floor(n_values: int, lag: int, p_fresh: float, n_ctx: int, window: int | None = None) -> float:
    """The lowest mean loss over a training window of ``n_ctx`` predictions that any model can reach.

    Prediction i (input position i, target token i + 1 of the window) can see its source, token
    i + 1 - lag, only if that token is in the window (i >= lag - 1) and, for attention limited to
    the last ``window`` positions (query included), if lag - 1 < window. The others cost log V.
    """
    for name, value in (("lag", lag), ("n_ctx", n_ctx)):
        _positive(name, value)
    if window is not None:
        _positive("window", window)
    entropy = copy_entropy(n_values, p_fresh)
    reachable = window is None or window >= lag
    seen = max(0, n_ctx - (lag - 1)) if reachable else 0
    return (seen * entropy + (n_ctx - seen) * math.log(n_values)) / n_ctx


def copy_ceiling(n_values: int, p_fresh: float) -> float:
    """The best accuracy on predictions whose source is in view: always guess the copy."""
    return 1 - p_fresh + p_fresh / n_values


@torch.no_grad()
def copy_accuracy(model: GPT, data: TokenDataset, n_windows: int = 256) -> float:
    """Fraction of right argmax predictions on validation windows, counted where the source is in the window."""
    _positive("n_windows", n_windows)
    lag, n_ctx = copy_shape(data)["lag"], model.config.n_ctx
    if n_ctx < lag:
        raise ValueError(f"the model's n_ctx={n_ctx} is shorter than the lag ({lag}): no source is ever in view")
    starts = torch.arange(0, data.val.numel() - n_ctx - 1, n_ctx)[:n_windows]
    windows = data.val[starts[:, None] + torch.arange(n_ctx + 1)]
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, _ = model(windows[:, :-1].to(dev))
    model.train(was_training)
    predicted = logits[:, lag - 1:].argmax(dim=-1).cpu()
    return (predicted == windows[:, lag:]).float().mean().item()


# --------------------------------------------------------------------------- lesson 5's runs

COPY_SWEEP = "ch5-does-it-learn-copy"
SHAKESPEARE_SWEEP = "ch5-does-it-learn-shakespeare"
# "naive" and "flash" compute what "sdpa" does (lessons 1-2), only slower: lesson 5 trains the approximations.
LEARNING_VARIANTS = ("sdpa", "window_short", "window_long", "linear", "lsh")


def copy_data() -> TokenDataset:
    """Lesson 5's delayed copy: 16 symbols, a lag of 24 (CPU) or 96 (GPU) positions, 20% fresh tokens."""
    return copy_task(**by_profile(cpu=dict(lag=24), gpu=dict(lag=96, n_train=2_000_000, n_val=100_000)))


def _variant(base: GPTConfig, name: str, short: int, long: int) -> GPTConfig:
    if name == "window_short":
        return replace(base, attention="sliding_window", attention_window=short)
    if name == "window_long":
        return replace(base, attention="sliding_window", attention_window=long)
    if name not in ("sdpa", "naive", "flash", "linear", "lsh"):
        raise ValueError(f"variant must be one of {LEARNING_VARIANTS + ('naive', 'flash')}, got {name!r}")
    return replace(base, attention=name)


def copy_runs(data: TokenDataset, variants=LEARNING_VARIANTS) -> list[Run]:
    """One tiny GPT per attention variant on the copy task; n_ctx is a little more than two lags.

    "window_short" sees 2/3 of the lag (it never reaches the source), "window_long" 4/3 of it.
    LSH uses the library's defaults (8 buckets, one round, chunks of n/8).
    """
    lag = copy_shape(data)["lag"]
    base = GPTConfig(vocab_size=data.vocab_size, **by_profile(
        cpu=dict(n_layer=1, d_model=64, n_head=2, n_ctx=64), gpu=dict(n_layer=2, d_model=128, n_head=4, n_ctx=256)))
    schedule = TrainConfig(steps=by_profile(cpu=150, gpu=1000), batch_size=by_profile(cpu=32, gpu=64), lr=3e-3,
                           eval_every=by_profile(cpu=15, gpu=50), eval_batches=4)
    return [Run(v, _variant(base, v, short=2 * lag // 3, long=lag + lag // 3), schedule) for v in variants]


def shakespeare_runs(vocab_size: int, variants=LEARNING_VARIANTS) -> list[Run]:
    """One small character-level GPT per variant on Shakespeare at a long context: 256 (CPU) or 1024 (GPU).

    The windows are 32 and 128 characters (CPU) or 128 and 512 (GPU).
    """
    _positive("vocab_size", vocab_size)
    n_ctx = by_profile(cpu=256, gpu=1024)
    base = GPTConfig(vocab_size=vocab_size, n_ctx=n_ctx, **by_profile(
        cpu=dict(n_layer=2, d_model=64, n_head=2), gpu=dict(n_layer=4, d_model=256, n_head=4)))
    schedule = TrainConfig(steps=by_profile(cpu=80, gpu=600), batch_size=by_profile(cpu=8, gpu=32), lr=3e-3,
                           eval_every=by_profile(cpu=10, gpu=100), eval_batches=2)
    return [Run(v, _variant(base, v, short=n_ctx // 8, long=n_ctx // 2), schedule) for v in variants]

"""Measuring tools: peak tensor memory, one attention call's time and memory, training throughput.

- ``peak_tensor_bytes(fn)``: the peak of live tensor memory while ``fn()`` runs. On CUDA, the
  allocator's own counter (``torch.cuda.max_memory_allocated``). On the CPU torch keeps no such
  counter, so we count: a dispatch mode sees every tensor an operator creates, adds its storage's
  bytes, and subtracts them when the storage is freed. That is what the tensors hold, measured,
  not what the process's resident memory (allocator caches, Python) happens to be.
- ``measure_attention(fn, n, ...)``: seconds and peak bytes of one attention call on random inputs
  (``random_qkv``); ``crossover`` finds the length from which one is faster for good.
- ``step_throughput(runs)``: training tokens per second of each run's model, timed back to back.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from book import checks, hardware
from book import device as _device
from book import train as _train
from book.model import GPT
from book.sweep import Run

# --------------------------------------------------------------------------- memory


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the storages operators create while active, and the peak of that count.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type == "cpu"
        }
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
    """Run ``fn()`` once; return (its result, the peak bytes of tensors it allocated, above what
    existed before).

    CPU: counted by a dispatch mode (every operator's new storages, minus those freed); views and
    inputs cost nothing. Tensors a C++ kernel allocates internally and frees before returning
    (scratch space inside a fused kernel) are invisible to it. CUDA: ``max_memory_allocated``,
    which sees everything the caching allocator hands out.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
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


def random_qkv(
    n: int,
    batch: int = 1,
    heads: int = 4,
    d_head: int = 64,
    device="cpu",
    dtype=torch.float32,
    seed: int = 0,
):
    """Random q, k, v of shape (batch, heads, n, d_head), reproducible from ``seed``."""
    for name, value in (("n", n), ("batch", batch), ("heads", heads), ("d_head", d_head)):
        checks.positive_int(name, value)
    checks.nonnegative_int("seed", seed)
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, heads, n, d_head, generator=generator).to(device, dtype)
        for _ in range(3)
    )


def measure_attention(
    fn,
    n: int,
    batch: int = 1,
    heads: int = 4,
    d_head: int = 64,
    device="cpu",
    dtype=torch.float32,
    min_run_time: float = 0.05,
    memory: bool = True,
) -> dict:
    """Median seconds of ``fn(q, k, v)`` on random inputs of length ``n``, and its peak tensor bytes

    Returns {"n", "seconds", "peak_bytes"} (``peak_bytes`` None when ``memory`` is False).
    """
    if not callable(fn):
        raise TypeError(f"fn must be an attention function fn(q, k, v), got {type(fn).__name__}")
    min_run_time = checks.positive_float("min_run_time", min_run_time)
    q, k, v = random_qkv(n, batch, heads, d_head, device, dtype)
    with torch.no_grad():
        seconds = hardware.measure_seconds(lambda: fn(q, k, v), min_run_time=min_run_time)
        peak = peak_tensor_bytes(lambda: fn(q, k, v), device)[1] if memory else None
    return {"n": n, "seconds": seconds, "peak_bytes": peak}


def crossover(n_values, seconds_a, seconds_b):
    """The first n at which ``a`` is faster than ``b`` and stays faster for every larger n measured;
    None if never."""
    n_values, faster = list(n_values), [a < b for a, b in zip(seconds_a, seconds_b)]
    if len(n_values) != len(faster) or len(n_values) != len(list(seconds_b)):
        raise ValueError("n_values, seconds_a and seconds_b must have one length")
    for i in range(len(faster)):
        if all(faster[i:]):
            return n_values[i]
    return None


# --------------------------------------------------------------------------- speed


def step_throughput(
    runs: list[Run], dev: torch.device | None = None, min_run_time: float = 1.0, rounds: int = 2
) -> dict[str, float]:
    """Training tokens per second of each run's model: an optimizer step as ``book.train`` takes it.

    Each run's model (freshly initialised) takes forward, backward (cross-entropy plus the MoE
    losses) and an AdamW step on one batch of random tokens of the run's batch size; the median
    step time comes from ``book.hardware.measure_seconds``. The runs are timed one after another,
    ``rounds`` times over, and each keeps its best round, so a busy moment of a shared machine
    does not land on one model only. Unlike a training run's ``tokens_per_s``, no evaluation,
    data loading or first-step warm-up is included.
    """
    if not runs or not all(isinstance(run, Run) for run in runs):
        raise ValueError("runs must be a non-empty list of book.sweep.Run")
    min_run_time = checks.positive_float("min_run_time", min_run_time)
    rounds = checks.positive_int("rounds", rounds)
    dev = dev or _device.device()
    steps = {}
    for run in runs:
        torch.manual_seed(run.train.seed)
        model = GPT(run.model).to(dev).train()
        optimizer = _train.make_optimizer(model, run.train)
        gen = torch.Generator().manual_seed(run.train.seed)
        x, y = (
            torch.randint(
                0, run.model.vocab_size, (run.train.batch_size, run.model.n_ctx), generator=gen
            ).to(dev)
            for _ in range(2)
        )

        def step(model=model, optimizer=optimizer, x=x, y=y):
            with _train._autocast(dev):
                _, loss = model(x, y)
            (loss + model.auxiliary_loss()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[run.name] = (step, run.train.batch_size * run.model.n_ctx)
    best = {name: math.inf for name in steps}
    for _ in range(rounds):
        for name, (step, _tokens) in steps.items():
            best[name] = min(best[name], hardware.measure_seconds(step, min_run_time=min_run_time))
    return {name: tokens / best[name] for name, (_step, tokens) in steps.items()}

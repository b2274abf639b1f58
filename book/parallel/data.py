"""Data parallelism and sharding: DDP, ZeRO-1 and FSDP2 on ``torch.distributed``, checked against one process.

Every rank holds the whole model (DDP) or a shard of it (ZeRO, FSDP) and sees its own slice of the
global batch. After each backward the ranks combine their gradients, so that every rank applies the
update that one process would have applied to the whole batch:

    DDP     all-reduce the gradients (averaged), in buckets, while backward still runs
    ZeRO-1  the same gradients; each rank keeps the optimizer state of its own parameters only,
            updates those, and broadcasts them (``ZeroRedundancyOptimizer``)
    FSDP2   every parameter, gradient and optimizer state is split along dim 0 across ranks;
            parameters are all-gathered before a block runs, gradients reduce-scattered after

``main`` runs all three in one ``torchrun`` and reports what rank 0 measured: the models' distance
from single-process training on the concatenated batch, the bytes DDP hands to all-reduce (counted
by a communication hook), the per-rank bytes of the model state, and the time of an all-reduce
against its size. Launch it with

    book.parallel.launch(book.parallel.data.main, 2, args=(book.parallel.data.spec(cfg),))
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from book import checks, parallel
from book.model import GPT, GPTConfig

# --------------------------------------------------------------------------- counting bytes


class AllReduceCounter:
    """State for ``counting_allreduce_hook``: the bytes and buckets DDP has handed to all-reduce."""

    def __init__(self, process_group=None):
        self.process_group = process_group
        self.bytes = 0
        self.buckets = 0


def counting_allreduce_hook(state: AllReduceCounter, bucket):  # DDP checks unannotated or exact types
    """A DDP communication hook: count the bucket's bytes, then all-reduce it as DDP would (a Future).

    Register it with ``ddp_model.register_comm_hook(AllReduceCounter(), counting_allreduce_hook)``.
    """
    buffer = bucket.buffer()
    state.bytes += buffer.numel() * buffer.element_size()
    state.buckets += 1
    return default_hooks.allreduce_hook(state.process_group, bucket)


def loopback_tx_bytes() -> int | None:
    """Bytes sent so far through the loopback interface (``lo`` in /proc/net/dev); None where unreadable.

    gloo talks TCP over 127.0.0.1, so the difference across a collective is what it put on the wire
    (with TCP/IP headers, and any other process's loopback traffic in the same moment).
    """
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[8])  # receive has 8 fields, then transmit bytes
    except (OSError, ValueError, IndexError):
        return None
    return None


# --------------------------------------------------------------------------- the alpha-beta model


def fit_latency_bandwidth(n_bytes, seconds) -> tuple[float, float]:
    """Fit ``seconds = alpha + n_bytes / bandwidth``; returns (alpha in s, bandwidth in bytes/s).

    Least squares on the relative error (each point weighted by 1 / its time), so that the small
    messages, which fix alpha, count as much as the large ones, which fix the bandwidth.
    """
    x = np.asarray(n_bytes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if x.ndim != 1 or x.shape != t.shape or len(x) < 2:
        raise ValueError(f"n_bytes and seconds must be 1-d and of one length >= 2, got shapes {x.shape} "
                         f"and {t.shape}")
    if not (np.all(np.isfinite(x)) and np.all(x >= 0)):
        raise ValueError(f"n_bytes must be finite and >= 0, got {x.tolist()}")
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise ValueError(f"seconds must be finite and > 0, got {t.tolist()}")
    if len(set(x.tolist())) < 2:
        raise ValueError("n_bytes needs at least two different sizes to fit a line")
    design = np.stack([np.ones_like(x), x], axis=1) / t[:, None]
    (alpha, per_byte), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if alpha <= 0 or per_byte <= 0:
        raise ValueError(f"the times do not fit alpha + bytes / bandwidth with both terms positive "
                         f"(alpha={alpha:.3g} s, 1/bandwidth={per_byte:.3g} s/B)")
    return float(alpha), float(1 / per_byte)


# --------------------------------------------------------------------------- the shard rule


def fsdp_shard_numel(shape, n_ranks: int) -> list[int]:
    """Elements of a parameter of ``shape`` on each rank under FSDP2: dim 0 cut as ``torch.chunk`` does.

    Rank r gets rows [r c, (r + 1) c) with c = ceil(rows / n), clipped to the rows there are: the
    last ranks get fewer (or none). FSDP2 pads each local shard to c rows in memory for its
    collectives, but the parameter, its gradient and its optimizer state hold only these.
    """
    n_ranks = checks.positive_int("n_ranks", n_ranks)
    shape = tuple(shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of non-negative ints, got {shape!r}")
    rows, per_row = shape[0], math.prod(shape[1:])
    c = -(-rows // n_ranks)
    return [max(0, min(rows, (r + 1) * c) - r * c) * per_row for r in range(n_ranks)]


# --------------------------------------------------------------------------- the run's settings


def spec(config: GPTConfig, *, batch_per_rank: int = 2, steps: int = 5, lr: float = 1e-3,
         sizes=(2**10, 2**16, 2**22), repeats: int = 5) -> str:
    """The JSON argument of ``main``: the GPT, each rank's batch, the steps and the timed message sizes.

    ``sizes`` are the all-reduce message sizes in bytes (multiples of 4: fp32 elements), each
    timed ``repeats`` times. The dropout must be 0: the ranks' and one process's masks would differ.
    """
    checks.instance("config", config, GPTConfig)
    if config.dropout:
        raise ValueError(f"config.dropout must be 0 (each rank would draw other masks), got {config.dropout}")
    if config.n_experts:
        raise ValueError(f"config.n_experts must be 0 (a dense model), got {config.n_experts}")
    checks.positive_int("batch_per_rank", batch_per_rank)
    checks.positive_int("steps", steps)
    checks.positive_float("lr", lr)
    checks.positive_int("repeats", repeats)
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"sizes must be a sequence of byte counts, got {sizes!r}")
    sizes = [checks.positive_int("sizes", s) for s in sizes]
    if not sizes or any(s % 4 for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of byte counts divisible by 4, got {sizes}")
    return json.dumps({"config": config.to_dict(), "batch_per_rank": batch_per_rank, "steps": steps,
                       "lr": lr, "sizes": sizes, "repeats": repeats})


# --------------------------------------------------------------------------- inside a rank


def _global_batch(cfg: GPTConfig, n_seqs: int, steps: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same ``steps`` batches of ``n_seqs`` random sequences on every rank (one seed)."""
    gen = torch.Generator().manual_seed(1234)
    shape = (n_seqs, cfg.n_ctx)
    return [(torch.randint(0, cfg.vocab_size, shape, generator=gen).to(device),
             torch.randint(0, cfg.vocab_size, shape, generator=gen).to(device)) for _ in range(steps)]


def _train(model, optimizer, batches) -> list[float]:
    """``len(batches)`` steps of ``model`` on ``batches``; the losses (this rank's)."""
    losses = []
    for x, y in batches:
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _mean_over_ranks(values: list[float], device) -> list[float]:
    """Each value averaged over the ranks (each rank's loss is that of its own slice)."""
    t = torch.tensor(values, device=device, dtype=torch.float64 if device.type == "cpu" else torch.float32)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def _per_rank(value: int, device) -> list[int]:
    """Every rank's ``value``, in rank order."""
    t = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    t[dist.get_rank()] = value
    dist.all_reduce(t)
    return t.tolist()


def _state_bytes(state: dict) -> int:
    """Bytes of an optimizer's per-parameter buffers (Adam's m and v); the scalar step counters excluded."""
    total = 0
    for per_param in state.values():
        for key, value in per_param.items():
            if key != "step" and isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _max_diff(params_a, params_b) -> float:
    return max((a.detach().float() - b.detach().float()).abs().max().item()
               for a, b in zip(params_a, params_b))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeats: int, device) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up, every rank starting together."""
    fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(spec_json: str) -> int:
    """In every rank: train with DDP, ZeRO-1 and FSDP2, measure bytes and all-reduce times; rank 0 reports.

    The report (a dict) holds: ``n_params``; ``ddp`` (losses, the max parameter difference from one
    process on the whole batch after the steps, the first step's largest gradient difference relative
    to the largest gradient, the hook's bytes and buckets per step); in ``ddp``, ``zero1`` and
    ``fsdp2``, the losses (averaged over ranks) and the per-rank bytes of parameters, gradients and
    optimizer state (lists in rank order); in ``zero1`` and ``fsdp2``, the max difference from DDP;
    ``timing`` (message sizes and median seconds; for the model: a step without communication, its
    backward, a DDP step with default buckets and with about 8 smaller ones, the gradients
    all-reduced as one flat tensor and tensor by tensor).
    """
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer

    settings = json.loads(spec_json)
    cfg = GPTConfig(**settings["config"])
    b, steps, lr = settings["batch_per_rank"], settings["steps"], settings["lr"]
    rank, world, device = parallel.init()
    batches = _global_batch(cfg, b * world, steps, device)
    mine = [(x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]) for x, y in batches]
    torch.manual_seed(0)
    base = GPT(cfg).to(device)  # the same initial weights on every rank (one seed)
    n_params = sum(p.numel() for p in base.parameters())  # tied weights counted once, as DDP sends them
    out = {"world": world, "backend": dist.get_backend(), "n_params": n_params, "steps": steps}

    def adamw(params):  # foreach=False: the same per-tensor arithmetic for plain tensors and DTensors
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=False)

    # One process on the concatenated batch: the answer every method must reproduce.
    reference = copy.deepcopy(base)
    ref_losses = _train(reference, adamw(reference.parameters()), batches)

    # The first step's gradients: DDP's average over the ranks' slices against the whole batch's.
    ids = [device.index] if device.type == "cuda" else None
    whole, probe = copy.deepcopy(base), DDP(copy.deepcopy(base), device_ids=ids)
    whole(*batches[0])[1].backward()
    probe(*mine[0])[1].backward()
    scale = max(p.grad.abs().max().item() for p in whole.parameters())
    grad_diff = max((a.grad - b.grad).abs().max().item()
                    for a, b in zip(probe.module.parameters(), whole.parameters())) / scale
    del whole, probe

    # DDP: every rank a replica; the gradients averaged by all-reduce, counted by the hook.
    ddp = DDP(copy.deepcopy(base), device_ids=ids)
    counter = AllReduceCounter()
    ddp.register_comm_hook(counter, counting_allreduce_hook)
    ddp_opt = adamw(ddp.parameters())
    ddp_losses = _mean_over_ranks(_train(ddp, ddp_opt, mine), device)
    replica = sum(p.numel() * p.element_size() for p in ddp.parameters())
    out["ddp"] = {"losses": ddp_losses, "reference_losses": ref_losses,
                  "max_param_diff": _max_diff(ddp.module.parameters(), reference.parameters()),
                  "first_grad_rel_diff": grad_diff,
                  "hook_bytes_per_step": counter.bytes / steps, "buckets_per_step": counter.buckets / steps,
                  "parameters": _per_rank(replica, device), "gradients": _per_rank(replica, device),
                  "optimizer_state": _per_rank(_state_bytes(ddp_opt.state), device)}

    # ZeRO-1: the same DDP gradients; each rank keeps and updates the Adam state of its own parameters.
    zddp = DDP(copy.deepcopy(base), device_ids=ids)
    zero = ZeroRedundancyOptimizer(zddp.parameters(), optimizer_class=torch.optim.AdamW, lr=lr,
                                   weight_decay=0.0, foreach=False)
    zero_losses = _mean_over_ranks(_train(zddp, zero, mine), device)
    out["zero1"] = {"losses": zero_losses,
                    "max_param_diff": _max_diff(zddp.parameters(), ddp.module.parameters()),
                    "parameters": _per_rank(replica, device), "gradients": _per_rank(replica, device),
                    "optimizer_state": _per_rank(_state_bytes(zero.optim.state), device)}
    del zero, zddp

    # FSDP2: each block, then the rest (embeddings, tied head, final LayerNorm), split along dim 0.
    sharded = copy.deepcopy(base)
    shapes = [list(p.shape) for p in sharded.parameters()]
    for block in sharded.blocks:
        fully_shard(block)
    fully_shard(sharded)
    opt = adamw(sharded.parameters())
    fsdp_losses = _mean_over_ranks(_train(sharded, opt, mine), device)
    # zero_grad(set_to_none=True) left no gradients: one more backward, to count what it holds
    _, loss = sharded(*mine[0])
    loss.backward()
    grads_held = sum(_local(p.grad).numel() * p.grad.element_size() for p in sharded.parameters())
    full = [p.full_tensor() for p in sharded.parameters()]
    out["fsdp2"] = {"losses": fsdp_losses, "max_param_diff": _max_diff(full, ddp.module.parameters()),
                    "shapes": shapes,
                    "parameters": _per_rank(sum(_local(p).numel() * 4 for p in sharded.parameters()), device),
                    "gradients": _per_rank(grads_held, device),
                    "optimizer_state": _per_rank(_state_bytes(opt.state), device)}
    del sharded, opt, full

    # Timing: all-reduce against message size; one step's backward against its gradients' all-reduce.
    repeats = settings["repeats"]
    seconds = []
    for size in settings["sizes"]:
        message = torch.ones(size // 4, device=device)
        seconds.append(_time(lambda m=message: dist.all_reduce(m), repeats, device))
    del message
    local = copy.deepcopy(base)
    x, y = mine[0]

    def step(model):
        def run():
            _, loss = model(x, y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    def backward_only():  # the forward pass untimed, before each timed backward
        times = []
        for _ in range(repeats + 1):
            _, loss = local(x, y)
            _sync(device)
            start = time.perf_counter()
            loss.backward()
            _sync(device)
            times.append(time.perf_counter() - start)
            local.zero_grad(set_to_none=True)
        return statistics.median(times[1:])

    # DDP with buckets of about an eighth of the gradients: all-reduces start while backward runs
    small = DDP(copy.deepcopy(base), device_ids=ids, bucket_cap_mb=4 * n_params / 8 / 2**20)
    small_counter = AllReduceCounter()
    small.register_comm_hook(small_counter, counting_allreduce_hook)
    small_seconds = _time(step(small), repeats, device)
    grads = [torch.ones_like(p) for p in local.parameters()]
    flat = torch.ones(n_params, device=device)
    timing = {"sizes": settings["sizes"], "seconds": seconds,
              "local_step": _time(step(local), repeats, device),
              "backward": backward_only(),
              "ddp_step": _time(step(ddp), repeats, device),
              "grad_allreduce": _time(lambda: dist.all_reduce(flat), repeats, device),
              "per_tensor_allreduce": _time(lambda: [dist.all_reduce(g) for g in grads], repeats, device),
              "n_tensors": len(grads), "small_bucket_step": small_seconds,
              "small_buckets_per_step": small_counter.buckets / (repeats + 1)}
    out["timing"] = timing
    parallel.report(out)
    dist.destroy_process_group()
    return 0


def wire_main(n_bytes: str = "4194304", repeats: str = "3") -> int:
    """In every rank: all-reduce ``n_bytes`` over gloo and count the loopback bytes all ranks sent.

    Rank 0 reports the smallest of ``repeats`` counts (others' traffic on ``lo`` only adds to a
    count) next to ``n_ranks * allreduce_bytes(n_bytes, n_ranks)``; None where /proc/net/dev is
    unreadable or the backend is not gloo (NCCL between GPUs does not use the loopback interface).
    """
    n_bytes = checks.positive_int("n_bytes", int(n_bytes))
    repeats = checks.positive_int("repeats", int(repeats))
    rank, world, device = parallel.init()
    buffer = torch.ones(-(-n_bytes // 4), device=device)
    dist.all_reduce(buffer)  # warm-up: the connections are set up before counting
    counts = []
    for _ in range(repeats):
        dist.barrier()
        before = loopback_tx_bytes()
        dist.barrier()  # no rank may start sending before rank 0 has read its counter
        dist.all_reduce(buffer)
        dist.barrier()
        after = loopback_tx_bytes()
        if before is not None and after is not None:
            counts.append(after - before)
    measured = min(counts) if counts and dist.get_backend() == "gloo" else None
    size = buffer.numel() * 4
    parallel.report({"world": world, "backend": dist.get_backend(), "n_bytes": size, "measured": measured,
                     "ring": world * parallel.allreduce_bytes(size, world)})
    dist.destroy_process_group()
    return 0

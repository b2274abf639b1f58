"""Pipeline parallelism: a GPipe schedule over micro-batches (Huang et al., 2019), with explicit send/recv.

Rank r of p holds stage r, a contiguous slice of the model's layers (``split_layers``). A step
splits the batch into m micro-batches and runs, on every rank (``gpipe_step``):

    forward   for each micro-batch: receive its activations from rank r - 1 (rank 0 reads the
              batch), run the stage, send the output to rank r + 1 (the last rank computes the loss)
    backward  for each micro-batch, last first: receive the gradient of the stage's output from
              rank r + 1, run backward, send the gradient of the stage's input to rank r - 1

Gradients accumulate over the micro-batches, so the step equals one on the whole batch. Stage r
cannot start before r micro-batch slots have passed, and waits as long at the end of each phase:
of m + p - 1 slots, it works m. ``gpipe_schedule`` draws that table; the idle fraction,
``book.parallel.pipeline_bubble(p, m)`` = (p - 1) / (m + p - 1), is what ``main`` measures.

(``torch.distributed.pipelining`` has this schedule and others, 1F1B and interleaved, ready made;
here it is written out so that every send and every idle slot can be seen.) Check it:

    torchrun --nproc_per_node=2 -m book.parallel.pipeline

or ``book.parallel.launch("book.parallel.pipeline", 2)``; rank 0 reports what matched and the timings.
"""

from __future__ import annotations

import copy
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from book import checks, parallel
from book.model import Block, GPTConfig


def split_layers(n_layer, n_stages) -> list[range]:
    """The layers of each of ``n_stages`` equal stages: contiguous ranges, stage 0 first."""
    n_layer, n_stages = checks.positive_int("n_layer", n_layer), checks.positive_int("n_stages", n_stages)
    if n_layer % n_stages:
        raise ValueError(f"n_layer={n_layer} must be divisible by n_stages={n_stages} (equal stages)")
    size = n_layer // n_stages
    return [range(s * size, (s + 1) * size) for s in range(n_stages)]


def gpipe_schedule(n_stages, n_microbatches) -> list[list[str]]:
    """Which micro-batch each stage works on in each time slot of a GPipe step: ``table[stage][slot]``.

    "F3" is the forward of micro-batch 3, "B3" its backward, "" an idle slot. A slot is one stage's
    work on one micro-batch; forward and backward phases have m + p - 1 slots each, backward
    taking the micro-batches last first.
    """
    p = checks.positive_int("n_stages", n_stages)
    m = checks.positive_int("n_microbatches", n_microbatches)
    phase = m + p - 1
    table = [[""] * (2 * phase) for _ in range(p)]
    for stage in range(p):
        for i in range(m):
            table[stage][stage + i] = f"F{i}"  # micro-batch i reaches stage s after s slots
            # the last stage turns micro-batch m - 1 - j around in slot phase + j; then up a stage a slot
            j = m - 1 - i
            table[stage][phase + (p - 1 - stage) + j] = f"B{i}"
    return table


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: wait for them before reading the time
    return time.perf_counter()


def gpipe_step(stage: nn.Module, n_microbatches, activation_shape, inputs: torch.Tensor | None = None,
               loss_fn=None) -> tuple[float | None, float]:
    """One GPipe training step of this rank's ``stage``: m forwards, then m backwards; returns (loss, busy).

    Rank 0 splits ``inputs`` (the batch) into ``n_microbatches``; every other rank receives tensors
    of ``activation_shape`` (one micro-batch's activations). The last rank applies ``loss_fn`` to
    its output and returns the batch's loss, the mean of the micro-batches' (others return None).
    Gradients accumulate in ``stage``'s parameters. ``busy`` is the seconds spent computing, the
    waits for other ranks left out. Needs the process group (``book.parallel.init``).
    """
    checks.instance("stage", stage, nn.Module)
    m = checks.positive_int("n_microbatches", n_microbatches)
    rank, world = dist.get_rank(), dist.get_world_size()
    first, last = rank == 0, rank == world - 1
    device = next(stage.parameters()).device
    if first:
        checks.instance("inputs", inputs, torch.Tensor)
        if inputs.shape[0] % m:
            raise ValueError(f"inputs' batch of {inputs.shape[0]} must be divisible by n_microbatches={m}")
        chunks = inputs.chunk(m)
    if last and not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function of the last stage's output, got {loss_fn!r}")
    busy, loss, saved, in_flight = 0.0, 0.0, [], []  # in_flight: isend handles and the tensors they read

    for i in range(m):
        if first:
            x = chunks[i]
        else:
            x = torch.empty(activation_shape, device=device)
            dist.recv(x, rank - 1)
            x.requires_grad_()
        start = _clock(device)
        y = stage(x)
        if last:
            y = loss_fn(y) / m  # so the gradients add up to the whole batch's mean
        busy += _clock(device) - start
        if not last:
            out = y.detach()
            in_flight.append((dist.isend(out, rank + 1), out))  # isend: compute the next one meanwhile
        saved.append((x, y))

    for x, y in reversed(saved):
        grad = None
        if not last:
            grad = torch.empty_like(y)
            dist.recv(grad, rank + 1)
        start = _clock(device)
        y.backward(grad)
        busy += _clock(device) - start
        if not first:
            in_flight.append((dist.isend(x.grad, rank - 1), x.grad))
        if last:
            loss += y.item()
    for work, _ in in_flight:
        work.wait()
    return (loss if last else None), busy


# --------------------------------------------------------------------------- the check and the bubble


def _loss(y: torch.Tensor) -> torch.Tensor:
    return y.square().mean()  # a stand-in loss: any function of the last stage's output would do


def main(n_layer: str = "4", d_model: str = "64", n_head: str = "4", n_ctx: str = "32",
         micro_batch: str = "2", counts: str = "1,2,4,8", repeats: str = "3") -> int:
    """In every rank: a stack of GPT blocks split in equal stages; check a GPipe step; time the bubble.

    The check: loss and every gradient of a pipelined step with max(counts) micro-batches equal one
    process's step on the whole batch. The timing: for each micro-batch count m in ``counts`` (a
    comma-separated string), ``repeats`` steps of m micro-batches of ``micro_batch`` sequences; of
    these, the fastest step's busy seconds, wall-clock seconds and idle fraction, one per stage, in
    the report's ``timings[str(m)]``.
    """
    sizes = {name: checks.positive_int(name, int(value)) for name, value in (
        ("n_layer", n_layer), ("d_model", d_model), ("n_head", n_head), ("n_ctx", n_ctx),
        ("micro_batch", micro_batch), ("repeats", repeats))}
    ms = [checks.positive_int("counts", int(c)) for c in str(counts).split(",")]
    rank, world, device = parallel.init()
    cfg = GPTConfig(n_layer=sizes["n_layer"], d_model=sizes["d_model"], n_head=sizes["n_head"],
                    n_ctx=sizes["n_ctx"], vocab_size=2)
    torch.manual_seed(0)  # the same full model and batch on every rank
    full = nn.Sequential(*(Block(cfg, layer) for layer in range(cfg.n_layer))).to(device)
    mine = split_layers(cfg.n_layer, world)[rank]
    stage = copy.deepcopy(nn.Sequential(*(full[i] for i in mine)))
    b, shape = sizes["micro_batch"], (sizes["micro_batch"], cfg.n_ctx, cfg.d_model)
    batch = torch.randn(max(ms) * b, cfg.n_ctx, cfg.d_model, device=device)

    # the check: one pipelined step against the whole model in one process
    loss, _ = gpipe_step(stage, max(ms), shape, batch, _loss)
    reference = _loss(full(batch))
    reference.backward()

    def close(a, b):
        return bool((a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-7)

    ok = all(close(p.grad, q.grad) for p, q in zip(stage.parameters(),
                                                    nn.Sequential(*(full[i] for i in mine)).parameters()))
    if rank == world - 1:
        ok = ok and close(torch.tensor(loss), reference.detach().cpu())
    n_failed = torch.tensor([int(not ok)], device=device)
    dist.all_reduce(n_failed)
    passed = n_failed.item() == 0

    # the bubble: busy against wall time, per stage, for each micro-batch count; the counts take turns,
    # so that a burst of load from elsewhere on the machine slows one repeat of each rather than all of one
    busy, wall = {m: [] for m in ms}, {m: [] for m in ms}
    for r in range(sizes["repeats"] + 1):  # the first round is a warm-up
        for m in ms:
            stage.zero_grad(set_to_none=True)
            dist.barrier()
            start = _clock(device)
            _, seconds = gpipe_step(stage, m, shape, batch[:m * b], _loss)
            dist.barrier()
            if r:
                busy[m].append(seconds)
                wall[m].append(_clock(device) - start)
    everyone = [None] * world
    dist.all_gather_object(everyone, (busy, wall))
    timings = {}
    for m in ms:  # the least disturbed repeat: the one whose slowest rank was fastest
        best = min(range(sizes["repeats"]), key=lambda i: max(w[m][i] for _, w in everyone))
        timings[str(m)] = {"busy": [u[m][best] for u, _ in everyone],
                           "wall": [w[m][best] for _, w in everyone],
                           "idle": [1 - u[m][best] / w[m][best] for u, w in everyone]}
    parallel.report({"world": world, "backend": dist.get_backend(), **sizes, "counts": ms, "passed": passed,
                     "stages": [list(r) for r in split_layers(cfg.n_layer, world)], "timings": timings})
    return parallel.finish(passed, f"GPipe over {world} stages ({dist.get_backend()}): loss and "
                                   "gradients against one process")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

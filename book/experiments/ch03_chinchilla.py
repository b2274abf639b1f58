"""Chapter 3, compute-optimal training: the IsoFLOP runs and lesson 3.2's schedule run, by profile.

At each compute budget C, GPTs of several widths, each trained on exactly the D = C / (6 N) tokens
that its budget allows, with its cosine schedule matched to its own length. N is always Kaplan's
non-embedding count, ``count_params(cfg, embedding=False)``. The ideas (parabolas, the frontier, the
published fits) are in ``book.chinchilla``.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import replace

import numpy as np

from book import checks
from book.data import TokenDataset
from book.device import by_profile
from book.model import GPTConfig, count_params
from book.sweep import Run, run_sweep
from book.train import TrainConfig

ISOFLOP_SWEEP = "ch3-isoflop"
SCHEDULE_SWEEP = "ch3-schedule"  # lesson 2's extra run
N_LAYER, N_CTX, N_HEAD, BATCH = 2, 64, 2, 16
TOKENS_PER_STEP = BATCH * N_CTX


def lr_for_width(d_model: int) -> float:
    """Peak learning rate of a width-d model: 0.16 / d, at most 0.02.

    Adam's best learning rate falls roughly as 1/width (Yang et al.'s muP); one rate for all widths
    would handicap the small models (too low) or the large ones (too high), and move the IsoFLOP
    minima.
    """
    return min(0.02, 0.16 / checks.positive_int("d_model", d_model))


def isoflop_plan() -> dict[float, tuple[int, ...]]:
    """Compute budgets C (FLOPs, as 6 N D) and the widths trained at each, by profile.

    Each budget's widths bracket its optimum; the window moves up as C grows. At this scale the
    optimum is a few thousand parameters, so the widths are tiny (d = 4 is 496 non-embedding
    parameters).
    """
    cpu = {2e9: (4, 6, 8, 10, 12), 6e9: (6, 8, 10, 12, 14), 2e10: (8, 10, 12, 14, 16)}
    gpu = cpu | {6e10: (10, 12, 14, 16, 20), 2e11: (12, 14, 16, 20, 24)}
    return by_profile(cpu=cpu, gpu=gpu)


def budget_name(C: float) -> str:
    """2e9 -> '2e9': the budget's part of a run name."""
    mantissa, exponent = f"{checks.positive_float('C', C):.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def model_config(d_model: int, vocab_size: int) -> GPTConfig:
    """The chapter's tiny GPT: 2 layers, 2 heads, a context of 64 tokens, width d_model."""
    d_model = checks.positive_int("d_model", d_model)
    if d_model % N_HEAD:
        raise ValueError(f"d_model must be a positive even int (2 heads), got {d_model!r}")
    return GPTConfig(
        n_layer=N_LAYER,
        d_model=d_model,
        n_head=N_HEAD,
        n_ctx=N_CTX,
        vocab_size=checks.positive_int("vocab_size", vocab_size),
    )


def isoflop_run(C: float, d_model: int, vocab_size: int, *, steps: int | None = None) -> Run:
    """One IsoFLOP run: width d_model trained to C = 6 N D, its cosine cycle matched to its length.

    ``steps`` overrides the length (lesson 2's shorter run); the schedule then matches that length.
    """
    C = checks.positive_float("C", C)
    model = model_config(d_model, vocab_size)
    n = count_params(model, embedding=False)
    full = max(1, round(C / (6 * n * TOKENS_PER_STEP)))
    if steps is None:
        steps = full
    elif checks.positive_int("steps", steps) > full:
        raise ValueError(
            f"steps must be an int in [1, {full}] (the budget's length), got {steps!r}"
        )
    name = f"C{budget_name(C)}-d{d_model}" + ("" if steps == full else f"-s{steps}")
    schedule = TrainConfig(
        steps=steps, batch_size=BATCH, lr=lr_for_width(d_model), eval_every=steps, eval_batches=32
    )  # one evaluation at the end, on 32 x 16 windows (32,768 tokens)
    return Run(name, model, schedule)


def isoflop_runs(vocab_size: int) -> list[Run]:
    """Every run of the IsoFLOP sweep, budget by budget, narrow to wide."""
    return [isoflop_run(C, d, vocab_size) for C, widths in isoflop_plan().items() for d in widths]


def schedule_runs(vocab_size: int) -> tuple[Run, Run]:
    """Lesson 3.2's pair: an IsoFLOP run (the middle width of the largest CPU budget) and the same
    model trained for a quarter of the steps with its cosine cycle set to that shorter length. Both
    see the same batches (same seed) and log the training loss over the same windows of steps.

    The long run is part of ``ISOFLOP_SWEEP``; the short one is ``SCHEDULE_SWEEP``'s only run.
    """
    C, widths = 2e10, (8, 10, 12, 14, 16)
    long = isoflop_run(C, widths[1], vocab_size)
    short = isoflop_run(C, widths[1], vocab_size, steps=long.train.steps // 4)
    every = max(
        1, long.train.steps // 50
    )  # the long run's logging interval (TrainConfig's default)
    short = Run(short.name, short.model, replace(short.train, log_every=every))
    return long, short


def isoflop_table(results: list[dict]) -> dict[str, np.ndarray]:
    """The IsoFLOP results as arrays: budget C (nominal), width d, N, D, 6ND, final validation loss.
    """
    if not results:
        raise ValueError("results must not be empty")
    rows = []
    for r in results:
        name = r["run"]
        if not name.startswith("C") or "-d" not in name:
            raise ValueError(f"result {name!r} is not an IsoFLOP run (names look like 'C2e9-d8')")
        rows.append(
            (
                float(name[1 : name.index("-d")]),
                r["model_config"]["d_model"],
                r["params"],
                r["tokens"],
                6.0 * r["params"] * r["tokens"],
                r["final_val_loss"],
            )
        )
    cols = np.array(rows, dtype=float).T
    return dict(zip(("C", "d", "N", "D", "flops", "loss"), cols))


# --------------------------------------------------------------------------- training them in
# parallel


def _work(run: Run) -> float:
    return run.train.steps * (
        1 + run.model.d_model / 16
    )  # at these widths a step's time grows slowly with d


def partition(runs: list[Run], workers: int) -> list[list[Run]]:
    """Share runs among workers so that their loads (steps, weighted by width) are about equal:
    the longest run first, each to the least loaded worker. Empty shares are left out."""
    workers = checks.positive_int("workers", workers)
    if not all(isinstance(run, Run) for run in runs):
        raise TypeError("runs must be a list of book.sweep.Run")
    parts: list[list[Run]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for run in sorted(runs, key=_work, reverse=True):
        i = loads.index(min(loads))
        parts[i].append(run)
        loads[i] += _work(run)
    return [p for p in parts if p]


def _train_part(runs: list[Run], sweep: str) -> list[str]:
    """A worker's share: ``run_sweep`` on one thread. Returns the names trained (the results are on
    disk)."""
    import torch

    from book.experiments import shakespeare

    torch.set_num_threads(1)
    run_sweep(runs, shakespeare(), sweep, progress=False)
    return [r.name for r in runs]


def run_isoflop_sweep(
    runs: list[Run],
    data: TokenDataset,
    sweep: str = ISOFLOP_SWEEP,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """``run_sweep`` over ``runs``, with the missing runs first shared among ``workers`` processes.

    Tiny models use one core badly, so on the CPU two processes of one thread each finish the sweep
    in about half the time. Each process runs ``run_sweep`` on its share (cached, one JSON file per
    run, written atomically, resumable as always); the final ``run_sweep`` in this process reads
    every result back, so the list returned is the one a plain ``run_sweep`` gives.
    ``workers=None``: 2 on the CPU, 1 on CUDA (one process owns the GPU). The processes load
    Shakespeare themselves, so with ``workers > 1`` ``data`` must be
    ``book.experiments.shakespeare()``. An exception in a worker is raised here as a
    ``RuntimeError`` naming its runs, with the worker's exception (and traceback) as its cause; a
    worker that dies outright raises too (``BrokenProcessPool``), it never hangs.
    """
    from concurrent.futures import ProcessPoolExecutor

    from book import device as _device
    from book.sweep import default_results_dir, run_key

    if workers is None:
        workers = 2 if _device.device().type == "cpu" else 1
    workers = checks.positive_int("workers", workers)
    folder = default_results_dir() / sweep
    missing = [r for r in runs if not (folder / f"{r.name}-{run_key(r, data.name)}.json").exists()]
    if workers > 1 and len(missing) > 1:
        if data.name != "shakespeare-char-val0.1":  # the name of book.experiments.shakespeare()
            raise ValueError(
                f"parallel workers load Shakespeare themselves; data is {data.name!r}: "
                "use workers=1"
            )
        parts = partition(missing, workers)
        # spawn, not fork: a forked child of a process that has used torch's threads can deadlock
        with ProcessPoolExecutor(
            len(parts), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = [pool.submit(_train_part, part, sweep) for part in parts]
            for part, future in zip(parts, futures):
                try:
                    future.result()
                except Exception as err:
                    for f in futures:
                        f.cancel()
                    names = ", ".join(r.name for r in part)
                    raise RuntimeError(
                        f"a training worker failed on runs [{names}]: {err!r}"
                    ) from err
    return run_sweep(runs, data, sweep, progress=progress)


def planned_runs() -> dict[str, list[Run]]:
    """Every sweep chapter 3's lessons train, with its runs at the current profile."""
    from book.experiments import shakespeare

    vocab = shakespeare().vocab_size
    return {ISOFLOP_SWEEP: isoflop_runs(vocab), SCHEDULE_SWEEP: [schedule_runs(vocab)[1]]}

"""Chapter 3: compute-optimal training (Hoffmann et al. 2022), from our own IsoFLOP runs.

- the IsoFLOP runs: at each compute budget C, GPTs of several widths, each trained on exactly the
  D = C / (6 N) tokens that its budget allows, with its cosine schedule matched to its own length;
- Approach 2: a parabola in log N per budget, its minimum N_opt(C), and N_opt ∝ C^a fitted across budgets;
- the published fits, each with its source;
- the allocation calculator: a budget in FLOPs or accelerator-hours -> N_opt, D_opt, loss, time;
- the inference-aware optimum (Sardana et al. 2024): the cheapest (N, D) to reach a loss when the model
  will also serve many tokens.

N is always Kaplan's non-embedding count, ``count_params(cfg, embedding=False)``; D counts training tokens.
"""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import minimize_scalar

from book import hardware
from book.device import by_profile
from book.fit import ChinchillaFit
from book.model import GPTConfig, count_params
from book.sweep import Run, run_sweep
from book.train import TrainConfig

ISOFLOP_SWEEP = "ch3-isoflop"
SCHEDULE_SWEEP = "ch3-schedule"  # lesson 2's extra run
N_LAYER, N_CTX, N_HEAD, BATCH = 2, 64, 2, 16
TOKENS_PER_STEP = BATCH * N_CTX


def lr_for_width(d_model: int) -> float:
    """Peak learning rate of a width-d model: 0.16 / d, at most 0.02.

    Adam's best learning rate falls roughly as 1/width (Yang et al.'s muP); one rate for all widths would
    handicap the small models (too low) or the large ones (too high), and move the IsoFLOP minima.
    """
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model <= 0:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    return min(0.02, 0.16 / d_model)


def isoflop_plan() -> dict[float, tuple[int, ...]]:
    """Compute budgets C (FLOPs, as 6 N D) and the widths trained at each, by profile.

    Each budget's widths bracket its optimum; the window moves up as C grows. At this scale the optimum
    is a few thousand parameters, so the widths are tiny (d = 4 is 496 non-embedding parameters).
    """
    cpu = {2e9: (4, 6, 8, 10, 12), 6e9: (6, 8, 10, 12, 14), 2e10: (8, 10, 12, 14, 16)}
    gpu = cpu | {6e10: (10, 12, 14, 16, 20), 2e11: (12, 14, 16, 20, 24)}
    return by_profile(cpu=cpu, gpu=gpu)


def budget_name(C: float) -> str:
    """2e9 -> '2e9': the budget's part of a run name."""
    mantissa, exponent = f"{C:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def model_config(d_model: int, vocab_size: int) -> GPTConfig:
    """The chapter's tiny GPT: 2 layers, 2 heads, a context of 64 tokens, width d_model."""
    if not isinstance(d_model, int) or d_model <= 0 or d_model % N_HEAD:
        raise ValueError(f"d_model must be a positive even int (2 heads), got {d_model!r}")
    return GPTConfig(n_layer=N_LAYER, d_model=d_model, n_head=N_HEAD, n_ctx=N_CTX, vocab_size=vocab_size)


def isoflop_run(C: float, d_model: int, vocab_size: int, *, steps: int | None = None) -> Run:
    """One IsoFLOP run: width d_model trained to C = 6 N D, its cosine cycle matched to its own length.

    ``steps`` overrides the length (lesson 2's shorter run); the schedule then matches that length.
    """
    if not isinstance(C, (int, float)) or not C > 0 or math.isinf(C):
        raise ValueError(f"C must be a positive finite number of FLOPs, got {C!r}")
    model = model_config(d_model, vocab_size)
    n = count_params(model, embedding=False)
    full = max(1, round(C / (6 * n * TOKENS_PER_STEP)))
    if steps is None:
        steps = full
    elif not isinstance(steps, int) or not 0 < steps <= full:
        raise ValueError(f"steps must be an int in [1, {full}], got {steps!r}")
    name = f"C{budget_name(C)}-d{d_model}" + ("" if steps == full else f"-s{steps}")
    schedule = TrainConfig(steps=steps, batch_size=BATCH, lr=lr_for_width(d_model), eval_every=steps,
                           eval_batches=32)  # one evaluation at the end, on 32 x 16 windows (32,768 tokens)
    return Run(name, model, schedule)


def isoflop_runs(vocab_size: int) -> list[Run]:
    """Every run of the IsoFLOP sweep, budget by budget, narrow to wide."""
    return [isoflop_run(C, d, vocab_size) for C, widths in isoflop_plan().items() for d in widths]


def _work(run: Run) -> float:
    return run.train.steps * (1 + run.model.d_model / 16)  # at these widths a step's time grows slowly with d


def partition(runs: list[Run], workers: int) -> list[list[Run]]:
    """Share runs among workers so that their loads (steps, weighted by width) are about equal:
    the longest run first, each to the least loaded worker. Empty shares are left out."""
    parts: list[list[Run]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for run in sorted(runs, key=_work, reverse=True):
        i = loads.index(min(loads))
        parts[i].append(run)
        loads[i] += _work(run)
    return [p for p in parts if p]


def _train_part(runs: list[Run], sweep: str) -> list[str]:
    """A worker's share: ``run_sweep`` on one thread. Returns the names trained (the results are on disk)."""
    import torch

    from book import experiments

    torch.set_num_threads(1)
    run_sweep(runs, experiments.shakespeare(), sweep, progress=False)
    return [r.name for r in runs]


def run_isoflop_sweep(runs: list[Run], data, sweep: str = ISOFLOP_SWEEP, *, workers: int | None = None,
                      progress: bool = True) -> list[dict]:
    """``run_sweep`` over ``runs``, with the missing runs first shared among ``workers`` processes.

    Tiny models use one core badly, so on the CPU two processes of one thread each finish the sweep in
    about half the time. Each process runs ``run_sweep`` on its share (cached, one JSON file per run,
    written atomically, resumable as always); the final ``run_sweep`` in this process reads every result
    back, so the list returned is the one a plain ``run_sweep`` gives. ``workers=None``: 2 on the CPU, 1 on
    CUDA (one process owns the GPU). The processes load Shakespeare themselves, so with ``workers > 1``
    ``data`` must be ``experiments.shakespeare()``. An exception in a worker is raised here as a
    ``RuntimeError`` naming its runs, with the worker's exception (and traceback) as its cause; a worker
    that dies outright raises too (``BrokenProcessPool``), it never hangs.
    """
    from concurrent.futures import ProcessPoolExecutor

    from book import device as _device
    from book.sweep import default_results_dir, run_key

    if workers is None:
        workers = 2 if _device.device().type == "cpu" else 1
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    folder = default_results_dir() / sweep
    missing = [r for r in runs if not (folder / f"{r.name}-{run_key(r, data.name)}.json").exists()]
    if workers > 1 and len(missing) > 1:
        if data.name != "shakespeare-char-val0.1":  # the name of experiments.shakespeare()
            raise ValueError(f"parallel workers load Shakespeare themselves; data is {data.name!r}: use workers=1")
        parts = partition(missing, workers)
        # spawn, not fork: a forked child of a process that has used torch's threads can deadlock
        with ProcessPoolExecutor(len(parts), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_train_part, part, sweep) for part in parts]
            for part, future in zip(parts, futures):
                try:
                    future.result()
                except Exception as err:
                    for f in futures:
                        f.cancel()
                    names = ", ".join(r.name for r in part)
                    raise RuntimeError(f"a training worker failed on runs [{names}]: {err!r}") from err
    return run_sweep(runs, data, sweep, progress=progress)


def isoflop_table(results: list[dict]) -> dict[str, np.ndarray]:
    """The IsoFLOP results as arrays: budget C (nominal), width d, N, D, 6ND and final validation loss."""
    if not results:
        raise ValueError("results must not be empty")
    rows = []
    for r in results:
        name = r["run"]
        if not name.startswith("C") or "-d" not in name:
            raise ValueError(f"result {name!r} is not an IsoFLOP run (names look like 'C2e9-d8')")
        rows.append((float(name[1:name.index("-d")]), r["model_config"]["d_model"], r["params"], r["tokens"],
                     6.0 * r["params"] * r["tokens"], r["final_val_loss"]))
    cols = np.array(rows, dtype=float).T
    return dict(zip(("C", "d", "N", "D", "flops", "loss"), cols))


# --------------------------------------------------------------------------- Approach 2: parabolas


@dataclass(frozen=True)
class Parabola:
    """loss = c2 x^2 + c1 x + c0 with x = log N, fitted to one IsoFLOP profile."""

    c2: float
    c1: float
    c0: float
    N_opt: float
    loss_opt: float
    interior: bool  # is N_opt inside the range of N trained?

    def predict(self, N):
        x = np.log(np.asarray(N, dtype=float))
        return self.c2 * x**2 + self.c1 * x + self.c0


def fit_parabola(N, loss) -> Parabola:
    """Least-squares parabola of loss in log N (Hoffmann et al. 2022, Approach 2) and its minimum."""
    N, loss = np.asarray(N, dtype=float), np.asarray(loss, dtype=float)
    if N.ndim != 1 or N.shape != loss.shape:
        raise ValueError(f"N and loss must be 1-D arrays of the same length, got shapes {N.shape} and {loss.shape}")
    if len(np.unique(N)) < 3:
        raise ValueError(f"a parabola needs at least 3 distinct N, got {len(np.unique(N))}")
    if np.any(~(N > 0)) or not np.all(np.isfinite(loss)):
        raise ValueError("N must be positive and loss finite")
    c2, c1, c0 = np.polyfit(np.log(N), loss, 2)
    if not c2 > 0:
        raise ValueError("the profile is not convex in log N (c2 <= 0): it has no minimum; widen the range of N")
    x = -c1 / (2 * c2)
    return Parabola(float(c2), float(c1), float(c0), float(np.exp(x)), float(c0 - c1**2 / (4 * c2)),
                    bool(np.log(N.min()) < x < np.log(N.max())))


@dataclass(frozen=True)
class Frontier:
    """Approach 2's frontier: N_opt(C) = k C^a and D_opt(C) = C / (6 N_opt) ∝ C^b, b = 1 - a."""

    C: np.ndarray
    N_opt: np.ndarray
    D_opt: np.ndarray
    loss_opt: np.ndarray
    parabolas: list
    a: float
    k: float
    ci: dict = field(default_factory=dict)  # "a", "b": 95% intervals

    @property
    def b(self) -> float:
        return 1.0 - self.a

    @property
    def tokens_per_param(self) -> np.ndarray:
        return self.D_opt / self.N_opt

    def optimal(self, C):
        """(N_opt, D_opt) at budget C by the fitted power law."""
        c = np.asarray(C, dtype=float)
        if np.any(~(c > 0)):
            raise ValueError("C must be positive")
        n = self.k * c**self.a
        return n, c / (6 * n)


def isoflop_frontier(C, N, loss, *, n_bootstrap: int = 1000, seed: int = 0) -> Frontier:
    """Parabola per budget, then a least-squares line through (log C, log N_opt).

    Intervals: a residual bootstrap. Each resample adds the parabola's own residuals, drawn with
    replacement, back onto its fitted curve, refits every parabola and the line; resamples where a
    profile stops being convex are dropped. (Resampling the runs themselves would often leave fewer than
    3 distinct sizes in a budget of 5.)
    """
    C, N, loss = (np.asarray(v, dtype=float) for v in (C, N, loss))
    if not C.shape == N.shape == loss.shape or C.ndim != 1:
        raise ValueError("C, N and loss must be 1-D arrays of the same length")
    budgets = np.unique(C)
    if len(budgets) < 2:
        raise ValueError(f"need at least 2 budgets to fit N_opt ∝ C^a, got {len(budgets)}")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative int, got {n_bootstrap!r}")
    groups = [C == c for c in budgets]
    parabolas = [fit_parabola(N[g], loss[g]) for g in groups]
    n_opt = np.array([p.N_opt for p in parabolas])
    a, log_k = np.polyfit(np.log(budgets), np.log(n_opt), 1)
    samples = []
    rng = np.random.default_rng(seed)
    fitted = [p.predict(N[g]) for p, g in zip(parabolas, groups)]
    resid = [loss[g] - f for g, f in zip(groups, fitted)]
    for _ in range(n_bootstrap):
        try:
            opts = [fit_parabola(N[g], f + rng.choice(r, size=r.size)).N_opt for g, f, r in zip(groups, fitted, resid)]
        except ValueError:
            continue
        samples.append(np.polyfit(np.log(budgets), np.log(opts), 1)[0])
    ci = {}
    if samples:
        lo, hi = np.percentile(samples, [2.5, 97.5])
        ci = {"a": (float(lo), float(hi)), "b": (float(1 - hi), float(1 - lo))}
    return Frontier(C=budgets, N_opt=n_opt, D_opt=budgets / (6 * n_opt), loss_opt=np.array([p.loss_opt for p in parabolas]),
                    parabolas=parabolas, a=float(a), k=float(np.exp(log_k)), ci=ci)


# --------------------------------------------------------------------------- published numbers

# Hoffmann et al. (2022), Appendix D.2, eq. (10): their Approach 3 fit, N counting all parameters.
HOFFMANN_FIT = ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
# Besiroglu et al. (2024, arXiv:2404.10102): the same law refitted to ~240 points they read off Hoffmann et
# al.'s Figure 4 (their reported estimates, with standard errors 0.03, 124.58, 1293.23, 0.02, 0.02).
BESIROGLU_FIT = ChinchillaFit(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
PUBLISHED_FITS = {
    "Hoffmann et al. (2022)": (HOFFMANN_FIT, "hoffmann2022chinchilla, Appendix D.2, eq. (10)"),
    "Besiroglu et al. (2024)": (BESIROGLU_FIT, "besiroglu2024replication, their refitted estimates"),
}
# Hoffmann et al. (2022), Table 2: N_opt ∝ C^a and D_opt ∝ C^b by each approach, and Kaplan et al.'s.
PUBLISHED_EXPONENTS = {
    "Approach 1 (envelope)": (0.50, 0.50),
    "Approach 2 (IsoFLOP)": (0.49, 0.51),
    "Approach 3 (parametric)": (0.46, 0.54),
    "Kaplan et al. (2020)": (0.73, 0.27),
}
# Published models: (parameters, training tokens, source).
MODELS = {
    "GPT-3": (175e9, 300e9, "brown2020gpt3, Table D.1"),
    "Gopher": (280e9, 300e9, "hoffmann2022chinchilla, Table 1; rae2021gopher"),
    "Chinchilla": (70e9, 1.4e12, "hoffmann2022chinchilla, Table 1"),
    "LLaMA-7B": (6.7e9, 1.0e12, "touvron2023llama, Table 2"),
}


# --------------------------------------------------------------------------- the allocation calculator


@dataclass(frozen=True)
class Allocation:
    flops: float
    n_params: float
    n_tokens: float
    loss: float
    accelerator: str | None = None
    mfu: float | None = None
    n_accelerators: int = 1
    accelerator_hours: float | None = None

    @property
    def tokens_per_param(self) -> float:
        return self.n_tokens / self.n_params

    @property
    def days(self) -> float | None:
        """Wall-clock days on ``n_accelerators`` at the stated MFU."""
        return None if self.accelerator_hours is None else self.accelerator_hours / self.n_accelerators / 24


def allocate(fit: ChinchillaFit, flops: float | None = None, *, accelerator_hours: float | None = None,
             accelerator: str = "H100 SXM", dtype: str = "bfloat16", mfu: float = hardware.PALM_540B_MFU,
             n_accelerators: int = 1) -> Allocation:
    """The compute-optimal (N, D) for a budget, the loss ``fit`` predicts there, and the training time.

    Give the budget as ``flops`` (C = 6 N D) or as ``accelerator_hours`` on ``accelerator`` (a name in
    ``book.hardware.ACCELERATORS``) at utilisation ``mfu``: C = hours x 3600 x peak x mfu.
    """
    if not isinstance(fit, ChinchillaFit):
        raise ValueError("fit must be a book.fit.ChinchillaFit")
    if (flops is None) == (accelerator_hours is None):
        raise ValueError("give exactly one of flops or accelerator_hours")
    if not isinstance(n_accelerators, int) or n_accelerators < 1:
        raise ValueError(f"n_accelerators must be a positive int, got {n_accelerators!r}")
    if not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    peak = hardware.accelerator(accelerator).peak(dtype)
    if accelerator_hours is not None:
        if not isinstance(accelerator_hours, (int, float)) or not accelerator_hours > 0:
            raise ValueError(f"accelerator_hours must be positive, got {accelerator_hours!r}")
        flops = accelerator_hours * 3600.0 * peak * mfu
    elif not isinstance(flops, (int, float)) or not flops > 0 or math.isinf(flops):
        raise ValueError(f"flops must be a positive finite number, got {flops!r}")
    n, d = fit.optimal(flops)
    return Allocation(flops=float(flops), n_params=n, n_tokens=d, loss=fit.predict(n, d), accelerator=accelerator,
                      mfu=float(mfu), n_accelerators=n_accelerators,
                      accelerator_hours=hardware.accelerator_hours(float(flops), peak, mfu))


# --------------------------------------------------------------------------- beyond Chinchilla: inference


def tokens_for_loss(fit: ChinchillaFit, N, loss: float):
    """Training tokens a model of N parameters needs to reach ``loss`` by ``fit``; inf where it never does."""
    n = np.asarray(N, dtype=float)
    gap = loss - fit.E - fit.A * n ** (-fit.alpha)  # what the data term may still contribute
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(gap > 0, (fit.B / np.where(gap > 0, gap, 1.0)) ** (1 / fit.beta), np.inf)
    return float(d) if np.ndim(d) == 0 else d


@dataclass(frozen=True)
class CostOptimum:
    n_params: float
    n_tokens: float
    train_flops: float
    inference_flops: float

    @property
    def total_flops(self) -> float:
        return self.train_flops + self.inference_flops


def inference_aware_optimum(fit: ChinchillaFit, loss: float, inference_tokens: float) -> CostOptimum:
    """The (N, D) that reach ``loss`` at the least training + inference compute (Sardana et al. 2024).

    Training costs 6 N D; serving ``inference_tokens`` tokens costs 2 N each (a forward pass). Along the
    curve of constant loss D grows as N shrinks, so the minimum of 6 N D(N) + 2 N D_inf moves to smaller
    N and more tokens as D_inf grows. ``inference_tokens=0`` gives the compute-optimal model for that loss.
    """
    if not isinstance(fit, ChinchillaFit):
        raise ValueError("fit must be a book.fit.ChinchillaFit")
    if not isinstance(loss, (int, float)) or not loss > fit.E:
        raise ValueError(f"loss must be above the fit's irreducible E = {fit.E:.4g}, got {loss!r}")
    if not isinstance(inference_tokens, (int, float)) or inference_tokens < 0 or math.isinf(inference_tokens):
        raise ValueError(f"inference_tokens must be a non-negative finite number, got {inference_tokens!r}")
    log_n_min = math.log(fit.A / (loss - fit.E)) / fit.alpha  # below this N the loss is out of reach

    def cost(log_n):
        n = math.exp(log_n)
        return math.log(6 * n * tokens_for_loss(fit, n, loss) + 2 * n * inference_tokens)

    res = minimize_scalar(cost, bounds=(log_n_min + 1e-9, log_n_min + 30), method="bounded",
                          options={"xatol": 1e-10})
    n = math.exp(res.x)
    d = tokens_for_loss(fit, n, loss)
    return CostOptimum(n_params=n, n_tokens=d, train_flops=6 * n * d, inference_flops=2 * n * inference_tokens)


# --------------------------------------------------------------------------- Approach 1: the envelope


def schedule_runs(vocab_size: int) -> tuple[Run, Run]:
    """Lesson 2's pair: an IsoFLOP run (the middle width of the largest CPU budget) and the same model trained
    for a quarter of the steps with its cosine cycle set to that shorter length. Both see the same batches
    (same seed) and log the training loss over the same windows of steps."""
    C, widths = 2e10, (8, 10, 12, 14, 16)
    long = isoflop_run(C, widths[1], vocab_size)
    short = isoflop_run(C, widths[1], vocab_size, steps=long.train.steps // 4)
    every = max(1, long.train.steps // 50)  # the long run's logging interval (TrainConfig's default)
    short = Run(short.name, short.model, replace(short.train, log_every=every))
    return long, short


def training_curve(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, training loss) of a result's curve.

    Each logged loss is the mean over the steps since the previous point, so it is placed at the middle of
    that window, not at its end: curves logged at different intervals then compare without a lag.
    """
    points = [p for p in result["curve"] if "train_loss" in p]
    ends = np.array([p["tokens"] for p in points], dtype=float)
    starts = np.concatenate([[0.0], ends[:-1]])
    return (starts + ends) / 2, np.array([p["train_loss"] for p in points])


def schedule_gap(short: dict, long: dict) -> float:
    """How much higher the long run's training loss is than the short run's at the end of the short run.

    Both runs must be the same model on the same batches; the long run's curve is interpolated (linearly in
    log tokens) to the short run's last point. Positive: reading the long run there overstates the loss of a
    run trained to that length.
    """
    if short["model_config"] != long["model_config"]:
        raise ValueError("short and long must train the same model")
    if short["tokens"] >= long["tokens"]:
        raise ValueError("short must train on fewer tokens than long")
    ts, ls = training_curve(short)
    tl, ll = training_curve(long)
    return float(np.interp(np.log(ts[-1]), np.log(tl), ll) - ls[-1])


@dataclass(frozen=True)
class Envelope:
    C: np.ndarray  # grid of compute values
    loss: np.ndarray  # the lowest loss any run reached at that compute
    N: np.ndarray  # the size of that run


def envelope(results: list[dict], n_grid: int = 200, start_fraction: float = 0.1) -> Envelope:
    """Hoffmann et al.'s Approach 1: at each compute C on a log grid, the lowest training loss of any run.

    Each run contributes its training curve as loss against C = 6 N (tokens so far), interpolated linearly
    in log C, from ``start_fraction`` of its steps on (the first steps are warm-up). The run reaching the
    lowest loss at C gives N_opt(C). Intermediate points come from runs whose cosine was set for their full
    length: lesson 2 measures what that costs.
    """
    if not results:
        raise ValueError("results must not be empty")
    if not 0 <= start_fraction < 1:
        raise ValueError(f"start_fraction must be in [0, 1), got {start_fraction}")
    curves = []
    for r in results:
        tokens, loss = training_curve(r)
        keep = tokens >= start_fraction * tokens[-1]
        curves.append((r["params"], np.log(6.0 * r["params"] * tokens[keep]), loss[keep]))
    lo = min(c[1][0] for c in curves)
    hi = max(c[1][-1] for c in curves)
    grid = np.linspace(lo, hi, n_grid)
    best = np.full(n_grid, np.inf)
    size = np.full(n_grid, np.nan)
    for n, log_c, loss in curves:
        inside = (grid >= log_c[0]) & (grid <= log_c[-1])
        values = np.interp(grid[inside], log_c, loss)
        better = values < best[inside]
        idx = np.flatnonzero(inside)[better]
        best[idx], size[idx] = values[better], n
    return Envelope(C=np.exp(grid), loss=best, N=size)

"""Compute-optimal training (Hoffmann et al. 2022): IsoFLOP parabolas, published fits, allocation.

- Approach 2: a parabola in log N per budget, its minimum N_opt(C), and N_opt ∝ C^a fitted across
  budgets (``isoflop_frontier``; minima outside the sizes trained are left out by default);
- Approach 1, the envelope of training curves, is chapter 2's tool: ``book.frontier``; here only
  ``schedule_gap``, what reading a long run's curve early costs;
- the published fits, each with its source;
- the allocation calculator: a budget in FLOPs or accelerator-hours -> N_opt, D_opt, loss, time;
- the inference-aware optimum (Sardana et al. 2024): the cheapest (N, D) to reach a loss when the model
  will also serve many tokens.

N is always Kaplan's non-embedding count, ``count_params(cfg, embedding=False)``; D counts training tokens.
Chapter 3's runs (the IsoFLOP sweep) are in ``book.experiments.ch03_chinchilla``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

from book import checks, hardware
from book.fit import ChinchillaFit, bootstrap_intervals
from book.frontier import token_curve

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
    N = np.atleast_1d(checks.positive_array("N", N))
    loss = np.asarray(loss, dtype=float)
    if N.ndim != 1 or N.shape != loss.shape:
        raise ValueError(f"N and loss must be 1-D arrays of the same length, got shapes {N.shape} and {loss.shape}")
    if not np.all(np.isfinite(loss)):
        raise ValueError("loss must be finite")
    if len(np.unique(N)) < 3:
        raise ValueError(f"a parabola needs at least 3 distinct N, got {len(np.unique(N))}")
    c2, c1, c0 = np.polyfit(np.log(N), loss, 2)
    if not c2 > 0:
        raise ValueError("the profile is not convex in log N (c2 <= 0): it has no minimum; widen the range of N")
    x = -c1 / (2 * c2)
    return Parabola(float(c2), float(c1), float(c0), float(np.exp(x)), float(c0 - c1**2 / (4 * c2)),
                    bool(np.log(N.min()) < x < np.log(N.max())))


@dataclass(frozen=True)
class Frontier:
    """Approach 2's frontier: N_opt(C) = k C^a and D_opt(C) = C / (6 N_opt) ∝ C^b, b = 1 - a.

    ``C``, ``N_opt``, ``parabolas`` ... hold the budgets the fit used; ``excluded`` the budgets left out
    because their parabola's minimum lay outside the sizes trained there.
    """

    C: np.ndarray
    N_opt: np.ndarray
    D_opt: np.ndarray
    loss_opt: np.ndarray
    parabolas: list
    a: float
    k: float
    ci: dict = field(default_factory=dict)  # "a", "b": 95% intervals
    excluded: tuple = ()

    @property
    def b(self) -> float:
        return 1.0 - self.a

    @property
    def tokens_per_param(self) -> np.ndarray:
        return self.D_opt / self.N_opt

    def optimal(self, C):
        """(N_opt, D_opt) at budget C by the fitted power law."""
        c = checks.positive_array("C", C)
        n = self.k * c**self.a
        return n, c / (6 * n)


EXTERIOR = ("drop", "keep")


def _budget(c: float) -> str:
    return f"C = {c:.3g}"


def _nearest(N, loss, k: int) -> np.ndarray:
    """A mask of the ``k`` distinct sizes nearest (in log N) to the size of lowest loss."""
    sizes = np.unique(N)
    best = np.log(N[np.argmin(loss)])
    keep = sizes[np.argsort(np.abs(np.log(sizes) - best), kind="stable")[:k]]
    return np.isin(N, keep)


def isoflop_frontier(C, N, loss, *, n_bootstrap: int = 1000, seed: int = 0, exterior: str = "drop",
                     nearest: int | None = None) -> Frontier:
    """Parabola per budget, then a least-squares line through (log C, log N_opt).

    A parabola's minimum outside the sizes trained at its budget is an extrapolation, and one such
    budget can pull the exponent far off (all sizes on one side of the optimum). ``exterior="drop"``
    (default) leaves those budgets out, with a warning naming each; ``"keep"`` fits them anyway.
    ``nearest=k`` (k >= 3) fits each budget's parabola only to the k sizes nearest (in log N) to its
    lowest measured loss: far from its minimum a wide profile is no parabola. A budget with fewer than
    3 distinct sizes raises, naming the budget.

    Intervals: a residual bootstrap (``n_bootstrap`` resamples from ``seed``). Each resample adds the
    parabola's own residuals, drawn with replacement, back onto its fitted curve, refits every parabola
    and the line; resamples where a profile stops being convex are dropped. (Resampling the runs
    themselves would often leave fewer than 3 distinct sizes in a budget of 5.)
    """
    C = np.atleast_1d(checks.positive_array("C", C))
    N = np.atleast_1d(checks.positive_array("N", N))
    loss = np.asarray(loss, dtype=float)
    if not C.shape == N.shape == loss.shape or C.ndim != 1:
        raise ValueError(f"C, N and loss must be 1-D arrays of the same length, got shapes {C.shape}, {N.shape} "
                         f"and {loss.shape}")
    if not np.all(np.isfinite(loss)):
        raise ValueError("loss must be finite")
    checks.nonnegative_int("n_bootstrap", n_bootstrap)
    rng = np.random.default_rng(checks.nonnegative_int("seed", seed))
    checks.one_of("exterior", exterior, EXTERIOR)
    if checks.optional(checks.positive_int, "nearest", nearest) is not None and nearest < 3:
        raise ValueError(f"nearest must be None or an int >= 3 (a parabola needs 3 sizes), got {nearest}")
    budgets = np.unique(C)
    groups = []
    for c in budgets:
        g = C == c
        if len(np.unique(N[g])) < 3:
            raise ValueError(f"budget {_budget(c)} has {len(np.unique(N[g]))} distinct sizes; a parabola needs 3: "
                             "train more sizes at it, or leave it out")
        if nearest is not None:
            rows = np.flatnonzero(g)[_nearest(N[g], loss[g], nearest)]
            g = np.zeros_like(g)
            g[rows] = True
        groups.append(g)
    parabolas = [fit_parabola(N[g], loss[g]) for g in groups]
    excluded = ()
    if exterior == "drop":
        excluded = tuple(float(c) for c, p in zip(budgets, parabolas) if not p.interior)
        for c, p in zip(budgets, parabolas):
            if not p.interior:
                warnings.warn(f"isoflop_frontier: budget {_budget(c)} left out: its parabola's minimum "
                              f"N = {p.N_opt:.3g} lies outside the sizes trained ({N[C == c].min():.3g} to "
                              f"{N[C == c].max():.3g}); train sizes on both sides of it, or pass exterior='keep'",
                              stacklevel=2)
        kept = [i for i, p in enumerate(parabolas) if p.interior]
        budgets, groups, parabolas = budgets[kept], [groups[i] for i in kept], [parabolas[i] for i in kept]
    if len(budgets) < 2:
        raise ValueError(f"need at least 2 budgets to fit N_opt ∝ C^a, got {len(budgets)}"
                         + (f" (left out, minimum outside the sizes: {', '.join(map(_budget, excluded))})"
                            if excluded else ""))
    n_opt = np.array([p.N_opt for p in parabolas])
    a, log_k = np.polyfit(np.log(budgets), np.log(n_opt), 1)
    samples = []
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
        lo, hi = bootstrap_intervals(np.array(samples)[:, None], ["a"])["a"]
        ci = {"a": (lo, hi), "b": (1 - hi, 1 - lo)}
    return Frontier(C=budgets, N_opt=n_opt, D_opt=budgets / (6 * n_opt),
                    loss_opt=np.array([p.loss_opt for p in parabolas]), parabolas=parabolas, a=float(a),
                    k=float(np.exp(log_k)), ci=ci, excluded=excluded)


# --------------------------------------------------------------------------- published numbers

# Hoffmann et al. (2022), Appendix D.2, eq. (10): their Approach 3 fit, N counting all parameters, as printed.
HOFFMANN_FIT = ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
# The same fit unrounded, as the paper's TeX source has it (a = log A = 6.0073404, b = log B = 6.0179186,
# e = log E = 0.5267228). Rounding alpha and beta to two digits lowers the compute-optimal N at Gopher's
# budget by about a fifth. Not in PUBLISHED_FITS (a lesson that wants both shows both by name).
HOFFMANN_FIT_UNROUNDED = ChinchillaFit(E=math.exp(0.5267228), A=math.exp(6.0073404), B=math.exp(6.0179186),
                                       alpha=0.33917084, beta=0.2849083)
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
    _fit(fit)
    if (flops is None) == (accelerator_hours is None):
        raise ValueError("give exactly one of flops or accelerator_hours")
    n_accelerators = checks.positive_int("n_accelerators", n_accelerators)
    mfu = checks.probability("mfu", mfu, open_low=True)
    peak = hardware.accelerator(accelerator).peak(dtype)
    if accelerator_hours is not None:
        accelerator_hours = checks.positive_float("accelerator_hours", accelerator_hours)
        flops = accelerator_hours * 3600.0 * peak * mfu
    else:
        flops = checks.positive_float("flops", flops)
    n, d = fit.optimal(flops)
    return Allocation(flops=float(flops), n_params=n, n_tokens=d, loss=fit.predict(n, d), accelerator=accelerator,
                      mfu=float(mfu), n_accelerators=n_accelerators,
                      accelerator_hours=hardware.accelerator_hours(float(flops), peak, mfu))


# --------------------------------------------------------------------------- beyond Chinchilla: inference


def _fit(fit) -> ChinchillaFit:
    return checks.instance("fit", fit, ChinchillaFit, "a book.fit.ChinchillaFit")


def tokens_for_loss(fit: ChinchillaFit, N, loss: float):
    """Training tokens a model of N parameters needs to reach ``loss`` by ``fit``; inf where it never does."""
    _fit(fit)
    n = np.asarray(checks.positive_array("N", N), dtype=float)
    loss = checks.finite_float("loss", loss)
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
    _fit(fit)
    if not checks.finite_float("loss", loss) > fit.E:
        raise ValueError(f"loss must be above the fit's irreducible E = {fit.E:.4g}, got {loss!r}")
    inference_tokens = checks.nonnegative_float("inference_tokens", inference_tokens)
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


def schedule_gap(short: dict, long: dict) -> float:
    """How much higher the long run's training loss is than the short run's at the end of the short run.

    Both runs must be the same model on the same batches; the long run's curve is interpolated (linearly in
    log tokens) to the short run's last point. Positive: reading the long run there overstates the loss of a
    run trained to that length.
    """
    for name, r in (("short", short), ("long", long)):
        checks.instance(name, r, dict, "a sweep result dict")
    if short["model_config"] != long["model_config"]:
        raise ValueError("short and long must train the same model")
    if short["tokens"] >= long["tokens"]:
        raise ValueError("short must train on fewer tokens than long")
    ts, ls = token_curve(short, "train_loss")
    tl, ll = token_curve(long, "train_loss")
    return float(np.interp(np.log(ts[-1]), np.log(tl), ll) - ls[-1])

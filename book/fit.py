"""Power-law fits for scaling laws, with bootstrap confidence intervals.

The model is L(x) = E + A * x^(-alpha): a loss that falls as a power of x (parameters,
tokens or compute) towards an irreducible floor E. ``irreducible=False`` drops E.

We fit the way Hoffmann et al. (2022) fit their "approach 3": minimise the Huber loss of
log(prediction) - log(y) with L-BFGS-B from a grid of starting points and keep the best.
Working in log space weighs a 1% miss the same at every scale; Huber (delta = 1e-3)
keeps one bad run from dragging the whole curve.

``fit_chinchilla`` fits Hoffmann et al.'s two-variable law L(N, D) = E + A / N^alpha + B / D^beta the same
way, from their grid of 4,500 starting points, optimised all at once (``_batched_lbfgs``) with analytic
gradients; ``ChinchillaFit.optimal(C)`` is the closed-form compute-optimal (N, D).

``fit_exponent`` is the plain least-squares line in log-log, y = k x^p, for a handful of points.

Every fit's intervals come from one bootstrap: ``bootstrap_indices`` draws the resamples (sized and
seeded by the caller), ``bootstrap_intervals`` turns the refitted parameters into percentile intervals.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber

from book import checks

PARAMS = ("E", "A", "alpha")
# Tolerances on the objective in units of delta^2; tighter ones only add evaluations, not accuracy.
LBFGS_OPTIONS = {"ftol": 1e-10, "gtol": 1e-6, "maxiter": 1000}
ALPHA_BOUNDS = (-5.0, 5.0)  # wide enough for any scaling law; keeps bad resamples finite


# --------------------------------------------------------------------------- the bootstrap


def bootstrap_indices(n_points: int, *, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap's resamples: ``n_bootstrap`` arrays of ``n_points`` indices drawn with replacement.

    Drawn one after another from ``np.random.default_rng(seed)``, so the same call gives the same
    resamples. The caller refits on each and may skip a degenerate one (too few distinct points).
    """
    n_points = checks.positive_int("n_points", n_points)
    n_bootstrap = checks.nonnegative_int("n_bootstrap", n_bootstrap)
    rng = np.random.default_rng(checks.nonnegative_int("seed", seed))
    return (rng.integers(0, n_points, size=n_points) for _ in range(n_bootstrap))  # checked now, drawn lazily


def bootstrap_intervals(samples, names, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals, ``{name: (low, high)}``, from refitted parameters (one row per resample).

    Non-finite values in a column are left out; a column with none left gives (NaN, NaN).
    """
    names = tuple(names)
    level = checks.probability("level", level, open_low=True, open_high=True)
    arr = np.asarray(samples, dtype=float).reshape(-1, len(names))
    tail = round(50 * (1 - level), 12)  # 2.5 for 95%, exactly
    out = {}
    for j, name in enumerate(names):
        col = arr[:, j][np.isfinite(arr[:, j])]
        lo, hi = np.percentile(col, [tail, 100 - tail]) if col.size else (np.nan, np.nan)
        out[name] = (float(lo), float(hi))
    return out


@dataclass(frozen=True)
class ExponentFit:
    """y = coefficient * x^exponent by least squares in log-log; ``ci``: the exponent's bootstrap interval."""

    exponent: float
    coefficient: float
    ci: tuple[float, float]
    n_points: int

    def predict(self, x):
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


def fit_exponent(x, y, *, n_bootstrap: int, seed: int) -> ExponentFit:
    """The straight line through (log x, log y): y = k x^p, with a 95% bootstrap interval of p.

    For a few points read off a frontier (a size or a loss per budget), where a floor E would be
    unidentifiable. ``n_bootstrap`` resamples of the points from ``seed``; those with fewer than 2
    distinct x are skipped.
    """
    x, y = _check_points("x", x), _check_points("y", y)
    if len(x) != len(y) or len(np.unique(x)) < 3:
        raise ValueError(f"x and y need the same length and at least 3 distinct x; got lengths {len(x)} "
                         f"and {len(y)}, {len(np.unique(x))} distinct x")
    p, log_k = np.polyfit(np.log(x), np.log(y), 1)
    boot = [np.polyfit(np.log(x[idx]), np.log(y[idx]), 1)[0]
            for idx in bootstrap_indices(len(x), n_bootstrap=n_bootstrap, seed=seed) if len(np.unique(x[idx])) >= 2]
    ci = bootstrap_intervals(np.array(boot, dtype=float).reshape(-1, 1), ["p"])["p"]
    return ExponentFit(exponent=float(p), coefficient=float(np.exp(log_k)), ci=ci, n_points=len(x))


@dataclass(frozen=True, repr=False)
class PowerLawFit:
    """A fitted L(x) = E + A * x^(-alpha); ``ci`` holds 95% bootstrap intervals."""

    E: float
    A: float
    alpha: float
    irreducible: bool
    ci: dict = field(default_factory=dict)  # name -> (low, high); NaN when not bootstrapped
    n_points: int = 0
    loss: float = float("nan")  # sum of Huber losses of the log-residuals at the optimum

    def predict(self, x):
        """L(x) for a scalar or an array of x > 0 (same shape and kind out)."""
        xs = np.asarray(x, dtype=float)
        if np.any(xs <= 0):
            raise ValueError("x must be positive: a power law is defined for x > 0 only")
        y = self.E + self.A * xs ** (-self.alpha)
        return float(y) if np.ndim(x) == 0 else y

    def as_dict(self) -> dict:
        """Plain Python values, ready for JSON."""
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "irreducible": self.irreducible,
                "ci": {k: list(v) for k, v in self.ci.items()}, "n_points": self.n_points, "loss": self.loss}

    def __str__(self) -> str:
        power = f"{self.A:.2e} · x^({-self.alpha:.3g})"
        return f"L(x) = {self.E:.3g} + {power}" if self.irreducible else f"L(x) = {power}"

    def __repr__(self) -> str:
        return f"PowerLawFit({self}, n_points={self.n_points})"


def _check_points(name: str, values) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D array of positive numbers") from None
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite: found NaN or inf")
    if np.any(v <= 0):
        raise ValueError(f"{name} must be positive: power laws are fitted in log space")
    return v


def _check_options(n_bootstrap, delta, seed) -> None:
    """The options both fits share: a bootstrap size (0 = none), the Huber delta and a seed."""
    checks.nonnegative_int("n_bootstrap", n_bootstrap)
    checks.positive_float("delta", delta)
    checks.nonnegative_int("seed", seed)


def _objective(theta, log_u, log_y, delta, irreducible):
    """Huber loss of log-residuals and its gradient, in units of delta^2 (so L-BFGS sees O(1) numbers).

    theta = (e, a, alpha) with E = exp(e), A_ref = exp(a): L = E + A_ref * u^-alpha, u = x / x_ref.
    Without the floor, theta = (a, alpha).
    """
    if irreducible:
        e, a, alpha = theta
        log_pred = np.logaddexp(e, a - alpha * log_u)
    else:
        a, alpha = theta
        log_pred = a - alpha * log_u
    r = log_pred - log_y
    value = huber(delta, r).sum() / delta**2
    g = np.clip(r, -delta, delta) / delta**2  # d huber / dr = clip(r, -delta, delta)
    if irreducible:
        w_floor = np.exp(e - log_pred)  # the floor's share of the prediction = d log_pred / d e
        g_power = g * (1 - w_floor)
        grad = np.array([g @ w_floor, g_power.sum(), -g_power @ log_u])
    else:
        grad = np.array([g.sum(), -g @ log_u])
    return value, grad


def _minimise(starts, log_u, log_y, delta, irreducible, bounds):
    """Run L-BFGS-B from every start; return (theta, objective) of the best."""
    best = None
    for theta0 in starts:
        res = minimize(_objective, theta0, args=(log_u, log_y, delta, irreducible), jac=True,
                       method="L-BFGS-B", bounds=bounds, options=LBFGS_OPTIONS)
        if best is None or res.fun < best.fun:
            best = res
    return best.x, best.fun


def _starts(log_u, log_y, irreducible):
    """Starting points: the least-squares line in log-log, plus a grid over (E, alpha) if there is a floor."""
    slope, intercept = np.polyfit(log_u, log_y, 1)
    if not irreducible:
        return [np.array([intercept, -slope])]  # a Huber fit of a line is convex: one start is enough
    y_min, y_mid = np.exp(log_y.min()), np.exp(np.median(log_y))
    starts = [np.array([np.log(1e-4 * y_min), intercept, -slope])]  # the line, with a negligible floor
    for floor, alpha in itertools.product((1e-4, 0.5, 0.9), (0.05, 0.2, 0.5, 1.0)):
        E = floor * y_min
        # u = 1 is the middle of the data, where E + A_ref should be about the median loss
        starts.append(np.array([np.log(E), np.log(max(y_mid - E, 1e-3 * y_mid)), alpha]))
    return starts


def fit_power_law(x, y, irreducible: bool = True, *, n_bootstrap: int = 200, seed: int = 0,
                  delta: float = 1e-3) -> PowerLawFit:
    """Fit L = E + A * x^(-alpha) (or L = A * x^(-alpha) when ``irreducible=False``) to points (x, y).

    Returns a ``PowerLawFit`` whose ``ci`` holds 95% percentile intervals from ``n_bootstrap``
    resamples of the points (``n_bootstrap=0``: no bootstrap, intervals are NaN).
    Deterministic: the resamples come from ``np.random.default_rng(seed)``.
    """
    x, y = _check_points("x", x), _check_points("y", y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if not isinstance(irreducible, (bool, np.bool_)):
        raise ValueError(f"irreducible must be True or False, got {irreducible!r}")
    n_params = 3 if irreducible else 2
    if len(np.unique(x)) <= n_params:
        raise ValueError(f"x needs more than {n_params} distinct values to fit {n_params} parameters, "
                         f"got {len(np.unique(x))}")
    _check_options(n_bootstrap, delta, seed)

    # Normalise x by its geometric mean: A at x_ref is near the data's scale whatever the units of x.
    log_x_ref = np.log(x).mean()
    log_u, log_y = np.log(x) - log_x_ref, np.log(y)
    # Bounds keep a floor that vanishes (e -> -inf) or a degenerate resample from running off.
    lo, hi = log_y.min(), log_y.max()
    bounds = [(lo - 30, hi + 5), tuple(ALPHA_BOUNDS)]
    if irreducible:
        bounds = [(lo - 30, hi)] + bounds

    def to_params(theta):
        """(e, a, alpha) or (a, alpha) -> (E, A, alpha) in the caller's units of x."""
        e, a, alpha = theta if irreducible else (-np.inf, *theta)
        return np.exp(e), np.exp(a + alpha * log_x_ref), alpha  # A_ref * (x / x_ref)^-alpha = A * x^-alpha

    theta, objective = _minimise(_starts(log_u, log_y, irreducible), log_u, log_y, delta, irreducible, bounds)

    # Bootstrap: refit on resampled points, warm-started from the best fit.
    samples = []
    for idx in bootstrap_indices(len(x), n_bootstrap=n_bootstrap, seed=seed):
        if len(np.unique(x[idx])) <= n_params:
            continue  # too few distinct x to pin down the parameters
        theta_b, _ = _minimise([theta], log_u[idx], log_y[idx], delta, irreducible, bounds)
        samples.append(to_params(theta_b))
    ci = bootstrap_intervals(samples, PARAMS)

    E, A, alpha = to_params(theta)
    return PowerLawFit(E=float(E), A=float(A), alpha=float(alpha), irreducible=bool(irreducible), ci=ci,
                       n_points=len(x), loss=float(objective * delta**2))


# --------------------------------------------------------------------------- Chinchilla's parametric law

CHINCHILLA_PARAMS = ("E", "A", "B", "alpha", "beta")
# Hoffmann et al. (2022), section 3.3: L-BFGS from every point of this grid, keep the best.
# alpha, beta in {0, 0.5, ..., 2}; e = log E in {-1, -0.5, ..., 1}; a = log A, b = log B in {0, 5, ..., 25}.
HOFFMANN_GRID = {"alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5),
                 "e": np.arange(-1.0, 1.01, 0.5), "a": np.arange(0.0, 25.1, 5.0), "b": np.arange(0.0, 25.1, 5.0)}


def hoffmann_grid() -> np.ndarray:
    """The 4,500 starting points (a, b, e, alpha, beta) of Hoffmann et al.'s fit, one per row."""
    g = HOFFMANN_GRID
    return np.array(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])), dtype=float)


def _chinchilla_objective(theta, u, v, log_y, delta, weights=None, chunk=256):
    """Huber loss of log-residuals (units of delta^2) and its gradient, for S parameter vectors at once.

    theta: (S, 5) rows (a_c, b_c, e, alpha, beta), with the log-sizes centred: u = log N - mean, v = log D - mean,
    so L_hat = exp(a_c - alpha u) + exp(b_c - beta v) + exp(e). weights: (S, n) counts per point (a bootstrap
    resample), or None for every point once. Returns values (S,) and gradients (S, 5). The rows are done
    ``chunk`` at a time so that the (chunk, n) temporaries stay in the cache; a row whose terms overflow
    gets an infinite value, which the line search rejects.
    """
    S = theta.shape[0]
    values, grad = np.empty(S), np.empty((S, 5))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for s0 in range(0, S, chunk):
            th = theta[s0:s0 + chunk]
            a, b, e, alpha, beta = (th[:, i:i + 1] for i in range(5))
            w_n = np.exp(a - alpha * u)  # A N^-alpha
            w_d = np.exp(b - beta * v)  # B D^-beta
            w_e = np.exp(e)  # E
            total = w_n + w_d
            total += w_e
            r = np.log(total)
            r -= log_y  # the log-residual
            c = np.clip(r, -delta, delta)  # d huber / d r
            r -= 0.5 * c
            r *= c  # huber(r) = c (r - c / 2): r^2 / 2 inside [-delta, delta], delta (|r| - delta / 2) outside
            if weights is not None:
                w = weights[s0:s0 + chunk]
                r *= w
                c *= w
            values[s0:s0 + chunk] = r.sum(1)
            c /= total  # d log L_hat / d log(term) = term / L_hat
            g_n, g_d = c * w_n, c * w_d
            grad[s0:s0 + chunk, 0] = g_n.sum(1)
            grad[s0:s0 + chunk, 1] = g_d.sum(1)
            grad[s0:s0 + chunk, 2] = c.sum(1) * w_e[:, 0]
            grad[s0:s0 + chunk, 3] = -(g_n @ u)
            grad[s0:s0 + chunk, 4] = -(g_d @ v)
    values /= delta**2
    grad /= delta**2
    values[~np.isfinite(values) | ~np.all(np.isfinite(grad), axis=1)] = np.inf
    return values, grad


def _batched_lbfgs(fun, x0, *, memory=10, max_iter=1000, ftol=1e-10, gtol=1e-6):
    """Minimise S independent problems at once: ``fun(x, rows) -> (f (k,), grad (k, P))`` for the rows given.

    Plain L-BFGS (two-loop recursion) with a backtracking Armijo line search, every array carrying the
    problems along its first axis, so one numpy call does the work of S scipy calls. A problem stops when
    its objective changes by less than ftol * max(1, |f|) or its largest gradient entry is below gtol;
    stopped problems drop out of the batch. Returns (x (S, P), f (S,), iterations).
    """
    x = np.array(x0, dtype=float)
    S, P = x.shape
    rows = np.arange(S)
    f, g = fun(x, rows)
    s_hist, y_hist = np.zeros((memory, S, P)), np.zeros((memory, S, P))
    rho = np.zeros((memory, S))
    gamma = np.ones(S)
    active = np.ones(S, dtype=bool)
    n_iter = 0
    for it in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        n_iter = it + 1
        q = g[idx].copy()
        order = [(it - 1 - k) % memory for k in range(min(it, memory))]  # newest first
        alphas = []
        for k in order:
            a_k = rho[k, idx] * np.einsum("ij,ij->i", s_hist[k, idx], q)
            q -= a_k[:, None] * y_hist[k, idx]
            alphas.append(a_k)
        q *= gamma[idx, None]
        for k, a_k in zip(reversed(order), reversed(alphas)):
            b_k = rho[k, idx] * np.einsum("ij,ij->i", y_hist[k, idx], q)
            q += (a_k - b_k)[:, None] * s_hist[k, idx]
        d = -q
        slope = np.einsum("ij,ij->i", g[idx], d)
        bad = ~(slope < 0)  # not a descent direction: fall back on steepest descent
        d[bad] = -g[idx][bad]
        slope[bad] = -np.einsum("ij,ij->i", g[idx][bad], g[idx][bad])
        step = np.ones(idx.size)
        if it == 0:
            step = np.minimum(1.0, 1.0 / np.maximum(np.abs(g[idx]).max(1), 1e-12))
        # Backtracking: every problem halves its own step until its Armijo condition holds.
        x_new, f_new, g_new = x[idx].copy(), f[idx].copy(), g[idx].copy()
        pending = np.arange(idx.size)
        for _ in range(40):
            trial = x[idx[pending]] + step[pending, None] * d[pending]
            f_t, g_t = fun(trial, idx[pending])
            ok = np.isfinite(f_t) & (f_t <= f[idx[pending]] + 1e-4 * step[pending] * slope[pending])
            done = pending[ok]
            x_new[done], f_new[done], g_new[done] = trial[ok], f_t[ok], g_t[ok]
            pending = pending[~ok]
            if pending.size == 0:
                break
            step[pending] *= 0.5
        moved = np.ones(idx.size, dtype=bool)
        moved[pending] = False  # no step satisfied Armijo: this problem is at its (numerical) minimum
        s_new, y_new = x_new - x[idx], g_new - g[idx]
        sy = np.einsum("ij,ij->i", s_new, y_new)
        valid = sy > 1e-12
        slot = it % memory
        s_hist[slot, idx], y_hist[slot, idx] = s_new, y_new
        rho[slot, idx] = np.where(valid, 1.0 / np.where(valid, sy, 1.0), 0.0)
        yy = np.einsum("ij,ij->i", y_new, y_new)
        gamma[idx] = np.where(valid & (yy > 0), sy / np.where(yy > 0, yy, 1.0), gamma[idx])
        converged = (np.abs(f[idx] - f_new) <= ftol * np.maximum(1.0, np.abs(f_new))) | \
                    (np.abs(g_new).max(1) < gtol) | ~moved
        x[idx], f[idx], g[idx] = x_new, f_new, g_new
        active[idx[converged]] = False
    return x, f, n_iter


@dataclass(frozen=True, repr=False)
class ChinchillaFit:
    """A fitted L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2).

    ``ci`` holds 95% bootstrap intervals of E, A, B, alpha, beta and of the exponents a = beta / (alpha + beta)
    and b = alpha / (alpha + beta) of the compute-optimal frontier, and of G (NaN when not bootstrapped).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    ci: dict = field(default_factory=dict)
    n_points: int = 0
    loss: float = float("nan")  # sum of Huber losses of the log-residuals at the optimum
    n_starts: int = 0
    n_bootstrap: int = 0

    @property
    def intervals(self) -> dict:
        """The 95% bootstrap intervals, ``ci`` by its long name: {"E": (low, high), ..., "a": ..., "G": ...}."""
        return self.ci

    @property
    def a(self) -> float:
        """N_opt ∝ C^a with a = beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ∝ C^b with b = alpha / (alpha + beta) = 1 - a."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        """N_opt(C) = G (C/6)^a: G = (alpha A / (beta B))^(1 / (alpha + beta)) (Hoffmann et al. 2022, eq. 4)."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def predict(self, N, D):
        """L(N, D) for scalars or broadcastable arrays of positive N and D (a float for scalars)."""
        n, d = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        if np.any(~(n > 0)) or np.any(~(d > 0)):
            raise ValueError("N and D must be positive: the law is defined for N > 0 and D > 0 only")
        y = self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)
        return float(y) if np.ndim(y) == 0 else y

    def optimal(self, C):
        """The compute-optimal (N_opt, D_opt) for budget C = 6 N D FLOPs: the minimum of L on that IsoFLOP.

        N_opt = G (C/6)^a and D_opt = (C/6) / N_opt (Hoffmann et al. 2022, eq. 4). Floats for a scalar C.
        """
        c = np.asarray(C, dtype=float)
        if np.any(~(c > 0)) or np.any(~np.isfinite(c)):
            raise ValueError("C must be positive and finite (FLOPs)")
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"the fit has alpha={self.alpha:.3g}, beta={self.beta:.3g}: without both positive, "
                             "L has no minimum on an IsoFLOP")
        n_opt = self.G * (c / 6) ** self.a
        d_opt = (c / 6) / n_opt
        return (float(n_opt), float(d_opt)) if np.ndim(c) == 0 else (n_opt, d_opt)

    def as_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
                "ci": {k: list(v) for k, v in self.ci.items()}, "n_points": self.n_points, "loss": self.loss,
                "n_starts": self.n_starts, "n_bootstrap": self.n_bootstrap}

    def __str__(self) -> str:
        return (f"L(N, D) = {self.E:.3g} + {self.A:.4g} / N^{self.alpha:.3g} + {self.B:.4g} / D^{self.beta:.3g}")

    def __repr__(self) -> str:
        return f"ChinchillaFit({self}, n_points={self.n_points})"


def _check_starts(starts) -> np.ndarray:
    try:
        s = np.asarray(starts, dtype=float)
    except (TypeError, ValueError):
        raise ValueError("starts must be an array of shape (k, 5): rows (a, b, e, alpha, beta)") from None
    if s.ndim != 2 or s.shape[1] != 5 or s.shape[0] == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"starts must be a finite array of shape (k, 5), rows (a, b, e, alpha, beta); "
                         f"got shape {s.shape}")
    return s


def fit_chinchilla(N, D, loss, *, starts=None, n_bootstrap: int = 200, bootstrap_starts: int = 4, seed: int = 0,
                   delta: float = 1e-3) -> ChinchillaFit:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta to runs (N_i, D_i, L_i) as Hoffmann et al. (2022) did.

    Their section 3.3: parametrise E = exp(e), A = exp(a), B = exp(b), predict log L with a log-sum-exp,
    minimise the sum over runs of Huber_delta(log L_hat - log L) (delta = 1e-3) with L-BFGS from every point
    of a grid, and keep the best. ``starts`` (rows a, b, e, alpha, beta) defaults to their 4,500-point grid
    (``hoffmann_grid()``). All starts are optimised at once (``_batched_lbfgs``, analytic gradients), then the
    best is polished with scipy's L-BFGS-B.

    Bootstrap (``n_bootstrap`` resamples of the runs, with replacement; 0 = none): each resample is refitted
    from the full fit's optimum and from the ``bootstrap_starts - 1`` next-best distinct optima of the grid,
    not from the whole grid: those are the basins the data admit, and it makes the intervals 1,000 times
    cheaper. ``ci`` holds the 2.5 and 97.5 percentiles. Deterministic given ``seed``.
    """
    N, D, y = _check_points("N", N), _check_points("D", D), _check_points("loss", loss)
    if not len(N) == len(D) == len(y):
        raise ValueError(f"N, D and loss must have the same length, got {len(N)}, {len(D)} and {len(y)}")
    if len(y) < 6:
        raise ValueError(f"need at least 6 runs to fit 5 parameters, got {len(y)}")
    if len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise ValueError("N and D must each take at least 2 distinct values: the law separates their effects")
    checks.positive_int("bootstrap_starts", bootstrap_starts)
    _check_options(n_bootstrap, delta, seed)
    grid = hoffmann_grid() if starts is None else _check_starts(starts)

    # Centre log N and log D: the same problem (a_c = a - alpha m_N), far better conditioned for L-BFGS.
    m_n, m_d = np.log(N).mean(), np.log(D).mean()
    u, v, log_y = np.log(N) - m_n, np.log(D) - m_d, np.log(y)

    def centre(th):
        th = np.array(th, dtype=float)
        th[:, 0] -= th[:, 3] * m_n
        th[:, 1] -= th[:, 4] * m_d
        return th

    def uncentre(th):
        th = np.array(th, dtype=float)
        th[:, 0] += th[:, 3] * m_n
        th[:, 1] += th[:, 4] * m_d
        return th

    def batch(weights):
        def fun(x, rows):
            return _chinchilla_objective(x, u, v, log_y, delta, None if weights is None else weights[rows])
        return fun

    x, f, _ = _batched_lbfgs(batch(None), centre(grid), ftol=1e-9)  # the best is polished below
    order = np.argsort(np.where(np.isfinite(f), f, np.inf))
    best = x[order[0]]

    def one(theta):
        val, grad = _chinchilla_objective(theta[None], u, v, log_y, delta)
        return val[0], grad[0]

    polished = minimize(one, best, jac=True, method="L-BFGS-B", options={"ftol": 1e-14, "gtol": 1e-9, "maxiter": 2000})
    if polished.fun <= f[order[0]]:
        best = polished.x
    objective = one(best)[0]

    def to_params(th):  # rows (a_c, b_c, e, alpha, beta) -> columns E, A, B, alpha, beta
        raw = uncentre(np.atleast_2d(th))
        with np.errstate(over="ignore"):  # a degenerate bootstrap refit may send A or B to inf
            return np.stack([np.exp(raw[:, 2]), np.exp(raw[:, 0]), np.exp(raw[:, 1]), raw[:, 3], raw[:, 4]], axis=1)

    names = CHINCHILLA_PARAMS + ("a", "b", "G")
    ci = {name: (float("nan"), float("nan")) for name in names}
    if n_bootstrap:
        # The distinct basins among the grid's optima (parameters differing by more than 1%), best first.
        basins = [best]
        for i in order[1:]:
            if len(basins) >= bootstrap_starts or not np.isfinite(f[i]):
                break
            if all(np.max(np.abs(x[i] - bst) / np.maximum(np.abs(bst), 1e-3)) > 0.01 for bst in basins):
                basins.append(x[i])
        counts = np.stack([np.bincount(idx, minlength=len(y))
                           for idx in bootstrap_indices(len(y), n_bootstrap=n_bootstrap, seed=seed)]).astype(float)
        k = len(basins)
        xb, fb, _ = _batched_lbfgs(batch(np.repeat(counts, k, axis=0)), np.tile(np.array(basins), (n_bootstrap, 1)))
        fb = np.where(np.isfinite(fb), fb, np.inf).reshape(n_bootstrap, k)
        chosen = xb.reshape(n_bootstrap, k, 5)[np.arange(n_bootstrap), fb.argmin(1)]
        p = to_params(chosen)
        E_, A_, B_, al, be = p.T
        with np.errstate(all="ignore"):
            a_exp, b_exp = be / (al + be), al / (al + be)
            G_ = (al * A_ / (be * B_)) ** (1 / (al + be))
        ci = bootstrap_intervals(np.column_stack([p, a_exp, b_exp, G_]), names)

    E, A, B, alpha, beta = to_params(best)[0]
    return ChinchillaFit(E=float(E), A=float(A), B=float(B), alpha=float(alpha), beta=float(beta), ci=ci,
                         n_points=len(y), loss=float(objective * delta**2), n_starts=len(grid),
                         n_bootstrap=int(n_bootstrap))

"""Power-law fits for scaling laws, with bootstrap confidence intervals.

The model is L(x) = E + A * x^(-alpha): a loss that falls as a power of x (parameters,
tokens or compute) towards an irreducible floor E. ``irreducible=False`` drops E.

We fit the way Hoffmann et al. (2022) fit their "approach 3": minimise the Huber loss of
log(prediction) - log(y) with L-BFGS-B from a grid of starting points and keep the best.
Working in log space weighs a 1% miss the same at every scale; Huber (delta = 1e-3)
keeps one bad run from dragging the whole curve.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber

PARAMS = ("E", "A", "alpha")
# Tolerances on the objective in units of delta^2; tighter ones only add evaluations, not accuracy.
LBFGS_OPTIONS = {"ftol": 1e-10, "gtol": 1e-6, "maxiter": 1000}
ALPHA_BOUNDS = (-5.0, 5.0)  # wide enough for any scaling law; keeps bad resamples finite


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


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


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
    if not _is_int(n_bootstrap) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer (0 = no bootstrap), got {n_bootstrap!r}")
    if not _is_number(delta) or not 0 < delta < np.inf:
        raise ValueError(f"delta must be a positive finite number, got {delta!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

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
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(x), size=len(x))
        if len(np.unique(x[idx])) <= n_params:
            continue  # too few distinct x to pin down the parameters
        theta_b, _ = _minimise([theta], log_u[idx], log_y[idx], delta, irreducible, bounds)
        samples.append(to_params(theta_b))
    if samples:
        low, high = np.percentile(np.array(samples), [2.5, 97.5], axis=0)
        ci = {name: (float(l), float(h)) for name, l, h in zip(PARAMS, low, high)}
    else:
        ci = {name: (float("nan"), float("nan")) for name in PARAMS}

    E, A, alpha = to_params(theta)
    return PowerLawFit(E=float(E), A=float(A), alpha=float(alpha), irreducible=bool(irreducible), ci=ci,
                       n_points=len(x), loss=float(objective * delta**2))

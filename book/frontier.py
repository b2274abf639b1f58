"""The compute frontier: the lowest loss any run of a sweep reaches with each amount of compute.

Kaplan et al. (2020, Section 6 and Figure 1) read L(C_min) and the compute-efficient model size off
the lower envelope of training curves drawn against compute; Hoffmann et al. (2022, Approach 1) do
the same. Chapters 2 and 3 both use this module.

One definition of compute: C = 6 N D, where N is Kaplan's non-embedding parameter count
(``result["params"]``) and D the training tokens seen so far. It is both papers' convention
(Kaplan's C = 6NBS, Section 2.1; Hoffmann's C = 6ND) and the one chapter 3's IsoFLOP budgets are set
in, so a frontier here and an IsoFLOP budget there are in the same units. It leaves out the
attention scores (``flops_per_token``'s context term, 6 n_layer n_ctx d a token), which is not small
for our tiny widths: read C as "the papers' compute", not as what a FLOP counter measures.

Points: a validation loss sits at the tokens where it was measured; a training loss, the mean over
the steps since the previous point, sits at the middle of that window, so curves logged at different
intervals compare without a lag. Between points a curve is interpolated linearly in log-log (a power
law is a straight line there). The frontier never rises: a run can always be stopped earlier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from book import checks

LOSSES = ("train_loss", "val_loss")


def token_curve(result: dict, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss) of a sweep result's curve, step 0 left out.

    ``loss="train_loss"``: each point at the middle of its logging window; ``"val_loss"``: at the
    evaluation's step.
    """
    checks.one_of("loss", loss, LOSSES)
    if not isinstance(result, dict) or "curve" not in result:
        raise TypeError(
            f"result must be a sweep result dict with a 'curve', got {type(result).__name__}"
        )
    points = [p for p in result["curve"] if loss in p and p["tokens"] > 0]
    if not points:
        raise ValueError(f"run {result.get('run')!r} has no {loss} after step 0")
    ends = np.array([p["tokens"] for p in points], dtype=float)
    values = np.array([p[loss] for p in points], dtype=float)
    if loss == "val_loss":
        return ends, values
    starts = np.concatenate([[0.0], ends[:-1]])
    return (starts + ends) / 2, values


def compute_curve(result: dict, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """(C = 6 N tokens in FLOPs, loss) of a sweep result: ``token_curve`` against compute."""
    tokens, values = token_curve(result, loss)
    return 6.0 * result["params"] * tokens, values


def _interp_loglog(C, x, y):
    """log-log interpolation of the curve (x, y) at C; NaN outside [x.min(), x.max()]."""
    return np.exp(np.interp(np.log(C), np.log(x), np.log(y), left=np.nan, right=np.nan))


def _positive_array(name, values) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.ndim != 1 or arr.size == 0 or np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(
            f"{name} must be a non-empty 1-D array of positive finite numbers, got {values!r}"
        )
    return arr


def _budgets(budgets) -> np.ndarray:
    budgets = _positive_array("budgets", budgets)
    if np.any(np.diff(budgets) <= 0):
        raise ValueError("budgets must be increasing")
    return budgets


def _curves(curves) -> list:
    if not isinstance(curves, (list, tuple)) or not curves:
        raise ValueError("curves must be a non-empty list of (compute, loss) pairs")
    return [
        (_positive_array("a curve's compute", x), _positive_array("a curve's loss", y))
        for x, y in curves
    ]


def lower_envelope(
    curves: list[tuple[np.ndarray, np.ndarray]], budgets
) -> tuple[np.ndarray, np.ndarray]:
    """At each budget (ascending), the lowest loss any curve reaches with at most that much compute,
    and the index of that curve; NaN and -1 below the first curve's start."""
    curves, budgets = _curves(curves), _budgets(budgets)
    table = np.vstack([_interp_loglog(budgets, x, y) for x, y in curves])  # (n_curves, n_budgets)
    loss = np.full(len(budgets), np.nan)
    best = np.full(len(budgets), -1)
    for j in range(len(budgets)):
        col = table[:, j]
        if not np.all(np.isnan(col)):
            k = int(np.nanargmin(col))
            if j == 0 or np.isnan(loss[j - 1]) or col[k] <= loss[j - 1]:
                loss[j], best[j] = col[k], k
                continue
        if j > 0:  # nothing better here: stop the earlier run where it was best
            loss[j], best[j] = loss[j - 1], best[j - 1]
    return loss, best


def optimal_sizes(curves: list[tuple[np.ndarray, np.ndarray]], sizes, budgets) -> np.ndarray:
    """Compute-efficient model size at each budget: the vertex of a parabola in log N through the
    best run and its two neighbours in size (losses read off their curves at that budget). NaN
    where the best run is the smallest or largest (the optimum is outside the sweep) or a
    neighbour's curve does not reach that budget."""
    curves, sizes, budgets = _curves(curves), _positive_array("sizes", sizes), _budgets(budgets)
    if len(sizes) != len(curves):
        raise ValueError(
            f"sizes ({len(sizes)}) and curves ({len(curves)}) must have the same length"
        )
    order = np.argsort(sizes)
    table = np.vstack([_interp_loglog(budgets, *curves[i]) for i in order])
    logn = np.log(sizes[order])
    out = np.full(len(budgets), np.nan)
    for j in range(len(budgets)):
        col = table[:, j]
        if np.all(np.isnan(col)):
            continue
        k = int(np.nanargmin(col))
        if k == 0 or k == len(col) - 1 or np.isnan(col[k - 1]) or np.isnan(col[k + 1]):
            continue
        a, b, _ = np.polyfit(logn[k - 1 : k + 2], np.log(col[k - 1 : k + 2]), 2)
        if a > 0:
            out[j] = math.exp(min(max(-b / (2 * a), logn[k - 1]), logn[k + 1]))
    return out


@dataclass(frozen=True)
class Envelope:
    C: np.ndarray  # a log grid of compute values, FLOPs (6 N D)
    loss: np.ndarray  # the lowest loss any run reached with at most that compute
    N: np.ndarray  # the size of that run (Kaplan's N)


def envelope(
    results: list[dict], loss: str = "train_loss", *, n_grid: int = 200, start_fraction: float = 0.1
) -> Envelope:
    """The frontier of a sweep's results on a log grid of compute (Hoffmann et al.'s Approach 1).

    Each run contributes ``compute_curve(result, loss)`` from ``start_fraction`` of its tokens on
    (the first steps are warm-up); the grid spans the earliest start to the latest end. The run
    reaching the lowest loss at C gives N_opt(C).
    """
    if not isinstance(results, (list, tuple)) or not results:
        raise ValueError("results must be a non-empty list of sweep results")
    n_grid = checks.positive_int("n_grid", n_grid)
    start_fraction = checks.nonnegative_float("start_fraction", start_fraction)
    if start_fraction >= 1:
        raise ValueError(f"start_fraction must be in [0, 1), got {start_fraction}")
    curves = []
    for r in results:
        C, values = compute_curve(r, loss)
        keep = C >= start_fraction * C[-1]
        curves.append((C[keep], values[keep]))
    lo, hi = min(c[0][0] for c in curves), max(c[0][-1] for c in curves)
    grid = np.geomspace(lo, hi, n_grid) if hi > lo else np.array([lo])  # one point: nothing to span
    best_loss, best = lower_envelope(curves, grid)
    sizes = np.array([r["params"] for r in results], dtype=float)
    return Envelope(C=grid, loss=best_loss, N=np.where(best >= 0, sizes[best], np.nan))

"""How big a batch can be: the gradient noise scale and the steps-examples trade-off.

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training"):

- the simple noise scale B_simple = tr(Sigma) / |G|^2 compares the gradient's noise (the trace of
  the per-example covariance) with its signal; below it, doubling the batch nearly halves the
  steps, above it the extra examples are mostly wasted;
- training to a fixed loss at batch size B takes S steps and E = B S examples, and over batch
  sizes the pairs lie on the hyperbola (S / S_min - 1)(E / E_min - 1) = 1, whose critical batch
  size is B_crit = E_min / S_min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import least_squares

from book import checks
from book.fit import bootstrap_indices, bootstrap_intervals


@dataclass(frozen=True)
class NoiseScale:
    """Unbiased estimates of |G|^2 and tr(Sigma) from gradients at two batch sizes, and their ratio."""

    b_simple: float  # tr(Sigma) / |G|^2, in examples; inf when |G|^2's estimate is not positive
    trace_sigma: float
    grad_norm_sq: float
    small_batch: int
    big_batch: int


def gradient_noise_scale(grads: torch.Tensor, batch_size: int) -> NoiseScale:
    """B_simple from ``grads``, k >= 2 rows of flattened gradients, each a mean over ``batch_size`` examples.

    Each row is a gradient at the small batch B_s = batch_size; their mean is one at the big batch
    B_b = k B_s. Since E|G_B|^2 = |G|^2 + tr(Sigma) / B, two batch sizes give both unknowns
    (McCandlish et al. 2018, Appendix A.1):
    |G|^2 = (B_b |G_b|^2 - B_s |G_s|^2) / (B_b - B_s),  tr(Sigma) = (|G_s|^2 - |G_b|^2) / (1/B_s - 1/B_b).
    """
    if not isinstance(grads, torch.Tensor):
        raise TypeError(f"grads must be a torch.Tensor of shape (k, n_params), got {type(grads).__name__}")
    if grads.ndim != 2 or grads.shape[0] < 2 or grads.shape[1] < 1:
        raise ValueError(f"grads must have shape (k >= 2, n_params >= 1), got {tuple(grads.shape)}")
    if not torch.isfinite(grads).all():
        raise ValueError("grads must be finite: a NaN or inf gradient has no noise scale")
    b_small = checks.positive_int("batch_size", batch_size)
    grads = grads.double()
    k = grads.shape[0]
    b_big = k * b_small
    small_sq = grads.pow(2).sum(dim=1).mean().item()
    big_sq = grads.mean(dim=0).pow(2).sum().item()
    grad_norm_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace_sigma = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    b_simple = trace_sigma / grad_norm_sq if grad_norm_sq > 0 else math.inf
    return NoiseScale(b_simple, trace_sigma, grad_norm_sq, b_small, b_big)


def micro_batch_gradients(model: nn.Module, batches) -> torch.Tensor:
    """One flattened gradient of ``model(x, y)``'s loss per (x, y) in ``batches``: a (k, n_params) tensor.

    The model's ``.grad`` fields are left cleared; parameters without a gradient count as zeros.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                               for p in params]).detach().cpu())
    model.zero_grad(set_to_none=True)
    if len(rows) < 2:
        raise ValueError(f"batches must hold at least 2 (x, y) pairs, got {len(rows)}")
    return torch.stack(rows)


@dataclass(frozen=True)
class StepsExamplesFit:
    """S_min, E_min and B_crit = E_min / S_min of the hyperbola (S/S_min - 1)(E/E_min - 1) = 1."""

    s_min: float
    e_min: float
    ci: dict = field(default_factory=dict)  # name -> (low, high) 95% bootstrap interval; NaN if none

    @property
    def b_crit(self) -> float:
        return self.e_min / self.s_min

    def steps(self, batch_size):
        """Steps to the target at ``batch_size``: S = S_min (1 + B_crit / B)."""
        return self.s_min * (1 + self.b_crit / np.asarray(batch_size, dtype=float))

    def examples(self, batch_size):
        """Examples to the target at ``batch_size``: E = E_min (1 + B / B_crit)."""
        return self.e_min * (1 + np.asarray(batch_size, dtype=float) / self.b_crit)


def _check_pairs(steps, examples) -> tuple[np.ndarray, np.ndarray]:
    s, e = np.asarray(steps, dtype=float), np.asarray(examples, dtype=float)
    if s.ndim != 1 or s.shape != e.shape or len(s) < 3:
        raise ValueError(f"steps and examples must be 1-d of one length >= 3, got shapes {s.shape}, {e.shape}")
    for name, v in (("steps", s), ("examples", e)):
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"{name} must be finite and positive, got {v.tolist()}")
    return s, e


def _fit_hyperbola(s: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    # S_min < min S and E_min < min E, by a logistic map of free parameters. The residual
    # log((S/S_min - 1)(E/E_min - 1)) is zero on the curve and treats steps and examples alike.
    s_top, e_top = s.min(), e.min()

    def unpack(theta):
        return s_top / (1 + np.exp(-theta[0])), e_top / (1 + np.exp(-theta[1]))

    def residuals(theta):
        s_min, e_min = unpack(theta)
        return np.log(s / s_min - 1) + np.log(e / e_min - 1)

    best = None
    for t0 in (-2.0, 0.0, 2.0):
        for t1 in (-2.0, 0.0, 2.0):
            res = least_squares(residuals, [t0, t1], method="lm")
            if best is None or res.cost < best.cost:
                best = res
    return unpack(best.x)


def fit_steps_examples(steps, examples, *, n_bootstrap: int = 200, seed: int = 0) -> StepsExamplesFit:
    """Fit (S/S_min - 1)(E/E_min - 1) = 1 to steps and examples measured at >= 3 batch sizes.

    Intervals: ``n_bootstrap`` resamples of the points (seeded by ``seed``; 0 for none), refitted.
    """
    s, e = _check_pairs(steps, examples)
    n_bootstrap = checks.nonnegative_int("n_bootstrap", n_bootstrap)
    checks.nonnegative_int("seed", seed)
    s_min, e_min = _fit_hyperbola(s, e)
    samples = [(*fitted, fitted[1] / fitted[0])
               for idx in bootstrap_indices(len(s), n_bootstrap=n_bootstrap, seed=seed)
               if len(np.unique(s[idx])) >= 3
               for fitted in [_fit_hyperbola(s[idx], e[idx])]]
    names = ["s_min", "e_min", "b_crit"]
    ci = bootstrap_intervals(np.array(samples, dtype=float).reshape(-1, 3), names)
    return StepsExamplesFit(float(s_min), float(e_min), ci)


def steps_to_target(steps, losses, target: float, *, window: int = 3) -> float:
    """The step at which a logged training curve first reaches ``target``; NaN if it never does.

    Each logged loss is a mean over a few steps and still noisy, so a lucky batch would end the
    count early: a centred moving average over ``window`` (odd) points smooths the curve, each
    average placed at its middle step, and the crossing is interpolated linearly between the last
    smoothed point above ``target`` and the first at or below it.
    """
    s, loss = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    window = checks.positive_int("window", window)
    if window % 2 == 0:
        raise ValueError(f"window must be odd (a centred average), got {window}")
    if s.ndim != 1 or s.shape != loss.shape or len(s) < window:
        raise ValueError(f"steps and losses must be 1-d of one length >= window={window}, "
                         f"got shapes {s.shape}, {loss.shape}")
    if not (np.isfinite(s).all() and np.isfinite(loss).all() and (np.diff(s) > 0).all()):
        raise ValueError("steps must be finite and increasing and losses finite")
    target = checks.finite_float("target", target)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    at = s[window // 2: len(s) - window // 2]
    below = np.flatnonzero(smooth <= target)
    if len(below) == 0:
        return math.nan
    i = below[0]
    if i == 0:
        return float(at[0])
    fraction = (smooth[i - 1] - target) / (smooth[i - 1] - smooth[i])
    return float(at[i - 1] + fraction * (at[i] - at[i - 1]))

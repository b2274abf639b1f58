"""Kaplan et al. (2020): their formulas, their published constants, and the fit ``book.fit`` does not do.

Published numbers carry their source (paper, table or equation) next to them: the single-resource laws
(1.1)-(1.3), Table 2's joint L(N, D) and its fit (``fit_kaplan_nd``), the overfitting bound (4.4),
Kaplan's N (``kaplan_n``, equation 2.1), the GPT-3 family (Brown et al. 2020, ``GPT3_FAMILY``), FLOPs
as torch's counter counts them, training sets cut to size (``truncated``) and early stopping.
Chapter 2's sweeps are in ``book.experiments.ch02_kaplan``; the compute frontier, which chapter 3
uses too, in ``book.frontier``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares

from book import checks
from book.data import TokenDataset
from book.fit import bootstrap_indices, bootstrap_intervals
from book.model import GPT, GPTConfig

# --------------------------------------------------------------------------- published constants

# One PF-day: 10^15 FLOP/s for a day (Kaplan et al. 2020, Section 1.3).
PF_DAY = 1e15 * 24 * 3600

# Kaplan et al. (2020), Section 1.2, equations (1.1)-(1.3): each law holds when only that resource limits.
ALPHA_N, N_C = 0.076, 8.8e13  # eq. (1.1): L(N) = (N_c / N)^alpha_N, N non-embedding parameters
ALPHA_D, D_C = 0.095, 5.4e13  # eq. (1.2): L(D) = (D_c / D)^alpha_D, D tokens, early stopping
ALPHA_C_MIN, C_C_MIN_PF_DAYS = 0.050, 3.1e8  # eq. (1.3): L(C_min) = (C_c^min / C_min)^alpha_C^min, PF-days

# Kaplan et al. (2020), Table 2: the joint fit of equation (1.5), L(N, D), whose constants differ slightly
# from (1.1)-(1.2). alpha_N / alpha_D = 0.738 is the "N^0.74" of equation (4.4); 0.076 / 0.095 would be 0.80.
TABLE2 = {"alpha_N": 0.076, "alpha_D": 0.103, "N_c": 6.4e13, "D_c": 1.8e13}

# Equation (4.4): "D >~ (5 x 10^3) N^0.74" keeps overfitting below the 0.02 seed-to-seed spread.
OVERFIT_COEFFICIENT, OVERFIT_EXPONENT = 5e3, 0.74
OVERFIT_TOLERANCE = 0.02  # Section 4.2: "the variation in the loss with different random seeds is roughly 0.02"

# Section 6.1, equations (6.1)-(6.2): compute-efficient allocation, N ~ C_min^0.73, S_min ~ C_min^0.03;
# B_crit ~ C_min^0.24 (Section 6.1). Equation (6.5): the prediction from L(N, S_min), N ~ C_min^0.71
# (eq. 6.4 is the predicted frontier exponent, alpha_C^min ~ 0.054).
N_OPT_EXPONENT, N_OPT_EXPONENT_PREDICTED = 0.73, 0.71
B_OPT_EXPONENT, S_OPT_EXPONENT = 0.24, 0.03

# Equation (1.4), Section 5.1: the critical batch size B_crit(L) = B_* / L^(1 / alpha_B), in tokens.
B_STAR_TOKENS, ALPHA_B = 2e8, 0.21

# Range of Kaplan's models: 768 to 1.5 billion non-embedding parameters (Section 3).
KAPLAN_N_RANGE = (768, 1.5e9)
KAPLAN_VOCAB = 50257  # WebText2, byte-pair encoding (Section 2)


def loss_of_n(N, N_c: float = N_C, alpha_N: float = ALPHA_N):
    """Kaplan's L(N) = (N_c / N)^alpha_N, in nats per token (of *their* tokenizer and data)."""
    N = checks.positive_array("N", N)
    return (checks.positive_float("N_c", N_c) / N) ** checks.positive_float("alpha_N", alpha_N)


def loss_of_d(D, D_c: float = D_C, alpha_D: float = ALPHA_D):
    """Kaplan's L(D) = (D_c / D)^alpha_D."""
    D = checks.positive_array("D", D)
    return (checks.positive_float("D_c", D_c) / D) ** checks.positive_float("alpha_D", alpha_D)


def loss_nd(N, D, N_c: float, D_c: float, alpha_N: float, alpha_D: float):
    """Kaplan's equation (1.5): L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D.

    ``D`` may be ``np.inf`` (no data limit): then L = (N_c / N)^alpha_N.
    """
    N = checks.positive_array("N", N)
    D = _data_sizes(D)
    N_c, D_c, alpha_N, alpha_D = _law_constants(N_c, D_c, alpha_N, alpha_D)
    return ((N_c / N) ** (alpha_N / alpha_D) + D_c / D) ** alpha_D


def overfit_data_bound(N, coefficient: float = OVERFIT_COEFFICIENT, exponent: float = OVERFIT_EXPONENT):
    """Kaplan's equation (4.4): the tokens D >~ 5e3 N^0.74 that keep overfitting within 0.02 of L(N, inf)."""
    coefficient = checks.positive_float("coefficient", coefficient)
    return coefficient * checks.positive_array("N", N) ** checks.positive_float("exponent", exponent)


def overfit_data_bound_from(N, N_c: float, D_c: float, alpha_N: float, alpha_D: float,
                            tolerance: float = OVERFIT_TOLERANCE):
    """The D at which L(N, D) / L(N, inf) - 1 = ``tolerance``, from L(N, D)'s constants.

    From equation (4.3): delta L = (1 + (N / N_c)^(alpha_N / alpha_D) D_c / D)^alpha_D - 1, so
    D = D_c (N / N_c)^(alpha_N / alpha_D) / ((1 + tolerance)^(1 / alpha_D) - 1).
    """
    tolerance = checks.positive_float("tolerance", tolerance)
    N = checks.positive_array("N", N)
    N_c, D_c, alpha_N, alpha_D = _law_constants(N_c, D_c, alpha_N, alpha_D)
    return D_c * (N / N_c) ** (alpha_N / alpha_D) / ((1 + tolerance) ** (1 / alpha_D) - 1)


def _law_constants(N_c, D_c, alpha_N, alpha_D) -> tuple[float, float, float, float]:
    return tuple(checks.positive_float(name, v) for name, v in
                 (("N_c", N_c), ("D_c", D_c), ("alpha_N", alpha_N), ("alpha_D", alpha_D)))


def _data_sizes(D):
    """D > 0 as floats; ``np.inf`` allowed (no data limit)."""
    if isinstance(D, (bool, str)):
        raise TypeError(f"D must be a positive number or array (np.inf allowed), got {D!r}")
    D = np.asarray(D, dtype=float)
    if D.size == 0 or np.any(~(D > 0)):
        raise ValueError(f"D must be positive (np.inf allowed: no data limit), got {D!r}")
    return D


# --------------------------------------------------------------------------- counting


def kaplan_n(n_layer: int, d_model: int, d_ff: int | None = None, d_attn: int | None = None) -> int:
    """Kaplan's equation (2.1): N ~ 2 d_model n_layer (2 d_attn + d_ff) = 12 n_layer d^2 for the standard shape."""
    n_layer, d_model = checks.positive_int("n_layer", n_layer), checks.positive_int("d_model", d_model)
    d_ff = 4 * d_model if d_ff is None else checks.positive_int("d_ff", d_ff)
    d_attn = d_model if d_attn is None else checks.positive_int("d_attn", d_attn)
    return 2 * d_model * n_layer * (2 * d_attn + d_ff)


@dataclass(frozen=True)
class GPT3Model:
    """One row of Brown et al. (2020), Table 2.1, with its row of Table D.1."""

    name: str
    printed: str  # Table 2.1 "n_params", as printed ("125M", "175.0B")
    n_layer: int
    d_model: int
    n_head: int
    d_head: int
    batch_tokens: float  # Table 2.1 batch size, tokens
    lr: float
    params_d1: float  # Table D.1 "Total params", printed in millions
    compute_pf_days: float  # Table D.1 "Total train compute (PF-days)"

    @property
    def n_params(self) -> float:
        """Table 2.1's parameter count as a number."""
        return float(self.printed[:-1]) * {"M": 1e6, "B": 1e9}[self.printed[-1]]

    @property
    def printed_half_unit(self) -> float:
        """Half a unit of Table 2.1's last printed digit: how far the true count may be from the printed one."""
        decimals = len(self.printed[:-1].partition(".")[2])
        return 0.5 * 10.0 ** -decimals * {"M": 1e6, "B": 1e9}[self.printed[-1]]

    def config(self) -> GPTConfig:
        """This model as a ``GPTConfig``: n_ctx 2048, GPT-2's vocabulary of 50,257, d_ff = 4 d_model.

        Heads do not change the parameter count or Kaplan's FLOPs. Where the printed heads do not divide
        d_model (XL: 24 heads, d_model 2048; 13B: 40 heads, 5140) the config uses their greatest common
        divisor (8 and 20 heads; see ``table_inconsistencies``).
        """
        n_head = self.n_head if self.d_model % self.n_head == 0 else math.gcd(self.d_model, self.n_head)
        return GPTConfig(n_layer=self.n_layer, d_model=self.d_model, n_head=n_head, n_ctx=GPT3_N_CTX,
                         vocab_size=GPT3_VOCAB)


GPT3_N_CTX, GPT3_VOCAB, GPT3_TOKENS = 2048, 50257, 300e9  # Brown et al. (2020), Section 2.1 and Table D.1
GPT3_FAMILY = (
    GPT3Model("GPT-3 Small", "125M", 12, 768, 12, 64, 0.5e6, 6.0e-4, 125e6, 2.60),
    GPT3Model("GPT-3 Medium", "350M", 24, 1024, 16, 64, 0.5e6, 3.0e-4, 356e6, 7.42),
    GPT3Model("GPT-3 Large", "760M", 24, 1536, 16, 96, 0.5e6, 2.5e-4, 760e6, 15.8),
    GPT3Model("GPT-3 XL", "1.3B", 24, 2048, 24, 128, 1e6, 2.0e-4, 1320e6, 27.5),
    GPT3Model("GPT-3 2.7B", "2.7B", 32, 2560, 32, 80, 1e6, 1.6e-4, 2650e6, 55.2),
    GPT3Model("GPT-3 6.7B", "6.7B", 32, 4096, 32, 128, 2e6, 1.2e-4, 6660e6, 139.0),
    GPT3Model("GPT-3 13B", "13.0B", 40, 5140, 40, 128, 2e6, 1.0e-4, 12850e6, 268.0),
    GPT3Model("GPT-3 175B", "175.0B", 96, 12288, 96, 128, 3.2e6, 0.6e-4, 174600e6, 3640.0),
)
GPT3_175B = GPT3_FAMILY[-1]  # the one the course compares with most; .config() gives its GPTConfig


def table_inconsistencies(family=GPT3_FAMILY) -> list[str]:
    """Where Table 2.1 disagrees with itself (n_head x d_head vs d_model) or with Table D.1 (parameters differing
    by more than Table 2.1's rounding)."""
    notes = []
    for m in family:
        if m.n_head * m.d_head != m.d_model:
            notes.append(f"{m.name}: n_head x d_head = {m.n_head} x {m.d_head} = {m.n_head * m.d_head:,}, "
                         f"but d_model = {m.d_model:,}")
        if m.d_model % m.n_head:
            notes.append(f"{m.name}: d_model = {m.d_model:,} is not divisible by n_head = {m.n_head}")
        if abs(m.params_d1 - m.n_params) > m.printed_half_unit:
            notes.append(f"{m.name}: Table 2.1 prints {m.printed} parameters, Table D.1 {m.params_d1 / 1e6:,.0f}M")
    return notes


def counted_flops(model: torch.nn.Module, idx: torch.Tensor, training: bool = False) -> int:
    """FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts for one forward (and backward) pass.

    Attention runs through the MATH backend of scaled_dot_product_attention: the counter has no
    formula for the CPU's fused kernel and would count its products as zero.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if idx.ndim != 2:
        raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        logits, _ = model(idx)
        if training:
            logits.float().sum().backward()
    if training:
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def counted_flops_per_token(cfg: GPTConfig, training: bool = False, batch_size: int = 1,
                            device: str = "cpu") -> float:
    """``counted_flops`` for a fresh ``GPT(cfg)`` on ``batch_size`` full windows, per token.

    ``device="meta"`` builds the model without memory or arithmetic (shapes only): the counter still
    counts every product, so even GPT-3 175B can be counted on a laptop.
    """
    batch_size = checks.positive_int("batch_size", batch_size)
    checks.one_of("device", device, ("cpu", "meta", "cuda"))
    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"cfg must be a book.model.GPTConfig, got {type(cfg).__name__}")
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(cfg)
        idx = torch.zeros(batch_size, cfg.n_ctx, dtype=torch.long)
    return counted_flops(model, idx, training=training) / (batch_size * cfg.n_ctx)


def counter_formula_per_token(cfg: GPTConfig, training: bool = False) -> int:
    """What ``counted_flops_per_token`` should give, term by term, for a dense GPT.

    2 x (the weights that multiply: 12 n_layer d^2 for d_ff = 4d) + both attention products
    (QK^T and the weighted sum of V: 4 n_layer n_ctx d, the full square, causal mask or not)
    + the output layer 2 d V. Biases, norms, softmax and GELU are not matrix products: not counted.
    """
    d = cfg.d_model
    forward = 2 * (cfg.n_layer * (4 * d * d + 2 * d * cfg.d_ff)) + 4 * cfg.n_layer * cfg.n_ctx * d \
        + 2 * d * cfg.vocab_size
    return 3 * forward if training else forward


# --------------------------------------------------------------------------- data-limited training


def truncated(data: TokenDataset, n_tokens: int | None, n_blocks: int = 16) -> TokenDataset:
    """``data`` with its training split cut to ``n_tokens`` tokens (``None``: unchanged), validation kept.

    The tokens are ``n_blocks`` contiguous blocks spread evenly over the training text, so a small set
    samples every part of it (the training text is the plays one after another). The name says the
    size, so a sweep keys results on it.
    """
    if n_tokens is None:
        return data
    n_tokens = checks.positive_int("n_tokens", n_tokens)
    if checks.positive_int("n_blocks", n_blocks) and n_tokens % n_blocks:
        raise ValueError(f"n_blocks must be a positive int dividing n_tokens={n_tokens}, got {n_blocks!r}")
    total = data.train.numel()
    if n_tokens > total:
        raise ValueError(f"n_tokens={n_tokens} exceeds the {total} training tokens")
    block = n_tokens // n_blocks
    starts = np.linspace(0, total - block, n_blocks).astype(np.int64)
    train = torch.cat([data.train[s:s + block] for s in starts])
    return TokenDataset(train=train, val=data.val, vocab_size=data.vocab_size,
                        name=f"{data.name}-train{n_tokens}x{n_blocks}", tokenizer=data.tokenizer)


def early_stopped(result: dict) -> dict:
    """The curve point with the lowest validation loss (after step 0): where early stopping keeps the model."""
    points = [p for p in result["curve"] if "val_loss" in p and p["step"] > 0]
    if not points:
        raise ValueError("result has no validation loss after step 0")
    return min(points, key=lambda p: p["val_loss"])


# --------------------------------------------------------------------------- fitting L(N, D)


@dataclass(frozen=True)
class KaplanNDFit:
    """A fitted L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D; ``ci``: 95% bootstrap intervals."""

    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float
    ci: dict
    rms_log_residual: float
    n_points: int

    def predict(self, N, D):
        return loss_nd(N, D, self.N_c, self.D_c, self.alpha_N, self.alpha_D)

    @property
    def data_exponent(self) -> float:
        """alpha_N / alpha_D: the power of N in the data needed to avoid overfitting (Kaplan: 0.74)."""
        return self.alpha_N / self.alpha_D

    def __str__(self) -> str:
        return (f"L(N, D) = [({self.N_c:.3g}/N)^({self.alpha_N:.3g}/{self.alpha_D:.3g}) + {self.D_c:.3g}/D]"
                f"^{self.alpha_D:.3g}")


def _nd_residuals(theta, logN, invD, logL):
    log_nc, log_dc, alpha_n, alpha_d = theta
    ratio = alpha_n / alpha_d
    # log of the bracket: logaddexp(ratio (log N_c - log N), log D_c + log(1/D)); 1/D = 0 drops the data term
    with np.errstate(divide="ignore"):
        data_term = np.where(invD > 0, log_dc + np.log(np.where(invD > 0, invD, 1.0)), -np.inf)
    bracket = np.logaddexp(ratio * (log_nc - logN), data_term)
    return alpha_d * bracket - logL


def fit_kaplan_nd(N, D, L, n_bootstrap: int = 200, seed: int = 0) -> KaplanNDFit:
    """Fit Kaplan's L(N, D) (equation 1.5) to losses ``L`` of models of size ``N`` trained on ``D`` tokens.

    ``D`` may hold ``np.inf`` (the whole text, no data limit). Least squares on log L from a grid of 9
    starting points; 95% intervals from ``n_bootstrap`` resamples of the points, each fitted from the full
    fit's optimum (``seed``: deterministic).
    """
    N = np.atleast_1d(checks.positive_array("N", N))
    D = np.atleast_1d(_data_sizes(D))
    L = np.atleast_1d(checks.positive_array("L", L))
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ValueError(f"N, D and L must be 1-D of the same length, got {N.shape}, {D.shape}, {L.shape}")
    if np.any(~(D > 0)):
        raise ValueError("D must be positive (np.inf allowed)")
    if len(N) < 5 or len(np.unique(N)) < 2 or len(np.unique(D[np.isfinite(D)])) < 2:
        raise ValueError("need at least 5 points, 2 sizes N and 2 finite dataset sizes D")
    checks.nonnegative_int("n_bootstrap", n_bootstrap)
    logN, invD, logL = np.log(N), 1.0 / D, np.log(L)

    grid = [np.array([np.log(np.median(N)) + 5, np.log(np.median(D[np.isfinite(D)])), ratio * alpha_d, alpha_d])
            for alpha_d in (0.1, 0.3, 1.0) for ratio in (0.5, 1.0, 2.0)]

    def solve(idx, starts):
        best = None
        for theta0 in starts:
            try:
                res = least_squares(_nd_residuals, theta0, args=(logN[idx], invD[idx], logL[idx]),
                                    bounds=([-50, -50, 1e-4, 1e-4], [200, 200, 5, 5]), method="trf")
            except ValueError:
                continue
            if best is None or res.cost < best.cost:
                best = res
        return best.x

    theta = solve(np.arange(len(N)), grid)
    resid = _nd_residuals(theta, logN, invD, logL)
    samples = []
    for idx in bootstrap_indices(len(N), n_bootstrap=n_bootstrap, seed=seed):
        if len(np.unique(N[idx])) < 2 or len(np.unique(D[idx][np.isfinite(D[idx])])) < 2:
            continue
        t = solve(idx, [theta])  # each resample starts from the full fit: the same optimum's neighbourhood
        samples.append([math.exp(t[0]), math.exp(t[1]), t[2], t[3]])
    ci = bootstrap_intervals(samples, ("N_c", "D_c", "alpha_N", "alpha_D"))
    return KaplanNDFit(N_c=math.exp(theta[0]), D_c=math.exp(theta[1]), alpha_N=float(theta[2]),
                       alpha_D=float(theta[3]), ci=ci, rms_log_residual=float(np.sqrt(np.mean(resid**2))),
                       n_points=len(N))

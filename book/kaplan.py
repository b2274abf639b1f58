"""Kaplan et al. (2020): their formulas, their published constants, and chapter 2's sweeps.

Published numbers carry their source (paper, table or equation) next to them. The
sweeps are defined once here, so that a lesson, its exercises and later chapters
get the same runs and so the same cached results (``book.sweep``). Their names and
run names are stable:

- ``model_size_sweep(V)`` -> (sweep name, runs): models of several widths, one
  schedule (lesson 2.2, L(N)). On the CPU profile it *is* chapter 1's
  ``book.experiments.first_scaling_sweep`` under its sweep name
  ``"lesson01-first-scaling-law"`` (so its cache is shared); on the GPU profile
  ``"ch2-model-size"``, ten widths spanning 3.0 decades of N.
- ``DATA_SWEEP = "ch2-data-law"``, ``data_sweep(V)``: models of three widths, each
  trained on training sets cut to several sizes D (repeated as needed) and on the
  whole text, with frequent evaluation for early stopping (lesson 2.3, L(D) and L(N, D)).
- ``SHAPE_SWEEP = "ch2-shape"``, ``shape_sweep(V)``: models of about the same N and
  different depth, width and heads (lesson 2.5).

Fits that ``book.fit`` does not do (Kaplan's combined L(N, D)) and the compute
frontier (lower envelope of training curves, optimal size per budget) live here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares

from book import experiments
from book.data import TokenDataset
from book.device import by_profile
from book.model import GPT, GPTConfig, flops_per_token
from book.sweep import Run, run_sweep
from book.train import TrainConfig

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
# B_crit ~ C_min^0.24 (Section 6.1). Equation (6.4): the prediction from L(N, S_min), N ~ C_min^0.71.
N_OPT_EXPONENT, N_OPT_EXPONENT_PREDICTED = 0.73, 0.71
B_OPT_EXPONENT, S_OPT_EXPONENT = 0.24, 0.03

# Range of Kaplan's models: 768 to 1.5 billion non-embedding parameters (Section 3).
KAPLAN_N_RANGE = (768, 1.5e9)
KAPLAN_VOCAB = 50257  # WebText2, byte-pair encoding (Section 2)


def loss_of_n(N, N_c: float = N_C, alpha_N: float = ALPHA_N):
    """Kaplan's L(N) = (N_c / N)^alpha_N, in nats per token (of *their* tokenizer and data)."""
    N = _positive("N", N)
    return (N_c / N) ** alpha_N


def loss_of_d(D, D_c: float = D_C, alpha_D: float = ALPHA_D):
    """Kaplan's L(D) = (D_c / D)^alpha_D."""
    D = _positive("D", D)
    return (D_c / D) ** alpha_D


def loss_nd(N, D, N_c: float, D_c: float, alpha_N: float, alpha_D: float):
    """Kaplan's equation (1.5): L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D.

    ``D`` may be ``np.inf`` (no data limit): then L = (N_c / N)^alpha_N.
    """
    N = _positive("N", N)
    D = np.asarray(D, dtype=float)
    if np.any(~(D > 0)):
        raise ValueError("D must be positive (np.inf allowed: no data limit)")
    return ((N_c / N) ** (alpha_N / alpha_D) + D_c / D) ** alpha_D


def overfit_data_bound(N, coefficient: float = OVERFIT_COEFFICIENT, exponent: float = OVERFIT_EXPONENT):
    """Kaplan's equation (4.4): the tokens D >~ 5e3 N^0.74 that keep overfitting within 0.02 of L(N, inf)."""
    return coefficient * _positive("N", N) ** exponent


def overfit_data_bound_from(N, N_c: float, D_c: float, alpha_N: float, alpha_D: float,
                            tolerance: float = OVERFIT_TOLERANCE):
    """The D at which L(N, D) / L(N, inf) - 1 = ``tolerance``, from L(N, D)'s constants.

    From equation (4.3): delta L = (1 + (N / N_c)^(alpha_N / alpha_D) D_c / D)^alpha_D - 1, so
    D = D_c (N / N_c)^(alpha_N / alpha_D) / ((1 + tolerance)^(1 / alpha_D) - 1).
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    N = _positive("N", N)
    return D_c * (N / N_c) ** (alpha_N / alpha_D) / ((1 + tolerance) ** (1 / alpha_D) - 1)


def _positive(name, value):
    arr = np.asarray(value, dtype=float)
    if np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return arr if arr.ndim else float(arr)


# --------------------------------------------------------------------------- counting


def kaplan_n(n_layer: int, d_model: int, d_ff: int | None = None, d_attn: int | None = None) -> int:
    """Kaplan's equation (2.1): N ~ 2 d_model n_layer (2 d_attn + d_ff) = 12 n_layer d^2 for the standard shape."""
    for name, v in (("n_layer", n_layer), ("d_model", d_model)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    d_ff = 4 * d_model if d_ff is None else d_ff
    d_attn = d_model if d_attn is None else d_attn
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
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if device not in ("cpu", "meta", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'meta', got {device!r}")
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


# --------------------------------------------------------------------------- the sweeps

MODEL_SIZE_SWEEP_GPU = "ch2-model-size"


def model_size_sweep(vocab_size: int) -> tuple[str, list[Run]]:
    """Lesson 2.2's sweep: (sweep name, runs), models of several widths with one schedule.

    CPU profile: chapter 1's sweep, reused as it is (7 widths 8-96 at n_layer 2, N 1.8k-224k, 2.1 decades,
    200 steps x 16 x 64 = 204,800 tokens each). GPU profile: ``"ch2-model-size"``, 10 widths 16-512 at
    n_layer 4 and n_ctx 256 (N 13k-12.6M, 3.0 decades), 1,000 steps x 16 x 256 = 4.1M tokens each, less
    than the 4.5M training characters, so no token is seen twice (the schedule of ``shape_sweep``).
    """
    if by_profile(cpu=True, gpu=False):
        return experiments.FIRST_SCALING_SWEEP, experiments.first_scaling_sweep(vocab_size)
    _check_vocab(vocab_size)
    schedule = TrainConfig(steps=1000, batch_size=16, lr=2e-3)  # 4.1M tokens: less than one epoch
    runs = [Run(f"d{d}", GPTConfig(n_layer=4, d_model=d, n_head=max(1, d // 16), n_ctx=256, vocab_size=vocab_size),
                schedule) for d in (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)]
    return MODEL_SIZE_SWEEP_GPU, runs


def _check_vocab(vocab_size):
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")


DATA_SWEEP = "ch2-data-law"


def data_sizes() -> list[int | None]:
    """Lesson 2.3's training-set sizes in tokens; ``None`` is the whole training text."""
    return by_profile(cpu=[2048, 8192, 32768, 131072, None], gpu=[2**16, 2**18, 2**20, 2**22, None])


def data_sweep(vocab_size: int) -> list[tuple[int | None, list[Run]]]:
    """Lesson 2.3's sweep: for each training-set size D (``data_sizes()``), the runs trained on it.

    Every run has the same schedule, long enough to repeat the small sets many times
    (CPU: 300 steps x 16 x 64 = 307,200 tokens seen; GPU: 500 x 32 x 256 = 4.1M), and is evaluated
    20 times, so that early stopping (the best evaluation) can be read off its curve. Run names are
    ``d{width}-D{size}`` (``D-all`` for the whole text). Widths: 16, 32, 64 at n_layer 2 (CPU); 32, 64,
    128, 256 at n_layer 4 (GPU).
    """
    _check_vocab(vocab_size)
    shape = by_profile(cpu=dict(n_layer=2, d_head=8, n_ctx=64, widths=(16, 32, 64)),
                       gpu=dict(n_layer=4, d_head=16, n_ctx=256, widths=(32, 64, 128, 256)))
    steps = by_profile(cpu=300, gpu=500)  # on both, the whole text is seen less than once
    schedule = TrainConfig(steps=steps, batch_size=by_profile(cpu=16, gpu=32), lr=by_profile(cpu=3e-3, gpu=2e-3),
                           eval_every=steps // 20)
    out = []
    for size in data_sizes():
        tag = "all" if size is None else str(size)
        out.append((size, [Run(f"d{d}-D{tag}", GPTConfig(n_layer=shape["n_layer"], d_model=d,
                                                         n_head=d // shape["d_head"], n_ctx=shape["n_ctx"],
                                                         vocab_size=vocab_size), schedule)
                           for d in shape["widths"]]))
    return out


def truncated(data: TokenDataset, n_tokens: int | None, n_blocks: int = 16) -> TokenDataset:
    """``data`` with its training split cut to ``n_tokens`` tokens (``None``: unchanged), validation kept.

    The tokens are ``n_blocks`` contiguous blocks spread evenly over the training text, so a small set
    samples every part of it (the training text is the plays one after another). The name says the
    size, so a sweep keys results on it.
    """
    if n_tokens is None:
        return data
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens <= 0:
        raise ValueError(f"n_tokens must be a positive int or None, got {n_tokens!r}")
    if not isinstance(n_blocks, int) or n_blocks <= 0 or n_tokens % n_blocks:
        raise ValueError(f"n_blocks must be a positive int dividing n_tokens={n_tokens}, got {n_blocks!r}")
    total = data.train.numel()
    if n_tokens > total:
        raise ValueError(f"n_tokens={n_tokens} exceeds the {total} training tokens")
    block = n_tokens // n_blocks
    starts = np.linspace(0, total - block, n_blocks).astype(np.int64)
    train = torch.cat([data.train[s:s + block] for s in starts])
    return TokenDataset(train=train, val=data.val, vocab_size=data.vocab_size,
                        name=f"{data.name}-train{n_tokens}x{n_blocks}", tokenizer=data.tokenizer)


def run_data_sweep(data: TokenDataset, progress: bool = True) -> list[dict]:
    """Train (or load) every run of ``data_sweep``; each result gains ``D`` (its training-set size in tokens,
    ``inf`` for the whole text), ``epochs`` (tokens seen / D), ``best_val_loss`` and ``best_step``."""
    results = []
    for size, runs in data_sweep(data.vocab_size):
        subset = truncated(data, size)
        for r in run_sweep(runs, subset, DATA_SWEEP, progress=progress):
            best = early_stopped(r)
            D = float(subset.train.numel()) if size is not None else math.inf
            results.append(r | {"D": D, "epochs": r["tokens"] / subset.train.numel(),
                                "best_val_loss": best["val_loss"], "best_step": best["step"]})
    return results


def early_stopped(result: dict) -> dict:
    """The curve point with the lowest validation loss (after step 0): where early stopping keeps the model."""
    points = [p for p in result["curve"] if "val_loss" in p and p["step"] > 0]
    if not points:
        raise ValueError("result has no validation loss after step 0")
    return min(points, key=lambda p: p["val_loss"])


SHAPE_SWEEP = "ch2-shape"


def shape_sweep(vocab_size: int) -> list[Run]:
    """Lesson 2.5's sweep: about the same N (~10^5 on CPU), different shapes, lesson 2's schedule.

    Depth series (2 heads each): (n_layer, d_model) = (1, 92), (2, 64), (4, 46), (8, 32), (16, 22).
    Heads series at (2, 64): 1, 8 and 32 heads (d_head 64, 8, 2). The GPU profile scales d_model by 4
    (N ~ 1.6M) and ``model_size_sweep``'s GPU schedule (4.1M tokens, less than one epoch). Names: ``L{n_layer}-d{d_model}-h{n_head}``.
    """
    _check_vocab(vocab_size)
    scale = by_profile(cpu=1, gpu=4)
    n_ctx = by_profile(cpu=64, gpu=256)
    schedule = TrainConfig(steps=by_profile(cpu=200, gpu=1000), batch_size=16, lr=by_profile(cpu=3e-3, gpu=2e-3))
    shapes = [(1, 92, 2), (2, 64, 2), (4, 46, 2), (8, 32, 2), (16, 22, 2), (2, 64, 1), (2, 64, 8), (2, 64, 32)]
    return [Run(f"L{L}-d{d * scale}-h{h}", GPTConfig(n_layer=L, d_model=d * scale, n_head=h, n_ctx=n_ctx,
                                                     vocab_size=vocab_size), schedule)
            for L, d, h in shapes]


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
    N = _positive("N", np.atleast_1d(N))
    D = np.atleast_1d(np.asarray(D, dtype=float))
    L = _positive("L", np.atleast_1d(L))
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ValueError(f"N, D and L must be 1-D of the same length, got {N.shape}, {D.shape}, {L.shape}")
    if np.any(~(D > 0)):
        raise ValueError("D must be positive (np.inf allowed)")
    if len(N) < 5 or len(np.unique(N)) < 2 or len(np.unique(D[np.isfinite(D)])) < 2:
        raise ValueError("need at least 5 points, 2 sizes N and 2 finite dataset sizes D")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative int, got {n_bootstrap!r}")
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
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(N), len(N))
        if len(np.unique(N[idx])) < 2 or len(np.unique(D[idx][np.isfinite(D[idx])])) < 2:
            continue
        t = solve(idx, [theta])  # each resample starts from the full fit: the same optimum's neighbourhood
        samples.append([math.exp(t[0]), math.exp(t[1]), t[2], t[3]])
    names = ("N_c", "D_c", "alpha_N", "alpha_D")
    if samples:
        arr = np.array(samples)
        ci = {k: (float(np.percentile(arr[:, i], 2.5)), float(np.percentile(arr[:, i], 97.5)))
              for i, k in enumerate(names)}
    else:
        ci = {k: (math.nan, math.nan) for k in names}
    return KaplanNDFit(N_c=math.exp(theta[0]), D_c=math.exp(theta[1]), alpha_N=float(theta[2]),
                       alpha_D=float(theta[3]), ci=ci, rms_log_residual=float(np.sqrt(np.mean(resid**2))),
                       n_points=len(N))


# --------------------------------------------------------------------------- the compute frontier


def compute_curve(result: dict, loss: str = "val_loss") -> tuple[np.ndarray, np.ndarray]:
    """A run's loss curve against training compute: (C in FLOPs, loss), step 0 left out.

    C = flops_per_token(training=True) x tokens seen, Kaplan's 6N plus the attention scores. ``loss``:
    ``"val_loss"`` (the evaluations, a tenth of the run apart by default) or ``"train_loss"`` (logged about
    50 times a run: the mean loss of the batches since the previous point, each measured before the step
    that learns from it, so on text seen for the first time it is a held-out loss too).
    """
    if loss not in ("val_loss", "train_loss"):
        raise ValueError(f"loss must be 'val_loss' or 'train_loss', got {loss!r}")
    cfg = GPTConfig(**result["model_config"])
    per_token = flops_per_token(cfg, training=True)
    points = [p for p in result["curve"] if loss in p and p["tokens"] > 0]
    if not points:
        raise ValueError(f"run {result.get('run')!r} has no {loss} after step 0")
    return (np.array([per_token * p["tokens"] for p in points], dtype=float),
            np.array([p[loss] for p in points], dtype=float))


def _interp_loglog(C, x, y):
    """log-log interpolation of the curve (x, y) at C; NaN outside [x.min(), x.max()]."""
    out = np.exp(np.interp(np.log(C), np.log(x), np.log(y), left=np.nan, right=np.nan))
    return out


def lower_envelope(curves: list[tuple[np.ndarray, np.ndarray]], budgets) -> tuple[np.ndarray, np.ndarray]:
    """The compute frontier: at each budget (ascending), the lowest loss any curve reaches with at most that
    much compute, and the index of that curve; NaN and -1 below the first curve's start.

    Curves are interpolated linearly in log-log between their points. "At most": a run can always be stopped
    earlier, so the frontier never rises, even where a curve ends and the next one is not yet as good.
    """
    budgets = _positive("budgets", np.atleast_1d(budgets))
    if np.any(np.diff(budgets) <= 0):
        raise ValueError("budgets must be increasing")
    if not curves:
        raise ValueError("curves must not be empty")
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
        if j > 0:
            loss[j], best[j] = loss[j - 1], best[j - 1]
    return loss, best


def optimal_sizes(curves: list[tuple[np.ndarray, np.ndarray]], sizes, budgets) -> np.ndarray:
    """Compute-efficient model size at each budget: the vertex of a parabola in log N through the best run
    and its two neighbours in size (losses read off their curves at that budget). NaN where the best run
    is the smallest or largest (the optimum is outside the sweep) or a neighbour's curve does not reach."""
    sizes = _positive("sizes", np.atleast_1d(sizes))
    if len(sizes) != len(curves):
        raise ValueError(f"sizes ({len(sizes)}) and curves ({len(curves)}) must have the same length")
    order = np.argsort(sizes)
    budgets = _positive("budgets", np.atleast_1d(budgets))
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
        a, b, _ = np.polyfit(logn[k - 1:k + 2], np.log(col[k - 1:k + 2]), 2)
        if a > 0:
            out[j] = math.exp(min(max(-b / (2 * a), logn[k - 1]), logn[k + 1]))
    return out


def fit_exponent(x, y) -> tuple[float, float, tuple[float, float]]:
    """y = k x^p by least squares in log-log: (p, k, 95% bootstrap interval of p, 400 resamples, seed 0)."""
    x, y = _positive("x", np.atleast_1d(x)), _positive("y", np.atleast_1d(y))
    if len(x) != len(y) or len(np.unique(x)) < 3:
        raise ValueError("x and y need the same length and at least 3 distinct x")
    p, logk = np.polyfit(np.log(x), np.log(y), 1)
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(400):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) >= 2:
            boot.append(np.polyfit(np.log(x[idx]), np.log(y[idx]), 1)[0])
    return float(p), float(math.exp(logk)), (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))

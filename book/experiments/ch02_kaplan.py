"""Chapter 2, Kaplan et al.'s laws: every sweep its lessons train, by profile.

The names of the sweeps and of their runs are stable (cached results are keyed by them):

- ``model_size_sweep(V)`` -> (sweep name, runs): models of several widths, one schedule (lesson 2.2,
  L(N)). On the CPU profile it *is* chapter 1's ``first_scaling_sweep`` under its sweep name
  ``"lesson01-first-scaling-law"`` (so its cache is shared); on the GPU profile
  ``"ch2-model-size"``, ten widths spanning 3.0 decades of N.
- ``DATA_SWEEP = "ch2-data-law"``, ``data_sweep(V)``: models of three widths, each trained on
  training sets cut to several sizes D (repeated as needed) and on the whole text, with frequent
  evaluation for early stopping (lesson 2.3, L(D) and L(N, D)); ``run_data_sweep(data)`` trains
  them.
- ``SHAPE_SWEEP = "ch2-shape"``, ``shape_sweep(V)``: models of about the same N and different depth,
  width and heads (lesson 2.5).
"""

from __future__ import annotations

import math

from book import checks
from book.data import TokenDataset
from book.device import by_profile
from book.experiments import ch01_why_scale
from book.kaplan import early_stopped, truncated
from book.model import GPTConfig
from book.sweep import Run, run_sweep
from book.train import TrainConfig

MODEL_SIZE_SWEEP_GPU = "ch2-model-size"
DATA_SWEEP = "ch2-data-law"
SHAPE_SWEEP = "ch2-shape"


def prediction_bar() -> float:
    """Lesson 2.2's bar for predicting the largest model's loss (relative error), fixed in advance:
    5% on the CPU profile, 3% on the GPU profile (its sweep spans 3.0 decades of N, not 2.1)."""
    return by_profile(cpu=0.05, gpu=0.03)


def model_size_sweep(vocab_size: int) -> tuple[str, list[Run]]:
    """Lesson 2.2's sweep: (sweep name, runs), models of several widths with one schedule.

    CPU profile: chapter 1's sweep, reused as it is (7 widths 8-96 at n_layer 2, N 1.8k-224k, 2.1
    decades, 200 steps x 16 x 64 = 204,800 tokens each). GPU profile: ``"ch2-model-size"``, 10
    widths 16-512 at n_layer 4 and n_ctx 256 (N 13k-12.6M, 3.0 decades), 1,000 steps x 16 x 256 =
    4.1M tokens each, less than the 4.5M training characters, so no token is seen twice (the
    schedule of ``shape_sweep``).
    """
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    if by_profile(cpu=True, gpu=False):
        return ch01_why_scale.FIRST_SCALING_SWEEP, ch01_why_scale.first_scaling_sweep(vocab_size)
    schedule = TrainConfig(steps=1000, batch_size=16, lr=2e-3)  # 4.1M tokens: less than one epoch
    runs = [
        Run(
            f"d{d}",
            GPTConfig(
                n_layer=4, d_model=d, n_head=max(1, d // 16), n_ctx=256, vocab_size=vocab_size
            ),
            schedule,
        )
        for d in (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    ]
    return MODEL_SIZE_SWEEP_GPU, runs


def data_sizes() -> list[int | None]:
    """Lesson 2.3's training-set sizes in tokens; ``None`` is the whole training text."""
    return by_profile(cpu=[2048, 8192, 32768, 131072, None], gpu=[2**16, 2**18, 2**20, 2**22, None])


def data_sweep(vocab_size: int) -> list[tuple[int | None, list[Run]]]:
    """Lesson 2.3's sweep: for each training-set size D (``data_sizes()``), the runs trained on it.

    Every run has the same schedule, long enough to repeat the small sets many times (CPU: 300 steps
    x 16 x 64 = 307,200 tokens seen; GPU: 500 x 32 x 256 = 4.1M), and is evaluated 20 times, so that
    early stopping (the best evaluation) can be read off its curve. Run names are
    ``d{width}-D{size}`` (``D-all`` for the whole text). Widths: 16, 32, 64 at n_layer 2 (CPU); 32,
    64, 128, 256 at n_layer 4 (GPU).
    """
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    shape = by_profile(
        cpu=dict(n_layer=2, d_head=8, n_ctx=64, widths=(16, 32, 64)),
        gpu=dict(n_layer=4, d_head=16, n_ctx=256, widths=(32, 64, 128, 256)),
    )
    steps = by_profile(cpu=300, gpu=500)  # on both, the whole text is seen less than once
    schedule = TrainConfig(
        steps=steps,
        batch_size=by_profile(cpu=16, gpu=32),
        lr=by_profile(cpu=3e-3, gpu=2e-3),
        eval_every=steps // 20,
    )
    out = []
    for size in data_sizes():
        tag = "all" if size is None else str(size)
        out.append(
            (
                size,
                [Run(f"d{d}-D{tag}", ch01_why_scale.width_gpt(d, shape, vocab_size), schedule)
                 for d in shape["widths"]],
            )
        )
    return out


def run_data_sweep(data: TokenDataset, progress: bool = True) -> list[dict]:
    """Train (or load) every run of ``data_sweep``; each result gains ``D`` (its training-set size
    in tokens, ``inf`` for the whole text), ``epochs`` (tokens seen / D), ``best_val_loss`` and
    ``best_step``."""
    if not isinstance(data, TokenDataset):
        raise TypeError(f"data must be a book.data.TokenDataset, got {type(data).__name__}")
    results = []
    for size, runs in data_sweep(data.vocab_size):
        subset = truncated(data, size)
        for r in run_sweep(runs, subset, DATA_SWEEP, progress=progress):
            best = early_stopped(r)
            D = float(subset.train.numel()) if size is not None else math.inf
            results.append(
                r
                | {
                    "D": D,
                    "epochs": r["tokens"] / subset.train.numel(),
                    "best_val_loss": best["val_loss"],
                    "best_step": best["step"],
                }
            )
    return results


def shape_sweep(vocab_size: int) -> list[Run]:
    """Lesson 2.5's sweep: about the same N (~10^5 on CPU), different shapes, lesson 2's schedule.

    Depth series (2 heads each): (n_layer, d_model) = (1, 92), (2, 64), (4, 46), (8, 32), (16, 22).
    Heads series at (2, 64): 1, 8 and 32 heads (d_head 64, 8, 2). The GPU profile scales d_model by
    4 (N ~ 1.6M) and ``model_size_sweep``'s GPU schedule (4.1M tokens, less than one epoch). Names:
    ``L{n_layer}-d{d_model}-h{n_head}``.
    """
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    scale = by_profile(cpu=1, gpu=4)
    n_ctx = by_profile(cpu=64, gpu=256)
    schedule = TrainConfig(
        steps=by_profile(cpu=200, gpu=1000), batch_size=16, lr=by_profile(cpu=3e-3, gpu=2e-3)
    )
    shapes = [
        (1, 92, 2),
        (2, 64, 2),
        (4, 46, 2),
        (8, 32, 2),
        (16, 22, 2),
        (2, 64, 1),
        (2, 64, 8),
        (2, 64, 32),
    ]
    return [
        Run(
            f"L{L}-d{d * scale}-h{h}",
            GPTConfig(n_layer=L, d_model=d * scale, n_head=h, n_ctx=n_ctx, vocab_size=vocab_size),
            schedule,
        )
        for L, d, h in shapes
    ]


def planned_runs() -> dict[str, list[Run]]:
    """Every sweep chapter 2's lessons train, with its runs at the current profile.

    The data sweep's runs train on cut-down copies of Shakespeare (``kaplan.truncated``), one per
    size.
    """
    from book.experiments import shakespeare

    vocab = shakespeare().vocab_size
    size_name, size_runs = model_size_sweep(vocab)
    return {
        size_name: size_runs,
        DATA_SWEEP: [run for _, runs in data_sweep(vocab) for run in runs],
        SHAPE_SWEEP: shape_sweep(vocab),
    }


# Lessons, by number, that share cached sweeps, and the sweeps each group trains (book.experiments.lesson_group):
# the shape sweep is lesson 5's alone; the model-size sweep, named by profile, goes with the first group.
LESSON_GROUPS = {(1, 2, 3, 4, 6): (DATA_SWEEP,), (5,): (SHAPE_SWEEP,)}

"""Chapter 1, why scale: the runs and sizes of its lessons, by profile.

- 1.1 recurrence against attention: ``recurrence_setup()`` (a timing, cached, not a sweep);
- 1.2 residual paths: ``residual_paths_sizes()`` and ``residual_paths_config(lr)`` (a stack trained
  at several constant learning rates through ``book.train.train``; not a sweep);
- 1.3 the first scaling law: ``FIRST_SCALING_SWEEP``, ``first_scaling_sweep(V)``.
"""

from __future__ import annotations

from book import checks
from book.device import by_profile
from book.model import GPTConfig
from book.recurrence import Setup
from book.sweep import Run
from book.train import TrainConfig

# --- 1.1 recurrence against attention ---------------------------------------------------

# Lengths 64 ... 4096 on both profiles; a narrow block on the CPU, a wide one and more tokens on a
# GPU.
RECURRENCE_CPU = Setup(
    d_model=128, n_head=2, tokens_per_batch=4096, seq_lens=tuple(2**k for k in range(6, 13))
)
RECURRENCE_GPU = Setup(
    d_model=1024, n_head=16, tokens_per_batch=16384, seq_lens=tuple(2**k for k in range(6, 13))
)


def recurrence_setup() -> Setup:
    """Lesson 1.1's sizes for the current profile: ``RECURRENCE_CPU`` or ``RECURRENCE_GPU``."""
    return by_profile(cpu=RECURRENCE_CPU, gpu=RECURRENCE_GPU)


# --- 1.2 residual paths -------------------------------------------------------------------

RESIDUAL_PATHS_LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2)


def residual_paths_sizes() -> dict:
    """Lesson 1.2's training sizes: the stack's width, the steps and the batch (windows a step)."""
    return by_profile(
        cpu=dict(width=64, steps=100, batch_size=64), gpu=dict(width=256, steps=600, batch_size=256)
    )


def residual_paths_config(
    lr: float, steps: int | None = None, batch_size: int | None = None
) -> TrainConfig:
    """Lesson 1.2's schedule: Adam at the constant rate ``lr``, default betas (0.9, 0.999): no
    warmup, decay, weight decay or clipping.

    The same optimizer for every variant, so that differences come from the stack. ``steps`` and
    ``batch_size`` default to ``residual_paths_sizes()``. Evaluation once, at the end.
    """
    sizes = residual_paths_sizes()
    steps = sizes["steps"] if steps is None else checks.positive_int("steps", steps)
    batch_size = (
        sizes["batch_size"] if batch_size is None else checks.positive_int("batch_size", batch_size)
    )
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=checks.positive_float("lr", lr),
        schedule="constant",
        warmup_steps=0,
        weight_decay=0.0,
        beta2=0.999,
        grad_clip=None,
        eval_every=steps,
    )


# --- 1.3 the first scaling law --------------------------------------------------------------

# One depth, widths spanning >= 1.5 decades of N (CPU) or >= 2 (GPU).
FIRST_SCALING_SWEEP = "lesson01-first-scaling-law"


def first_scaling_sweep(vocab_size: int) -> list[Run]:
    """GPTs of several widths at one depth, all trained on the same tokens with the same schedule.

    Only d_model changes (and n_head, at a fixed head width), so N = 12 n_layer d^2 (plus biases
    and norms) spans 2.1 decades on the CPU profile and 2.4 on the GPU profile. Every run sees
    steps x batch_size x n_ctx training tokens: 204,800 (CPU) or 4,096,000 (GPU), less than the
    4.5M training characters, so no run sees any text twice.
    """
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    shape = by_profile(
        cpu=dict(n_layer=2, d_head=8, n_ctx=64, widths=(8, 16, 24, 32, 48, 64, 96)),
        gpu=dict(n_layer=4, d_head=16, n_ctx=256, widths=(32, 64, 96, 128, 192, 256, 384, 512)),
    )
    schedule = TrainConfig(
        steps=by_profile(cpu=200, gpu=1000),
        batch_size=by_profile(cpu=16, gpu=16),
        lr=by_profile(cpu=3e-3, gpu=2e-3),
    )
    return [Run(f"d{d}", width_gpt(d, shape, vocab_size), schedule) for d in shape["widths"]]


def width_gpt(d_model: int, shape: dict, vocab_size: int) -> GPTConfig:
    """A GPT of width ``d_model`` at a width sweep's fixed depth, head width and context (``shape``)."""
    return GPTConfig(n_layer=shape["n_layer"], d_model=d_model, n_head=d_model // shape["d_head"],
                     n_ctx=shape["n_ctx"], vocab_size=vocab_size)


def planned_runs() -> dict[str, list[Run]]:
    """Every sweep chapter 1's lessons train, with its runs at the current profile.

    Lessons 1.1 (a timing) and 1.2 (deep stacks, not GPTs) train no sweep.
    """
    from book.experiments import shakespeare

    return {FIRST_SCALING_SWEEP: first_scaling_sweep(shakespeare().vocab_size)}

"""The experiments a lesson and its exercises share, defined once.

A lesson trains through ``book.sweep``; its solutions notebook asks for the same
runs and gets the cached results instead of training again. Sizes follow the
``profile`` knob.
"""

from __future__ import annotations

from book import data
from book.device import by_profile
from book.model import GPTConfig
from book.sweep import Run
from book.train import TrainConfig

# GPT-3 175B's shape (Brown et al. 2020, Table 2.1), for back-of-the-envelope comparisons.
GPT3_175B = GPTConfig(n_layer=96, d_model=12288, n_head=96, n_ctx=2048, vocab_size=50257)


def tiny_gpt(vocab_size: int) -> tuple[Run, int]:
    """Lesson 0's tiny GPT on Shakespeare: the run, and its batch size (sequences per step)."""
    batch = by_profile(cpu=16, gpu=64)
    model = GPTConfig(vocab_size=vocab_size, **by_profile(
        cpu=dict(n_layer=4, d_model=128, n_head=4, n_ctx=128),
        gpu=dict(n_layer=6, d_model=384, n_head=6, n_ctx=256)))
    schedule = TrainConfig(steps=by_profile(cpu=300, gpu=2000), batch_size=batch, lr=by_profile(cpu=3e-3, gpu=1e-3))
    return Run("tiny-gpt", model, schedule), batch


def shakespeare() -> data.TokenDataset:
    """Character-level Shakespeare, the course's real text."""
    return data.load_shakespeare(tokenizer="char", val_fraction=0.1)


# Lesson 1.3's sweep: one depth, widths spanning >= 1.5 decades of N (CPU) or >= 2 (GPU).
FIRST_SCALING_SWEEP = "lesson01-first-scaling-law"


def first_scaling_sweep(vocab_size: int) -> list[Run]:
    """GPTs of several widths at one depth, all trained on the same tokens with the same schedule.

    Only d_model changes (and n_head, at a fixed head width), so N = 12 n_layer d^2 (plus biases
    and norms) spans 2.1 decades on the CPU profile and 2.4 on the GPU profile. Every run sees
    steps x batch_size x n_ctx training tokens: 204,800 (CPU) or 4,096,000 (GPU), less than the
    4.5M training characters, so no run sees any text twice.
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    shape = by_profile(cpu=dict(n_layer=2, d_head=8, n_ctx=64, widths=(8, 16, 24, 32, 48, 64, 96)),
                       gpu=dict(n_layer=4, d_head=16, n_ctx=256, widths=(32, 64, 96, 128, 192, 256, 384, 512)))
    schedule = TrainConfig(steps=by_profile(cpu=200, gpu=1000), batch_size=by_profile(cpu=16, gpu=16),
                           lr=by_profile(cpu=3e-3, gpu=2e-3))
    return [Run(f"d{d}", GPTConfig(n_layer=shape["n_layer"], d_model=d, n_head=d // shape["d_head"],
                                   n_ctx=shape["n_ctx"], vocab_size=vocab_size), schedule)
            for d in shape["widths"]]

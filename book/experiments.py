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

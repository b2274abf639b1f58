"""Chapter 0, know your machine: the tiny GPT that lesson 0 trains, sized by the profile."""

from __future__ import annotations

from book import checks
from book.device import by_profile
from book.model import GPTConfig
from book.sweep import Run
from book.train import TrainConfig

TINY_GPT_SWEEP = "lesson00"


def matmul_sizes() -> list[int]:
    """Lesson 0's square matmul sizes n: up to what a laptop times in a fraction of a second (CPU),
    or to sizes that fill a data-centre GPU."""
    return by_profile(
        cpu=[16, 32, 64, 128, 256, 512, 1024, 2048],
        gpu=[64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
    )


def copy_sizes() -> list[int]:
    """Lesson 0's copy-bandwidth buffer sizes in bytes: 1 MiB up to 256 MiB (CPU) or 2 GiB (GPU)."""
    return [2**k for k in range(20, by_profile(cpu=29, gpu=32))]


def tiny_gpt(vocab_size: int) -> tuple[Run, int]:
    """Lesson 0's tiny GPT on Shakespeare: the run, and its batch size (sequences per step)."""
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    batch = by_profile(cpu=16, gpu=64)
    model = GPTConfig(
        vocab_size=vocab_size,
        **by_profile(
            cpu=dict(n_layer=4, d_model=128, n_head=4, n_ctx=128),
            gpu=dict(n_layer=6, d_model=384, n_head=6, n_ctx=256),
        ),
    )
    schedule = TrainConfig(
        steps=by_profile(cpu=300, gpu=2000), batch_size=batch, lr=by_profile(cpu=3e-3, gpu=1e-3)
    )
    return Run("tiny-gpt", model, schedule), batch


def planned_runs() -> dict[str, list[Run]]:
    """Every sweep chapter 0's lesson trains, with its runs at the current profile."""
    from book.experiments import shakespeare

    return {TINY_GPT_SWEEP: [tiny_gpt(shakespeare().vocab_size)[0]]}

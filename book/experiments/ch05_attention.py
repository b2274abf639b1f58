"""Chapter 5, efficient attention: lesson 5.5's runs, a tiny GPT per attention variant, by profile.

- ``copy_data()``, ``copy_runs(data)``: the delayed copy task (``book.delayed_copy``), whose lag
  only attention that reaches far enough can bridge;
- ``shakespeare_runs(V)``: the same variants on Shakespeare at a long context.
"""

from __future__ import annotations

from dataclasses import replace

from book import checks
from book.data import TokenDataset
from book.delayed_copy import copy_shape, copy_task
from book.device import by_profile
from book.model import GPTConfig
from book.sweep import Run
from book.train import TrainConfig

COPY_SWEEP = "ch5-does-it-learn-copy"
SHAKESPEARE_SWEEP = "ch5-does-it-learn-shakespeare"
# "naive" and "flash" compute what "sdpa" does (lessons 1-2), only slower: lesson 5 trains the
# approximations.
LEARNING_VARIANTS = ("sdpa", "window_short", "window_long", "linear", "lsh")
_ALL_VARIANTS = LEARNING_VARIANTS + ("naive", "flash")


def copy_data() -> TokenDataset:
    """Lesson 5's delayed copy: 16 symbols, a lag of 24 (CPU) or 96 (GPU) positions, 20% fresh.
    """
    return copy_task(
        **by_profile(cpu=dict(lag=24), gpu=dict(lag=96, n_train=2_000_000, n_val=100_000))
    )


def _variant(base: GPTConfig, name: str, short: int, long: int) -> GPTConfig:
    checks.one_of("variant", name, _ALL_VARIANTS)
    if name == "window_short":
        return replace(base, attention="sliding_window", attention_window=short)
    if name == "window_long":
        return replace(base, attention="sliding_window", attention_window=long)
    return replace(base, attention=name)


def copy_runs(data: TokenDataset, variants=LEARNING_VARIANTS) -> list[Run]:
    """One tiny GPT per attention variant on the copy task; n_ctx is a little more than two lags.

    "window_short" sees 2/3 of the lag (it never reaches the source), "window_long" 4/3 of it.
    LSH uses the library's defaults (8 buckets, one round, chunks of n/8).
    """
    lag = copy_shape(data)["lag"]
    base = GPTConfig(
        vocab_size=data.vocab_size,
        **by_profile(
            cpu=dict(n_layer=1, d_model=64, n_head=2, n_ctx=64),
            gpu=dict(n_layer=2, d_model=128, n_head=4, n_ctx=256),
        ),
    )
    schedule = TrainConfig(
        steps=by_profile(cpu=150, gpu=1000),
        batch_size=by_profile(cpu=32, gpu=64),
        lr=3e-3,
        eval_every=by_profile(cpu=15, gpu=50),
        eval_batches=4,
    )
    return [
        Run(v, _variant(base, v, short=2 * lag // 3, long=lag + lag // 3), schedule)
        for v in variants
    ]


def shakespeare_runs(vocab_size: int, variants=LEARNING_VARIANTS) -> list[Run]:
    """One small character-level GPT per variant on Shakespeare at a long context: 256 (CPU) or 1024
    (GPU).

    The windows are 32 and 128 characters (CPU) or 128 and 512 (GPU).
    """
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    n_ctx = by_profile(cpu=256, gpu=1024)
    base = GPTConfig(
        vocab_size=vocab_size,
        n_ctx=n_ctx,
        **by_profile(
            cpu=dict(n_layer=2, d_model=64, n_head=2), gpu=dict(n_layer=4, d_model=256, n_head=4)
        ),
    )
    schedule = TrainConfig(
        steps=by_profile(cpu=80, gpu=600),
        batch_size=by_profile(cpu=8, gpu=32),
        lr=3e-3,
        eval_every=by_profile(cpu=10, gpu=100),
        eval_batches=2,
    )
    return [
        Run(v, _variant(base, v, short=n_ctx // 8, long=n_ctx // 2), schedule) for v in variants
    ]


def measured_lengths() -> dict:
    """The sequence lengths lessons 5.1, 5.2 and 5.4 time and measure, by profile.

    ``wall``: 5.1's time and memory sweep; ``reach``: 5.1's 16-head measurement; ``crossover``:
    5.1's attention-against-MLP timing; ``flash``: 5.2's memory sweep; ``approx``: 5.4's costs.
    """
    return by_profile(
        cpu=dict(wall=[128, 256, 512, 1024, 2048], reach=1024,
                 crossover=[64, 128, 256, 512, 1024, 2048, 4096], flash=[256, 512, 1024],
                 approx=[256, 512, 1024, 2048]),
        gpu=dict(wall=[512, 1024, 2048, 4096, 8192, 16384], reach=4096,
                 crossover=[64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
                 flash=[1024, 2048, 4096, 8192], approx=[1024, 2048, 4096, 8192, 16384]),
    )


def planned_runs() -> dict[str, list[Run]]:
    """Every sweep chapter 5's lessons train, with its runs at the current profile.

    The copy runs train on ``copy_data()`` (its own vocabulary of 16 symbols), the others on
    Shakespeare.
    """
    from book.experiments import shakespeare

    return {
        COPY_SWEEP: copy_runs(copy_data()),
        SHAKESPEARE_SWEEP: shakespeare_runs(shakespeare().vocab_size),
    }

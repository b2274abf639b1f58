"""Chapter 6, the cost of scale: every run, sweep and profile-dependent size of its lessons.

Sections, one per lesson; each lesson's author edits only their own section.
"""

from __future__ import annotations

from book.device import by_profile  # the sections below read the profile here, nowhere else
from book.model import GPTConfig
from book.sweep import Run
from book.train import TrainConfig


def planned_runs() -> dict[str, list[Run]]:
    """Every sweep this chapter's lessons train, by name, at the current profile (for tools/gpu_plan.py)."""
    from book.experiments import shakespeare  # the package imports this module: import when called

    vocab_size = shakespeare().vocab_size
    return {PRECISION_SWEEP: precision_runs(vocab_size), BATCH_SWEEP: batch_runs(vocab_size),
            NOISE_SWEEP: noise_runs(vocab_size)}

# --- 6.1 where the bytes go / 6.2 precision ---------------------------------------------


def memory_step(vocab_size: int) -> tuple[GPTConfig, int]:
    """Lesson 6.1's measured training step: a GPT and its batch size (sequences of n_ctx tokens)."""
    shape = by_profile(cpu=dict(n_layer=4, d_model=128, n_head=4, n_ctx=128),
                       gpu=dict(n_layer=12, d_model=768, n_head=12, n_ctx=1024))
    return GPTConfig(vocab_size=vocab_size, **shape), by_profile(cpu=16, gpu=8)


PRECISION_SWEEP = "lesson06-precision"


def precision_runs(vocab_size: int) -> list[Run]:
    """Lesson 6.2: one GPT, one schedule, trained in fp32 and under bf16 autocast."""
    model = GPTConfig(vocab_size=vocab_size, **by_profile(
        cpu=dict(n_layer=2, d_model=64, n_head=4, n_ctx=64),
        gpu=dict(n_layer=6, d_model=384, n_head=6, n_ctx=256)))
    steps, batch = by_profile(cpu=150, gpu=1000), by_profile(cpu=16, gpu=32)
    return [Run(precision, model, TrainConfig(steps=steps, batch_size=batch, lr=3e-3, eval_every=steps // 5,
                                              precision=precision))
            for precision in ("fp32", "bf16")]


def precision_matmul_size() -> int:
    """Lesson 6.2's n for timing n x n x n matrix products in each format."""
    return by_profile(cpu=512, gpu=8192)

# --- 6.3 recomputation / 6.4 batch size and the learning rate ---------------------------


def recompute_step(vocab_size: int) -> tuple[GPTConfig, int]:
    """Lesson 6.3's deep, narrow GPT (activations dominate its memory) and its batch size."""
    shape = by_profile(cpu=dict(n_layer=8, d_model=128, n_head=4, n_ctx=128),
                       gpu=dict(n_layer=24, d_model=1024, n_head=16, n_ctx=1024))
    return GPTConfig(vocab_size=vocab_size, **shape), by_profile(cpu=8, gpu=8)


def segments_step(vocab_size: int) -> tuple[GPTConfig, int]:
    """Lesson 6.3's GPT for the segment-length sweep of peak memory, and its batch size."""
    shape = by_profile(cpu=dict(n_layer=16, d_model=64, n_head=4, n_ctx=64),
                       gpu=dict(n_layer=24, d_model=1024, n_head=16, n_ctx=1024))
    return GPTConfig(vocab_size=vocab_size, **shape), by_profile(cpu=8, gpu=8)


BATCH_SWEEP = "lesson06-batch-size"
NOISE_SWEEP = "lesson06-noise-scale"


def batch_model(vocab_size: int) -> GPTConfig:
    """Lesson 6.4's GPT, small enough to train at many batch sizes."""
    return GPTConfig(vocab_size=vocab_size, **by_profile(
        cpu=dict(n_layer=2, d_model=48, n_head=4, n_ctx=32),
        gpu=dict(n_layer=4, d_model=256, n_head=4, n_ctx=128)))


def batch_sizes() -> tuple[int, ...]:
    """Lesson 6.4's batch sizes, in sequences; the learning rates are set relative to the first."""
    return by_profile(cpu=(4, 8, 16, 32, 64), gpu=(8, 16, 32, 64, 128, 256))


def batch_runs(vocab_size: int) -> list[Run]:
    """Each batch size at a constant learning rate scaled from the smallest batch's by two rules.

    "linear": lr proportional to the batch size; "sqrt": to its square root. The smallest batch
    has one run (both rules agree there). Smaller batches get more steps, so that every run can
    reach the same target loss.
    """
    model, sizes = batch_model(vocab_size), batch_sizes()
    base_lr, base = by_profile(cpu=2e-3, gpu=1e-3), sizes[0]
    # A constant rate makes a shorter run the prefix of a longer one, so steps only need to reach
    # the target (lesson 6.4 reads the curves up to it): 50 + step_budget / (batch / smallest).
    step_budget = by_profile(cpu=250, gpu=4000)
    runs = []
    for size in sizes:
        steps = 50 + step_budget * base // size
        for rule, lr in (("linear", base_lr * size / base), ("sqrt", base_lr * (size / base) ** 0.5)):
            if size == base and rule == "sqrt":
                continue
            schedule = TrainConfig(steps=steps, batch_size=size, lr=lr, schedule="constant", warmup_steps=10,
                                   log_every=5, eval_every=steps, eval_batches=2)
            runs.append(Run(f"b{size}-{rule}", model, schedule))
    return runs


def noise_runs(vocab_size: int) -> list[Run]:
    """Prefixes of one run (the same schedule, stopped early), whose weights the lesson keeps.

    A low constant rate (1e-3): at 4e-3 the run bounces near the bottom of its valley late on, its
    gradient norm grows again, and the noise scale falls for that reason, not the loss's.
    """
    model, size = batch_model(vocab_size), batch_sizes()[2]
    total = by_profile(cpu=200, gpu=2000)
    return [Run(f"step{steps}", model, TrainConfig(
                steps=steps, batch_size=size, lr=1e-3, schedule="constant", warmup_steps=10,
                eval_every=steps, eval_batches=2, schedule_steps=total))
            for steps in (total // 8, total // 4, total // 2, total)]


def noise_micro_batches() -> tuple[int, int]:
    """Lesson 6.4's gradients for the noise scale: (sequences per micro-batch, micro-batches)."""
    return by_profile(cpu=(4, 64), gpu=(8, 64))

# --- 6.5 data parallelism and sharding / 6.6 tensor and pipeline parallelism ------------

# --- 6.7 the KV cache / 6.8 quantization and speculative decoding / 6.9 the checklist ---

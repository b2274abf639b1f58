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
            NOISE_SWEEP: noise_runs(vocab_size), INFERENCE_SWEEP: inference_runs(vocab_size),
            CHECKLIST_SWEEP: checklist_runs(vocab_size)}

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

# --- 6.5 data parallelism and sharding ------------------------------------------------


def data_parallel_run(vocab_size: int) -> dict:
    """Lesson 6.5's one torchrun: the GPT, each rank's batch, the steps and the all-reduce sizes timed.

    Small at both profiles (a GPU machine with one GPU runs the ranks on its CPU cores, with gloo):
    the CPU's launch takes seconds. Message sizes from 1 KB by factors of 4, to 64 MB (256 MB).
    """
    shape = by_profile(cpu=dict(n_layer=2, d_model=64, n_head=4, n_ctx=32),
                       gpu=dict(n_layer=4, d_model=256, n_head=4, n_ctx=128))
    largest = by_profile(cpu=26, gpu=28)  # log2 of the largest message, in bytes
    return dict(config=GPTConfig(vocab_size=vocab_size, **shape), batch_per_rank=by_profile(cpu=2, gpu=4),
                steps=5, lr=1e-3, sizes=tuple(2**k for k in range(10, largest + 1, 2)), repeats=9)


DATA_PARALLEL_WIRE = dict(n_ranks=4, n_bytes=2**22)  # lesson 6.5: the loopback count of a 4 MiB all-reduce


# --- 6.6 tensor and pipeline parallelism -----------------------------------------------


def tensor_parallel_check() -> dict[str, int]:
    """Lesson 6.6's tensor-parallel check: one GPT block's sizes and its input (batch of seq tokens).

    The same at every profile: the lesson prints the all-reduces' bytes, which must not change.
    """
    return dict(batch=2, seq=16, d_model=64, n_head=4)


def pipeline_step() -> dict[str, int]:
    """Lesson 6.6's pipeline: a stack of GPT blocks in two stages, timed on two CPU processes (gloo).

    A micro-batch's forward through a stage takes about 10 ms on one core, so that the messages
    between stages (about 0.3 ms each) cost little beside it. The same at every profile: the
    lesson launches it on the CPU, where a GPU machine's cores time it as well as a laptop's.
    """
    return dict(n_layer=4, d_model=256, n_head=4, n_ctx=64, micro_batch=4, repeats=5)


PIPELINE_MICROBATCHES = (1, 2, 4, 8)  # lesson 6.6: the micro-batch counts m whose bubble is measured



# --- 6.7 inference: the KV cache and batching / 6.8 quantization and speculative decoding

INFERENCE_SWEEP = "lesson06-inference"


def inference_runs(vocab_size: int) -> list[Run]:
    """Lessons 6.7 and 6.8: a target GPT and a smaller draft GPT, trained on the same text."""
    n_ctx = by_profile(cpu=128, gpu=256)
    target = GPTConfig(vocab_size=vocab_size, n_ctx=n_ctx, **by_profile(
        cpu=dict(n_layer=3, d_model=96, n_head=4), gpu=dict(n_layer=6, d_model=384, n_head=6)))
    draft = GPTConfig(vocab_size=vocab_size, n_ctx=n_ctx, **by_profile(
        cpu=dict(n_layer=1, d_model=48, n_head=4), gpu=dict(n_layer=2, d_model=128, n_head=4)))
    steps, batch = by_profile(cpu=250, gpu=2000), by_profile(cpu=16, gpu=32)
    schedule = TrainConfig(steps=steps, batch_size=batch, lr=3e-3, eval_every=steps, eval_batches=4)
    return [Run("target", target, schedule), Run("draft", draft, schedule)]


def timing_model(vocab_size: int) -> GPTConfig:
    """Lesson 6.7's GPT (random weights) for the time of one decoding step against sequence length."""
    return GPTConfig(vocab_size=vocab_size, **by_profile(
        cpu=dict(n_layer=4, d_model=128, n_head=4, n_ctx=512),
        gpu=dict(n_layer=12, d_model=768, n_head=12, n_ctx=2048)))


def decode_model(vocab_size: int) -> GPTConfig:
    """Lesson 6.7's GPT for decoding throughput against batch size: its fp32 weights (about 40M
    parameters on the CPU, 1.2B on a GPU) are far larger than the processor's caches."""
    return GPTConfig(vocab_size=vocab_size, **by_profile(
        cpu=dict(n_layer=8, d_model=640, n_head=10, n_ctx=64),
        gpu=dict(n_layer=24, d_model=2048, n_head=16, n_ctx=256)))


def decode_batch_sizes() -> tuple[int, ...]:
    """Lesson 6.7's batch sizes (sequences decoded together)."""
    return (1, 2, 4, 8, 16, 32, 64)


# --- 6.9 the scaling checklist ----------------------------------------------------------

CHECKLIST_SWEEP = "lesson06-checklist"


def checklist_model(vocab_size: int) -> GPTConfig:
    """Lesson 6.9's small GPT, the model every check of the scaling checklist runs on."""
    return GPTConfig(vocab_size=vocab_size, **by_profile(
        cpu=dict(n_layer=2, d_model=32, n_head=4, n_ctx=64),
        gpu=dict(n_layer=2, d_model=64, n_head=4, n_ctx=128)))


def checklist_runs(vocab_size: int) -> list[Run]:
    """Lesson 6.9: the clean run, sized to ~20 tokens per parameter, and one at 100 times its rate.

    The clean run's steps give 20 N tokens (N non-embedding, as ``TrainResult.params``), Chinchilla's
    balance; the bad run is shorter (its spike comes early) and logs every step, to show it.
    """
    # Imported here: the file's header is shared by every lesson's section.
    from book.model import count_params

    model, batch = checklist_model(vocab_size), by_profile(cpu=32, gpu=32)
    steps = -(-20 * count_params(model, embedding=False) // (batch * model.n_ctx))
    lr = by_profile(cpu=3e-3, gpu=2e-3)
    clean = TrainConfig(steps=steps, batch_size=batch, lr=lr, eval_every=steps // 4, eval_batches=4)
    bad_steps = steps // 3
    bad = TrainConfig(steps=bad_steps, batch_size=batch, lr=100 * lr, eval_every=bad_steps, eval_batches=4,
                      log_every=1)
    return [Run("clean", model, clean), Run("lr-x100", model, bad)]


# --- how the lessons share their sweeps -------------------------------------------------

# Lessons, by number, that share cached sweeps, and the sweeps each group trains: the groups share
# nothing, so tools/device_bench.py may run them in separate workers (book.experiments.lesson_group).
LESSON_GROUPS = {(1, 2): (PRECISION_SWEEP,), (3, 4): (BATCH_SWEEP, NOISE_SWEEP), (5,): (), (6,): (),
                 (7, 8): (INFERENCE_SWEEP,), (9,): (CHECKLIST_SWEEP,)}

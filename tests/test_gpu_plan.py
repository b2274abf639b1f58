"""tools/gpu_plan.py: the prediction that the device run fits, computed on the CPU."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import gpu_plan  # noqa: E402
from book.device import by_profile  # noqa: E402
from book.model import GPTConfig, flops_per_token  # noqa: E402
from book.sweep import Run  # noqa: E402
from book.train import TrainConfig  # noqa: E402

BENCHMARKS = """\
<!-- device: cpu-2-cores -->
## CPU
| notebook | seconds | budget | within budget? |
|---|---:|---:|---|
| `lessons/07_stub/1_a.ipynb` | 40.0 | 120 s | yes |
| `solutions/07_stub/1_a.ipynb` | 5.0 | 60 s | yes |

Whole suite, `python -m pytest --nbval` with a cold cache: 100 s (budget 20 min, within budget: yes); passed.
<!-- end device -->
"""


def stub_chapter(gpu_width=256, steps=100):
    """A chapter module as book.experiments.CHAPTERS holds them: planned_runs() follows the profile."""
    def planned_runs():
        width = by_profile(cpu=32, gpu=gpu_width)
        cfg = GPTConfig(n_layer=2, d_model=width, n_head=2, n_ctx=64, vocab_size=65)
        train = TrainConfig(steps=by_profile(cpu=10, gpu=steps), batch_size=16)
        return {"stub-sweep": [Run("a", cfg, train), Run("b", cfg, train)]}

    return types.SimpleNamespace(__name__="book.experiments.ch07_stub", planned_runs=planned_runs)


@pytest.fixture
def tree(tmp_path):
    for folder in ("lessons", "solutions"):
        (tmp_path / folder / "07_stub").mkdir(parents=True)
        (tmp_path / folder / "07_stub" / "1_a.ipynb").write_text("{}")
    (tmp_path / "BENCHMARKS.md").write_text(BENCHMARKS)
    return tmp_path


def make(tree, chapter, **kw):
    return gpu_plan.make_plan([(7, chapter)], benchmarks=tree / "BENCHMARKS.md", root=tree, **kw)


def test_mfu_grows_with_width_towards_the_large_model_ceiling():
    widths = [8, 64, 256, 768, 4096, 16384]
    values = [gpu_plan.mfu(d) for d in widths]
    assert values == sorted(values) and values[-1] < gpu_plan.MFU_MAX
    assert 0.2 < gpu_plan.mfu(768) < 0.35  # GPT-2 small in eager PyTorch: well under PaLM's 46%
    assert gpu_plan.mfu(16) < 0.02
    # D_HALF follows from the datasheet: ridge 989.5e12 / 4.8e12 FLOP/byte, 0.8 d FLOP/byte, x2
    assert gpu_plan.D_HALF == pytest.approx(2 * 989.5e12 / 4.8e12 / 0.8)
    assert gpu_plan.mfu(round(gpu_plan.D_HALF)) == pytest.approx(gpu_plan.MFU_MAX / 2, rel=1e-3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "64"])
def test_mfu_rejects_bad_width(bad):
    with pytest.raises(ValueError, match="d_model"):
        gpu_plan.mfu(bad)


def test_small_models_are_launch_bound_and_large_ones_are_not():
    small = Run("s", GPTConfig(n_layer=2, d_model=32, n_head=2, n_ctx=64, vocab_size=65),
                TrainConfig(steps=100, batch_size=16))
    large = Run("l", GPTConfig(n_layer=12, d_model=768, n_head=12, n_ctx=1024, vocab_size=50304),
                TrainConfig(steps=100, batch_size=16))
    s, big = gpu_plan.plan_run(0, "x", small), gpu_plan.plan_run(0, "x", large)
    assert s.launch_bound and not big.launch_bound
    assert s.seconds >= 100 * gpu_plan.step_kernels(small.model) * gpu_plan.LAUNCH_S
    tokens = 100 * 16 * 1024
    assert big.tokens == tokens and big.flops == flops_per_token(large.model, training=True) * tokens
    assert big.flops == pytest.approx(6 * (85e6 + 12 * 1024 * 768) * tokens, rel=0.01)  # 6 (N + L n_ctx d) D
    assert big.gpu_seconds == pytest.approx(big.seconds - gpu_plan.RUN_OVERHEAD_S, rel=0.05)


def test_evaluation_count_matches_the_training_loop(book_cache):
    from book.data import TokenDataset
    from book.train import train
    import torch

    data = TokenDataset(torch.randint(0, 8, (2000,)), torch.randint(0, 8, (500,)), 8)
    cfg = GPTConfig(n_layer=1, d_model=8, n_head=2, n_ctx=8, vocab_size=8)
    for tc in (TrainConfig(steps=7, batch_size=2, eval_every=3, eval_batches=1),
               TrainConfig(steps=12, batch_size=2, eval_batches=1)):
        result = train(cfg, tc, data, progress=False, dev=torch.device("cpu"))
        assert gpu_plan.n_evaluations(tc) == sum("val_loss" in p for p in result.curve)


def test_plan_of_a_stub_chapter(tree):
    plan = make(tree, stub_chapter())
    assert [r.run for r in plan.runs] == ["a", "b"] and {r.sweep for r in plan.runs} == {"stub-sweep"}
    assert [s.name for s in plan.stages] == ["install", "plan", "bench", "experiments", "nbval", "pack"]
    assert plan.total == pytest.approx(sum(s.seconds for s in plan.stages))
    chapter = plan.chapters[0]
    assert chapter["lessons"] == ["lessons/07_stub/1_a.ipynb"] and chapter["ratio"] == pytest.approx(64, rel=0.05)
    experiments = next(s for s in plan.stages if s.name == "experiments").seconds
    assert experiments == pytest.approx(chapter["train_s"] + chapter["lessons_s"])  # one chapter, one worker
    # the lesson: a kernel's start plus half its measured CPU time
    assert chapter["lessons_s"] == pytest.approx(gpu_plan.NOTEBOOK_START_S + 0.5 * 40.0)
    assert plan.fits and plan.scale_ok and plan.to_dict()["fits"]


def test_a_notebook_not_timed_yet_counts_at_the_new_chapter_budget(tree):
    (tree / "lessons" / "07_stub" / "2_new.ipynb").write_text("{}")
    chapter = make(tree, stub_chapter()).chapters[0]
    assert chapter["lessons_s"] == pytest.approx(2 * gpu_plan.NOTEBOOK_START_S + 0.5 * (40.0 + 35.0))


def test_plan_that_does_not_fit_or_is_too_small(tree):
    assert not make(tree, stub_chapter(steps=200_000)).fits
    assert not make(tree, stub_chapter(), limit_s=10).fits
    assert not make(tree, stub_chapter(gpu_width=64)).scale_ok  # 16x wider is 16^2 N; 2x is 4x: too small


def test_chapter_number():
    assert gpu_plan.chapter_number("book.experiments.ch02_kaplan") == 2
    assert gpu_plan.chapter_number("ch10_x") == 10 and gpu_plan.chapter_number(3) == 3
    with pytest.raises(ValueError, match="chapter number"):
        gpu_plan.chapter_number("kaplan")


def test_cpu_timings_read_the_committed_benchmarks():
    notebooks, suite = gpu_plan.cpu_timings(ROOT / "BENCHMARKS.md")
    assert len(notebooks) >= 40 and all(s > 0 for s in notebooks.values())
    assert suite > sum(notebooks.values())  # the suite adds the unit tests


def test_the_real_plan_fits_in_seven_minutes():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_plan.py")], capture_output=True, text=True,
                          timeout=300)
    assert "total" in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_compare_with_committed_results(tree):
    plan = make(tree, stub_chapter())
    assert "no committed device results" in gpu_plan.compare(plan, tree / "results")
    folder = tree / "results" / "gpu-x" / "stub-sweep"
    folder.mkdir(parents=True)
    for r in plan.runs:
        (folder / f"{r.run}.json").write_text(f'{{"train_seconds": {r.seconds / 2}}}')
    line = gpu_plan.compare(plan, tree / "results").splitlines()[1]
    assert line.split()[0] == "stub-sweep" and line.split()[1] == "2" and line.split()[-1] == "2.00"

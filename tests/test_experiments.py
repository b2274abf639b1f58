import math

import pytest
import torch

from book import experiments, recurrence
from book.delayed_copy import copy_shape, copy_task
from book.experiments import ch00_machine, ch01_why_scale, ch02_kaplan, ch04_moe, ch05_attention, shakespeare
from book.experiments import ch03_chinchilla as ch03
from book.model import count_params
from book.sweep import Run


def decades(runs):
    sizes = [count_params(run.model, embedding=False) for run in runs]
    return math.log10(max(sizes) / min(sizes))


@pytest.mark.parametrize("profile, at_least", [("cpu", 1.5), ("gpu", 2.0)])
def test_first_scaling_sweep_spans_enough_decades(monkeypatch, profile, at_least):
    monkeypatch.setenv("BOOK_PROFILE", profile)
    runs = ch01_why_scale.first_scaling_sweep(81)
    assert len(runs) >= 5
    assert decades(runs) >= at_least
    names = [run.name for run in runs]
    assert len(set(names)) == len(names)
    sizes = [count_params(run.model, embedding=False) for run in runs]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_first_scaling_sweep_shares_data_schedule_and_depth(monkeypatch, profile):
    monkeypatch.setenv("BOOK_PROFILE", profile)
    runs = ch01_why_scale.first_scaling_sweep(81)
    assert len({run.train for run in runs}) == 1  # same steps, batch, lr, seed: the same tokens for all
    assert len({(run.model.n_layer, run.model.n_ctx, run.model.d_head, run.model.vocab_size) for run in runs}) == 1
    tokens = runs[0].train.steps * runs[0].train.batch_size * runs[0].model.n_ctx
    assert tokens == {"cpu": 204_800, "gpu": 4_096_000}[profile]  # as the docstring says
    assert tokens < 4_499_025  # Shakespeare's training characters: no text is seen twice


def test_first_scaling_sweep_differs_by_profile(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "cpu")
    cpu = ch01_why_scale.first_scaling_sweep(81)
    monkeypatch.setenv("BOOK_PROFILE", "gpu")
    gpu = ch01_why_scale.first_scaling_sweep(81)
    assert max(count_params(r.model, embedding=False) for r in gpu) > max(count_params(r.model, embedding=False) for r in cpu)


@pytest.mark.parametrize("vocab_size", [0, -3, 8.0, True, "81"])
def test_first_scaling_sweep_rejects_bad_vocab_size(vocab_size):
    with pytest.raises((TypeError, ValueError), match="vocab_size"):
        ch01_why_scale.first_scaling_sweep(vocab_size)


def test_chapter2_sweep_definitions(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "cpu")
    name, runs = ch02_kaplan.model_size_sweep(65)
    assert name == "lesson01-first-scaling-law" and len(runs) >= 6
    n = [count_params(r.model, embedding=False) for r in runs]
    assert math.log10(max(n) / min(n)) >= 1.5
    sizes = ch02_kaplan.data_sweep(65)
    assert [s for s, _ in sizes] == ch02_kaplan.data_sizes() and sizes[-1][0] is None
    names = [r.name for _, runs in sizes for r in runs]
    assert len(set(names)) == len(names)
    shape = ch02_kaplan.shape_sweep(65)
    n = [count_params(r.model, embedding=False) for r in shape]
    assert max(n) / min(n) < 1.25  # about the same N
    monkeypatch.setenv("BOOK_PROFILE", "gpu")
    name, runs = ch02_kaplan.model_size_sweep(65)
    n = [count_params(r.model, embedding=False) for r in runs]
    assert name == ch02_kaplan.MODEL_SIZE_SWEEP_GPU and math.log10(max(n) / min(n)) >= 2.5 and len(runs) >= 6
    assert len({r.train for r in runs}) == 1
    # GPU profile: no sweep sees the whole text (4,499,025 training characters) more than once
    plans = [runs, ch02_kaplan.data_sweep(65)[-1][1], ch02_kaplan.shape_sweep(65)]
    for r in (r for plan in plans for r in plan):
        assert r.train.steps * r.train.batch_size * r.model.n_ctx < 4_499_025, r.name
    with pytest.raises(ValueError, match="vocab_size"):
        ch02_kaplan.data_sweep(0)
    with pytest.raises(TypeError, match="data"):
        ch02_kaplan.run_data_sweep("shakespeare")


# --------------------------------------------------------------------------- chapter 3


@pytest.mark.parametrize("profile, budgets", [("cpu", 3), ("gpu", 5)])
def test_isoflop_runs_spend_their_budget(monkeypatch, profile, budgets):
    monkeypatch.setenv("BOOK_PROFILE", profile)
    runs = ch03.isoflop_runs(81)
    plan = ch03.isoflop_plan()
    assert len(plan) >= budgets and all(len(widths) >= 5 for widths in plan.values())
    assert len({r.name for r in runs}) == len(runs) == sum(len(w) for w in plan.values())
    for run in runs:
        C = float(run.name[1:run.name.index("-d")])
        n = count_params(run.model, embedding=False)
        tokens = run.train.steps * run.train.batch_size * run.model.n_ctx
        assert abs(6 * n * tokens / C - 1) < 0.02, f"{run.name}: 6ND = {6 * n * tokens:.3g}, budget {C:.3g}"
        assert run.train.schedule_steps is None  # the cosine cycle is the run's own length
        assert run.train.lr == ch03.lr_for_width(run.model.d_model)


def test_isoflop_run_with_fewer_steps_matches_its_schedule():
    full = ch03.isoflop_run(2e10, 10, 81)
    short = ch03.isoflop_run(2e10, 10, 81, steps=full.train.steps // 4)
    assert short.train.steps == full.train.steps // 4 and short.train.schedule_steps is None
    assert short.name == f"C2e10-d10-s{full.train.steps // 4}" and full.name == "C2e10-d10"
    assert short.model == full.model and short.train.lr == full.train.lr
    with pytest.raises(ValueError, match="steps"):
        ch03.isoflop_run(2e10, 10, 81, steps=full.train.steps + 1)
    with pytest.raises(ValueError, match="C must be"):
        ch03.isoflop_run(-1.0, 10, 81)
    with pytest.raises(ValueError, match="d_model"):
        ch03.isoflop_run(2e10, 7, 81)


def test_budget_name_and_lr():
    assert ch03.budget_name(2e9) == "2e9" and ch03.budget_name(6e10) == "6e10"
    assert ch03.lr_for_width(4) == 0.02 and ch03.lr_for_width(16) == 0.01
    with pytest.raises(ValueError, match="d_model"):
        ch03.lr_for_width(0)


def test_isoflop_table_reads_results():
    results = [{"run": "C2e9-d4", "model_config": {"d_model": 4}, "params": 496, "tokens": 1000, "final_val_loss": 2.5}]
    table = ch03.isoflop_table(results)
    assert table["C"][0] == 2e9 and table["flops"][0] == 6 * 496 * 1000 and table["loss"][0] == 2.5
    with pytest.raises(ValueError, match="IsoFLOP"):
        ch03.isoflop_table([{"run": "d4"}])


def test_partition_balances_the_work():
    runs = ch03.isoflop_runs(81)
    parts = ch03.partition(runs, 2)
    assert sorted(r.name for p in parts for r in p) == sorted(r.name for r in runs)
    loads = [sum(ch03._work(r) for r in p) for p in parts]
    assert max(loads) / min(loads) < 1.2
    assert len(ch03.partition(runs[:1], 4)) == 1


def test_sweep_trains_and_caches(monkeypatch, tmp_path):
    # One worker; the next test takes the parallel path.
    
    _isolated_cache(monkeypatch, tmp_path)
    data = shakespeare()
    runs = [ch03.isoflop_run(2e9, d, data.vocab_size, steps=3) for d in (4, 6)]
    results = ch03.run_isoflop_sweep(runs, data, "test-ch3", workers=1, progress=False)
    assert [r["run"] for r in results] == [r.name for r in runs]
    assert len(list((tmp_path / "sweeps" / "test-ch3").glob("*.json"))) == 2
    again = ch03.run_isoflop_sweep(runs, data, "test-ch3", workers=2, progress=False)  # all cached
    assert [r["finished_at"] for r in again] == [r["finished_at"] for r in results]  # read back, not retrained
    with pytest.raises(ValueError, match="workers"):
        ch03.run_isoflop_sweep(runs, data, "test-ch3", workers=0)


def _isolated_cache(monkeypatch, tmp_path):
    import shutil

    from book import device

    peaks = device.cache_dir() / "machine_peaks.json"
    if peaks.exists():  # spare the run re-measuring this machine's peak
        shutil.copy(peaks, tmp_path / "machine_peaks.json")
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))  # the spawned workers inherit the environment
    monkeypatch.setenv("BOOK_DEVICE", "cpu")


def test_parallel_sweep_matches_sequential_and_surfaces_errors(monkeypatch, tmp_path):
    # One pool of two spawned workers (each imports torch and loads the data): the path lesson 3.1 takes on a CPU.

    
    _isolated_cache(monkeypatch, tmp_path)
    data = shakespeare()
    runs = [ch03.isoflop_run(2e9, d, data.vocab_size, steps=3) for d in (4, 6)]
    bad = ch03.isoflop_run(2e9, 4, 5, steps=1)  # a vocabulary of 5: training on Shakespeare fails
    parts = ch03.partition(runs + [bad], 2)
    assert sorted(len(p) for p in parts) == [1, 2] and any(p[-1] is bad for p in parts)  # bad trains last
    # a worker's exception comes back as a RuntimeError naming its runs, not a hang
    # (which runs it names depends on which worker the pool lost first)
    with pytest.raises(RuntimeError, match="a training worker failed on runs") as err:
        ch03.run_isoflop_sweep(runs + [bad], data, "test-ch3-par", workers=2, progress=False)
    assert err.value.__cause__ is not None
    # every run finished before the failure was stored, one complete JSON file each
    folder = tmp_path / "sweeps" / "test-ch3-par"
    assert len(list(folder.glob("*.json"))) == 2 and not list(folder.glob("*.tmp*"))
    parallel = ch03.run_isoflop_sweep(runs, data, "test-ch3-par", workers=2, progress=False)  # read back
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting, so that the arithmetic is the same
    try:
        plain = ch03.run_sweep(runs, data, "test-ch3-seq", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [r["run"] for r in parallel] == [r.name for r in runs]
    # the same runs: same seed, same batches, one thread each; equal up to float rounding (a kernel's summation
    # order may depend on how a buffer happens to be aligned in each process)
    for p, s in zip(parallel, plain):
        assert p["final_val_loss"] == pytest.approx(s["final_val_loss"], rel=1e-5), p["run"]
        train_p, train_s = ([c["train_loss"] for c in r["curve"] if "train_loss" in c] for r in (p, s))
        assert train_p and train_p == pytest.approx(train_s, rel=1e-5), p["run"]
    other = type("Data", (), {"name": "other-text"})()  # only its name is read before the check
    with pytest.raises(ValueError, match="workers=1"):
        ch03.run_isoflop_sweep([bad, runs[0]], other, "test-ch3-other", workers=2)


def test_balance_runs_differ_only_in_the_loss_coefficients():
    runs = ch04_moe.balance_runs(65)
    assert [r.name for r in runs] == ["no-balancing", "switch-loss", "switch-and-z-loss"]
    assert [(r.model.aux_loss_coef, r.model.z_loss_coef) for r in runs] == [(0.0, 0.0), (0.01, 0.0), (0.01, 0.001)]
    base = {k: v for k, v in runs[0].model.to_dict().items() if k not in ("aux_loss_coef", "z_loss_coef")}
    for run in runs:
        assert {k: v for k, v in run.model.to_dict().items() if k not in ("aux_loss_coef", "z_loss_coef")} == base
        assert run.train == runs[0].train and run.model.n_moe_layers == run.model.n_layer


def test_scaling_runs_match_active_parameters():
    runs = ch04_moe.scaling_runs(65)
    dense = count_params(runs[0].model, embedding=False)
    assert runs[0].model.n_experts == 0 and len({r.train for r in runs}) == 1
    for run in runs[1:]:
        m = run.model
        active = count_params(m, embedding=False, active=True)
        routers_and_biases = m.n_layer * (m.d_model * m.n_experts + (m.expert_k - 1) * m.d_model)
        assert active - dense == routers_and_biases
        assert m.d_ff * m.expert_k == runs[0].model.d_ff
        assert count_params(m, embedding=False) > 2 * dense


def test_copy_runs_and_accuracy():
    data = copy_task(n_train=5000, n_val=5000)
    runs = ch05_attention.copy_runs(data)
    assert [r.name for r in runs] == list(ch05_attention.LEARNING_VARIANTS)
    lag = copy_shape(data)["lag"]
    windows = {r.name: r.model.attention_window for r in runs if r.model.attention == "sliding_window"}
    assert windows["window_short"] < lag <= windows["window_long"] < runs[0].model.n_ctx
    assert {r.model.attention for r in runs} == {"sdpa", "sliding_window", "linear", "lsh"}
    with pytest.raises(ValueError, match="variant"):
        ch05_attention.copy_runs(data, variants=("window",))


def test_shakespeare_runs():
    runs = ch05_attention.shakespeare_runs(65)
    assert [r.name for r in runs] == list(ch05_attention.LEARNING_VARIANTS)
    n_ctx = runs[0].model.n_ctx
    assert n_ctx >= 256 and all(r.model.n_ctx == n_ctx and r.model.vocab_size == 65 for r in runs)
    with pytest.raises(ValueError, match="vocab_size"):
        ch05_attention.shakespeare_runs(0)
    data = ch05_attention.copy_data()
    assert data.vocab_size == 16 and copy_shape(data)["lag"] in (24, 96)


def test_tiny_gpt(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "cpu")
    run, batch = ch00_machine.tiny_gpt(81)
    assert run.name == "tiny-gpt" and run.train.batch_size == batch and run.model.vocab_size == 81
    with pytest.raises(TypeError, match="vocab_size"):
        ch00_machine.tiny_gpt(81.0)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_chapter1_sizes(monkeypatch, profile):
    monkeypatch.setenv("BOOK_PROFILE", profile)
    setup = ch01_why_scale.recurrence_setup()
    assert isinstance(setup, recurrence.Setup)
    assert setup == {"cpu": ch01_why_scale.RECURRENCE_CPU, "gpu": ch01_why_scale.RECURRENCE_GPU}[profile]
    sizes = ch01_why_scale.residual_paths_sizes()
    cfg = ch01_why_scale.residual_paths_config(1e-3)
    assert (cfg.steps, cfg.batch_size) == (sizes["steps"], sizes["batch_size"])
    assert cfg.schedule == "constant" and cfg.warmup == 0 and cfg.grad_clip is None and cfg.weight_decay == 0
    with pytest.raises(ValueError, match="lr"):
        ch01_why_scale.residual_paths_config(0.0)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_planned_runs_cover_every_chapter(monkeypatch, profile):
    monkeypatch.setenv("BOOK_PROFILE", profile)
    names = [c.__name__.rsplit(".", 1)[1] for c in experiments.CHAPTERS]
    assert names[:6] == ["ch00_machine", "ch01_why_scale", "ch02_kaplan", "ch03_chinchilla", "ch04_moe",
                         "ch05_attention"]
    plan = experiments.planned_runs()
    for chapter in experiments.CHAPTERS[:6]:
        for sweep, runs in chapter.planned_runs().items():
            assert plan[sweep] == runs and runs and all(isinstance(r, Run) for r in runs), sweep
            assert len({r.name for r in runs}) == len(runs), sweep  # run names key the cache
    assert {"lesson00", "lesson01-first-scaling-law", "ch2-data-law", "ch2-shape", "ch3-isoflop", "ch3-schedule",
            "ch4-load-balance", "ch4-sparse-scaling", "ch5-does-it-learn-copy",
            "ch5-does-it-learn-shakespeare"} <= set(plan)
    assert plan[ch05_attention.COPY_SWEEP][0].model.vocab_size == 16  # the copy task's own vocabulary


def test_only_device_and_experiments_read_the_profile():
    import pathlib
    import re

    import book

    root = pathlib.Path(book.__file__).parent
    readers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if re.search(r"by_profile|profile\(\)", p.read_text()))
    assert all(p == "device.py" or p.startswith("experiments/") for p in readers), readers


def test_lesson_groups_split_a_chapter_only_where_its_module_says():
    from book.experiments import lesson_group

    assert lesson_group("lessons/06_cost_of_scale/7_kv_cache.ipynb") == "06_cost_of_scale/7-8"
    assert lesson_group("lessons/06_cost_of_scale/8_quantization_speculative.ipynb") == "06_cost_of_scale/7-8"
    assert lesson_group("lessons/06_cost_of_scale/5_data_parallel.ipynb") == "06_cost_of_scale/5"
    assert lesson_group("lessons/03_chinchilla/1_isoflop.ipynb") == "03_chinchilla"  # no groups: one worker
    assert lesson_group("tiny/00_dry_run/a.ipynb") == "00_dry_run"
    # every sweep a chapter trains belongs to one group at most
    from book.experiments import CHAPTERS
    for chapter in CHAPTERS:
        named = [s for sweeps in getattr(chapter, "LESSON_GROUPS", {}).values() for s in sweeps]
        assert len(named) == len(set(named)), chapter.__name__

import math

import numpy as np
import pytest

from book import chinchilla, hardware
from book.fit import ChinchillaFit
from book.model import count_params

FIT = chinchilla.HOFFMANN_FIT


@pytest.mark.parametrize("profile, budgets", [("cpu", 3), ("gpu", 5)])
def test_isoflop_runs_spend_their_budget(monkeypatch, profile, budgets):
    monkeypatch.setenv("BOOK_PROFILE", profile)
    runs = chinchilla.isoflop_runs(81)
    plan = chinchilla.isoflop_plan()
    assert len(plan) >= budgets and all(len(widths) >= 5 for widths in plan.values())
    assert len({r.name for r in runs}) == len(runs) == sum(len(w) for w in plan.values())
    for run in runs:
        C = float(run.name[1:run.name.index("-d")])
        n = count_params(run.model, embedding=False)
        tokens = run.train.steps * run.train.batch_size * run.model.n_ctx
        assert abs(6 * n * tokens / C - 1) < 0.02, f"{run.name}: 6ND = {6 * n * tokens:.3g}, budget {C:.3g}"
        assert run.train.schedule_steps is None  # the cosine cycle is the run's own length
        assert run.train.lr == chinchilla.lr_for_width(run.model.d_model)


def test_isoflop_run_with_fewer_steps_matches_its_schedule():
    full = chinchilla.isoflop_run(2e10, 10, 81)
    short = chinchilla.isoflop_run(2e10, 10, 81, steps=full.train.steps // 4)
    assert short.train.steps == full.train.steps // 4 and short.train.schedule_steps is None
    assert short.name == f"C2e10-d10-s{full.train.steps // 4}" and full.name == "C2e10-d10"
    assert short.model == full.model and short.train.lr == full.train.lr
    with pytest.raises(ValueError, match="steps"):
        chinchilla.isoflop_run(2e10, 10, 81, steps=full.train.steps + 1)
    with pytest.raises(ValueError, match="C must be"):
        chinchilla.isoflop_run(-1.0, 10, 81)
    with pytest.raises(ValueError, match="d_model"):
        chinchilla.isoflop_run(2e10, 7, 81)


def test_budget_name_and_lr():
    assert chinchilla.budget_name(2e9) == "2e9" and chinchilla.budget_name(6e10) == "6e10"
    assert chinchilla.lr_for_width(4) == 0.02 and chinchilla.lr_for_width(16) == 0.01
    with pytest.raises(ValueError, match="d_model"):
        chinchilla.lr_for_width(0)


def test_parabola_finds_the_vertex():
    N = np.geomspace(1e3, 1e5, 6)
    x = np.log(N)
    p = chinchilla.fit_parabola(N, 0.1 * (x - np.log(5e3)) ** 2 + 2.0)
    assert p.N_opt == pytest.approx(5e3, rel=1e-9) and p.loss_opt == pytest.approx(2.0) and p.interior
    edge = chinchilla.fit_parabola(N, 0.1 * (x - np.log(1e6)) ** 2)
    assert not edge.interior
    with pytest.raises(ValueError, match="not convex"):
        chinchilla.fit_parabola(N, -(x**2))
    with pytest.raises(ValueError, match="3 distinct"):
        chinchilla.fit_parabola([1e3, 1e4, 1e4], [1.0, 2.0, 3.0])


def test_frontier_recovers_the_exponent_of_a_known_law():
    C, N = [], []
    for c in (1e18, 1e19, 1e20, 1e21):
        n_opt, _ = FIT.optimal(c)
        n = n_opt * np.geomspace(1 / 4, 4, 7)
        C += [c] * 7
        N += list(n)
    C, N = np.array(C), np.array(N)
    rng = np.random.default_rng(0)
    loss = FIT.predict(N, C / (6 * N)) + rng.normal(0, 1e-3, N.size)
    frontier = chinchilla.isoflop_frontier(C, N, loss, n_bootstrap=200)
    assert abs(frontier.a - FIT.a) < 0.02
    assert frontier.ci["a"][0] - 0.01 <= FIT.a <= frontier.ci["a"][1] + 0.01
    assert frontier.b == pytest.approx(1 - frontier.a)
    assert np.allclose(frontier.N_opt * frontier.D_opt * 6, frontier.C)
    assert np.allclose(frontier.N_opt, [FIT.optimal(c)[0] for c in frontier.C], rtol=0.1)
    n, d = frontier.optimal(1e19)
    assert 6 * n * d == pytest.approx(1e19)
    with pytest.raises(ValueError, match="2 budgets"):
        chinchilla.isoflop_frontier([1.0] * 3, [1.0, 2.0, 3.0], [1.0, 0.5, 1.0])


def test_isoflop_table_reads_results():
    results = [{"run": "C2e9-d4", "model_config": {"d_model": 4}, "params": 496, "tokens": 1000, "final_val_loss": 2.5}]
    table = chinchilla.isoflop_table(results)
    assert table["C"][0] == 2e9 and table["flops"][0] == 6 * 496 * 1000 and table["loss"][0] == 2.5
    with pytest.raises(ValueError, match="IsoFLOP"):
        chinchilla.isoflop_table([{"run": "d4"}])


def test_published_fits():
    fit, source = chinchilla.PUBLISHED_FITS["Hoffmann et al. (2022)"]
    assert fit is FIT and "eq. (10)" in source
    assert FIT.a == pytest.approx(0.28 / 0.62)
    besiroglu = chinchilla.BESIROGLU_FIT
    assert 0.5 < besiroglu.a < 0.52  # compatible with Approaches 1 and 2, unlike the published 0.45


def test_allocate_by_flops_and_by_hours():
    by_flops = chinchilla.allocate(FIT, 5.76e23)
    assert 6 * by_flops.n_params * by_flops.n_tokens == pytest.approx(5.76e23)
    assert by_flops.loss == pytest.approx(FIT.predict(by_flops.n_params, by_flops.n_tokens))
    peak = hardware.accelerator("H100 SXM").peak("bfloat16")
    assert by_flops.accelerator_hours == pytest.approx(5.76e23 / (peak * hardware.PALM_540B_MFU) / 3600)
    by_hours = chinchilla.allocate(FIT, accelerator_hours=1000.0, accelerator="A100", mfu=0.4, n_accelerators=8)
    assert by_hours.flops == pytest.approx(1000 * 3600 * 312e12 * 0.4)
    assert by_hours.accelerator_hours == pytest.approx(1000.0) and by_hours.days == pytest.approx(1000 / 8 / 24)
    assert by_hours.tokens_per_param == pytest.approx(by_hours.n_tokens / by_hours.n_params)
    for kwargs, match in ((dict(), "exactly one"), (dict(flops=1e20, accelerator_hours=1.0), "exactly one"),
                          (dict(flops=-1.0), "flops"), (dict(flops=1e20, mfu=1.5), "mfu"),
                          (dict(flops=1e20, accelerator="TPU"), "not a known accelerator"),
                          (dict(flops=1e20, n_accelerators=0), "n_accelerators")):
        with pytest.raises(ValueError, match=match):
            chinchilla.allocate(FIT, **kwargs)
    with pytest.raises(ValueError, match="ChinchillaFit"):
        chinchilla.allocate({"E": 1.69}, 1e20)


def test_tokens_for_loss_inverts_predict():
    assert chinchilla.tokens_for_loss(FIT, 7e10, FIT.predict(7e10, 1.4e12)) == pytest.approx(1.4e12, rel=1e-9)
    assert chinchilla.tokens_for_loss(FIT, 1e6, 2.0) == math.inf  # a 1M model never reaches 2.0
    assert chinchilla.tokens_for_loss(FIT, np.array([7e10, 1e6]), 2.0).shape == (2,)


def test_inference_aware_optimum():
    n_opt, d_opt = FIT.optimal(5.76e23)
    target = FIT.predict(n_opt, d_opt)
    plain = chinchilla.inference_aware_optimum(FIT, target, 0.0)
    assert plain.n_params == pytest.approx(n_opt, rel=1e-4) and plain.inference_flops == 0
    assert plain.train_flops == pytest.approx(5.76e23, rel=1e-6)
    served = chinchilla.inference_aware_optimum(FIT, target, 1e13)
    assert served.n_params < plain.n_params and served.n_tokens > plain.n_tokens
    assert FIT.predict(served.n_params, served.n_tokens) == pytest.approx(target, rel=1e-9)
    # cheaper in total than serving the compute-optimal model
    assert served.total_flops < plain.train_flops + 2 * plain.n_params * 1e13
    with pytest.raises(ValueError, match="loss must be above"):
        chinchilla.inference_aware_optimum(FIT, 1.5, 0.0)
    with pytest.raises(ValueError, match="inference_tokens"):
        chinchilla.inference_aware_optimum(FIT, 2.0, -1.0)


def test_partition_balances_the_work():
    runs = chinchilla.isoflop_runs(81)
    parts = chinchilla.partition(runs, 2)
    assert sorted(r.name for p in parts for r in p) == sorted(r.name for r in runs)
    loads = [sum(chinchilla._work(r) for r in p) for p in parts]
    assert max(loads) / min(loads) < 1.2
    assert len(chinchilla.partition(runs[:1], 4)) == 1


def test_sweep_trains_and_caches(monkeypatch, tmp_path):
    # One worker; the next test takes the parallel path.
    from book import experiments

    _isolated_cache(monkeypatch, tmp_path)
    data = experiments.shakespeare()
    runs = [chinchilla.isoflop_run(2e9, d, data.vocab_size, steps=3) for d in (4, 6)]
    results = chinchilla.run_isoflop_sweep(runs, data, "test-ch3", workers=1, progress=False)
    assert [r["run"] for r in results] == [r.name for r in runs]
    assert len(list((tmp_path / "sweeps" / "test-ch3").glob("*.json"))) == 2
    again = chinchilla.run_isoflop_sweep(runs, data, "test-ch3", workers=2, progress=False)  # all cached
    assert [r["finished_at"] for r in again] == [r["finished_at"] for r in results]  # read back, not retrained
    with pytest.raises(ValueError, match="workers"):
        chinchilla.run_isoflop_sweep(runs, data, "test-ch3", workers=0)


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
    import torch

    from book import experiments

    _isolated_cache(monkeypatch, tmp_path)
    data = experiments.shakespeare()
    runs = [chinchilla.isoflop_run(2e9, d, data.vocab_size, steps=3) for d in (4, 6)]
    bad = chinchilla.isoflop_run(2e9, 4, 5, steps=1)  # a vocabulary of 5: training on Shakespeare fails
    parts = chinchilla.partition(runs + [bad], 2)
    assert sorted(len(p) for p in parts) == [1, 2] and any(p[-1] is bad for p in parts)  # bad trains last
    # a worker's exception comes back as a RuntimeError naming its runs, not a hang
    with pytest.raises(RuntimeError, match="C2e9-d4-s1") as err:
        chinchilla.run_isoflop_sweep(runs + [bad], data, "test-ch3-par", workers=2, progress=False)
    assert err.value.__cause__ is not None
    # every run finished before the failure was stored, one complete JSON file each
    folder = tmp_path / "sweeps" / "test-ch3-par"
    assert len(list(folder.glob("*.json"))) == 2 and not list(folder.glob("*.tmp*"))
    parallel = chinchilla.run_isoflop_sweep(runs, data, "test-ch3-par", workers=2, progress=False)  # read back
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting, so that the arithmetic is the same
    try:
        plain = chinchilla.run_sweep(runs, data, "test-ch3-seq", progress=False)
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
        chinchilla.run_isoflop_sweep([bad, runs[0]], other, "test-ch3-other", workers=2)

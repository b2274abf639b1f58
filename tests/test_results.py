import json

import matplotlib.pyplot as plt
import pytest

from book import results


def _write_run(folder, name, params, loss, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    result = {"run": name, "params": params, "tokens": 4_096_000, "flops": 6.0 * params * 4_096_000,
              "final_val_loss": loss, "device_name": "NVIDIA H200", "finished_at": "2026-12-01T20:00:00+00:00",
              **extra}
    (folder / f"{name}.json").write_text(json.dumps(result))


def _device(root, slug="gpu-nvidia-h200", date="2026-12-01"):
    (root / slug).mkdir(parents=True, exist_ok=True)
    (root / slug / results.MANIFEST).write_text(json.dumps(
        {"device_name": "NVIDIA H200", "date": date, "code_version": "abc123"}))
    return root / slug


def _law(n):  # an exact power law with a floor: the fit must find it and predict the largest run
    return 1.5 + 40.0 * n ** -0.3


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_no_committed_results_prints_one_line(tmp_path, capsys):
    assert results.report("ch2-model-size", root=tmp_path / "missing") is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "No GPU results committed for sweep 'ch2-model-size'" in out
    assert not plt.get_fignums()
    assert results.available("ch2-model-size", root=tmp_path) is False


def test_report_table_fit_prediction_and_figure(tmp_path, capsys):
    folder = _device(tmp_path) / "ch2-model-size"
    sizes = [10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000]
    for i, n in enumerate(sizes):
        _write_run(folder, f"d{i}", n, _law(n))
    live = [{"run": "d8", "params": 1760, "final_val_loss": 2.9, "device_name": "a CPU"}]
    rep = results.report("ch2-model-size", live=live, root=tmp_path)
    out = capsys.readouterr().out
    assert "6 runs on NVIDIA H200, 2026-12-01" in out and "results/gpu-nvidia-h200/ch2-model-size/" in out
    assert [r["run"] for r in rep.runs] == [f"d{i}" for i in range(6)]  # sorted by N
    assert rep.fit is not None and rep.fit.alpha == pytest.approx(0.3, rel=0.05)
    assert rep.observed == pytest.approx(_law(3_000_000))
    assert rep.prediction_error < 0.01
    assert "Prediction test: d5" in out
    assert max(len(line) for line in out.splitlines()) <= 88
    assert len(plt.get_fignums()) == 1
    labels = plt.gca().get_legend_handles_labels()[1]
    assert any("NVIDIA H200, 2026-12-01" in s for s in labels) and any("a CPU" in s for s in labels)


def test_report_is_deterministic(tmp_path, capsys):
    folder = _device(tmp_path) / "s"
    for i, n in enumerate([1e4, 3e4, 1e5, 3e5, 1e6]):
        _write_run(folder, f"r{i}", int(n), _law(n) * (1 + 0.01 * (-1) ** i))
    results.report("s", root=tmp_path)
    first = capsys.readouterr().out
    results.report("s", root=tmp_path, live=[{"params": 5, "final_val_loss": 3.0}])  # live: figure only
    assert capsys.readouterr().out == first


def test_report_without_fit_and_other_axes(tmp_path, capsys):
    folder = _device(tmp_path) / "ch4-load-balance"
    for name in ("no-balancing", "switch-loss"):
        _write_run(folder, name, 3_168_768, 2.0, params_total=9_000_000)
    rep = results.report("ch4-load-balance", fit=False, x="params_total", root=tmp_path)
    assert rep.fit is None and rep.prediction_error is None
    assert "Fit" not in capsys.readouterr().out


def test_too_few_runs_to_fit_says_so(tmp_path, capsys):
    folder = _device(tmp_path) / "tiny"
    _write_run(folder, "a", 100, 3.0)
    _write_run(folder, "b", 200, 2.9)
    rep = results.report("tiny", root=tmp_path)
    assert rep.fit is None and "No fit" in capsys.readouterr().out


def test_newest_device_run_wins(tmp_path, capsys):
    _write_run(_device(tmp_path, "gpu-old", "2026-01-01") / "s", "a", 100, 3.0)
    _write_run(_device(tmp_path, "gpu-new", "2026-12-01") / "s", "a", 100, 2.0)
    rep = results.report("s", fit=False, root=tmp_path)
    assert rep.device == "gpu-new" and rep.runs[0]["final_val_loss"] == 2.0


def test_folder_without_manifest_is_not_a_device_run(tmp_path, capsys):
    _write_run(tmp_path / "loose" / "s", "a", 100, 3.0)
    assert results.report("s", root=tmp_path) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"sweep": ""}, "sweep"), ({"sweep": "a/b"}, "sweep"), ({"sweep": 3}, "sweep"),
    ({"sweep": "s", "holdout": -1}, "holdout"), ({"sweep": "s", "holdout": True}, "holdout"),
    ({"sweep": "s", "live": "x"}, "live"), ({"sweep": "s", "live": [1]}, "live"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    sweep = kwargs.pop("sweep")
    with pytest.raises((ValueError, TypeError), match=match):
        results.report(sweep, root=tmp_path, **kwargs)


def test_missing_key_names_the_run_and_the_key(tmp_path):
    _write_run(_device(tmp_path) / "s", "a", 100, 3.0)
    with pytest.raises(ValueError, match="run 'a' has no 'nonsense'"):
        results.report("s", x="nonsense", root=tmp_path)

import json

import pytest

from book import data, sweep
from book.model import GPTConfig
from book.train import TrainConfig


def _runs(steps=12):
    return [sweep.Run(f"d{d}", GPTConfig(n_layer=1, d_model=d, n_head=2, n_ctx=8, vocab_size=8),
                      TrainConfig(steps=steps, batch_size=4)) for d in (8, 16, 24)]


@pytest.fixture
def ds():
    return data.MarkovSource(vocab_size=8, seed=4).dataset(4_000, 1_000)


def test_sweep_resumes_after_a_crash_mid_run(book_cache, tmp_path, ds, monkeypatch):
    runs = _runs()
    reference = sweep.run_sweep(runs, ds, "reference", results_dir=tmp_path, progress=False)

    # Crash in the middle of the second run, after it saved a checkpoint.
    import book.train as train_module
    real_train = train_module.train
    calls = []

    def crashing_train(*args, **kwargs):
        calls.append(args[0].d_model)
        if args[0].d_model == 16:
            def crash(step, loss):
                if step == 7:
                    raise KeyboardInterrupt("simulated crash")
            kwargs["callback"] = crash
        return real_train(*args, **kwargs)

    monkeypatch.setattr(sweep, "train", crashing_train)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(runs, ds, "crashy", results_dir=tmp_path, progress=False, checkpoint_every=3)
    folder = tmp_path / "crashy"
    assert len(list(folder.glob("d8-*.json"))) == 1  # the finished run is kept
    assert not list(folder.glob("d16-*.json"))  # no half-written result
    assert len(list(folder.glob("d16-*.ckpt"))) == 1  # its checkpoint is there
    assert not list(folder.glob(".*tmp"))  # no temporary files left behind
    finished_before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}

    monkeypatch.setattr(sweep, "train", real_train)
    trained = []
    resumed = sweep.run_sweep(runs, ds, "crashy", results_dir=tmp_path, progress=False, checkpoint_every=3,
                              on_run=lambda run, result: trained.append(run.name))
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("d8-*.json")} == finished_before
    assert not list(folder.glob("*.ckpt"))
    for a, b in zip(resumed, reference):
        assert a["curve"] == b["curve"] and a["final_val_loss"] == b["final_val_loss"]
    for result in resumed:
        on_disk = json.loads((folder / f"{result['run']}-{result['key']}.json").read_text())
        assert {"model_config", "train_config", "curve", "final_val_loss", "tokens", "flops",
                "train_seconds", "device"} <= on_disk.keys()


def test_changed_config_is_not_reused(book_cache, tmp_path, ds):
    sweep.run_sweep(_runs(steps=4)[:1], ds, "s", results_dir=tmp_path, progress=False)
    changed = _runs(steps=5)[:1]
    assert sweep.run_key(changed[0], ds.name) != sweep.run_key(_runs(steps=4)[0], ds.name)
    assert len(sweep.stale_results(changed, ds, "s", results_dir=tmp_path)) == 1
    result = sweep.run_sweep(changed, ds, "s", results_dir=tmp_path, progress=False)[0]
    assert result["train_config"]["steps"] == 5


def test_key_depends_on_dataset_and_code(monkeypatch, ds):
    run = _runs()[0]
    assert sweep.run_key(run, "a") != sweep.run_key(run, "b")
    before = sweep.run_key(run, ds.name)
    monkeypatch.setattr(sweep, "code_version", lambda: "other")
    assert sweep.run_key(run, ds.name) != before


@pytest.mark.parametrize("call, match", [
    (lambda ds: sweep.run_sweep([], ds, "x"), "runs"),
    (lambda ds: sweep.run_sweep(_runs()[:1] * 2, ds, "x"), "unique"),
    (lambda ds: sweep.run_sweep(_runs()[:1], ds, "a/b"), "sweep"),
    (lambda ds: sweep.Run("bad name", _runs()[0].model, _runs()[0].train), "name"),
])
def test_bad_sweep_input_raises(call, match, ds):
    with pytest.raises(ValueError, match=match):
        call(ds)


def test_kept_model_reloads_with_the_same_loss(book_cache, tmp_path, ds):
    from book.train import evaluate
    result = sweep.run_sweep(_runs()[:1], ds, "keep", results_dir=tmp_path, progress=False, keep_models=True)[0]
    model = sweep.load_model(result, results_dir=tmp_path)
    tcfg = result["train_config"]
    assert evaluate(model, ds.val, tcfg["batch_size"], tcfg["eval_batches"]) == pytest.approx(result["final_val_loss"])
    plain = sweep.run_sweep(_runs()[1:2], ds, "keep", results_dir=tmp_path, progress=False)[0]
    with pytest.raises(ValueError, match="keep_models"):
        sweep.load_model(plain, results_dir=tmp_path)


class _CountingTracker:
    """Counts training forward passes of the model while open."""

    def __init__(self):
        self.calls, self._handle = 0, None

    def _hook(self, module, inputs, output):
        if module.training and type(module).__name__ == "GPT":
            self.calls += 1

    def __enter__(self):
        import torch

        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def to_dict(self):
        return {"calls": self.calls}


def test_tracked_runs_store_what_the_tracker_saw(book_cache, tmp_path, ds):
    runs = _runs()[:1]
    plain = sweep.run_sweep(runs, ds, "tracked", results_dir=tmp_path, progress=False)
    assert "tracked" not in plain[0]
    tracked = sweep.run_sweep(runs, ds, "tracked", results_dir=tmp_path, progress=False, track=lambda run: _CountingTracker())
    assert tracked[0]["tracked"] == {"calls": runs[0].train.steps}  # one training forward a step, none from eval
    assert tracked[0]["final_val_loss"] == pytest.approx(plain[0]["final_val_loss"])  # retrained the same
    again = sweep.run_sweep(runs, ds, "tracked", results_dir=tmp_path, progress=False, track=lambda run: _CountingTracker())
    assert again[0]["finished_at"] == tracked[0]["finished_at"]  # read back, not retrained
    assert not list((tmp_path / "tracked").glob("*.ckpt"))

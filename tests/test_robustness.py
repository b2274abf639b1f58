"""Reliability and security of the files the library reads and writes (issue 15).

- a planted checkpoint whose unpickling would run code is refused, and nothing runs;
- corrupted caches (sweep results, checkpoints, machine peaks) are moved aside and recomputed;
- a run resumed from any step between two log points equals the uninterrupted one, bit for bit;
- a writer killed at random moments leaves neither a corrupt target nor a temporary file behind;
- two sweeps on one cache at once train each run once.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from book import data, hardware, sweep
from book.model import GPTConfig
from book.storage import CorruptFileWarning, read_json_checked, write_json_atomic
from book.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def _tiny(dropout=0.0, d_model=16):
    return GPTConfig(n_layer=1, d_model=d_model, n_head=2, n_ctx=8, vocab_size=8, dropout=dropout)


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    # These runs are tiny: one thread is many times faster than several on a busy machine, and
    # they need no measured peak (MFU is not what is tested here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(hardware, "measured_peak", lambda dtype=None, dev=None: 1e12)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ds():
    return data.MarkovSource(vocab_size=8, seed=5).dataset(3_000, 800)


def _run(name="r", steps=6):
    return sweep.Run(name, _tiny(), TrainConfig(steps=steps, batch_size=4, log_every=2))


def _paths(tmp_path, run, ds, name="s"):
    base = tmp_path / name / f"{run.name}-{sweep.run_key(run, ds.name)}"
    return base.with_suffix(".json"), base.with_suffix(".ckpt")


def _same_numbers(a: dict, b: dict) -> bool:
    return a["curve"] == b["curve"] and a["final_val_loss"] == b["final_val_loss"]


# --------------------------------------------------------------------------- 1. no code from the cache


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_planted_checkpoint_is_refused_and_nothing_runs(book_cache, tmp_path, ds):
    run = _run()
    reference = sweep.run_sweep([run], ds, "clean", results_dir=tmp_path, progress=False)[0]
    result_path, ckpt = _paths(tmp_path, run, ds)
    marker = tmp_path / "code-ran"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": _RunsCode(marker), "step": 1}, ckpt)
    # The plant is real: loading it the unsafe way runs its code.
    torch.load(ckpt, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.warns(CorruptFileWarning, match=f"{ckpt.name}.*refused") as caught:
        result = sweep.run_sweep([run], ds, "s", results_dir=tmp_path, progress=False)[0]
    assert str(ckpt) in str(caught[0].message)  # the message names the file
    assert not marker.exists()  # nothing ran
    assert ckpt.with_name(ckpt.name + ".corrupt").exists() and not ckpt.exists()
    assert _same_numbers(result, reference)  # the run was trained from scratch instead


def test_no_torch_load_without_weights_only():
    for module in (ROOT / "book").rglob("*.py"):
        for line in module.read_text().splitlines():
            if "torch.load(" in line and not line.lstrip().startswith("#"):
                assert "weights_only=True" in line, f"{module.name}: {line.strip()}"


# --------------------------------------------------------------------------- 3. cache integrity


@pytest.mark.parametrize("damage", ["empty object", "list", "truncated", "edited loss", "other key"])
def test_damaged_result_is_moved_aside_and_retrained(book_cache, tmp_path, ds, damage):
    run = _run()
    first = sweep.run_sweep([run], ds, "s", results_dir=tmp_path, progress=False)[0]
    path, _ = _paths(tmp_path, run, ds)
    text = path.read_text()
    if damage == "empty object":
        path.write_text("{}")
    elif damage == "list":
        path.write_text("[1, 2]")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "edited loss":
        path.write_text(json.dumps(json.loads(text) | {"final_val_loss": 0.5}))
    else:  # another run's (valid) file under this run's name
        other = sweep.run_sweep([_run("q")], ds, "s", results_dir=tmp_path, progress=False)[0]
        path.write_text((tmp_path / "s" / other["file"]).read_text())
    trained = []
    with pytest.warns(CorruptFileWarning, match=path.name):
        again = sweep.run_sweep([run], ds, "s", results_dir=tmp_path, progress=False,
                                on_run=lambda r, res: trained.append(res["finished_at"]))[0]
    assert path.with_name(path.name + ".corrupt").exists()
    assert _same_numbers(again, first)
    assert json.loads(path.read_text()) == again  # a good file again, reused from now on
    sweep.check_result(again, run, again["key"], ds.name, path.name)


def test_truncated_checkpoint_is_moved_aside_and_the_run_retrained(book_cache, tmp_path, ds):
    run = _run(steps=8)
    reference = sweep.run_sweep([run], ds, "clean", results_dir=tmp_path, progress=False)[0]
    _, ckpt = _paths(tmp_path, run, ds)

    def crash(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run.model, run.train, ds, progress=False, checkpoint_path=ckpt, checkpoint_every=2, callback=crash)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.warns(CorruptFileWarning, match=ckpt.name):
        result = sweep.run_sweep([run], ds, "s", results_dir=tmp_path, progress=False)[0]
    assert _same_numbers(result, reference)
    assert not ckpt.exists()


def test_damaged_machine_peaks_are_moved_aside_and_measured_again(book_cache, monkeypatch):
    dev = torch.device("cpu")
    fresh = hardware.MachinePeaks(device="cpu", device_name="test", matmul_flops_per_s={"float32": 1e9},
                                  memory_bandwidth_bytes_per_s=1e9)
    measured = []

    def fake_measure(dev=None):
        measured.append(1)
        write_json_atomic(hardware._peaks_path(), asdict(fresh))
        return fresh

    monkeypatch.setattr(hardware, "measure_peaks", fake_measure)
    path = hardware._peaks_path()
    good = path.read_text() if path.exists() else None
    try:
        for damage in ({"device": "cpu"}, [1, 2], "not json", asdict(fresh) | {"threads": "many"}):
            path.write_text(damage if isinstance(damage, str) else json.dumps(damage))
            with pytest.warns(CorruptFileWarning, match="machine_peaks.json"):
                assert hardware.measured_peaks(dev) == fresh
        assert len(measured) == 4
    finally:  # the session's real peaks, for the other tests
        if good is not None:
            path.write_text(good)
        else:
            path.unlink(missing_ok=True)
        path.with_name(path.name + ".corrupt").unlink(missing_ok=True)


def test_read_json_checked(tmp_path):
    path = tmp_path / "x.json"
    assert read_json_checked(path, lambda obj: None) is None  # missing: nothing to reuse
    write_json_atomic(path, {"a": 1})
    assert read_json_checked(path, lambda obj: obj["a"]) == {"a": 1}

    def needs_b(obj):
        if "b" not in obj:
            raise ValueError("missing key b")

    with pytest.warns(CorruptFileWarning, match="x.json.*missing key b"):
        assert read_json_checked(path, needs_b) is None
    assert not path.exists() and (tmp_path / "x.json.corrupt").exists()


# --------------------------------------------------------------------------- 4. exact resume


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_at_every_step_between_log_points_is_exact(book_cache, tmp_path, ds, dropout):
    cfg = _tiny(dropout)
    tcfg = TrainConfig(steps=12, batch_size=4, log_every=4, eval_every=12)
    reference = train(cfg, tcfg, ds, progress=False)
    for crash_at in range(4, 9):  # log points after steps 4 and 8: resume from every step in between
        ckpt = tmp_path / f"crash{crash_at}-{dropout}.ckpt"

        def crash(step, loss):
            if step == crash_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(cfg, tcfg, ds, progress=False, checkpoint_path=ckpt, checkpoint_every=1, callback=crash)
        torch.manual_seed(999)  # a fresh process would not share the crashed one's RNG state
        resumed = train(cfg, tcfg, ds, progress=False, checkpoint_path=ckpt, checkpoint_every=1)
        assert resumed.curve == reference.curve, crash_at
        for name, weight in reference.model.state_dict().items():
            assert torch.equal(resumed.model.state_dict()[name], weight), (crash_at, name)


# --------------------------------------------------------------------------- 5. crash-safe files

_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from book.storage import write_json_atomic
    print("ready", flush=True)
    i = 0
    while True:
        write_json_atomic(sys.argv[1], {"i": i, "payload": "x" * 300_000})
        i += 1
""")


def test_killed_writers_leave_no_corrupt_target_and_no_temporaries(tmp_path):
    target = tmp_path / "result.json"
    rng = random.Random(0)
    orphans_seen = 0
    for _ in range(12):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(ROOT)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.05))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        temporaries = list(tmp_path.glob(".*.tmp"))
        assert len(temporaries) <= 1  # each writer cleaned up what the one killed before it left
        orphans_seen += len(temporaries)
        if target.exists():  # whole or absent, never half written
            content = json.loads(target.read_text())
            assert content["payload"] == "x" * 300_000
    write_json_atomic(target, {"done": True})
    assert not list(tmp_path.glob(".*.tmp"))
    assert orphans_seen >= 1  # some kills did land in the middle of a write
    assert json.loads(target.read_text()) == {"done": True}


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "x.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".x.json.{dead.pid}.abc.tmp"
    in_flight = tmp_path / f".x.json.{os.getpid()}.def.tmp"  # this process is alive
    orphan.write_text("partial")
    in_flight.write_text("partial")
    write_json_atomic(target, [1])
    assert not orphan.exists() and in_flight.exists()


# --------------------------------------------------------------------------- 6. one process per run

_SWEEPER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from book import data, hardware, sweep
    from book.model import GPTConfig
    from book.train import TrainConfig

    log, go = Path(sys.argv[1]), Path(sys.argv[2])
    real_train = sweep.train

    def logged_train(*args, **kwargs):
        with open(log, "a") as f:
            f.write(kwargs["desc"].split()[-1] + "\\n")
        return real_train(*args, **kwargs)

    sweep.train = logged_train
    hardware.measured_peak = lambda dtype=None, dev=None: 1e12  # no need to measure the machine here
    ds = data.MarkovSource(vocab_size=8, seed=5).dataset(3_000, 800)
    runs = [sweep.Run(f"d{d}", GPTConfig(n_layer=1, d_model=d, n_head=2, n_ctx=8, vocab_size=8),
                      TrainConfig(steps=30, batch_size=4)) for d in (8, 16, 24)]
    while not go.exists():
        time.sleep(0.01)
    results = sweep.run_sweep(runs, ds, "shared", progress=False, checkpoint_every=3)
    print(json.dumps([[r["run"], r["finished_at"], r["final_val_loss"]] for r in results]))
""")


def test_two_sweeps_on_one_cache_train_each_run_once(tmp_path):
    log, go = tmp_path / "trained.log", tmp_path / "go"
    env = os.environ | {"BOOK_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    sweepers = [subprocess.Popen([sys.executable, "-c", _SWEEPER, str(log), str(go), str(ROOT)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(2)]
    time.sleep(0.5)
    go.touch()  # both start their sweeps at once, whatever their import times
    outputs = [s.communicate(timeout=120) for s in sweepers]
    for sweeper, (out, err) in zip(sweepers, outputs):
        assert sweeper.returncode == 0, err[-2000:]
    trained = log.read_text().split()
    assert sorted(trained) == ["d16", "d24", "d8"]  # each run trained by exactly one process
    first, second = (json.loads(out) for out, _ in outputs)
    assert first == second  # the other process read the very same results


def test_orphans_of_the_older_naming_are_removed_once_old(tmp_path):
    target = tmp_path / "x.json"
    old, recent = tmp_path / ".x.json.k3j_qz8a.tmp", tmp_path / ".x.json.p0w2ld9e.tmp"
    old.write_text("partial")
    recent.write_text("partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    write_json_atomic(target, [1])
    assert not old.exists() and recent.exists()

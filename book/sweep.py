"""Run many trainings, keep every finished one, resume after an interruption.

Each run's result is one JSON file, written atomically, named by the run and a
key: a hash of the model config, the training config, the dataset and the code
version (a hash of the modules that decide a result). So:

- a rerun skips runs whose file exists: finished work is never repeated;
- an interrupted run resumes from its last checkpoint (also written atomically);
- a result computed by other code or another config has another key, so it is
  never reused silently;
- a result file is checked before reuse (its keys and types, the run and key it was stored under,
  and a digest of its content, so a hand-edited number is not trusted): one that fails, or does
  not parse, is moved aside to ``*.corrupt`` with a warning and the run is trained again;
- one process at a time trains a run: a per-run lock file (``filelock``) makes a second sweep on the
  same cache wait for the run and then read its result, never train it twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from book import checks
from book import device as _device
from book.data import TokenDataset
from book.model import GPT, GPTConfig
from book.storage import load_torch_checked, read_json_checked, save_torch_atomic, write_json_atomic
from book.train import TrainConfig, train

# The modules whose code decides a run's numbers.
_VERSIONED_MODULES = ("model.py", "moe.py", "train.py", "data.py", "attention.py")
# Bumped when the layout of a result file changes, so old files are not read as new ones.
RESULT_FORMAT = 3


def code_version(modules: tuple[str, ...] = _VERSIONED_MODULES) -> str:
    """A short hash of the code (``book/`` modules by file name) that produces results; it changes with that code."""
    digest = hashlib.sha256()
    for name in modules:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Run:
    """One training run in a sweep: a name (letters, digits, '-', '_', '.'), a model and a schedule."""

    name: str
    model: GPTConfig
    train: TrainConfig

    def __post_init__(self):
        checks.instance("name", self.name, str)
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name):
            raise ValueError(f"name must be non-empty letters, digits, '-', '_' or '.', got {self.name!r}")
        checks.instance("model", self.model, GPTConfig)
        checks.instance("train", self.train, TrainConfig)


def run_key(run: Run, dataset: str) -> str:
    spec = {"model": run.model.to_dict(), "train": run.train.to_dict(), "dataset": dataset,
            "code": code_version(), "format": RESULT_FORMAT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def default_results_dir() -> Path:
    return _device.cache_dir() / "sweeps"


def _digest(result: dict) -> str:
    body = {k: v for k, v in result.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


# A result file's schema: each key and the type its value must have.
_RESULT_TYPES = {"model_config": dict, "train_config": dict, "dataset": str, "curve": list,
                 "final_val_loss": float, "final_train_loss": float, "params": int,
                 "params_total": int, "tokens": int, "flops": float, "train_seconds": float,
                 "tokens_per_s": float, "mfu": float, "peak_flops": float, "device": str,
                 "device_name": str, "run": str, "sweep": str, "key": str, "file": str,
                 "code_version": str, "finished_at": str, "digest": str}


def check_result(result, run: Run, key: str, dataset: str, file: str) -> None:
    """Raise ``ValueError`` unless ``result`` is a whole result of ``run`` stored under ``key``."""
    if not isinstance(result, dict):
        raise ValueError(f"a result must be a JSON object, got {type(result).__name__}")
    missing = sorted(_RESULT_TYPES.keys() - result.keys())
    if missing:
        raise ValueError(f"missing keys {missing}")
    for name, kind in _RESULT_TYPES.items():
        value = result[name]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ValueError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    expected = {"key": key, "run": run.name, "file": file, "dataset": dataset,
                "model_config": run.model.to_dict(), "train_config": run.train.to_dict()}
    for name, value in expected.items():
        if result[name] != value:
            raise ValueError(f"{name} is {result[name]!r}, but this run's is {value!r}")
    if not result["curve"] or not all(isinstance(p, dict) for p in result["curve"]):
        raise ValueError("curve must be a non-empty list of points")
    if result["digest"] != _digest(result):
        raise ValueError("its content does not match its digest (edited or damaged)")


def run_sweep(runs: list[Run], data: TokenDataset, sweep: str, *, results_dir: Path | None = None,
              progress: bool = True, checkpoint_every: int | None = None, keep_models: bool = False,
              on_run=None, track=None) -> list[dict]:
    """Train every run not finished yet; return all runs' results (dicts), in the order given.

    Results live in ``results_dir / sweep`` (default: the cache folder). A run
    saves a checkpoint every ``checkpoint_every`` steps (default: a tenth of
    its steps) and resumes from it after an interruption. With ``keep_models``
    the trained weights are stored too (``load_model`` reads them back).
    ``on_run(run, result)`` is called after each run, trained or loaded.

    ``track(run)``, if given, returns a context manager (e.g. forward hooks) that is open while the
    run trains and whose ``to_dict()`` is stored in the result as ``"tracked"``: what happened
    during training, not only at its end (chapter 4 records expert usage this way). A tracker sees
    every step only if the run is not resumed halfway, so tracked runs are not checkpointed: an
    interrupted sweep still keeps every finished run and retrains only the unfinished one.
    """
    if not isinstance(runs, (list, tuple)) or not runs:
        raise ValueError(f"runs must be a non-empty list of Run, got {runs!r}")
    for run in runs:
        checks.instance("runs", run, Run, "a list of Run")
    checks.instance("data", data, TokenDataset)
    checks.optional(checks.positive_int, "checkpoint_every", checkpoint_every)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, repeated: {sorted({n for n in names if names.count(n) > 1})}")
    checks.instance("sweep", sweep, str)
    if not sweep or not all(ch.isalnum() or ch in "-_." for ch in sweep):
        raise ValueError(f"sweep must be non-empty letters, digits, '-', '_' or '.', got {sweep!r}")
    folder = Path(results_dir or default_results_dir()) / sweep
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for i, run in enumerate(runs):
        key = run_key(run, data.name)
        path = folder / f"{run.name}-{key}.json"
        weights = path.with_suffix(".pt")

        def stored(run=run, key=key, path=path, weights=weights):  # the usable result, or None
            result = read_json_checked(
                path, lambda r: check_result(r, run, key, data.name, path.name))
            if result is None or (keep_models and not weights.exists()):
                return None
            return None if track and "tracked" not in result else result

        result = stored()
        if result is None:
            # One process per run: a second sweep on this cache waits here, then reads the result.
            with FileLock(folder / f".{run.name}-{key}.lock"):
                result = stored()
                if result is None:
                    result = _train_and_store(run, data, sweep, key, path, progress=progress,
                                              desc=f"{sweep} {i + 1}/{len(runs)} {run.name}",
                                              checkpoint_every=checkpoint_every,
                                              keep_models=keep_models, track=track)
        if on_run is not None:
            on_run(run, result)
        results.append(result)
    return results


def _train_and_store(run: Run, data: TokenDataset, sweep: str, key: str, path: Path, *, progress,
                     desc, checkpoint_every, keep_models, track) -> dict:
    # Called with the run's lock held: nobody else reads, writes or deletes its checkpoint now.
    checkpoint = None if track else path.with_suffix(".ckpt")
    every = checkpoint_every or max(1, run.train.steps // 10)
    tracker = track(run) if track else contextlib.nullcontext()
    with tracker:
        trained = train(run.model, run.train, data, progress=progress, desc=desc,
                        checkpoint_path=checkpoint, checkpoint_every=every)
    result = trained.to_dict() | {
        "run": run.name, "sweep": sweep, "key": key, "file": path.name,
        "code_version": code_version(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if track:
        result["tracked"] = tracker.to_dict()
    result["digest"] = _digest(result)
    if keep_models:  # weights first: a result file promises its weights are there
        save_torch_atomic(path.with_suffix(".pt"), trained.model.state_dict())
    write_json_atomic(path, result)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return result


def stale_results(runs: list[Run], data: TokenDataset, sweep: str, results_dir: Path | None = None) -> list[Path]:
    """Result files in the sweep's folder that no current run would reuse (old code or config)."""
    folder = Path(results_dir or default_results_dir()) / sweep
    current = {f"{r.name}-{run_key(r, data.name)}.json" for r in runs}
    return sorted(p for p in folder.glob("*.json") if p.name not in current)


def load_model(result: dict, dev=None, results_dir: Path | None = None) -> GPT:
    """The trained model of a sweep result stored with ``keep_models=True`` (in ``results_dir``)."""
    weights = (Path(results_dir or default_results_dir()) / result["sweep"] / result["file"]).with_suffix(".pt")
    if not weights.exists():
        raise ValueError(f"no stored weights for run {result['run']!r}: run the sweep with keep_models=True")
    model = GPT(GPTConfig(**result["model_config"]))
    state = load_torch_checked(weights, model.load_state_dict, map_location="cpu")  # weights only
    if state is None:
        raise ValueError(f"the stored weights of run {result['run']!r} were unusable and moved "
                         "aside: run the sweep with keep_models=True again to retrain them")
    return model.to(dev or _device.device()).eval()

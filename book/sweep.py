"""Run many trainings, keep every finished one, resume after an interruption.

Each run's result is one JSON file, written atomically, named by the run and a
key: a hash of the model config, the training config, the dataset and the code
version (a hash of the modules that decide a result). So:

- a rerun skips runs whose file exists: finished work is never repeated;
- an interrupted run resumes from its last checkpoint (also written atomically);
- a result computed by other code or another config has another key, so it is
  never reused silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from book import device as _device
from book.data import TokenDataset
from book.model import GPT, GPTConfig
from book.storage import save_torch_atomic, write_json_atomic
from book.train import TrainConfig, train

# The modules whose code decides a run's numbers.
_VERSIONED_MODULES = ("model.py", "moe.py", "train.py", "data.py", "attention.py")
# Bumped when the layout of a result file changes, so old files are not read as new ones.
RESULT_FORMAT = 2


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
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name):
            raise ValueError(f"name must be non-empty letters, digits, '-', '_' or '.', got {self.name!r}")
        if not isinstance(self.model, GPTConfig) or not isinstance(self.train, TrainConfig):
            raise ValueError("model must be a GPTConfig and train a TrainConfig")


def run_key(run: Run, dataset: str) -> str:
    spec = {"model": run.model.to_dict(), "train": run.train.to_dict(), "dataset": dataset,
            "code": code_version(), "format": RESULT_FORMAT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def default_results_dir() -> Path:
    return _device.cache_dir() / "sweeps"


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
    if not runs:
        raise ValueError("runs must not be empty")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, repeated: {sorted({n for n in names if names.count(n) > 1})}")
    if not sweep or not all(ch.isalnum() or ch in "-_." for ch in sweep):
        raise ValueError(f"sweep must be non-empty letters, digits, '-', '_' or '.', got {sweep!r}")
    folder = Path(results_dir or default_results_dir()) / sweep
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for i, run in enumerate(runs):
        key = run_key(run, data.name)
        path = folder / f"{run.name}-{key}.json"
        weights = path.with_suffix(".pt")
        result = json.loads(path.read_text()) if path.exists() else None
        if result is None or (keep_models and not weights.exists()) or (track and "tracked" not in result):
            checkpoint = None if track else path.with_suffix(".ckpt")
            every = checkpoint_every or max(1, run.train.steps // 10)
            tracker = track(run) if track else contextlib.nullcontext()
            with tracker:
                trained = train(run.model, run.train, data, progress=progress,
                                desc=f"{sweep} {i + 1}/{len(runs)} {run.name}",
                                checkpoint_path=checkpoint, checkpoint_every=every)
            result = trained.to_dict() | {
                "run": run.name, "sweep": sweep, "key": key, "file": path.name, "code_version": code_version(),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            if track:
                result["tracked"] = tracker.to_dict()
            if keep_models:  # weights first: a result file promises its weights are there
                save_torch_atomic(weights, trained.model.state_dict())
            write_json_atomic(path, result)
            if checkpoint is not None:
                checkpoint.unlink(missing_ok=True)
        if on_run is not None:
            on_run(run, result)
        results.append(result)
    return results


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
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(dev or _device.device()).eval()

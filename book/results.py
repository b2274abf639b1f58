"""Committed GPU results of a sweep, shown beside a lesson's live CPU run.

A reader without a GPU still sees the course's scaling laws at GPU scale:
``tools/device_check.sh`` runs every chapter's lessons once at ``BOOK_PROFILE=gpu`` on a GPU,
and what their sweeps trained is committed as ``results/<device-slug>/<sweep>/<run>.json``
(one ``book.sweep`` result a file), with ``results/<device-slug>/manifest.json`` saying which
device, when, and with what code.

``report(sweep, live=...)`` reads those files only, never the cache or the clock, so what it
prints is the same on every machine and nbval checks it like any other output. With no
committed results it prints one line saying so. With them it prints a table, a power-law fit
of the loss (``book.fit``) on all runs but the largest, and the prediction test: how far the
fit's extrapolation to the largest run misses its measured loss. It draws one figure: the GPU
points and fit, and the live run's points (``live=``, the list ``run_sweep`` returned) beside
them; the figure is the only place live numbers go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from book import checks
from book import device as _device

RESULTS_DIR = _device.REPO_ROOT / "results"
MANIFEST = "manifest.json"
_AXIS_LABELS = {"params": "non-embedding parameters N", "params_total": "parameters (all)",
                "tokens": "training tokens", "flops": "training FLOPs C",
                "final_val_loss": "validation loss", "final_train_loss": "training loss"}


@dataclass(frozen=True)
class Report:
    """What ``report`` showed: the committed runs, the fit, the prediction test (None: not done)."""

    sweep: str
    device: str  # the folder's name, e.g. "gpu-nvidia-h200"
    device_name: str  # e.g. "NVIDIA H200"
    date: str  # YYYY-MM-DD of the device run
    runs: list = field(repr=False)  # result dicts, sorted by x
    fit: object = None  # book.fit.PowerLawFit on all runs but the held-out ones
    predicted: float | None = None  # the fit's loss at the largest held-out run
    observed: float | None = None  # that run's measured loss
    prediction_error: float | None = None  # |predicted - observed| / observed


def _check_sweep(sweep) -> str:
    if not isinstance(sweep, str) or not sweep or not all(c.isalnum() or c in "-_." for c in sweep):
        raise ValueError(f"sweep must be a non-empty name of letters, digits, '-', '_' or '.', "
                         f"got {sweep!r}")
    return sweep


def device_folders(root: Path | None = None) -> list[Path]:
    """The folders of committed device runs under ``root`` (default ``results/``), by name."""
    root = Path(RESULTS_DIR if root is None else root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def load(sweep: str, root: Path | None = None) -> list[tuple[dict, list[dict]]]:
    """(manifest, runs) for every device folder that holds ``sweep``; runs in file-name order."""
    _check_sweep(sweep)
    out = []
    for folder in device_folders(root):
        files = sorted((folder / sweep).glob("*.json"))
        if files:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            manifest.setdefault("slug", folder.name)
            out.append((manifest, [json.loads(f.read_text(encoding="utf-8")) for f in files]))
    return out


def available(sweep: str, root: Path | None = None) -> bool:
    """Whether any committed device run holds ``sweep``."""
    return bool(load(sweep, root))


def _value(result: dict, key) -> float:
    if callable(key):
        return float(key(result))
    if key not in result:
        numeric = sorted(k for k, v in result.items() if isinstance(v, (int, float)))
        raise ValueError(f"result of run {result.get('run', '?')!r} has no {key!r}: "
                         f"its numeric keys are {numeric}")
    return float(result[key])


def _label(key) -> str:
    if isinstance(key, str):
        return _AXIS_LABELS.get(key, key)
    return getattr(key, "__name__", "x")


def _date(manifest: dict, runs: list[dict]) -> str:
    stamp = manifest.get("date") or max((r.get("finished_at", "") for r in runs), default="")
    return stamp[:10] or "an unknown date"


def report(sweep: str, *, live: list[dict] | None = None, x="params", y="final_val_loss",
           fit: bool = True, holdout: int = 1, root: Path | None = None) -> Report | None:
    """Show the committed GPU results of ``sweep`` beside ``live`` (this machine's results).

    ``x``, ``y``: keys of a result dict (or functions of one) for the axes; ``fit``: fit
    L = E + A x^-alpha on all runs but the ``holdout`` largest in x, and predict the largest.
    ``root``: the results folder (default ``results/``). Returns None when nothing is committed,
    after printing the one line that says so. See the module docstring.
    """
    _check_sweep(sweep)
    holdout = checks.nonnegative_int("holdout", holdout)
    if live is not None and (not isinstance(live, (list, tuple))
                             or not all(isinstance(r, dict) for r in live)):
        raise ValueError(f"live must be None or a list of result dicts (what run_sweep returns), "
                         f"got {str(live)[:80]}")
    found = load(sweep, root)
    if not found:
        print(f"No GPU results committed for sweep {sweep!r} yet (see results/README.md).")
        return None
    manifest, runs = max(found, key=lambda item: (_date(*item), item[0]["slug"]))  # the newest
    runs = sorted(runs, key=lambda r: (_value(r, x), str(r.get("run", ""))))
    device_name = manifest.get("device_name", manifest["slug"])
    date = _date(manifest, runs)
    print(f"Sweep {sweep!r} at the GPU profile: {len(runs)} runs on {device_name}, {date}")
    print(f"(committed in results/{manifest['slug']}/{sweep}/, "
          f"code {manifest.get('code_version', '?')})")
    _print_table(runs, y)

    out = Report(sweep, manifest["slug"], device_name, date, runs)
    xs = np.array([_value(r, x) for r in runs])
    ys = np.array([_value(r, y) for r in runs])
    if fit:
        out = _fit_and_predict(out, xs, ys, runs, x, holdout)
    _figure(out, xs, ys, live, x, y, holdout if out.fit is not None else 0)
    return out


def _print_table(runs: list[dict], y) -> None:
    name = "val loss" if y == "final_val_loss" else str(_label(y))[:10]
    head = f"{'run':<22} {'N':>12} {'tokens':>12} {'FLOPs':>9} {name:>10}"
    print(head)
    print("-" * len(head))
    for r in runs:
        print(f"{str(r.get('run', '?'))[:22]:<22} {int(r.get('params', 0)):>12,} "
              f"{int(r.get('tokens', 0)):>12,} {float(r.get('flops', 0.0)):>9.2e} "
              f"{_value(r, y):>10.3f}")


def _fit_and_predict(out: Report, xs, ys, runs, x, holdout: int) -> Report:
    from book.fit import fit_power_law

    kept = len(runs) - holdout
    irreducible = kept >= 4  # a floor E needs at least one more point than the two-parameter line
    if kept < 2 or len(set(xs[:kept])) < 2:
        print(f"No fit: {kept} run(s) left after holding out {holdout}; "
              f"a power law needs 2 sizes or more.")
        return out
    law = fit_power_law(xs[:kept], ys[:kept], irreducible=irreducible, seed=0)
    low, high = law.ci.get("alpha", (float("nan"), float("nan")))
    floor = f", E = {law.E:.3g}" if irreducible else ""
    print(f"Fit on the {kept} smallest: L = E + A x^-alpha, alpha = {law.alpha:.3g} "
          f"(95% CI {low:.3g} to {high:.3g}){floor}")
    if not holdout:
        return Report(**{**out.__dict__, "fit": law})
    predicted, observed = float(law.predict(xs[-1])), float(ys[-1])
    error = abs(predicted - observed) / observed
    print(f"Prediction test: {runs[-1].get('run', '?')} (x = {xs[-1]:.3g}) predicted "
          f"{predicted:.3f}, measured {observed:.3f}: {100 * error:.1f}% off")
    return Report(**{**out.__dict__, "fit": law, "predicted": predicted, "observed": observed,
                     "prediction_error": error})


def _figure(out: Report, xs, ys, live, x, y, holdout: int) -> None:
    from book import plot

    fig, ax = plot.new_figure()
    log_x = bool(np.all(xs > 0))
    if log_x:
        plot.loglog_axes(ax, xlabel=_label(x), ylabel=_label(y))
    else:
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
    kept = len(xs) - holdout
    ax.plot(xs[:kept], ys[:kept], "o", color=plot.COLORS[0],
            label=f"{out.device_name}, {out.date}")
    if holdout:
        ax.plot(xs[kept:], ys[kept:], "s", color=plot.COLORS[3],
                label="held out, predicted by the fit")
    if out.fit is not None and log_x:
        plot.plot_power_law(ax, out.fit, (xs.min(), xs.max()), color=plot.COLORS[0])
    if live:
        lx = np.array([_value(r, x) for r in live])
        ly = np.array([_value(r, y) for r in live])
        name = live[0].get("device_name") or "this machine"
        ax.plot(lx, ly, "^", color=plot.COLORS[1], label=f"live run: {name}")
    ax.set_title(f"{out.sweep}: GPU results ({out.device_name}, {out.date})")
    ax.legend()

"""Run the course notebooks, and time them into BENCHMARKS.md.

    python tools/notebooks.py execute [PATHS...]
        Run each notebook top to bottom in a fresh kernel and write its outputs back in place.
        Default: every lessons/ notebook, then every solutions/ notebook (which reuse the
        lessons' cached sweep results).
    python tools/notebooks.py benchmark [--suite] [--write-back] [--output FILE] [PATHS...]
        Time the same notebooks, with a cold sweep cache, without writing them back (with
        --write-back: writing them back, so one pass both executes and times them); with
        --suite also time `python -m pytest --nbval`. Writes this machine's section of
        BENCHMARKS.md and keeps the other machines' sections.

Both exit 1 if a notebook raised an error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from ipykernel.kernelspec import RESOURCES, get_kernel_dict
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the course library, installed or not
from book.benchmarks import markdown as records_markdown  # noqa: E402
from book.device import cpu_model  # noqa: E402
CELL_TIMEOUT_S = 600
BUDGET_S = {"lessons": 120, "solutions": 60}  # per notebook, by top-level folder
SUITE_BUDGET_S = 20 * 60
CANONICAL_COMMAND = "python tools/notebooks.py benchmark --suite"
PEAKS_FILE = "machine_peaks.json"  # written by lesson 0 into $BOOK_CACHE_DIR
SECTION = re.compile(r"<!-- device: (?P<label>\S+) -->\n.*?<!-- end device -->\n", re.DOTALL)


# ---------------------------------------------------------------- running notebooks


class CurrentPythonKernelSpecs(KernelSpecManager):
    """Resolve "python3" to this interpreter's ipykernel, whatever kernelspecs are installed."""

    def get_kernel_spec(self, kernel_name):
        if kernel_name == NATIVE_KERNEL_NAME:
            return self.kernel_spec_class(resource_dir=RESOURCES, **get_kernel_dict())
        return super().get_kernel_spec(kernel_name)


def kernel_env(**extra: str) -> dict[str, str]:
    """Environment for a kernel: ours, plus the repo root on PYTHONPATH so `import book` works uninstalled."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_notebook(nb: nbformat.NotebookNode, cwd: Path, allow_errors: bool = False,
                 env: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """Execute `nb` in place, top to bottom, in a fresh kernel of the running interpreter."""
    manager = KernelManager(kernel_name=NATIVE_KERNEL_NAME, kernel_spec_manager=CurrentPythonKernelSpecs())
    client = NotebookClient(
        nb,
        km=manager,
        timeout=CELL_TIMEOUT_S,
        allow_errors=allow_errors,
        record_timing=False,  # timestamps in cell metadata would make every commit a diff
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.execute(env=env if env is not None else kernel_env())
    finally:
        # nbclient shuts down only a kernel it started itself; this one is ours (each idles at ~0.5 GB)
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    return nb


def first_error(nb: nbformat.NotebookNode) -> str | None:
    """'cell N (id X): Name: value' for the first cell with an error output, or None."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                return f"cell {index} (id {cell.get('id', '?')}): {output.ename}: {output.evalue}"
    return None


@dataclass
class Run:
    path: Path
    seconds: float
    failure: str | None = None  # one line naming the cell, None when the notebook ran cleanly
    details: str = ""  # the full traceback, for the terminal


def execute_file(path: Path, write_back: bool, env: dict[str, str] | None = None) -> Run:
    """Run the notebook at `path` in its own folder; write the outputs back only if it succeeded."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    failure, details = None, ""
    try:
        run_notebook(nb, cwd=path.parent, env=env)
    except CellExecutionError as error:
        failure, details = first_error(nb) or str(error).splitlines()[0], str(error)
    except (CellTimeoutError, DeadKernelError) as error:
        failure, details = f"{type(error).__name__}: {str(error).splitlines()[0]}", str(error)
    run = Run(path, time.perf_counter() - start, failure, details)
    if write_back and failure is None:
        nbformat.write(nb, path)
    print(f"{shown(path)}: {run.seconds:.1f} s" + (f"  FAILED at {failure}" if failure else ""), flush=True)
    if details:
        print(details, file=sys.stderr)
    return run


def notebooks_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def notebook_paths(arguments: list[str]) -> list[Path]:
    """The notebooks named (folders expand to the notebooks inside), or lessons/ then solutions/."""
    if not arguments:
        return notebooks_under(ROOT / "lessons") + notebooks_under(ROOT / "solutions")
    paths = []
    for argument in arguments:
        path = Path(argument).resolve()
        if not path.exists():
            raise SystemExit(f"error: no such notebook or folder: {argument}")
        paths += notebooks_under(path) if path.is_dir() else [path]
    return paths


def shown(path: Path) -> str:
    """Path relative to the repo root when it lies inside, else as given."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


# ---------------------------------------------------------------- benchmark


@dataclass
class Machine:
    label: str  # key of this machine's section in BENCHMARKS.md, e.g. cpu-2-cores
    title: str
    details: list[str]


def describe_machine() -> Machine:
    cores = os.cpu_count()
    details = [f"CPU: {cpu_model()}, `os.cpu_count()` = {cores}", f"Python {platform.python_version()}"]
    gpu = None
    try:
        import torch
    except ImportError:
        details.append("torch: not installed")
    else:
        details.append(f"torch {torch.__version__}, `torch.get_num_threads()` = {torch.get_num_threads()}")
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
            details.append(f"GPU: {gpu} (CUDA {torch.version.cuda})")
    if gpu:
        slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
        return Machine(f"gpu-{slug}", f"GPU: {gpu}", details)
    return Machine(f"cpu-{cores}-cores", f"CPU: {cpu_model()}, {cores} cores", details)


def budget_for(path: Path) -> int | None:
    if not path.is_relative_to(ROOT):
        return None
    return BUDGET_S.get(path.relative_to(ROOT).parts[0])


def time_suite(env: dict[str, str]) -> tuple[float, int]:
    """Seconds and exit status of the whole `python -m pytest --nbval` run."""
    start = time.perf_counter()
    status = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-q"], cwd=ROOT, env=env).returncode
    return time.perf_counter() - start, status


def flops_text(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.2f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


def peaks_markdown(peaks_file: Path) -> list[str]:
    lines = ["### Machine peaks measured by lesson 0", ""]
    if not peaks_file.exists():
        return lines + [f"Not measured: lesson 0 wrote no `$BOOK_CACHE_DIR/{PEAKS_FILE}` in this run.", ""]
    try:
        peaks = json.loads(peaks_file.read_text())
    except (OSError, ValueError) as error:
        return lines + [f"Unreadable `$BOOK_CACHE_DIR/{PEAKS_FILE}`: {error}", ""]
    name = f"{peaks.get('device', '?')} ({peaks.get('device_name', '?')})"
    lines += [f"Measured on {name} at {peaks.get('measured_at', '?')}.", "", "| peak | value |", "|---|---|"]
    for dtype, flops in sorted(peaks.get("matmul_flops_per_s", {}).items()):
        lines.append(f"| matmul, {dtype}, {peaks.get('device_name', '?')} | {flops_text(flops)} |")
    bandwidth = peaks.get("memory_bandwidth_bytes_per_s")
    if bandwidth is not None:
        lines.append(f"| memory bandwidth, {peaks.get('device_name', '?')} | {bandwidth / 1e9:.1f} GB/s |")
    return lines + [""]


def verdict(run: Run, budget: int | None) -> str:
    if run.failure:
        return "**failed** at " + run.failure.replace("|", "\\|")  # a bare | would split the table cell
    if budget is None:
        return "n/a"
    return "yes" if run.seconds <= budget else "**no**"


def section_markdown(machine: Machine, runs: list[Run], suite: tuple[float, int] | None,
                     peaks_file: Path, command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"<!-- device: {machine.label} -->", f"## {machine.title}", ""]
    lines += [f"- Date: {now}", f"- Command: `{command}`"] + [f"- {d}" for d in machine.details] + [""]
    lines += ["Lessons ran with a cold sweep cache (a fresh `BOOK_CACHE_DIR`); solutions reused the "
              "lessons' cache, as in a CI run.", ""]
    lines += ["| notebook | seconds | budget | within budget? |", "|---|---:|---:|---|"]
    for run in runs:
        budget = budget_for(run.path)
        budget_text = f"{budget} s" if budget else "—"
        lines.append(f"| `{shown(run.path)}` | {run.seconds:.1f} | {budget_text} | {verdict(run, budget)} |")
    lines += [f"| **total** | {sum(r.seconds for r in runs):.1f} | | |", ""]
    if suite:
        seconds, status = suite
        outcome = "passed" if status == 0 else f"**failed** (exit status {status})"
        within = "yes" if seconds <= SUITE_BUDGET_S else "**no**"
        lines += [f"Whole suite, `python -m pytest --nbval` with a cold cache: {seconds:.0f} s "
                  f"(budget {SUITE_BUDGET_S // 60} min, within budget: {within}); {outcome}.", ""]
    lines += peaks_markdown(peaks_file)
    lines += ["", *records_markdown(peaks_file.parent)]  # tables the lessons recorded (book.benchmarks)
    return "\n".join(lines).rstrip() + "\n<!-- end device -->\n"


def benchmarks_markdown(sections: dict[str, str]) -> str:
    header = [
        "# Notebook benchmarks",
        "",
        "*Generated by `tools/notebooks.py`: never edit by hand.* Regenerate with",
        f"`{CANONICAL_COMMAND}`; each machine adds or replaces its own section and keeps the others.",
        "",
        f"Budgets: each lesson ≤ {BUDGET_S['lessons']} s on 2 CPU cores, each solutions notebook "
        f"≤ {BUDGET_S['solutions']} s, the whole suite ≤ {SUITE_BUDGET_S // 60} min.",
        "",
    ]
    cpu_first = sorted(sections, key=lambda label: (not label.startswith("cpu"), label))
    return "\n".join(header) + "\n" + "\n".join(sections[label] for label in cpu_first)


def benchmark(paths: list[Path], suite: bool, output: Path, command: str, write_back: bool = False) -> int:
    machine = describe_machine()
    with tempfile.TemporaryDirectory(prefix="book-cache-") as cache:
        env = kernel_env(BOOK_CACHE_DIR=cache)  # one cache: lessons fill it, solutions reuse it
        runs = [execute_file(path, write_back=write_back, env=env) for path in paths]
        suite_result = None
        if suite:
            with tempfile.TemporaryDirectory(prefix="book-cache-suite-") as suite_cache:
                suite_result = time_suite(kernel_env(BOOK_CACHE_DIR=suite_cache))  # cold, like CI
        section = section_markdown(machine, runs, suite_result, Path(cache) / PEAKS_FILE, command)

    existing = output.read_text(encoding="utf-8") if output.exists() else ""
    sections = {match["label"]: match[0] for match in SECTION.finditer(existing)}
    sections[machine.label] = section
    output.write_text(benchmarks_markdown(sections), encoding="utf-8")
    print(f"wrote {shown(output)} (section {machine.label})")

    failed = [run for run in runs if run.failure]
    for run in failed:
        print(f"error: {shown(run.path)} failed at {run.failure}", file=sys.stderr)
    return 1 if failed or (suite_result and suite_result[1] != 0) else 0


# ---------------------------------------------------------------- a GPU device run (tools/device_check.sh)


def device_section_markdown(machine: Machine, runs: list[Run], suite: tuple[float, int] | None,
                            peaks_file: Path, command: str) -> str:
    """A GPU machine's section: the lessons at the GPU profile, the CUDA nbval pass, the kernel tables."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"<!-- device: {machine.label} -->", f"## {machine.title}", ""]
    lines += [f"- Date: {now}", f"- Command: `{command}`"] + [f"- {d}" for d in machine.details] + [""]
    if suite:
        seconds, status = suite
        outcome = "passed" if status == 0 else f"**failed** (exit status {status})"
        lines += [f"Whole suite on CUDA at `BOOK_PROFILE=cpu`, `python -m pytest --nbval` with a cold "
                  f"cache: {seconds:.0f} s; {outcome}.", ""]
    else:
        lines += ["Whole suite on CUDA: not run.", ""]
    lines += ["Lessons at `BOOK_PROFILE=gpu` (their sweeps' results are committed under `results/`), "
              "several chapters at once, so these times include sharing the GPU.", ""]
    lines += ["| notebook | seconds | outcome |", "|---|---:|---|"]
    for run in runs:
        lines.append(f"| `{shown(run.path)}` | {run.seconds:.1f} | {verdict(run, None).replace('n/a', 'ran')} |")
    lines += [f"| **total** | {sum(r.seconds for r in runs):.1f} | |", ""]
    lines += peaks_markdown(peaks_file)
    lines += ["", *records_markdown(peaks_file.parent)]
    return "\n".join(lines).rstrip() + "\n<!-- end device -->\n"


def write_device_section(machine: Machine, runs: list[Run], suite: tuple[float, int] | None,
                         peaks_file: Path, command: str, output: Path) -> None:
    """Add or replace ``machine``'s section of ``output`` (BENCHMARKS.md), keeping the others."""
    existing = output.read_text(encoding="utf-8") if output.exists() else ""
    sections = {match["label"]: match[0] for match in SECTION.finditer(existing)}
    sections[machine.label] = device_section_markdown(machine, runs, suite, peaks_file, command)
    output.write_text(benchmarks_markdown(sections), encoding="utf-8")
    print(f"wrote {shown(output)} (section {machine.label})")


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    execute = commands.add_parser("execute", help="run notebooks and write their outputs back")
    execute.add_argument("paths", nargs="*", help="notebooks or folders (default: lessons/ then solutions/)")
    bench = commands.add_parser("benchmark", help="time notebooks and write BENCHMARKS.md")
    bench.add_argument("paths", nargs="*", help="notebooks or folders (default: lessons/ then solutions/)")
    bench.add_argument("--suite", action="store_true", help="also time `python -m pytest --nbval`")
    bench.add_argument("--write-back", action="store_true", help="also write the outputs back, as `execute` does")
    bench.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="default: BENCHMARKS.md")
    args = parser.parse_args(argv)

    paths = notebook_paths(args.paths)
    if not paths:
        print("no notebooks to run", file=sys.stderr)
    if args.command == "benchmark":
        command = " ".join(["python tools/notebooks.py", *(argv if argv is not None else sys.argv[1:])])
        return benchmark(paths, args.suite, args.output.resolve(), command, write_back=args.write_back)

    runs = [execute_file(path, write_back=True) for path in paths]
    failed = [run for run in runs if run.failure]
    print(f"total: {sum(r.seconds for r in runs):.1f} s for {len(runs)} notebooks")
    for run in failed:
        print(f"error: {shown(run.path)} failed at {run.failure} (not written back)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

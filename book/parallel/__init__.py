"""Parallel training on ``torch.distributed``: the launcher, the process group, and the byte counts.

One file per method (picotron's layout), each runnable under ``torchrun``:

- ``data``     data parallelism (DDP) and sharding (ZeRO-1, FSDP2), lesson 6.5
- ``tensor``   Megatron's column- and row-parallel layers, lesson 6.6
- ``pipeline`` a GPipe schedule over micro-batches, lesson 6.6
- ``expert``   an MoE layer's experts spread over ranks, lesson 4.5

This module holds what they share: ``launch`` (run a function or module as ``n_procs``
processes with ``torchrun`` on 127.0.0.1: gloo on the CPU, NCCL with one GPU per process),
``init`` (the process group, inside a rank), ``report`` (rank 0 hands a JSON result back to
the launcher), ``finish`` (the verdict line and the exit status), and the collectives' byte counts that lessons compare measurements with.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from book import checks
from book.device import REPO_ROOT

RESULT_ENV = "BOOK_PARALLEL_RESULT"  # the file rank 0's report() writes, set by launch()


# --------------------------------------------------------------------------- byte counts


def allreduce_bytes(n_bytes, n_ranks) -> float:
    """Bytes each rank sends in a ring all-reduce of ``n_bytes``: 2 (n - 1) / n * n_bytes.

    The ring runs a reduce-scatter (n - 1 steps, each sending one n-th of the buffer) and then
    an all-gather (n - 1 more); each rank receives as much as it sends. One rank sends nothing.
    """
    n_bytes = checks.nonnegative_float("n_bytes", n_bytes)
    n_ranks = checks.positive_int("n_ranks", n_ranks)
    return checks.finite_result(2 * (n_ranks - 1) / n_ranks * n_bytes, "n_bytes", "n_ranks")


def reduce_scatter_bytes(n_bytes, n_ranks) -> float:
    """Bytes each rank sends in a ring reduce-scatter (or all-gather) of ``n_bytes``: (n - 1) / n * n_bytes."""
    n_bytes = checks.nonnegative_float("n_bytes", n_bytes)
    n_ranks = checks.positive_int("n_ranks", n_ranks)
    return (n_ranks - 1) / n_ranks * n_bytes


allgather_bytes = reduce_scatter_bytes  # the same ring, run the other way


def pipeline_bubble(n_stages, n_microbatches) -> float:
    """The idle fraction of a GPipe (or 1F1B) schedule: (p - 1) / (m + p - 1) (Huang et al., 2019).

    Each of ``p`` stages works for ``m`` micro-batch slots out of ``m + p - 1``, forward and backward alike.
    """
    p = checks.positive_int("n_stages", n_stages)
    m = checks.positive_int("n_microbatches", n_microbatches)
    return (p - 1) / (m + p - 1)


# --------------------------------------------------------------------------- inside a rank


def init() -> tuple[int, int, torch.device]:
    """Join the process group ``torchrun`` set up: returns (rank, world size, this rank's device).

    NCCL with GPU ``LOCAL_RANK`` when CUDA is visible, gloo on the CPU otherwise (``launch`` hides
    the GPUs when there are fewer than processes).
    """
    if "RANK" not in os.environ:
        raise RuntimeError("not started by torchrun: use book.parallel.launch(...) or "
                           "torchrun --nproc_per_node=2 -m <module>")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def report(result) -> None:
    """On rank 0, hand ``result`` (JSON-serialisable) back to ``launch``; other ranks do nothing."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    text = json.dumps(result)
    path = os.environ.get(RESULT_ENV)
    if path:
        Path(path).write_text(text)
    else:
        print(text, flush=True)


def finish(passed: bool, what: str) -> int:
    """End a rank's check: rank 0 prints ``PASS: what`` or ``FAIL: what``; leave the group; the exit status."""
    if dist.get_rank() == 0:
        print(f"{'PASS' if passed else 'FAIL'}: {what}", flush=True)
    dist.destroy_process_group()
    return 0 if passed else 1


# --------------------------------------------------------------------------- the launcher


@dataclass
class Launched:
    """A finished ``torchrun``: its command, exit status, output, and rank 0's ``report`` (or None)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    result: object = None
    backend: str = "gloo"


def _target(script_or_fn) -> list[str]:
    """torchrun's arguments for a module name, a script path, or an importable function."""
    if callable(script_or_fn):
        module, name = script_or_fn.__module__, script_or_fn.__qualname__
        if module == "__main__" or "<" in name:
            raise ValueError(f"script_or_fn must be importable by the new processes (a function defined "
                             f"at the top of a module), got {script_or_fn!r} from {module!r}")
        if module.split(".")[0] != "book":  # e.g. a test file: the ranks load it by its path
            module = inspect.getsourcefile(script_or_fn)
        return ["-m", "book.parallel", f"{module}:{name}"]
    checks.instance("script_or_fn", script_or_fn, (str, Path), "a module name, a .py path or a function")
    text = str(script_or_fn)
    if text.endswith(".py"):
        path = Path(text).resolve()
        if not path.is_file():
            raise ValueError(f"script_or_fn: no script at {text!r}")
        return [str(path)]
    try:
        found = importlib.util.find_spec(text)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ValueError(f"script_or_fn must be a module name, a .py path or a function; no module {text!r}")
    return ["-m", text]


def launch(script_or_fn, n_procs: int | None = 2, *, args=(), cpu: bool | None = None,
           timeout: float = 180, check: bool = True) -> Launched:
    """Run ``script_or_fn`` as ``n_procs`` processes with ``torchrun`` on 127.0.0.1; wait for them.

    ``script_or_fn`` is a module name (``"book.parallel.expert"``), a path to a ``.py`` script, or
    a module-level function (called in every rank with ``args``, as strings). ``n_procs=None``
    means one process per GPU when there are two or more, else 2 on the CPU. NCCL is used when
    there is a GPU per process and ``cpu`` is not True; otherwise the GPUs are hidden and gloo runs
    on the CPU, one thread per process. ``Launched.result`` is what rank 0 passed to ``report``.
    With ``check`` a failed run raises ``RuntimeError`` with the end of its output.
    """
    if n_procs is None:
        n_procs = torch.cuda.device_count() if torch.cuda.device_count() >= 2 and not cpu else 2
    n_procs = checks.positive_int("n_procs", n_procs)
    if cpu is not None:
        checks.instance("cpu", cpu, bool)
    timeout = checks.positive_float("timeout", timeout)
    checks.instance("check", check, bool)
    if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
        raise TypeError(f"args must be a list or tuple of arguments, got {args!r}")
    target = _target(script_or_fn)
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    nccl = not cpu and torch.cuda.device_count() >= n_procs
    if not nccl:
        env["CUDA_VISIBLE_DEVICES"] = ""  # NCCL needs a GPU per process; otherwise gloo on the CPU
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_procs}",
               "--master_addr=127.0.0.1", f"--master_port={port}", *target, *map(str, args)]
    with tempfile.TemporaryDirectory() as folder:
        env[RESULT_ENV] = str(Path(folder) / "result.json")
        try:
            run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                 timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"torchrun of {' '.join(target)} took longer than timeout={timeout} s") from exc
        result_file = Path(env[RESULT_ENV])
        result = json.loads(result_file.read_text()) if result_file.exists() else None
    launched = Launched(command, run.returncode, run.stdout, run.stderr, result, "nccl" if nccl else "gloo")
    if check and run.returncode != 0:
        raise RuntimeError(f"torchrun of {' '.join(target)} with {n_procs} processes failed "
                           f"(exit status {run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    return launched

"""The steps of `tools/device_check.sh`, one subcommand each (the shell script sets the stage).

    python tools/device_bench.py bench   --cache DIR --out FILE [--tiny]
        Kernel benchmarks: the Triton flash-attention forward against SDPA at n = 4096 (TFLOP/s and
        the ratio), the training MFU of a ~100M-parameter GPT in bf16 over 50 steps, and MoE sorted
        dispatch against a per-expert loop at E = 64. Writes FILE (JSON) and book.benchmarks records
        into DIR/benchmarks/ (BENCHMARKS.md tables). --tiny: CPU-sized, for the dry run.
    python tools/device_bench.py lessons --cache DIR --log FILE [--jobs J] [--deadline-s S] NB...
        Execute notebooks (never written back) with BOOK_PROFILE=gpu and BOOK_CACHE_DIR=DIR, one
        chapter per worker, J workers; stop at the deadline. One JSON line per notebook in FILE.
    python tools/device_bench.py harvest --cache DIR --results DIR --log FILE [--nbval FILE]
                                         [--plan FILE] [--output BENCHMARKS.md]
        Copy every sweep result in DIR/sweeps/ to results/<slug>/<sweep>/<run>.json and write
        results/<slug>/manifest.json (device, date, code version, plan, lesson and nbval outcomes);
        with --output, also this machine's section of BENCHMARKS.md (tools/notebooks.py's format).
    python tools/device_bench.py tiny-lesson --out DIR
        The dry run's stand-ins: a lesson training a sweep of two tiny runs, a notebook for nbval.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(__file__).resolve().parent
for path in (str(ROOT), str(TOOLS)):
    if path not in sys.path:
        sys.path.insert(0, path)


# ---------------------------------------------------------------- timing


TINY = False  # the dry run: time one call, since only the path is being proven


def _seconds(fn, dev, min_run_time: float = 0.5) -> float:
    """Median seconds of ``fn()``: CUDA events through Triton's do_bench on a GPU, torch's Timer else."""
    import torch

    if TINY:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    if dev.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            return do_bench(fn, warmup=100, rep=int(1000 * min_run_time), return_mode="median") / 1e3
    from book import hardware

    torch.cuda.synchronize() if dev.type == "cuda" else None
    return hardware.measure_seconds(fn, min_run_time)


def _rel_error(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- the three kernel benchmarks


def bench_flash(dev, tiny: bool) -> list[dict]:
    """Triton flash forward against SDPA, causal and not: TFLOP/s of each and the ratio."""
    import torch
    import torch.nn.functional as F

    from book import attention, attention_triton

    batch, heads, n, d_head = (1, 2, 128, 32) if tiny else (8, 16, 4096, 64)
    use_triton = attention_triton.triton_available(dev) and dev.type == "cuda"
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    kernel = attention_triton.flash_attention_triton if use_triton else attention.flash_attention
    name = "Triton kernel" if use_triton else "book.attention.flash_attention (no Triton here)"
    rows = []
    for causal in (False, True):
        q, k, v = (torch.randn(batch, heads, n, d_head, device=dev, dtype=dtype) for _ in range(3))
        with torch.no_grad():
            out = kernel(q, k, v, causal=causal)
            ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            error = _rel_error(out, ref)
            t_kernel = _seconds(lambda: kernel(q, k, v, causal=causal), dev)
            t_sdpa = _seconds(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), dev)
        flops = 4 * batch * heads * n * n * d_head * (0.5 if causal else 1.0)  # QK^T and PV
        rows.append({"kernel": name, "n": n, "shape": f"{batch}x{heads}x{n}x{d_head}", "causal": causal,
                     "dtype": str(dtype).removeprefix("torch."), "kernel TFLOP/s": flops / t_kernel / 1e12,
                     "SDPA TFLOP/s": flops / t_sdpa / 1e12, "kernel / SDPA": t_sdpa / t_kernel,
                     "relative error": error})
    return rows


def bench_mfu(dev, tiny: bool) -> list[dict]:
    """Training MFU of GPT-2 small's shape (124M parameters, 85M non-embedding) in bf16 autocast."""
    import torch

    from book import device as _device
    from book import hardware
    from book.model import GPT, GPTConfig, count_params, flops_per_token
    from book.train import TrainConfig, _autocast, make_optimizer
    from gpu_plan import MFU_BATCH, MFU_MODEL, MFU_STEPS, MFU_WARMUP, PEAK_FLOPS, mfu

    shape = dict(n_layer=2, d_model=64, n_head=2, n_ctx=64, vocab_size=256) if tiny else MFU_MODEL
    batch, steps, warmup = (4, 3, 1) if tiny else (MFU_BATCH, MFU_STEPS, MFU_WARMUP)
    cfg = GPTConfig(**shape)
    torch.manual_seed(0)
    model = GPT(cfg).to(dev)
    optimizer = make_optimizer(model, TrainConfig(steps=steps, batch_size=batch))
    batches = [torch.randint(0, cfg.vocab_size, (batch, cfg.n_ctx + 1), device=dev) for _ in range(4)]

    def step(i):
        tokens = batches[i % len(batches)]
        with _autocast(dev):
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # as book.train does: one sync a step

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize() if dev.type == "cuda" else None
    start = time.perf_counter()
    for i in range(steps):
        last = step(i)
    torch.cuda.synchronize() if dev.type == "cuda" else None
    seconds = time.perf_counter() - start
    tokens_per_s = steps * batch * cfg.n_ctx / seconds
    achieved = flops_per_token(cfg, training=True) * tokens_per_s
    dtype = "bfloat16" if _device.autocast_dtype(dev) is not None else "float32"
    measured_peak = hardware.measured_peak(dtype, dev)  # bench() measured it into the cache
    return [{"model": f"{cfg.n_layer}x{cfg.d_model}, n_ctx {cfg.n_ctx}", "params": count_params(cfg),
             "N (non-embedding)": count_params(cfg, embedding=False), "batch": batch, "steps": steps,
             "dtype": dtype, "tokens/s": tokens_per_s, "TFLOP/s": achieved / 1e12,
             "MFU (datasheet peak)": achieved / PEAK_FLOPS, "MFU (measured matmul peak)": achieved / measured_peak,
             "planned MFU": mfu(cfg.d_model), "final loss": last}]


def per_expert_loop(moe, x):
    """The MoE layer the obvious batched way: for each expert, find its tokens, run them, add them back.

    Same routing as ``moe.forward`` without a capacity; each expert costs a search over all tokens
    and a host sync (``nonzero``), which is what sorting once by expert avoids.
    """
    import torch
    import torch.nn.functional as F

    from book.moe import top_k_gating

    tokens = x.reshape(-1, x.shape[-1])
    with torch.autocast(x.device.type, enabled=False):
        logits = F.linear(tokens.float(), moe.router.weight.float())
    weights, experts = top_k_gating(logits, moe.k, moe.renormalize)
    out = None
    for e in range(moe.n_experts):
        rows, choice = (experts == e).nonzero(as_tuple=True)
        y = moe.experts(tokens[rows], e) * weights[rows, choice, None].to(tokens.dtype)
        out = y.new_zeros(tokens.shape) if out is None else out
        out.index_add_(0, rows, y.to(out.dtype))
    return out.reshape(x.shape)


def bench_moe(dev, tiny: bool) -> list[dict]:
    import torch

    from book.moe import MoE
    from gpu_plan import MOE_SHAPE

    m = dict(tokens=256, d_model=32, d_ff=64, n_experts=8, k=2) if tiny else MOE_SHAPE
    torch.manual_seed(0)
    moe = MoE(m["d_model"], m["d_ff"], m["n_experts"], m["k"]).to(dev).eval()
    x = torch.randn(m["tokens"], m["d_model"], device=dev)
    with torch.no_grad():
        error = _rel_error(per_expert_loop(moe, x), moe(x))
        t_loop = _seconds(lambda: per_expert_loop(moe, x), dev, 0.3)
        t_sorted = _seconds(lambda: moe(x), dev, 0.3)
    return [{"tokens": m["tokens"], "d_model": m["d_model"], "d_ff": m["d_ff"], "experts": m["n_experts"],
             "k": m["k"], "per-expert loop ms": 1e3 * t_loop, "sorted ms": 1e3 * t_sorted,
             "speed-up": t_loop / t_sorted, "relative error": error}]


def bench(cache: Path, out: Path, tiny: bool) -> int:
    from book import benchmarks
    from book import device as _device

    from book import hardware

    global TINY
    TINY = tiny
    os.environ["BOOK_CACHE_DIR"] = str(cache)
    dev = _device.setup(0)
    report, failed = {"device": _device.device_name(dev), "tiny": tiny}, 0
    # The machine's peaks, once, into the cache the lessons share (book.train's MFU reads them there).
    start = time.perf_counter()
    peaks = hardware.measure_peaks(dev, sizes=[128] if tiny else None, repeats=1 if tiny else 2)
    report["peaks"], report["peaks_seconds"] = peaks.matmul_flops_per_s, time.perf_counter() - start
    for name, fn, title, note in [
        ("flash", bench_flash, "GPU: Triton flash-attention forward against SDPA",
         "book.attention_triton.flash_attention_triton against F.scaled_dot_product_attention, fresh random "
         "q, k, v; FLOPs 4 B H n^2 d (half when causal); medians of triton.testing.do_bench."),
        ("mfu", bench_mfu, "GPU: training MFU of a 124M-parameter GPT in bf16",
         "book.model.GPT with GPT-2 small's shape, AdamW (fused), bf16 autocast, clipping and one .item() a "
         "step, as book.train; 50 timed steps after 5 warm-up steps; FLOPs from flops_per_token."),
        ("moe", bench_moe, "GPU: MoE sorted dispatch against a per-expert loop",
         "book.moe.MoE.forward (one sort by expert) against tools/device_bench.per_expert_loop (a search and a "
         "host sync per expert), same router and weights, top-2, no capacity; medians."),
    ]:
        start = time.perf_counter()
        try:
            rows = fn(dev, tiny)
            report[name] = rows
            benchmarks.record(f"device-{name}", title, rows, note, cache=cache)
            print(f"bench {name}: {time.perf_counter() - start:.1f} s: {json.dumps(rows)}", flush=True)
        except Exception as error:  # one broken benchmark must not cost the others their numbers
            failed += 1
            report[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"bench {name} FAILED: {type(error).__name__}: {error}", flush=True)
        report[f"{name}_seconds"] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


# ---------------------------------------------------------------- lessons at the GPU profile


def _group_of(path: str) -> str:
    """A chapter's lessons run in order in one worker, or a group of them (book.experiments.LESSON_GROUPS)."""
    from book.experiments import lesson_group

    return lesson_group(path)


def run_lessons(paths: list[str], cache: Path, log: Path, jobs: int, deadline_s: float) -> int:
    """Run ``paths`` (notebooks) at the GPU profile, one chapter (or lesson group) per worker, until the deadline."""
    groups = defaultdict(list)
    for path in paths:
        groups[_group_of(path)].append(path)
    queue = sorted(groups.values(), key=len, reverse=True)  # a chapter's lessons in order, in one worker
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    env = dict(os.environ, BOOK_PROFILE="gpu", BOOK_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    end = time.monotonic() + deadline_s
    running: list[subprocess.Popen] = []
    status = 0

    def stop(signum, frame):  # `timeout` stopped us: take the workers and their kernels along
        for proc in running:
            kill_tree(proc.pid)
        sys.exit(124)

    signal.signal(signal.SIGTERM, stop)
    while queue or running:
        while queue and len(running) < jobs:
            group = queue.pop(0)
            cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", "--log", str(log), *group]
            running.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        time.sleep(0.2)
        for proc in list(running):
            if proc.poll() is not None:
                running.remove(proc)
                status |= proc.returncode != 0
        if time.monotonic() > end:
            for proc in running:  # the deadline: stop every worker and its kernels
                kill_tree(proc.pid)
            _append(log, {"stopped": [p.args[4:] for p in running] + queue, "reason": "deadline"})
            return 124
    return int(status)


def kill_tree(pid: int) -> None:
    """Kill a process and all its descendants (a kernel runs in its own session, so not by group)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _append(log: Path, record: dict) -> None:
    with open(log, "a", encoding="utf-8") as f:  # one short line per write: workers never interleave
        f.write(json.dumps(record) + "\n")


def worker(paths: list[str], log: Path) -> int:
    from notebooks import execute_file, kernel_env

    failed = 0
    for path in paths:
        run = execute_file(Path(path).resolve(), write_back=False, env=kernel_env())
        _append(log, {"path": path, "seconds": round(run.seconds, 2), "failure": run.failure})
        failed += run.failure is not None
    return 1 if failed else 0


def read_log(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


TINY_LESSON = """\
import torch

from book.data import TokenDataset
from book.model import GPTConfig
from book.sweep import Run, run_sweep
from book.train import TrainConfig

g = torch.Generator().manual_seed(0)
data = TokenDataset(torch.randint(0, 16, (4096,), generator=g), torch.randint(0, 16, (1024,), generator=g),
                    16, name="dry-run-random")
runs = [Run(f"d{d}", GPTConfig(n_layer=1, d_model=d, n_head=2, n_ctx=16, vocab_size=16),
            TrainConfig(steps=3, batch_size=4, eval_batches=1)) for d in (8, 16)]
results = run_sweep(runs, data, "dry-run", progress=False)
assert [r["run"] for r in results] == ["d8", "d16"]
"""


# The dry run's nbval notebook: outputs stored by hand, so nbval has something to compare; they hold
# on any machine where the course imports and BOOK_PROFILE=cpu reaches the kernel.
TINY_NBVAL = [("from book import device\nprint(device.profile())", "cpu\n"),
              ("print(device.device().type in ('cpu', 'cuda'))", "True\n")]


def _notebook(cells) -> object:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for count, (source, output) in enumerate(cells, 1):
        cell = nbformat.v4.new_code_cell(source)
        if output is not None:
            cell.execution_count = count
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=output)]
        nb.cells.append(cell)
    return nb


def tiny_lesson(out: Path) -> list[Path]:
    """The dry run's stand-ins: a chapter's lesson that trains a sweep of two tiny runs, and a
    notebook with stored outputs for nbval."""
    import nbformat

    lesson, checked = out / "00_dry_run" / "tiny_sweep.ipynb", out / "nbval" / "tiny_nbval.ipynb"
    for path, cells in ((lesson, [(TINY_LESSON, None)]), (checked, TINY_NBVAL)):
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(_notebook(cells), path)
    return [lesson, checked]


# ---------------------------------------------------------------- results and BENCHMARKS.md


def machine():
    from notebooks import describe_machine

    return describe_machine()


def _json_or_none(path: Path | None):
    """A stage's JSON file, or None where that stage wrote none (or broke off mid-file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):
        return None


def harvest(cache: Path, results: Path, log: Path, nbval: Path | None, plan: Path | None) -> Path:
    """Copy the cache's sweep results into results/<slug>/<sweep>/<run>.json, with a manifest."""
    import torch

    from book import device as _device
    from book.storage import write_json_atomic
    from book.sweep import code_version

    slug = machine().label
    folder = results / slug
    if folder.exists():
        shutil.rmtree(folder)  # a device run replaces the last one whole
    sweeps = {}
    for path in sorted((cache / "sweeps").glob("*/*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        name = result.get("run", path.stem)
        write_json_atomic(folder / path.parent.name / f"{name}.json", result)
        sweeps.setdefault(path.parent.name, []).append(name)
    manifest = {
        "slug": slug, "device_name": _device.device_name(), "date": datetime.now(timezone.utc).date().isoformat(),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "cuda": torch.version.cuda, "code_version": code_version(),
        "profile": "gpu", "sweeps": sweeps, "lessons": read_log(log),
        "nbval": _json_or_none(nbval), "plan": _json_or_none(plan),
    }
    write_json_atomic(folder / "manifest.json", manifest)
    print(f"harvest: {sum(len(v) for v in sweeps.values())} runs of {len(sweeps)} sweeps into {folder}")
    return folder


def section(cache: Path, log: Path, output: Path, nbval: Path | None, command: str) -> None:
    import notebooks

    runs = [notebooks.Run(ROOT / r["path"], r["seconds"], r["failure"]) for r in read_log(log) if "path" in r]
    data = _json_or_none(nbval)
    suite = (data["seconds"], data["status"]) if data else None
    notebooks.write_device_section(machine(), runs, suite, cache / notebooks.PEAKS_FILE, command, output)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bench")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true")
    p = sub.add_parser("lessons")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--jobs", type=int, default=6)
    p.add_argument("--deadline-s", type=float, default=300.0)
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("tiny-lesson")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("_worker")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("harvest")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--nbval", type=Path)
    p.add_argument("--plan", type=Path)
    p.add_argument("--output", type=Path, help="also write this machine's section of BENCHMARKS.md here")
    p.add_argument("--command-line", default="tools/device_check.sh")
    p.add_argument("--slug-file", type=Path, help="write the device's slug (results/ folder name) here")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench(args.cache, args.out, args.tiny)
    if args.command == "lessons":
        if args.jobs < 1:
            parser.error(f"--jobs must be at least 1, got {args.jobs}")
        return run_lessons(args.paths, args.cache, args.log, args.jobs, args.deadline_s)
    if args.command == "tiny-lesson":
        print("\n".join(str(p) for p in tiny_lesson(args.out)))
        return 0
    if args.command == "_worker":
        return worker(args.paths, args.log)
    folder = harvest(args.cache, args.results, args.log, args.nbval, args.plan)
    if args.slug_file:
        args.slug_file.write_text(folder.name)
    if args.output:
        section(args.cache, args.log, args.output, args.nbval, args.command_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

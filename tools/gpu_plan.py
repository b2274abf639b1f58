"""Will the device run fit? A prediction, on the CPU, of `tools/device_check.sh` on one H200.

    python tools/gpu_plan.py [--json] [--limit-s 420] [--compare]

Lists every GPU-profile experiment (each chapter module's ``planned_runs()`` with
``BOOK_PROFILE=gpu``): its runs, their training FLOPs (``book.model.flops_per_token``) and the
seconds predicted on an H200; then the device script's other stages (wheel install, kernel
benchmarks, the CUDA nbval pass) and the total. Exits 1 if the whole run is predicted to take
longer than ``--limit-s`` (7 minutes); warns where a chapter's GPU profile is not at least 10x
its CPU profile's largest model (N, non-embedding).

The time model (every constant below says where it comes from):

- Peak: the H200's dense bf16 rate, 989.5 TFLOP/s (vendor datasheet, ``book.hardware``).
- MFU (model FLOPs utilisation) grows with width d: ``MFU(d) = MFU_MAX * d / (d + D_HALF)``.
  MFU_MAX = 0.462 is PaLM 540B's (Chowdhery et al. 2022, Table 3), a well-tuned large model's
  ceiling. D_HALF comes from the roofline: a d-wide layer's bf16 matmuls do about 0.8 d FLOPs
  per byte (a (T x d) by (d x 4d) product moves 2(Td + 4d^2 + 4Td) bytes for 8Td^2 FLOPs), the
  H200's ridge is 989.5 TFLOP/s / 4.8 TB/s = 206 FLOP/byte, so matmuls reach half speed near
  d = 258; eager PyTorch's unfused LayerNorm, GELU, softmax and residual adds move about as
  many bytes again, which doubles it: D_HALF = 2 * 206 / 0.8 = 515. So d = 768 (GPT-2 small)
  gets 28%, d = 128 9%, d = 16 1.4%. The device script measures the 100M model's MFU, which
  checks this curve at its one point.
- Launch floor: eager PyTorch dispatches every operation from Python, about 20 us apiece on the
  host (module call, dispatcher, kernel launch). PyTorch's profiler counts 23 operations per layer
  in a GPT's forward and backward pass, and 22 more per step (embeddings, loss); we take 30 per
  layer and 40 per step (adding gradient clipping, fused AdamW, the batch's copy, ``.item()``),
  and 13 per expert and MoE layer (a gather, two matmuls, an activation, their backward). A step
  takes the longer of its FLOPs at MFU(d) and its operations: small models are launch-bound.
- Evaluation: every ``evaluate`` call (``book.train``) is a forward pass (a third of the step's
  FLOPs per token), timed the same way. Per run: 0.5 s (model, optimizer, first-call kernel
  selection, the result file).
- Lessons: the GPU-profile experiments run as their chapters' lessons, at ``BOOK_PROFILE=gpu``,
  one chapter per worker (a chapter's lessons share its sweeps through the cache), or one group
  of its lessons per worker where the chapter's module declares ``LESSON_GROUPS`` (groups that
  share no sweep; each is charged the sweeps it trains), ``JOBS`` workers. A lesson's non-training work is taken as half its measured CPU time in
  BENCHMARKS.md (about half of a CPU lesson's time is its own training: lesson 2.3 trains 46 of
  its 62 s), plus ``NOTEBOOK_START_S`` to start a kernel and CUDA. Workers overlap where they
  wait on the host (launch-bound steps, lesson code), not where they fill the GPU: the stage
  takes the longer of the busiest worker's time and the sum of all runs' GPU-busy seconds
  (their FLOPs at MFU(d), and at least ``GPU_OP_S`` for every kernel, however small).
- ``--compare``: once a device run is committed, set each sweep's predicted seconds beside the
  ``train_seconds`` its results measured, to correct the constants above.
- The CUDA nbval pass (``BOOK_PROFILE=cpu``) runs the whole suite on ``NBVAL_JOBS`` pytest-xdist
  workers; each notebook takes its measured CPU time plus ``NOTEBOOK_START_S``, the unit tests
  the suite's measured time less the notebooks'; the wall time is the longer of the share per
  worker and the busiest worker's. A notebook not timed in BENCHMARKS.md yet counts at the
  new-chapter budget (35 s a lesson, 10 s a solutions notebook).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from book import hardware  # noqa: E402
from book.model import count_params, flops_per_token  # noqa: E402

H200 = hardware.accelerator("H200")
PEAK_FLOPS = H200.peak("bfloat16")  # 989.5e12: dense bf16, datasheet
RIDGE = PEAK_FLOPS / H200.memory_bandwidth  # FLOP per byte where bf16 matmuls stop being memory-bound
MFU_MAX = hardware.PALM_540B_MFU  # 0.462, Chowdhery et al. (2022), Table 3
MATMUL_FLOPS_PER_BYTE_PER_D = 0.8  # a d-wide layer's (T x d)(d x 4d) bf16 product, T >> d
D_HALF = 2 * RIDGE / MATMUL_FLOPS_PER_BYTE_PER_D  # x2: unfused elementwise ops move as many bytes again
LAUNCH_S = 20e-6  # one eager operation: Python module call, dispatcher, kernel launch
GPU_OP_S = 5e-6  # the shortest a kernel keeps the GPU busy (launch latency and the gap between kernels)
KERNELS_PER_LAYER = 30  # per training step and layer: forward and backward (profiler: 23)
KERNELS_FIXED = 40  # per training step: embeddings, loss, clipping, fused AdamW, the batch, .item()
EXPERT_KERNELS = 13  # per expert, MoE layer and step: gather, two matmuls, activation, their backward
RUN_OVERHEAD_S = 0.5
NOTEBOOK_START_S = 6.0  # a fresh kernel: Python, torch, CUDA context, matplotlib
LESSON_NONTRAIN_FRACTION = 0.5
# A notebook BENCHMARKS.md has not timed yet: the budget the team sets for a new chapter's pages.
UNMEASURED_S = {"lessons": 35.0, "solutions": 10.0}
JOBS = 8  # GPU-profile lesson groups run at once (device_check.sh --jobs), of the device's 16 cores
NBVAL_JOBS = 12  # pytest-xdist workers for the CUDA nbval pass
LIMIT_S = 7 * 60
# Stages that are not experiments, in seconds: measured on no device yet, so estimates.
PLAN_S = 8.0  # device_check.sh's first two Python processes: torch's version, this plan as JSON
INSTALL_S = 15.0  # pip install --no-index of the carried wheels into /tmp/site
PACK_S = 10.0  # BENCHMARKS.md section, tarball of results/, copies to $OUT
PROCESS_START_S = 8.0  # one Python process: import torch, CUDA context, first kernels
# Kernel benchmarks (tools/device_bench.py): sizes, so that their time follows from the model too.
FLASH_SHAPE = (8, 16, 4096, 64)  # batch, heads, n, d_head
FLASH_TIMINGS = 4  # Triton and SDPA, causal and not
FLASH_TIMING_S = 0.7  # triton.testing.do_bench: 100 ms warm-up + 500 ms of repeats, and setup
TRITON_COMPILE_S = 5.0
MFU_MODEL = dict(n_layer=12, d_model=768, n_head=12, n_ctx=1024, vocab_size=50304)  # GPT-2 small
MFU_BATCH, MFU_STEPS, MFU_WARMUP = 16, 50, 5
MOE_SHAPE = dict(tokens=16384, d_model=512, d_ff=1024, n_experts=64, k=2)
MOE_REPEATS = 10


# ---------------------------------------------------------------- the experiments


@contextlib.contextmanager
def profile(name: str):
    """BOOK_PROFILE=name inside the block (the chapter modules read it at call time)."""
    old = os.environ.get("BOOK_PROFILE")
    os.environ["BOOK_PROFILE"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BOOK_PROFILE", None)
        else:
            os.environ["BOOK_PROFILE"] = old


def chapter_modules():
    """(chapter number, module) for every chapter module of ``book.experiments``."""
    chapters = importlib.import_module("book.experiments").CHAPTERS
    items = chapters.items() if isinstance(chapters, dict) else ((None, m) for m in chapters)
    out = []
    for key, module in items:
        if isinstance(module, str):
            module = importlib.import_module(module if "." in module else f"book.experiments.{module}")
        out.append((chapter_number(key or module.__name__), module))
    return sorted(out, key=lambda item: item[0])


def chapter_number(name) -> int:
    """2 from 'book.experiments.ch02_kaplan', 'ch02_kaplan', '02' or 2."""
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    match = re.search(r"(?:^|[._])(?:ch)?(\d+)", str(name).rsplit(".", 1)[-1])
    if not match:
        raise ValueError(f"cannot read a chapter number from {name!r}")
    return int(match.group(1))


def planned(module, profile_name: str) -> dict:
    """``module.planned_runs()`` at a profile: sweep name -> runs (empty if the module has none)."""
    fn = getattr(module, "planned_runs", None)
    if fn is None:
        return {}
    with profile(profile_name):
        sweeps = fn()
    if not isinstance(sweeps, dict):
        raise ValueError(f"{module.__name__}.planned_runs() must return a dict of sweep name -> runs, "
                         f"got {type(sweeps).__name__}")
    return {name: list(runs) for name, runs in sweeps.items()}


# ---------------------------------------------------------------- the time model


def mfu(d_model: int) -> float:
    """Predicted training MFU of a d_model-wide GPT on an H200 in bf16 (see the module docstring)."""
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model <= 0:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    return MFU_MAX * d_model / (d_model + D_HALF)


def step_kernels(cfg) -> int:
    """Kernels one training step launches (one micro-batch)."""
    experts = cfg.n_moe_layers * cfg.n_experts * EXPERT_KERNELS
    return KERNELS_PER_LAYER * cfg.n_layer + KERNELS_FIXED + experts


def n_evaluations(train) -> int:
    """How many times ``book.train.train`` evaluates: once before training, then every eval_every steps
    and at the end."""
    every = train.eval_every or max(1, train.steps // 10)
    return 1 + len({s for s in range(1, train.steps + 1) if s % every == 0 or s == train.steps})


@dataclass(frozen=True)
class RunPlan:
    chapter: int
    sweep: str
    run: str
    params: int  # Kaplan's N (active, for MoE)
    d_model: int
    steps: int
    tokens: int
    flops: float  # training FLOPs: flops_per_token(training=True) x tokens
    mfu: float
    launch_bound: bool
    seconds: float
    gpu_seconds: float  # the time it keeps the GPU busy, which workers cannot share


def plan_run(chapter: int, sweep: str, run) -> RunPlan:
    cfg, train = run.model, run.train
    fpt = flops_per_token(cfg, training=True)
    tokens_per_step = train.batch_size * cfg.n_ctx
    u = mfu(cfg.d_model)
    compute = fpt * tokens_per_step / (u * PEAK_FLOPS)
    launch = step_kernels(cfg) * train.grad_accum * LAUNCH_S
    step = max(compute, launch)
    # evaluation: forward only (a third of the FLOPs and of the kernels), in micro-batch chunks
    micro = train.batch_size // train.grad_accum
    eval_tokens = train.eval_batches * train.batch_size * cfg.n_ctx
    chunks = -(-train.eval_batches * train.batch_size // micro)
    evaluation = max(fpt / 3 * eval_tokens / (u * PEAK_FLOPS), chunks * step_kernels(cfg) / 3 * LAUNCH_S)
    seconds = train.steps * step + n_evaluations(train) * evaluation + RUN_OVERHEAD_S
    # The GPU is busy for the FLOPs, and for at least GPU_OP_S per kernel however small it is.
    kernels = train.steps * step_kernels(cfg) * train.grad_accum
    kernels += n_evaluations(train) * chunks * step_kernels(cfg) / 3
    flop_time = fpt * (train.steps * tokens_per_step + n_evaluations(train) * eval_tokens / 3) / (u * PEAK_FLOPS)
    busy = max(flop_time, kernels * GPU_OP_S)
    return RunPlan(chapter, sweep, run.name, count_params(cfg, embedding=False, active=True), cfg.d_model,
                   train.steps, train.steps * tokens_per_step, float(fpt * train.steps * tokens_per_step), u,
                   launch > compute, seconds, busy)


# ---------------------------------------------------------------- measured CPU times (BENCHMARKS.md)


_ROW = re.compile(r"^\| `(?P<path>[^`]+\.ipynb)` \| (?P<seconds>[\d.]+) \|", re.MULTILINE)
_SUITE = re.compile(r"Whole suite, `python -m pytest --nbval`[^:]*: (?P<seconds>[\d.]+) s")


def cpu_timings(benchmarks: Path = ROOT / "BENCHMARKS.md") -> tuple[dict[str, float], float]:
    """(notebook path -> seconds, whole suite seconds) from BENCHMARKS.md's CPU section."""
    text = benchmarks.read_text(encoding="utf-8") if benchmarks.exists() else ""
    match = re.search(r"<!-- device: cpu-[^>]*-->\n(.*?)<!-- end device -->", text, re.DOTALL)
    section = match.group(1) if match else ""
    notebooks = {m["path"]: float(m["seconds"]) for m in _ROW.finditer(section)}
    suite = _SUITE.search(section)
    return notebooks, float(suite["seconds"]) if suite else sum(notebooks.values())


def cpu_seconds(path: str, measured: dict[str, float]) -> float:
    """A notebook's CPU seconds from BENCHMARKS.md, or the new-page budget where it is not timed yet."""
    return measured.get(path, UNMEASURED_S.get(path.split("/", 1)[0], 0.0))


def notebooks(folder: str, chapter: int | None = None, root: Path = ROOT) -> list[str]:
    """Notebook paths (relative to root) under folder/, or under folder/NN_*/ for one chapter."""
    pattern = f"{chapter:02d}_*/*.ipynb" if chapter is not None else "*/*.ipynb"
    return sorted(p.relative_to(root).as_posix() for p in (root / folder).glob(pattern)
                  if ".ipynb_checkpoints" not in p.parts)


def group_loads(module, lessons: list[str], runs: list[RunPlan], cpu_notebooks: dict[str, float]) -> list[float]:
    """Seconds of each group of a chapter's lessons that one worker runs (book.experiments.lesson_group):
    its lessons' non-training time plus the sweeps it trains; sweeps no group names go to the first."""
    from book.experiments import lesson_group

    groups: dict[str, list[str]] = {}
    for path in lessons:
        groups.setdefault(lesson_group(path), []).append(path)
    folder = Path(lessons[0]).parent.name if lessons else ""
    trained_by = {sweep: f"{folder}/{'-'.join(map(str, numbers))}"
                  for numbers, sweeps in getattr(module, "LESSON_GROUPS", {}).items() for sweep in sweeps}
    first = next(iter(groups), None)
    loads = {key: sum(NOTEBOOK_START_S + LESSON_NONTRAIN_FRACTION * cpu_seconds(p, cpu_notebooks)
                      for p in paths) for key, paths in groups.items()}
    for run in runs:
        key = trained_by.get(run.sweep) if trained_by.get(run.sweep) in loads else first
        if key is not None:
            loads[key] += run.seconds
    return list(loads.values())


def _lpt(loads: list[float], workers: int) -> float:
    """Makespan of the loads on ``workers``, longest first to the least loaded (the scheduler's order)."""
    bins = [0.0] * max(1, workers)
    for load in sorted(loads, reverse=True):
        bins[bins.index(min(bins))] += load
    return max(bins) if loads else 0.0


# ---------------------------------------------------------------- the whole device run


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    detail: str


@dataclass
class Plan:
    runs: list[RunPlan]
    stages: list[Stage]
    chapters: list[dict]  # per chapter: number, lessons, GPU/CPU largest N, ratio, predicted seconds
    limit_s: float

    @property
    def total(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def fits(self) -> bool:
        return self.total <= self.limit_s

    @property
    def scale_ok(self) -> bool:
        return all(c["ratio"] >= 10 for c in self.chapters if c["cpu_max_params"])

    def to_dict(self) -> dict:
        return {"total_s": self.total, "limit_s": self.limit_s, "fits": self.fits, "scale_ok": self.scale_ok,
                "stages": [asdict(s) for s in self.stages], "chapters": self.chapters,
                "runs": [asdict(r) for r in self.runs],
                "model": {"peak_flops": PEAK_FLOPS, "mfu_max": MFU_MAX, "d_half": D_HALF,
                          "launch_s": LAUNCH_S, "jobs": JOBS, "nbval_jobs": NBVAL_JOBS}}


def bench_seconds() -> tuple[float, str]:
    """Predicted seconds of tools/device_bench.py's kernel benchmarks."""
    from book.model import GPTConfig

    gpt = GPTConfig(**MFU_MODEL)
    step = max(flops_per_token(gpt, training=True) * MFU_BATCH * gpt.n_ctx / (mfu(gpt.d_model) * PEAK_FLOPS),
               step_kernels(gpt) * LAUNCH_S)
    mfu_s = (MFU_STEPS + MFU_WARMUP) * step + 3.0  # + building the model and optimizer
    flash_s = TRITON_COMPILE_S + FLASH_TIMINGS * FLASH_TIMING_S
    m = MOE_SHAPE  # the loop launches ~6 kernels and one host sync per expert; sorted dispatch ~6 per expert
    moe_s = 2 * MOE_REPEATS * m["n_experts"] * 6 * 4 * LAUNCH_S + 2.0
    total = PROCESS_START_S + flash_s + mfu_s + moe_s
    return total, f"flash {flash_s:.0f} s, 100M-GPT MFU {mfu_s:.0f} s, MoE E={m['n_experts']} {moe_s:.0f} s"


def make_plan(chapters=None, benchmarks: Path = ROOT / "BENCHMARKS.md", root: Path = ROOT,
              limit_s: float = LIMIT_S, jobs: int = JOBS, nbval_jobs: int = NBVAL_JOBS) -> Plan:
    chapters = chapter_modules() if chapters is None else chapters
    cpu_notebooks, suite_s = cpu_timings(benchmarks)
    runs, rows, chapter_loads = [], [], []
    for number, module in chapters:
        gpu = planned(module, "gpu")
        cpu = planned(module, "cpu")
        chapter_runs = [plan_run(number, sweep, run) for sweep, rs in gpu.items() for run in rs]
        if not chapter_runs:
            continue
        runs += chapter_runs
        lessons = notebooks("lessons", number, root)
        nontrain = sum(NOTEBOOK_START_S + LESSON_NONTRAIN_FRACTION * cpu_seconds(p, cpu_notebooks)
                       for p in lessons)
        train = sum(r.seconds for r in chapter_runs)
        chapter_loads += group_loads(module, lessons, chapter_runs, cpu_notebooks)
        gpu_max = max(count_params(r.model, embedding=False) for rs in gpu.values() for r in rs)
        cpu_max = max((count_params(r.model, embedding=False) for rs in cpu.values() for r in rs), default=0)
        rows.append({"chapter": number, "lessons": lessons, "sweeps": sorted(gpu), "runs": len(chapter_runs),
                     "flops": sum(r.flops for r in chapter_runs), "train_s": train, "lessons_s": nontrain,
                     "gpu_max_params": gpu_max, "cpu_max_params": cpu_max,
                     "ratio": gpu_max / cpu_max if cpu_max else float("inf")})
    experiments_s = max(_lpt(chapter_loads, jobs), sum(r.gpu_seconds for r in runs))
    bench_s, bench_detail = bench_seconds()

    all_notebooks = notebooks("lessons", root=root) + notebooks("solutions", root=root)
    per_notebook = [NOTEBOOK_START_S + cpu_seconds(p, cpu_notebooks) for p in all_notebooks]
    unit_tests = max(0.0, suite_s - sum(cpu_notebooks.values()))
    nbval_s = max(_lpt(per_notebook, nbval_jobs), (sum(per_notebook) + unit_tests) / nbval_jobs)

    stages = [
        Stage("install", INSTALL_S, "carried wheels into /tmp/site"),
        Stage("plan", PLAN_S, "this plan, on the device"),
        Stage("bench", bench_s, bench_detail),
        Stage("experiments", experiments_s,
              f"{len(runs)} runs, {sum(r.flops for r in runs):.3g} FLOPs, {len(rows)} chapters on {jobs} workers"),
        Stage("nbval", nbval_s, f"{len(all_notebooks)} notebooks + unit tests on {nbval_jobs} xdist workers"),
        Stage("pack", PACK_S, "BENCHMARKS.md section, results tarball, $OUT"),
    ]
    return Plan(runs, stages, rows, limit_s)


# ---------------------------------------------------------------- output


def _si(x: float) -> str:
    return f"{x:.2e}"


def report(plan: Plan) -> str:
    lines = [f"GPU-profile experiments on one H200 (bf16 peak {PEAK_FLOPS / 1e12:.1f} TFLOP/s; "
             f"MFU(d) = {MFU_MAX:.3f} d / (d + {D_HALF:.0f}))", ""]
    header = f"{'ch':>2} {'sweep':<30} {'run':<22} {'N':>10} {'d':>4} {'steps':>6} {'FLOPs':>9} " \
             f"{'MFU':>6} {'s':>6}"
    lines += [header, "-" * len(header)]
    for r in plan.runs:
        bound = "*" if r.launch_bound else " "
        lines.append(f"{r.chapter:>2} {r.sweep[:30]:<30} {r.run[:22]:<22} {r.params:>10,} {r.d_model:>4} "
                     f"{r.steps:>6} {_si(r.flops):>9} {r.mfu:>6.3f} {r.seconds:>5.1f}{bound}")
    lines += ["(* launch-bound: the step's kernel launches take longer than its FLOPs)", ""]
    lines.append(f"{'ch':>2} {'runs':>4} {'FLOPs':>9} {'train s':>8} {'lesson s':>8} {'GPU max N':>11} "
                 f"{'CPU max N':>10} {'ratio':>6}")
    for c in plan.chapters:
        flag = "" if c["ratio"] >= 10 else "  < 10x!"
        lines.append(f"{c['chapter']:>2} {c['runs']:>4} {_si(c['flops']):>9} {c['train_s']:>8.1f} "
                     f"{c['lessons_s']:>8.1f} {c['gpu_max_params']:>11,} {c['cpu_max_params']:>10,} "
                     f"{c['ratio']:>6.1f}{flag}")
    lines.append("")
    for s in plan.stages:
        lines.append(f"{s.name:<12} {s.seconds:>6.0f} s  {s.detail}")
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"{'total':<12} {plan.total:>6.0f} s  of {plan.limit_s:.0f} s: {verdict}")
    if not plan.scale_ok:
        small = ", ".join(str(c["chapter"]) for c in plan.chapters if c["ratio"] < 10)
        lines.append(f"warning: chapter {small}: the GPU profile's largest model is less than 10x "
                     f"the CPU profile's")
    return "\n".join(lines)


def compare(plan: Plan, results: Path = ROOT / "results") -> str:
    """Predicted against measured training seconds, per sweep, for the runs a device run committed.

    The prediction of a run includes its evaluations and overhead; ``train_seconds`` is the time in
    training steps alone, so a ratio near or a little above 1 means the model is right.
    """
    lines = [f"{'sweep':<30} {'runs':>4} {'predicted s':>11} {'measured s':>10} {'ratio':>6}"]
    by_sweep: dict[str, list[tuple[float, float]]] = {}
    for r in plan.runs:
        for path in sorted(results.glob(f"*/{r.sweep}/{r.run}.json")):
            measured = json.loads(path.read_text(encoding="utf-8")).get("train_seconds")
            if measured:
                by_sweep.setdefault(r.sweep, []).append((r.seconds, float(measured)))
    for sweep, pairs in by_sweep.items():
        predicted, measured = sum(p for p, _ in pairs), sum(m for _, m in pairs)
        lines.append(f"{sweep[:30]:<30} {len(pairs):>4} {predicted:>11.1f} {measured:>10.1f} "
                     f"{predicted / measured:>6.2f}")
    return "\n".join(lines) if by_sweep else "no committed device results to compare with (results/)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--limit-s", type=float, default=LIMIT_S, help="the device run's budget (default 420)")
    parser.add_argument("--jobs", type=int, default=JOBS, help="chapters run at once on the GPU")
    parser.add_argument("--nbval-jobs", type=int, default=NBVAL_JOBS, help="xdist workers for nbval")
    parser.add_argument("--compare", action="store_true",
                        help="also compare the prediction with a committed device run's results/")
    args = parser.parse_args(argv)
    os.environ["BOOK_PROFILE"] = "gpu"  # the GPU profile's sizes, whatever this machine is
    plan = make_plan(limit_s=args.limit_s, jobs=args.jobs, nbval_jobs=args.nbval_jobs)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else report(plan))
    if args.compare and not args.json:
        print("\n" + compare(plan))
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())

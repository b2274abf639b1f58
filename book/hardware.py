"""How fast is the machine? Published peaks, measured peaks, and the roofline.

Lessons never hard-code a peak: MFU (model FLOPs utilisation) is always taken
against ``measured_peak()``, the best matmul throughput this machine reached.
The table ``ACCELERATORS`` holds vendors' published dense (no sparsity) peaks,
each with its source, for the back-of-the-envelope sums of later chapters.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

import torch
from torch.utils import benchmark

from book import checks
from book import device as _device
from book.storage import read_json_checked, write_json_atomic

TERA = 1e12


@dataclass(frozen=True)
class Accelerator:
    """One accelerator's published peaks. FLOP/s are dense (no 2:4 sparsity)."""

    name: str
    peak_flops: dict  # dtype name -> FLOP/s
    memory_bandwidth: float  # bytes/s
    memory_bytes: float
    source: str  # bibtex key in references.bib, and the table it comes from

    def peak(self, dtype: str = "bfloat16") -> float:
        checks.instance("dtype", dtype, str)
        if dtype not in self.peak_flops:
            raise ValueError(f"dtype {dtype!r} has no published peak for {self.name}: "
                             f"allowed are {sorted(self.peak_flops)}")
        return self.peak_flops[dtype]


# Dense tensor-core peaks from the vendors' datasheets. "float32" is plain FP32
# (no TF32); the datasheets quote TF32/BF16/FP16 "with sparsity" at twice these.
ACCELERATORS = {
    "H100 SXM": Accelerator(
        "NVIDIA H100 SXM5 80GB",
        {"float32": 67 * TERA, "tf32": 494.5 * TERA, "bfloat16": 989.5 * TERA, "float16": 989.5 * TERA,
         "float8": 1979 * TERA},
        memory_bandwidth=3.35e12, memory_bytes=80e9,
        source="nvidia2022h100: H100 datasheet, SXM column (sparse figures halved)"),
    "H200": Accelerator(
        "NVIDIA H200 SXM 141GB",
        {"float32": 67 * TERA, "tf32": 494.5 * TERA, "bfloat16": 989.5 * TERA, "float16": 989.5 * TERA,
         "float8": 1979 * TERA},
        memory_bandwidth=4.8e12, memory_bytes=141e9,
        source="nvidia2023h200: H200 datasheet, SXM column (sparse figures halved)"),
    "A100": Accelerator(
        "NVIDIA A100 SXM4 80GB",
        {"float32": 19.5 * TERA, "tf32": 156 * TERA, "bfloat16": 312 * TERA, "float16": 312 * TERA},
        memory_bandwidth=2.039e12, memory_bytes=80e9,
        source="nvidia2020a100: A100 datasheet, 80GB SXM column (dense)"),
    "V100": Accelerator(
        "NVIDIA V100 SXM2 32GB",
        {"float32": 15.7 * TERA, "float16": 125 * TERA},
        memory_bandwidth=900e9, memory_bytes=32e9,
        source="nvidia2017v100: V100 datasheet, SXM2 column (no bfloat16 support)"),
    "L4": Accelerator(
        "NVIDIA L4 24GB",
        {"float32": 30.3 * TERA, "tf32": 60 * TERA, "bfloat16": 121 * TERA, "float16": 121 * TERA,
         "float8": 242.5 * TERA},
        memory_bandwidth=300e9, memory_bytes=24e9,
        source="nvidia2023l4: L4 datasheet (sparse figures halved)"),
}

# On-chip SRAM per streaming multiprocessor (bytes), for IO models such as FlashAttention's.
# A100: 192 KB on each of its 108 SMs (dao2022flashattention, section 2.1). H100 SXM: up to
# 228 KB of shared memory per SM, 132 SMs (nvidia2022h100arch: H100 architecture whitepaper).
SRAM_PER_SM = {"A100": 192 * 1024, "H100 SXM": 228 * 1024}
SM_COUNT = {"A100": 108, "H100 SXM": 132}


def accelerator(name: str) -> Accelerator:
    """Look up an accelerator by its short name (``"H100 SXM"``, ``"A100"``, ...)."""
    checks.instance("name", name, str)
    if name not in ACCELERATORS:
        raise ValueError(f"name {name!r} is not a known accelerator: allowed are {sorted(ACCELERATORS)}")
    return ACCELERATORS[name]


# --------------------------------------------------------------------------- roofline

def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an (m x k) @ (k x n) product: one multiply and one add per term."""
    m, n, k = checks.positive_int("m", m), checks.positive_int("n", n), checks.positive_int("k", k)
    return 2 * m * n * k


def matmul_intensity(m: int, n: int, k: int, bytes_per_element: int = 4) -> float:
    """Arithmetic intensity (FLOP per byte moved) of an (m x k) @ (k x n) product,
    reading both inputs and writing the output once."""
    checks.positive_int("bytes_per_element", bytes_per_element)
    return matmul_flops(m, n, k) / (bytes_per_element * (m * k + k * n + m * n))


def roofline(intensity, peak_flops: float, bandwidth: float):
    """Attainable FLOP/s at a given arithmetic intensity: min(peak, intensity x bandwidth)."""
    checks.positive_float("peak_flops", peak_flops)
    checks.positive_float("bandwidth", bandwidth)
    try:
        intensity = torch.as_tensor(intensity, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"intensity must be a number or an array of numbers, got {intensity!r}") from None
    if not bool(torch.all(torch.isfinite(intensity) & (intensity >= 0))):
        raise ValueError("intensity must hold finite non-negative FLOP per byte, "
                         f"got {intensity.tolist()}")
    return torch.minimum(intensity * bandwidth,
                         torch.tensor(peak_flops, dtype=torch.float64)).numpy()


# --------------------------------------------------------------------------- measuring

def _dtype(name: str) -> torch.dtype:
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    checks.one_of("dtype", name, sorted(allowed))
    return allowed[name]


def measure_seconds(fn, min_run_time: float = 0.2) -> float:
    """Median seconds of one call of ``fn()``, timed by ``torch.utils.benchmark``.

    It warms up, repeats until ``min_run_time`` has passed, synchronises CUDA and
    uses the thread count torch is set to: the details a hand-rolled loop gets wrong.
    """
    checks.positive_float("min_run_time", min_run_time)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def measure_matmul(n: int, dtype: str = "float32", dev: torch.device | None = None,
                   min_run_time: float = 0.2) -> float:
    """Measured FLOP/s of an n x n x n matmul on ``dev`` (median of repeated runs)."""
    checks.positive_int("n", n)
    dev = dev or _device.device()
    a = torch.randn(n, n, device=dev, dtype=_dtype(dtype))
    b = torch.randn(n, n, device=dev, dtype=_dtype(dtype))
    return matmul_flops(n, n, n) / measure_seconds(lambda: a @ b, min_run_time)


def measure_bandwidth(n_bytes: int = 256 * 2**20, dev: torch.device | None = None,
                      min_run_time: float = 0.2) -> float:
    """Measured memory bandwidth (bytes/s) of a large copy: it reads and writes ``n_bytes``."""
    if checks.integer("n_bytes", n_bytes) < 2**20:
        raise ValueError(f"n_bytes must be at least 1 MiB so caches don't flatter the result, got {n_bytes}")
    dev = dev or _device.device()
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / measure_seconds(lambda: dst.copy_(src), min_run_time)


@dataclass
class MachinePeaks:
    """This machine's measured peaks: the best matmul FLOP/s per dtype, and copy bandwidth."""

    device: str
    device_name: str
    matmul_flops_per_s: dict = field(default_factory=dict)  # dtype -> FLOP/s
    memory_bandwidth_bytes_per_s: float = 0.0
    measured_at: str = ""
    threads: int = 0

    def peak(self, dtype: str = "float32") -> float:
        checks.instance("dtype", dtype, str)
        if dtype not in self.matmul_flops_per_s:
            raise ValueError(f"dtype {dtype!r} was not measured: measured are {sorted(self.matmul_flops_per_s)}")
        return self.matmul_flops_per_s[dtype]


def _peak_sizes(dev: torch.device) -> list[int]:
    return [4096, 8192] if dev.type == "cuda" else [256, 512, 1024, 2048]


def _peaks_path():
    return _device.cache_dir() / "machine_peaks.json"


def _training_dtypes(dev: torch.device) -> list[str]:
    # The dtypes training uses: fp32 on the CPU; fp32 (TF32) and bf16 autocast on CUDA.
    return ["float32", "bfloat16"] if _device.autocast_dtype(dev) is not None else ["float32"]


def measure_peaks(dev: torch.device | None = None, sizes: list[int] | None = None, repeats: int = 2) -> MachinePeaks:
    """Measure the machine's peaks now (a few seconds) and store them in the cache folder.

    A peak is the best of ``repeats`` measurements at each size: a moment of
    interference can only slow a run down, so the best is the least disturbed.
    """
    checks.positive_int("repeats", repeats)
    dev = dev or _device.device()
    sizes = sizes or _peak_sizes(dev)
    for n in sizes:
        checks.positive_int("sizes", n)
    flops = {dt: max(measure_matmul(n, dt, dev) for n in sizes for _ in range(repeats))
             for dt in _training_dtypes(dev)}
    peaks = MachinePeaks(device=dev.type, device_name=_device.device_name(dev), matmul_flops_per_s=flops,
                         memory_bandwidth_bytes_per_s=max(measure_bandwidth(dev=dev) for _ in range(repeats)),
                         measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         threads=torch.get_num_threads())
    write_json_atomic(_peaks_path(), asdict(peaks))
    return peaks


def _check_peaks(stored) -> None:
    # The file must be exactly a MachinePeaks: every field, of its type; peaks positive, finite.
    types = {"device": str, "device_name": str, "matmul_flops_per_s": dict,
             "memory_bandwidth_bytes_per_s": (int, float), "measured_at": str, "threads": int}
    if not isinstance(stored, dict) or set(stored) != {f.name for f in fields(MachinePeaks)}:
        raise ValueError(f"expected the fields {sorted(types)}")
    for name, kind in types.items():
        checks.instance(name, stored[name], kind)
    for dtype, flops in stored["matmul_flops_per_s"].items():
        checks.positive_float(f"matmul_flops_per_s[{dtype!r}]", flops)
    checks.positive_float("memory_bandwidth_bytes_per_s", stored["memory_bandwidth_bytes_per_s"])


def measured_peaks(dev: torch.device | None = None, refresh: bool = False) -> MachinePeaks:
    """This machine's peaks: from the cache when they were measured on the same device, else measured now."""
    dev = dev or _device.device()
    path = _peaks_path()
    stored = None if refresh else read_json_checked(path, _check_peaks)
    if stored is not None:
        cached = MachinePeaks(**stored)
        if (cached.device == dev.type and cached.device_name == _device.device_name(dev)
                and set(_training_dtypes(dev)) <= set(cached.matmul_flops_per_s)):
            return cached
    return measure_peaks(dev)


def measured_peak(dtype: str | None = None, dev: torch.device | None = None) -> float:
    """Peak matmul FLOP/s measured on this machine, for ``dtype`` (default: what training uses)."""
    dev = dev or _device.device()
    dtype = dtype or _training_dtypes(dev)[-1]
    return measured_peaks(dev).peak(dtype)


def timed(fn, *args, **kwargs):
    """Run ``fn`` once and return (result, seconds), synchronising CUDA around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- the cost of a training run

# Model FLOPs utilisation of PaLM 540B training on TPU v4 (Chowdhery et al. 2022, Table 3).
PALM_540B_MFU = 0.462


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D: 2 FLOPs per parameter per token forward, twice that backward (Kaplan et al. 2020)."""
    n_params = checks.positive_float("n_params", n_params)
    flops = 6.0 * n_params * checks.positive_float("n_tokens", n_tokens)
    return checks.finite_result(flops, "n_params", "n_tokens")


def accelerator_hours(flops: float, peak_flops_per_s: float, mfu: float = PALM_540B_MFU) -> float:
    """Hours one accelerator of peak ``peak_flops_per_s`` needs for ``flops`` at utilisation ``mfu``
    (the fraction of the peak that training achieves; 1 means the impossible 100 %)."""
    checks.nonnegative_float("flops", flops)
    achieved = checks.positive_float("peak_flops_per_s", peak_flops_per_s) * checks.probability(
        "mfu", mfu, open_low=True)
    if achieved == 0:  # underflow
        raise ValueError(f"peak_flops_per_s={peak_flops_per_s} times mfu={mfu} underflows to 0")
    return checks.finite_result(flops / achieved / 3600.0, "flops", "peak_flops_per_s")

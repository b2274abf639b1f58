"""Where experiments run, and how big they are.

Every experiment in the course asks two questions here:

- ``device()``: CUDA when ``torch.cuda.is_available()``, else the CPU
  (``BOOK_DEVICE=cpu`` forces the CPU on a GPU machine).
- ``profile()``: ``"cpu"`` or ``"gpu"`` sized experiments. ``BOOK_PROFILE`` picks
  one; the default ``auto`` follows the device. Lessons choose model sizes and
  step counts from it, so a laptop finishes in minutes and a GPU can go larger.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from book import checks

PROFILES = ("cpu", "gpu")
_PROFILE_CHOICES = ("auto",) + PROFILES
_DEVICE_CHOICES = ("auto", "cpu", "cuda")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env_choice(name: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, "auto").strip().lower() or "auto"
    if value not in allowed:
        raise ValueError(f"environment variable {name}={value!r}: allowed values are {', '.join(allowed)}")
    return value


def device() -> torch.device:
    """The device experiments run on: CUDA when present, else the CPU."""
    choice = _env_choice("BOOK_DEVICE", _DEVICE_CHOICES)
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("BOOK_DEVICE=cuda, but torch.cuda.is_available() is False on this machine")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def profile() -> str:
    """``"cpu"`` or ``"gpu"``: the size of experiments. ``BOOK_PROFILE`` overrides ``auto``."""
    choice = _env_choice("BOOK_PROFILE", _PROFILE_CHOICES)
    if choice == "auto":
        return "gpu" if device().type == "cuda" else "cpu"
    return choice


def by_profile(cpu, gpu):
    """Pick the CPU-sized or the GPU-sized value of a setting, by ``profile()``."""
    return cpu if profile() == "cpu" else gpu


def autocast_dtype(dev: torch.device | None = None) -> torch.dtype | None:
    """The mixed-precision dtype for training on ``dev``: bf16 on CUDA when supported, else none."""
    dev = dev or device()
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def setup(seed: int | None = 0) -> torch.device:
    """Set default dtypes and seeds for a notebook; return the device to use.

    Parameters stay in float32 everywhere (mixed precision is done by autocast in
    ``book.train``). On CUDA, float32 matmuls may use TF32 tensor cores.
    """
    checks.optional(checks.nonnegative_int, "seed", seed)
    torch.set_default_dtype(torch.float32)
    dev = device()
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")
    if seed is not None:
        seed_everything(seed)
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    checks.nonnegative_int("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_name(dev: torch.device | None = None) -> str:
    """A human name for ``dev``: the GPU's name, or the CPU model and thread count."""
    dev = dev or device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def cache_dir() -> Path:
    """Folder for measured peaks and sweep results: ``BOOK_CACHE_DIR``, default ``<repo>/.cache``."""
    path = Path(os.environ.get("BOOK_CACHE_DIR") or REPO_ROOT / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path

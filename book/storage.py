"""Files that survive a crash: written whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic_write(path: Path, write) -> None:
    # Write next to the target, flush to disk, then rename over it: a rename within one
    # folder is atomic, so a reader (or a resumed sweep) sees the old file or the new one.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def save_torch_atomic(path: Path, obj) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))

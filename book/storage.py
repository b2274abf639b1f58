"""Files that survive a crash: written whole or not at all, and checked before they are trusted.

- ``write_json_atomic`` / ``save_torch_atomic`` write a temporary file next to the target, fsync it,
  rename it over the target and fsync the folder, so a reader sees the old file or the new one, and
  the rename itself survives a power cut. A temporary left by a killed writer is removed by the next
  write to the same target.
- ``read_json_checked`` / ``load_torch_checked`` read a cache file and check it; a file that
  cannot be parsed or fails the check is moved aside to ``<name>.corrupt`` with a warning naming
  it, and the caller gets ``None`` (so it recomputes) instead of a crash that repeats on every run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path

__all__ = ["write_json_atomic", "save_torch_atomic", "read_json_checked", "load_torch_checked",
           "move_aside", "CorruptFileWarning"]


class CorruptFileWarning(UserWarning):
    """A cache file could not be used and was moved aside to ``*.corrupt``."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _remove_orphans(path: Path) -> None:
    # Temporaries are named .<target>.<pid>.<random>.tmp: one whose writer is dead is an orphan.
    # A live writer's temporary (another process writing the same target) is left alone. Older
    # code named them .<target>.<random>.tmp: those are orphans once they are an hour old.
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        try:
            orphan = not _pid_alive(int(pid)) if pid.isdigit() else \
                time.time() - tmp.stat().st_mtime > 3600
            if orphan:
                tmp.unlink()
        except FileNotFoundError:  # removed meanwhile by another writer
            pass


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    # Write next to the target, flush to disk, then rename over it: a rename within one
    # folder is atomic, so a reader (or a resumed sweep) sees the old file or the new one.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    prefix = f".{path.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
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
    _fsync_dir(path.parent)  # make the rename itself durable


def write_json_atomic(path: Path, obj) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def save_torch_atomic(path: Path, obj) -> None:
    import torch  # here: JSON writers (and the crash test's writer processes) need no torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def move_aside(path: Path, reason: str) -> Path:
    """Rename ``path`` to ``<path>.corrupt`` (replacing an older one); warn, naming both and why."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another process found it unusable too, and moved it first
        return target
    warnings.warn(f"{path} is unusable ({reason}); moved it aside to {target.name} "
                  "and will compute it again", CorruptFileWarning, stacklevel=3)
    return target


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def read_json_checked(path: Path, validate=None):
    """The JSON content of ``path`` if it parses and passes ``validate``; else ``None``.

    ``None`` also when the file does not exist. ``validate(obj)`` raises (``ValueError``,
    ``TypeError``, ``KeyError``) with a message saying what is wrong; a file that fails to parse
    or to validate is moved aside to ``*.corrupt`` with a ``CorruptFileWarning`` naming it, so
    the caller recomputes.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(text)
        if validate is not None:
            validate(obj)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
        move_aside(path, _first_line(error))
        return None
    return obj


def load_torch_checked(path: Path, validate=None, map_location=None):
    """``torch.load(path, weights_only=True)``, checked by ``validate``; ``None`` if unusable.

    Only tensors and plain containers load (``weights_only=True``): a file holding any other object,
    such as one whose unpickling would run code, is refused without running anything. A refused,
    truncated or invalid file is moved aside to ``*.corrupt``, with a ``CorruptFileWarning``.
    """
    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
        if validate is not None:
            validate(obj)
    except Exception as error:  # noqa: BLE001 - unpickling, zip, validation errors: all "unusable"
        reason = _first_line(error)
        if "weights only load failed" in reason.lower() or "weights_only" in reason:
            reason = "refused: it holds objects other than tensors and plain containers"
        move_aside(path, reason)
        return None
    return obj

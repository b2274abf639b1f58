"""Measured tables a lesson hands to ``BENCHMARKS.md``.

A lesson that measures something worth keeping (a sweep's tokens/s, a kernel's
speed-up, a fit's wall time) calls ``record(name, title, rows)`` in a cell whose
output nbval ignores. The record is a JSON file in ``cache_dir()/benchmarks/``;
``tools/notebooks.py benchmark`` runs the lessons with a fresh cache and writes
every record it finds, as a table, into the machine's section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from numbers import Real
from pathlib import Path

from book import device as _device
from book.storage import write_json_atomic

FOLDER = "benchmarks"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def _cell(value) -> str | int | float | bool | None:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, Real):
        return float(value) if not isinstance(value, int) else int(value)
    raise ValueError(f"table cells must be str, int, float, bool or None, got {type(value).__name__}")


def record(name: str, title: str, rows: list[dict], note: str = "", cache: Path | None = None) -> Path:
    """Store a measured table for ``BENCHMARKS.md``; return the file written.

    ``name``: a file name (lower-case letters, digits, '-', '_', '.'), e.g. ``"ch2-sweep-throughput"``;
    records sort by name. ``rows``: dicts with the same keys (the columns, in order). ``note``:
    one sentence saying what was measured and how. The device's name is added.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name must be lower-case letters, digits, '-', '_' or '.', got {name!r}")
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title must be a non-empty string")
    if not isinstance(rows, (list, tuple)) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts")
    columns = list(rows[0])
    for i, row in enumerate(rows):
        if list(row) != columns:
            raise ValueError(f"rows[{i}] has columns {list(row)}; every row must have {columns}")
    data = {"name": name, "title": title.strip(), "note": note.strip(), "columns": columns,
            "rows": [[_cell(row[c]) for c in columns] for row in rows],
            "device": _device.device().type, "device_name": _device.device_name(),
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = Path(cache or _device.cache_dir()) / FOLDER / f"{name}.json"
    write_json_atomic(path, data)
    return path


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(cache: Path | None = None) -> list[str]:
    """Every stored record under ``cache`` (default ``cache_dir()``) as markdown lines, sorted by name."""
    folder = Path(cache or _device.cache_dir()) / FOLDER
    lines: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = json.loads(path.read_text())
        lines += [f"### {data['title']}", ""]
        if data.get("note"):
            lines += [data["note"], ""]
        lines += [f"Measured on {data['device']} ({data['device_name']}) at {data['recorded_at']}.", ""]
        lines.append("| " + " | ".join(data["columns"]) + " |")
        lines.append("|" + "|".join("---" for _ in data["columns"]) + "|")
        lines += ["| " + " | ".join(_format(v) for v in row) + " |" for row in data["rows"]]
        lines.append("")
    return lines

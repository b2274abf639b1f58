"""The runs each chapter trains, one module per chapter: ``chNN_<topic>.py``.

An idea (a formula, a model, a fit, a published constant) lives in ``book/<topic>.py``; the runs
that measure it, every sweep definition and every size that depends on the ``profile`` knob live
here, in the module of the chapter whose lessons train them. Outside this package only
``book.device`` reads the profile. A lesson trains through ``book.sweep``; its solutions notebook
asks for the same runs and gets the cached results instead of training again, so sweep and run names
are stable.

Every chapter module defines ``planned_runs() -> dict[str, list[Run]]``: each sweep its lessons
train, with its runs at the current profile. ``CHAPTERS`` lists the modules, so a tool can iterate
over them (``planned_runs`` loads Shakespeare for its vocabulary size).
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from book import data


def shakespeare() -> data.TokenDataset:
    """Character-level Shakespeare, the course's real text."""
    return data.load_shakespeare(tokenizer="char", val_fraction=0.1)


# Every module named chNN_<topic>, in chapter order (a new chapter's module joins by its name
# alone).
CHAPTERS = tuple(
    importlib.import_module(f"{__name__}.{m.name}")
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    if re.fullmatch(r"ch\d\d_\w+", m.name)
)


def planned_runs() -> dict[str, list]:
    """Every chapter's ``planned_runs()`` together: sweep name -> runs at the current profile.

    A sweep two chapters share (chapter 2's model-size sweep is chapter 1's on the CPU profile)
    appears once. A chapter module without ``planned_runs`` yet is skipped.
    """
    out: dict[str, list] = {}
    for chapter in CHAPTERS:
        if hasattr(chapter, "planned_runs"):
            out.update(chapter.planned_runs())
    return out


def _chapter_module(folder: str):
    match = re.match(r"(\d\d)_", folder)
    if not match:
        return None
    return next((m for m in CHAPTERS if m.__name__.rsplit(".", 1)[-1].startswith(f"ch{match[1]}_")), None)


def lesson_group(path: str) -> str:
    """The group a lesson notebook runs in when lessons run in parallel: its chapter folder by default.

    A chapter module may define ``LESSON_GROUPS``: {lesson numbers: sweeps they train}, for lessons that
    share no cached sweep with the rest of their chapter; each group may then run in its own worker
    (``tools/device_bench.py``), and ``tools/gpu_plan.py`` charges each group its own sweeps.
    """
    parts = re.split(r"[\\/]", str(path))
    folder, stem = (parts[-2], parts[-1]) if len(parts) >= 2 else (str(path), "")
    module = _chapter_module(folder)
    number = re.match(r"(\d+)_", stem)
    for lessons in getattr(module, "LESSON_GROUPS", {}):
        if number and int(number[1]) in lessons:
            return f"{folder}/{'-'.join(map(str, lessons))}"
    return folder

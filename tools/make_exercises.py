"""Generate exercises/ from solutions/.

Each notebook in solutions/ is the single source of its exercise notebook: every block from
`### BEGIN SOLUTION` to `### END SOLUTION` is replaced by a stub, outputs are cleared, and the
result is written to the same relative path under exercises/.

    python tools/make_exercises.py           # regenerate every exercise notebook
    python tools/make_exercises.py --check   # list stale, missing or extra ones; exit 1 if any
"""

from __future__ import annotations

import argparse
import copy
import posixpath
import re
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parent.parent

BEGIN_MARKER = re.compile(r"^(?P<indent>\s*)### BEGIN SOLUTION\s*$")
END_MARKER = re.compile(r"^\s*### END SOLUTION\s*$")
CODE_STUB = 'raise NotImplementedError("Exercise: replace this line with your code")'
ANSWER_STUB = "*Your answer here.*"
EXERCISE_TAG = "exercise"  # the cells that hold a solution; each is followed by a `check` cell
# A fixed id keeps the generated notebook byte-identical from one run to the next.
NOTE_CELL_ID = "generated-exercise-note"
# The notebook's title (its first `# ` heading) names what it is: "Exercises" here,
# "Solutions" on the solutions page (tools/course_site.py), whichever word the source uses.
TITLE_WORD = re.compile(r"\bSolutions\b")


def replace_solution_blocks(source: str, stub: str, where: str) -> str:
    """Replace each BEGIN/END SOLUTION block in `source` by `stub`, at the BEGIN line's indent.

    `where` names the cell in error messages; unbalanced or nested markers raise ValueError.
    """
    kept_lines = []
    open_block_line = None  # line number of the BEGIN marker of the block we are inside
    for number, line in enumerate(source.splitlines(), start=1):
        begin = BEGIN_MARKER.match(line)
        if begin:
            if open_block_line is not None:
                raise ValueError(
                    f"{where}: nested '### BEGIN SOLUTION' on line {number} "
                    f"(the block opened on line {open_block_line} is not closed yet)"
                )
            open_block_line = number
            kept_lines.append(begin.group("indent") + stub)
        elif END_MARKER.match(line):
            if open_block_line is None:
                raise ValueError(f"{where}: '### END SOLUTION' on line {number} has no BEGIN before it")
            open_block_line = None
        elif open_block_line is None:
            kept_lines.append(line)
    if open_block_line is not None:
        raise ValueError(f"{where}: '### BEGIN SOLUTION' on line {open_block_line} is never closed")
    text = "\n".join(kept_lines)
    return text + "\n" if source.endswith("\n") else text


def make_exercise(nb: NotebookNode, source: str | None = None) -> NotebookNode:
    """Return the exercise version of solution notebook `nb` (which is left untouched).

    `source` is the solution's path relative to the repo root, for the note and error messages.
    """
    source_name = source or "its solutions notebook"
    exercise = copy.deepcopy(nb)
    for index, cell in enumerate(exercise.cells):
        where = f"{source_name}: cell {index}" + (f" (id {cell.id})" if "id" in cell else "")
        if cell.cell_type == "code":
            cell.source = replace_solution_blocks(cell.source, CODE_STUB, where)
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)  # run timestamps are output too
        elif cell.cell_type == "markdown":
            cell.source = replace_solution_blocks(cell.source, ANSWER_STUB, where)

    has_title = bool(exercise.cells) and is_title_cell(exercise.cells[0])
    if has_title:
        exercise.cells[0].source = exercises_title(exercise.cells[0].source)
    note = nbformat.v4.new_markdown_cell(exercise_note(source), id=NOTE_CELL_ID)
    if exercise.nbformat_minor < 5:  # cell ids exist only from nbformat 4.5 on
        del note["id"]
    exercise.cells.insert(1 if has_title else 0, note)  # below the title, so the page keeps it
    return exercise


def is_title_cell(cell: NotebookNode) -> bool:
    return cell.cell_type == "markdown" and cell.source.lstrip().startswith("# ")


def exercises_title(source: str) -> str:
    """The title cell `source` with "Solutions" in its first line read as "Exercises"."""
    head, newline, rest = source.lstrip().partition("\n")
    return TITLE_WORD.sub("Exercises", head, count=1) + newline + rest


def exercise_note(source: str | None) -> str:
    """The learner's note under the title: what to do, where the solutions are, how it is made."""
    if source is None:
        solutions = "its solutions notebook"
    elif not source.startswith("solutions/"):
        solutions = f"`{source}`"
    else:  # a link relative to the exercise notebook: it works in JupyterLab and on the site
        link = posixpath.relpath(source, posixpath.dirname(exercise_path(source).as_posix()))
        solutions = f"[`{source}`]({link})"
    return (
        "*Fill in each cell that raises `NotImplementedError`, then run the `check` cell below "
        f"it: its message says what is wrong. Worked solutions: {solutions}. This notebook is "
        "generated from that file; edit that file and run `python tools/make_exercises.py`.*"
    )


def exercise_path(solution_path: str | Path, root: Path = ROOT) -> Path:
    """exercises/ path for a solutions/ path; relative in, relative out; absolute must lie under root."""
    path = Path(solution_path)
    base = Path(root) if path.is_absolute() else Path()
    try:
        return base / "exercises" / path.relative_to(base / "solutions")
    except ValueError:
        raise ValueError(f"solution_path must lie under {base / 'solutions'}, got {solution_path}") from None


def solution_notebooks(root: Path = ROOT) -> list[Path]:
    """All solution notebooks under root/solutions, sorted, without Jupyter's checkpoints."""
    return notebooks_under(root / "solutions")


def notebooks_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def render_exercise(solution: Path, root: Path = ROOT) -> str:
    """The exact text of the exercise notebook generated from `solution`."""
    relative = solution.relative_to(root).as_posix()
    exercise = make_exercise(nbformat.read(solution, as_version=4), source=relative)
    text = nbformat.writes(exercise)
    return text if text.endswith("\n") else text + "\n"


def expected_exercises(root: Path = ROOT) -> dict[Path, str]:
    """Map each exercise path to the text it should hold."""
    return {exercise_path(s, root): render_exercise(s, root) for s in solution_notebooks(root)}


def stale_exercises(root: Path = ROOT) -> list[str]:
    """Problems with exercises/, one line each ("stale: ...", "missing: ...", "extra: ..."); empty when up to date."""
    root = Path(root)
    expected = expected_exercises(root)
    problems = []
    for path, text in expected.items():
        shown = path.relative_to(root).as_posix()
        if not path.exists():
            problems.append(f"missing: {shown}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"stale: {shown}")
    for path in notebooks_under(root / "exercises"):
        if path not in expected:
            problems.append(f"extra: {path.relative_to(root).as_posix()} (no notebook in solutions/)")
    return sorted(problems)


def generate_all(root: Path = ROOT) -> None:
    """Write every exercise notebook and delete those whose solution is gone."""
    root = Path(root)
    expected = expected_exercises(root)  # render all first, so a bad notebook writes nothing
    for path, text in expected.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path.relative_to(root).as_posix()}")
    for path in notebooks_under(root / "exercises"):
        if path not in expected:
            path.unlink()
            print(f"deleted {path.relative_to(root).as_posix()} (no notebook in solutions/)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate exercises/ from solutions/.")
    parser.add_argument("--check", action="store_true", help="only report stale, missing or extra exercises")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: the parent of tools/)")
    args = parser.parse_args(argv)
    try:
        if not args.check:
            generate_all(args.root)
            return 0
        problems = stale_exercises(args.root)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    if problems:
        print("exercises/ is out of date: run `python tools/make_exercises.py`", file=sys.stderr)
        return 1
    print("exercises/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

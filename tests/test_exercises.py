"""Exercises: tools/make_exercises.py turns solutions/ into exercises/, and every check fails on the stub."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tools.make_exercises import (
    ANSWER_STUB,
    CODE_STUB,
    exercise_path,
    generate_all,
    main,
    make_exercise,
    notebooks_under,
    replace_solution_blocks,
    solution_notebooks,
    stale_exercises,
)
from tools.notebooks import run_notebook

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "square_solution.ipynb"


# ---------------------------------------------------------------- helpers shared by the tests


def tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def error_of(cell) -> str | None:
    """'Name: value' of the cell's first error output, or None if it ran cleanly."""
    for output in cell.get("outputs", []):
        if output.output_type == "error":
            return f"{output.ename}: {output.evalue}"
    return None


def name_of(index: int, cell) -> str:
    return f"cell {index} (id {cell.get('id', '?')})"


def structure_problems(nb) -> list[str]:
    """Ways a solutions notebook breaks the exercise conventions of CONTRIBUTING.md."""
    code_cells = [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    exercises = [(position, index, cell) for position, (index, cell) in enumerate(code_cells)
                 if "exercise" in tags(cell)]
    problems = [] if exercises else ["no cell is tagged `exercise`"]
    for position, index, cell in exercises:
        following = code_cells[position + 1][1] if position + 1 < len(code_cells) else None
        if following is None or "check" not in tags(following):
            problems.append(f"{name_of(index, cell)}: the next code cell is not tagged `check`")
        if replace_solution_blocks(cell.source, CODE_STUB, name_of(index, cell)) == cell.source:
            problems.append(f"{name_of(index, cell)}: no `### BEGIN SOLUTION` ... `### END SOLUTION` block")
    return problems


def stub_problems(nb) -> list[str]:
    """Ways an exercise notebook, executed with allow_errors, shows a check that misses the stub."""
    code_cells = [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    problems = []
    for position, (index, cell) in enumerate(code_cells):
        if "check" in tags(cell):
            if error_of(cell) is None:
                problems.append(f"{name_of(index, cell)}: this check passes on the stub")
        elif "exercise" in tags(cell):
            check = code_cells[position + 1][1] if position + 1 < len(code_cells) else None
            errors = [error_of(cell), check and error_of(check)]
            if not any(error and error.startswith("NotImplementedError") for error in errors):
                problems.append(f"{name_of(index, cell)}: neither it nor its check raised "
                                f"NotImplementedError (errors: {errors})")
        elif "raises-exception" not in tags(cell) and error_of(cell):
            problems.append(f"{name_of(index, cell)}: raised {error_of(cell)} on the stub; only "
                            "`exercise` and `check` cells may fail there")
    return problems


def notebook_params(paths: list[Path], what: str) -> list:
    """One pytest param per notebook, named by its repo path; a skipped one if there are none."""
    if not paths:
        return [pytest.param(None, id="none", marks=pytest.mark.skip(reason=f"no {what} notebooks yet"))]
    return [pytest.param(path, id=path.relative_to(ROOT).as_posix()) for path in paths]


def solution_nb(*cells):
    return new_notebook(cells=list(cells))


# ---------------------------------------------------------------- the generator, on in-memory notebooks


def test_top_level_block_becomes_one_stub_line():
    nb = solution_nb(new_code_cell("x = 1\n### BEGIN SOLUTION\ny = x + 1\nz = y * 2\n### END SOLUTION\nprint(x)"))
    assert make_exercise(nb).cells[1].source == f"x = 1\n{CODE_STUB}\nprint(x)"


def test_block_inside_a_def_becomes_the_stub_body():
    source = "def square(x):\n    '''Square.'''\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION\n"
    stubbed = make_exercise(solution_nb(new_code_cell(source))).cells[1].source
    assert stubbed == f"def square(x):\n    '''Square.'''\n    {CODE_STUB}\n"
    namespace = {}
    exec(stubbed, namespace)  # still valid Python, and calling it raises the stub's error
    with pytest.raises(NotImplementedError, match="Exercise"):
        namespace["square"](3)


def test_outputs_cleared_and_metadata_and_ids_kept():
    cell = new_code_cell("### BEGIN SOLUTION\n1 + 1\n### END SOLUTION", id="the-exercise",
                         metadata={"tags": ["exercise"]}, execution_count=7,
                         outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=7)])
    exercise = make_exercise(solution_nb(cell)).cells[1]
    assert exercise.outputs == [] and exercise.execution_count is None
    assert exercise.id == "the-exercise" and exercise.metadata.tags == ["exercise"]


def test_note_at_the_top_names_the_source():
    exercise = make_exercise(solution_nb(new_code_cell("1")), source="solutions/00_x/y.ipynb")
    note = exercise.cells[0]
    assert note.cell_type == "markdown"
    assert "`solutions/00_x/y.ipynb`" in note.source and "python tools/make_exercises.py" in note.source


def test_markdown_answer_block_is_replaced():
    question = "**Question.** Why?\n\n### BEGIN SOLUTION\nBecause.\nReally.\n### END SOLUTION"
    exercise = make_exercise(solution_nb(new_markdown_cell(question)))
    assert exercise.cells[1].source == f"**Question.** Why?\n\n{ANSWER_STUB}"


@pytest.mark.parametrize("source, problem", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "has no BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION", "nested"),
])
def test_unbalanced_markers_raise_naming_the_cell(source, problem):
    nb = solution_nb(new_code_cell("ok = 1", id="fine"), new_code_cell(source, id="broken"))
    with pytest.raises(ValueError, match=rf"solutions/a\.ipynb: cell 1 \(id broken\): .*{problem}"):
        make_exercise(nb, source="solutions/a.ipynb")


def test_generation_is_deterministic_and_leaves_the_solution_alone():
    nb = solution_nb(new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", outputs=[], execution_count=1))
    before = nbformat.writes(nb)
    first, second = (nbformat.writes(make_exercise(nb, source="solutions/a.ipynb")) for _ in range(2))
    assert first == second
    assert nbformat.writes(nb) == before


def test_exercise_path_mirrors_solutions(tmp_path):
    assert exercise_path("solutions/00_machine/peaks.ipynb") == Path("exercises/00_machine/peaks.ipynb")
    solution = tmp_path / "solutions" / "01_a" / "b.ipynb"
    assert exercise_path(solution, root=tmp_path) == tmp_path / "exercises" / "01_a" / "b.ipynb"
    with pytest.raises(ValueError, match="solution_path"):
        exercise_path("lessons/01_a/b.ipynb")


def test_check_reports_missing_stale_and_extra_then_regenerates(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "solutions" / "00_t").mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURE, tmp_path / "solutions" / "00_t" / f"{name}.ipynb")
    generate_all(tmp_path)
    assert stale_exercises(tmp_path) == []
    written = (tmp_path / "exercises" / "00_t" / "a.ipynb").read_bytes()

    (tmp_path / "exercises" / "00_t" / "a.ipynb").write_text("{}")
    (tmp_path / "exercises" / "00_t" / "b.ipynb").unlink()
    shutil.copy(FIXTURE, tmp_path / "exercises" / "00_t" / "orphan.ipynb")
    assert stale_exercises(tmp_path) == [
        "extra: exercises/00_t/orphan.ipynb (no notebook in solutions/)",
        "missing: exercises/00_t/b.ipynb",
        "stale: exercises/00_t/a.ipynb",
    ]
    assert main(["--check", "--root", str(tmp_path)]) == 1

    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "exercises" / "00_t" / "a.ipynb").read_bytes() == written  # same bytes on re-run
    assert not (tmp_path / "exercises" / "00_t" / "orphan.ipynb").exists()


# ---------------------------------------------------------------- the whole pipeline, on the fixture


def test_fixture_pipeline_checks_fail_on_stub_and_pass_on_solution(tmp_path):
    solution = tmp_path / "solutions" / "00_demo" / "squares.ipynb"
    solution.parent.mkdir(parents=True)
    shutil.copy(FIXTURE, solution)
    generate_all(tmp_path)
    exercise = tmp_path / "exercises" / "00_demo" / "squares.ipynb"

    assert structure_problems(nbformat.read(solution, as_version=4)) == []
    stubbed = run_notebook(nbformat.read(exercise, as_version=4), cwd=exercise.parent, allow_errors=True)
    assert stub_problems(stubbed) == []
    errors = {cell.id: error_of(cell) for cell in stubbed.cells if error_of(cell)}
    assert errors["check-1"].startswith("NotImplementedError")  # stub inside a def: the check calls it
    assert errors["exercise-2"].startswith("NotImplementedError")  # top-level stub: the cell itself
    assert errors["check-2"].startswith("NameError")

    solved = run_notebook(nbformat.read(solution, as_version=4), cwd=solution.parent, allow_errors=True)
    assert [error_of(cell) for cell in solved.cells if error_of(cell)] == []


# ---------------------------------------------------------------- the real solutions/ and exercises/


def test_exercises_are_up_to_date_with_solutions():
    problems = stale_exercises(ROOT)
    assert problems == [], "run `python tools/make_exercises.py`:\n" + "\n".join(problems)


@pytest.mark.parametrize("solution", notebook_params(solution_notebooks(ROOT), "solution"))
def test_solution_notebook_follows_exercise_conventions(solution):
    problems = structure_problems(nbformat.read(solution, as_version=4))
    assert problems == [], "\n".join(problems)


# Last, and slow: runs every exercise notebook.
@pytest.mark.parametrize("exercise", notebook_params(notebooks_under(ROOT / "exercises"), "exercise"))
def test_every_check_fails_on_the_stub(exercise):
    nb = run_notebook(nbformat.read(exercise, as_version=4), cwd=exercise.parent, allow_errors=True)
    problems = stub_problems(nb)
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- the exercise's title and note (the site shows both)


def test_title_says_exercises_and_the_note_sits_under_it():
    title = new_markdown_cell("# 1.1 — Solutions: a title\n\nIntroduction.")
    exercise = make_exercise(solution_nb(title, new_code_cell("1")), source="solutions/01_a/b.ipynb")
    assert exercise.cells[0].source == "# 1.1 — Exercises: a title\n\nIntroduction."
    note = exercise.cells[1]
    assert note.id == "generated-exercise-note" and "NotImplementedError" in note.source
    # a link relative to exercises/01_a/, so it opens in JupyterLab and on the site
    assert "[`solutions/01_a/b.ipynb`](../../solutions/01_a/b.ipynb)" in note.source


def test_a_title_that_already_says_exercises_is_kept():
    title = new_markdown_cell("# 1.1 — Exercises: a title")
    exercise = make_exercise(solution_nb(title), source="solutions/01_a/b.ipynb")
    assert exercise.cells[0].source == "# 1.1 — Exercises: a title"

"""tools/course_site.py: how solutions and exercises pages are shown on the site, and the buttons."""

import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))  # as Sphinx loads it: _config.yml's local_extensions

import course_site  # noqa: E402


def shown(page, *cells):
    text = nbformat.writes(new_notebook(cells=list(cells)))
    return nbformat.reads(page(text), as_version=4).cells


def test_solutions_page_drops_markers_folds_the_solution_and_says_solutions():
    title = new_markdown_cell("# 1.1 — Exercises: a title\n\nExercises below.")
    exercise = new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION",
                             metadata={"tags": ["exercise"]})
    check = new_code_cell("assert f(1) == 1", metadata={"tags": ["check"]})
    cells = shown(course_site.solutions_page, title, exercise, check)
    assert cells[0].source == "# 1.1 — Solutions: a title\n\nExercises below."  # the title only
    assert cells[1].source == "def f(x):\n    return x"
    assert cells[1].metadata.tags == ["exercise", "hide-input"]
    assert cells[1].metadata.mystnb["code_prompt_show"] == "Show the solution"
    assert cells[2].metadata.tags == ["check"] and cells[2].source == "assert f(1) == 1"


def test_solutions_page_folds_a_markdown_answer_in_a_dropdown():
    question = new_markdown_cell("Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION")
    (cell,) = shown(course_site.solutions_page, question)
    assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source
    assert cell.source.startswith("Why?\n\n::::{admonition} Answer\n:class: dropdown\n")
    assert cell.source.endswith("Because.\n::::")


def test_exercises_page_glues_from_the_solutions_notebook():
    text = new_markdown_cell("Within {glue:text}`width:d`% and {glue}`other`; "
                             "{glue:text}`/x.ipynb::kept:.2f`.\n```{glue:figure} fig\n```")
    (cell,) = shown(lambda t: course_site.exercises_page(t, "solutions/01_a/b.ipynb"), text)
    where = "/solutions/01_a/b.ipynb::"
    assert cell.source == (f"Within {{glue:text}}`{where}width:d`% and {{glue}}`{where}other`; "
                           f"{{glue:text}}`/x.ipynb::kept:.2f`.\n```{{glue:figure}} {where}fig\n```")


def config(**options):
    return SimpleNamespace(html_theme_options=dict(options))


def test_no_repository_url_means_no_repository_issues_or_launch_buttons():
    settings = config(repository_url="", launch_buttons={"binderhub_url": "https://mybinder.org"})
    course_site.buttons_follow_repository(None, settings)
    options = settings.html_theme_options
    assert not options["use_repository_button"] and not options["use_issues_button"]
    assert options["launch_buttons"] == {} and "repository_url" not in options


def test_a_repository_url_turns_the_buttons_on():
    launch = {"binderhub_url": "https://mybinder.org"}
    settings = config(repository_url="https://github.com/o/r", launch_buttons=launch)
    course_site.buttons_follow_repository(None, settings)
    options = settings.html_theme_options
    assert options["use_repository_button"] and options["use_issues_button"]
    assert options["launch_buttons"] == launch and options["repository_url"] == "https://github.com/o/r"

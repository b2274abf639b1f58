"""Sphinx hooks for the course site; _config.yml loads this file (sphinx.local_extensions).

1. Solutions pages. A notebook in solutions/ is shown with its `### BEGIN SOLUTION` /
   `### END SOLUTION` marker lines dropped, each solution cell folded behind a "Show the
   solution" toggle (the `hide-input` tag), markdown answers folded in a dropdown, and "Exercises"
   in its title read as "Solutions". Only the page changes: the notebook file, and the page's
   download, are the solutions notebook as committed. The stubs are the exercises/ pages.
   An exercises page takes the numbers its text glues (`{glue:text}`key``) from the solutions
   notebook, whose cells computed them; the exercise notebook has no outputs to glue from.
2. Buttons. Repository, issues and Binder buttons exist only when `repository: url:` in
   _config.yml names a real repository; with it empty, none of them (and no broken link).
"""

from __future__ import annotations

import re

import nbformat

from make_exercises import BEGIN_MARKER, END_MARKER, EXERCISE_TAG

TITLE_WORD = re.compile(r"\bExercises\b")
SOLUTION_PROMPTS = {"code_prompt_show": "Show the solution", "code_prompt_hide": "Hide the solution"}
ANSWER_OPEN = "::::{admonition} Answer\n:class: dropdown\n"
ANSWER_CLOSE = "::::"
GLUE_ROLE = re.compile(r"(\{glue(?::[a-z]+)?\}`)(?![^`]*::)")  # a role without a `path::`
GLUE_DIRECTIVE = re.compile(r"^(\s*(?:`{3,}|:{3,})\{glue(?::[a-z]+)?\}[ \t]+)(?!\S*::)", re.M)


def show_solution_cell(source: str, markdown: bool) -> tuple[str, bool]:
    """`source` without its marker lines, and whether it held a solution block.

    In markdown, the answer between the markers goes into a folded dropdown instead.
    """
    lines, found = [], False
    for line in source.splitlines():
        if BEGIN_MARKER.match(line):
            found = True
            if markdown:
                lines.append(ANSWER_OPEN)
        elif END_MARKER.match(line):
            if markdown:
                lines.append(ANSWER_CLOSE)
        else:
            lines.append(line)
    return "\n".join(lines), found


def solutions_page(text: str) -> str:
    """The notebook JSON `text` of a solutions notebook, as its site page shows it."""
    nb = nbformat.reads(text, as_version=4)
    titled = False
    for cell in nb.cells:
        is_markdown = cell.cell_type == "markdown"
        if is_markdown and not titled and cell.source.lstrip().startswith("# "):
            head, _, rest = cell.source.lstrip().partition("\n")
            cell.source = TITLE_WORD.sub("Solutions", head, count=1) + ("\n" + rest if rest else "")
            titled = True
        cell.source, found = show_solution_cell(cell.source, is_markdown)
        tags = cell.metadata.setdefault("tags", [])
        if cell.cell_type == "code" and (found or EXERCISE_TAG in tags) and "hide-input" not in tags:
            tags.append("hide-input")
            cell.metadata.setdefault("mystnb", {}).update(SOLUTION_PROMPTS)
    return nbformat.writes(nb)


def exercises_page(text: str, solution: str) -> str:
    """The notebook JSON `text` of an exercise notebook, its glue taken from `solution`."""
    nb = nbformat.reads(text, as_version=4)
    where = f"/{solution}::"  # a path from the source root, as myst-nb's glue roles take it
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = GLUE_DIRECTIVE.sub(rf"\g<1>{where}", GLUE_ROLE.sub(rf"\g<1>{where}", cell.source))
    return nbformat.writes(nb)


def on_source_read(app, docname: str, source: list[str]) -> None:
    if not app.env.doc2path(docname).endswith(".ipynb"):
        return
    if docname.startswith("solutions/"):
        source[0] = solutions_page(source[0])
    elif docname.startswith("exercises/"):
        source[0] = exercises_page(source[0], "solutions/" + docname.split("/", 1)[1] + ".ipynb")


def buttons_follow_repository(app, config) -> None:
    """Repository, issues and launch buttons on only when the repository URL is set."""
    options = config.html_theme_options
    has_repository = bool(options.get("repository_url", "").strip())
    options["use_repository_button"] = has_repository
    options["use_issues_button"] = has_repository
    if not has_repository:
        options.pop("repository_url", None)
        options["launch_buttons"] = {}


def setup(app):
    app.connect("config-inited", buttons_follow_repository)
    app.connect("source-read", on_source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Every number glued into a page's prose has a stored value to paste.

MyST-NB's `glue("name", value, display=False)` stores a value as a `display_data` output whose
metadata holds `{"scrapbook": {"name": "name", "mime_prefix": "application/papermill.record/"}}`;
the markdown pastes it with roles such as {glue:text}`name:.3f` (or a directive, ```{glue:figure} name).
A reference whose name has no stored value, or whose format cannot apply to it, is only a build warning
on the site; here it is a failing test, per notebook, read from the committed outputs (nothing runs).
A reference `other.ipynb::name` pastes from another notebook, resolved relative to the page.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
from myst_nb.core.variables import format_plain_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_FOLDERS = ("lessons", "solutions")
GLUE_PREFIX = "application/papermill.record/"

# {glue}`name`, {glue:text}`name:.3f`, {glue:md}`name`, ... (MyST-NB's glue roles)
ROLE = re.compile(r"\{glue(?::(?P<kind>any|text|md|math|figure))?\}`(?P<body>[^`]*)`")
# ```{glue:figure} name, :::{glue} name, ... (its directives), at the start of a line
DIRECTIVE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})\{glue(?::(?P<kind>any|figure|math|md))?\}[ \t]*(?P<body>\S*)",
                       re.MULTILINE)
# Code that shows the syntax without using it: fenced blocks that are not directives, and inline literals.
FENCED_CODE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?!\{).*?^[ \t]*(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL)
LITERAL = re.compile(r"(?<!`)(?P<ticks>``+)(?!`).+?(?<!`)(?P=ticks)(?!`)", re.DOTALL)


def notebooks() -> list[Path]:
    return sorted(p.resolve() for folder in NOTEBOOK_FOLDERS for p in (ROOT / folder).rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


@cache
def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


@cache
def glued(path: Path) -> dict[str, list[dict]]:
    """name -> the stored glue outputs' data of that name (mime prefix removed), in cell order."""
    values: dict[str, list[dict]] = {}
    for cell in load(path)["cells"]:
        if cell.get("cell_type") != "code":
            continue
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if output.get("output_type") not in ("display_data", "execute_result") or not record:
                continue
            prefix = record.get("mime_prefix", "")
            data = {mime[len(prefix):] if mime.startswith(prefix) else mime: value
                    for mime, value in output.get("data", {}).items()}
            values.setdefault(record["name"], []).append(data)
    return values


def references(path: Path) -> list[tuple[int, str, str, str]]:
    """(cell index, kind, name with any `doc::` prefix, format spec) of every glue reference in the markdown."""
    found = []
    for index, cell in enumerate(load(path)["cells"]):
        if cell.get("cell_type") != "markdown":
            continue
        text = LITERAL.sub("", FENCED_CODE.sub("", source(cell)))
        for match in ROLE.finditer(text):
            kind, body = match["kind"] or "any", match["body"].strip()
            key, spec = body, ""
            if kind == "text" and ":" in body:  # name:format, split at the last colon as MyST-NB does
                key, spec = body.rsplit(":", 1)
            found.append((index, kind, key, spec))
        for match in DIRECTIVE.finditer(text):
            found.append((index, match["kind"] or "any", match["body"].strip(), ""))
    return found


def resolve(page: Path, key: str) -> tuple[Path, str]:
    """The notebook a reference pastes from and the name in it: `doc::name` is relative to the page."""
    if "::" not in key:
        return page, key
    doc, name = key.split("::", 1)
    target = (ROOT / doc.lstrip("/")) if doc.startswith("/") else (page.parent / doc)
    if target.suffix != ".ipynb":
        target = target.with_name(target.name + ".ipynb")
    return target.resolve(), name


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


def problems(page: Path) -> list[str]:
    found = []
    for name, values in glued(page).items():
        if len(values) > 1:
            found.append(f"glue name {name!r} is stored {len(values)} times (MyST-NB keeps one, with a warning)")
    for index, kind, key, spec in references(page):
        where = f"markdown cell {index}: {{glue:{kind}}}`{key}{':' + spec if spec else ''}`"
        if not key or key.endswith(":"):
            found.append(f"{where}: no name" + (" (MyST-NB splits at the last colon: a reference to another "
                                                 "notebook needs a format, `path::name:s`)" if key else ""))
            continue
        target, name = resolve(page, key)
        if not target.is_file():
            found.append(f"{where}: no notebook {shown(target)}")
            continue
        values = glued(target).get(name)
        if not values:
            other = "" if target == page else f" of {shown(target)}"
            found.append(f"{where}: no glued value named {name!r} in the stored outputs{other} "
                         "(not glued, or the notebook not re-executed)")
            continue
        data = values[-1]
        if kind == "text":
            if "text/plain" not in data:
                found.append(f"{where}: the glued value has no text/plain to paste")
                continue
            try:
                format_plain_text(data["text/plain"], spec or "s")
            except Exception as exc:  # what MyST-NB would only warn about at build time
                found.append(f"{where}: format {spec!r} does not apply to the stored {data['text/plain']!r} "
                             f"({type(exc).__name__}: {exc}); glue a float() or a formatted string")
        elif kind == "md" and "text/markdown" not in data:
            found.append(f"{where}: the glued value has no text/markdown to paste")
    return found


PAGES = notebooks()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_glue_reference_has_a_stored_value(page):
    found = problems(page)
    assert not found, f"{shown(page)}:\n  " + "\n  ".join(found)


# ---------------------------------------------------------------- the checker itself, on made-up notebooks


def _glue_output(name: str, text: str) -> dict:
    return {"output_type": "display_data", "metadata": {"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}},
            "data": {GLUE_PREFIX + "text/plain": text}}


def _write(path: Path, markdown: list[str], outputs: list[dict]) -> Path:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": m} for m in markdown]
    cells.append({"cell_type": "code", "metadata": {}, "source": "", "outputs": outputs,
                  "execution_count": 1})
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_checker_finds_what_is_missing_and_accepts_what_is_there(tmp_path):
    other = _write(tmp_path / "other.ipynb", [], [_glue_output("far", "3.5")])
    page = _write(tmp_path / "page.ipynb", [
        "Present: {glue:text}`loss:.3f`, {glue}`loss` and {glue:text}`label`; elsewhere: "
        "{glue:text}`other.ipynb::far:.1f`.",
        "```{glue:figure} fig\n:name: fig-x\n```",
        "Shown, not used: ``{glue:text}`shown` `` and\n```markdown\n{glue:text}`in_code`\n```",
        "Missing: {glue:text}`gone:.2f`, {glue:text}`other.ipynb::nowhere:s`, {glue:text}`np:.2f`, "
        "{glue:text}`missing.ipynb::x:s`, {glue:text}`other.ipynb::far`.",
    ], [_glue_output("loss", "2.3456"), _glue_output("label", "'9,139'"), _glue_output("fig", "<Figure>"),
        _glue_output("np", "np.float64(2.5)")])
    assert load(other)  # the page's neighbour exists
    found = "\n".join(problems(page))
    for bad in ("'gone'", "'nowhere'", "np.float64(2.5)", "missing.ipynb", "needs a format"):
        assert bad in found, f"expected a problem about {bad}, got:\n{found}"
    for good in ("'loss'", "'label'", "'far'", "'fig'", "shown", "in_code"):
        assert good not in found, f"{good} is fine, but was reported:\n{found}"
    assert len(found.splitlines()) == 5, found


def test_checker_reports_a_name_glued_twice(tmp_path):
    page = _write(tmp_path / "twice.ipynb", ["{glue:text}`x`"], [_glue_output("x", "1"), _glue_output("x", "2")])
    assert any("stored 2 times" in p for p in problems(page))

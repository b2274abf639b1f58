"""Showing library code in a lesson: a whole function or class, found by name, never cut by place.

``source(book.fit.fit_power_law)`` is the function's code as it is in the library now (``inspect``),
its docstrings left out by default (found with ``ast``, so a renamed helper or a reworded docstring
cannot shift the cut). The result is a ``str``: ``print`` it, or leave it as a cell's last value to
get highlighted Python (a Markdown code block), which a ``hide-output`` cell tag folds on the site.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

__all__ = ["Source", "source"]


class Source(str):
    """Source code: prints as plain text, shows as a highlighted Python block in a notebook."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        return f"```python\n{self}\n```"


def _docstring_lines(tree: ast.AST) -> set[int]:
    """1-based line numbers of every docstring of a def or class in ``tree`` (not one sharing its
    line with the ``def``, and not one that is its body's only statement: removing it would leave no
    body)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if (
            not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            or len(node.body) < 2
        ):
            continue
        first = node.body[0]
        is_doc = (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        )
        if is_doc and first.lineno > node.lineno:
            lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def source(obj, *, docstring: bool = False) -> Source:
    """The whole source of a function, method or class, dedented; without docstrings unless
    ``docstring``.

    Raises ``TypeError`` for an object with no Python source (a number, a builtin, an instance).
    """
    if not isinstance(docstring, bool):
        raise TypeError(f"docstring must be True or False, got {docstring!r}")
    if not (inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj)):
        raise TypeError(
            f"obj must be a function, method or class defined in Python, got {obj!r} "
            f"of type {type(obj).__name__}"
        )
    try:
        text = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as err:
        raise TypeError(f"no Python source for {obj!r}: {err}") from None
    if not docstring:
        drop = _docstring_lines(ast.parse(text))
        text = "\n".join(line for i, line in enumerate(text.splitlines(), 1) if i not in drop)
    return Source(text.rstrip("\n"))

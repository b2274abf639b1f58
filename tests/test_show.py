import ast
import inspect

import pytest

from book import fit, frontier
from book.show import Source, source


class _Example:
    """A class docstring."""

    def method(self, x):
        """A method docstring,
        on two lines."""
        return x + 1  # a comment stays

    def only_doc(self):
        """Its body is only this docstring, so it stays."""


def test_source_shows_the_whole_function_without_its_docstring():
    text = source(fit.fit_power_law)
    assert text.startswith("def fit_power_law(") and "return PowerLawFit(" in text
    assert fit.fit_power_law.__doc__.strip().splitlines()[0] not in text
    assert ast.parse(text)  # still valid Python
    full = source(fit.fit_power_law, docstring=True)
    assert full == inspect.getsource(fit.fit_power_law).rstrip("\n")


def test_source_of_a_class_and_a_method():
    text = source(_Example)
    assert "class docstring" not in text and "method docstring" not in text and "on two lines" not in text
    assert "# a comment stays" in text and "Its body is only" in text
    assert ast.parse(text)
    method = source(_Example.method)
    assert method.startswith("def method(self, x):") and "return x + 1" in method  # dedented
    assert source(frontier.Envelope).startswith("@dataclass(frozen=True)")  # decorators included


def test_source_displays_as_python():
    text = source(_Example.method)
    assert isinstance(text, Source) and isinstance(text, str) and repr(text) == str(text)
    assert text._repr_markdown_().startswith("```python\ndef method")


@pytest.mark.parametrize("obj", [3, len, _Example(), "fit_power_law"])
def test_source_refuses_what_has_no_source(obj):
    with pytest.raises(TypeError, match="obj must be|no Python source"):
        source(obj)


def test_docstring_must_be_a_bool():
    with pytest.raises(TypeError, match="docstring"):
        source(fit.fit_power_law, docstring="no")

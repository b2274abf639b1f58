import json

import pytest

from book import benchmarks


def test_record_round_trip(tmp_path):
    path = benchmarks.record("ch9-demo", "A demo table", [{"n": 512, "seconds": 0.0123, "ok": True},
                                                         {"n": 4096, "seconds": 1234.5, "ok": False}],
                             note="Measured twice.", cache=tmp_path)
    data = json.loads(path.read_text())
    assert data["columns"] == ["n", "seconds", "ok"] and data["rows"][1] == [4096, 1234.5, False]
    lines = benchmarks.markdown(tmp_path)
    assert lines[0] == "### A demo table" and "| n | seconds | ok |" in lines
    assert "| 4,096 | 1,234 | no |" in lines and "| 512 | 0.0123 | yes |" in lines


def test_markdown_without_records(tmp_path):
    assert benchmarks.markdown(tmp_path) == []


@pytest.mark.parametrize("name, rows, match", [
    ("Bad Name", [{"a": 1}], "name"),
    ("ok", [], "rows"),
    ("ok", [{"a": 1}, {"b": 2}], "columns"),
    ("ok", [{"a": object()}], "cells"),
])
def test_bad_input(tmp_path, name, rows, match):
    with pytest.raises(ValueError, match=match):
        benchmarks.record(name, "t", rows, cache=tmp_path)

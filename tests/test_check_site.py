"""tools/check_site.py without a browser: what it counts as local, internal, broken or a problem.

The browser run itself is `make check-site` (in .ci/run, after `make site`).
"""

from tools.check_site import (
    PageResult,
    is_local,
    link_problems,
    link_target,
    page_problems,
    screenshot_pages,
    site_pages,
)

ORIGIN = "http://127.0.0.1:8123"


def test_only_the_loopback_and_inline_data_are_local():
    assert is_local(f"{ORIGIN}/intro.html") and is_local("http://localhost:1/x") and is_local("data:,x")
    assert not is_local("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js")
    assert not is_local("http://10.0.0.1/x")


def test_link_target_is_the_site_path_and_fragment_of_internal_links_only():
    assert link_target(f"{ORIGIN}/lessons/a.html#goals", ORIGIN) == ("lessons/a.html", "goals")
    assert link_target(f"{ORIGIN}/", ORIGIN) == ("index.html", "")
    assert link_target(f"{ORIGIN}/my%20page.html", ORIGIN) == ("my page.html", "")
    assert link_target("https://arxiv.org/abs/2001.08361", ORIGIN) is None
    assert link_target("http://127.0.0.1:9999/a.html", ORIGIN) is None  # another server
    assert link_target("javascript:window.print()", ORIGIN) is None


def test_site_pages_and_screenshots(tmp_path):
    for name in ("intro.html", "lessons/01_a/2_b.html", "lessons/01_a/1_a.html",
                 "lessons/02_c/1_c.html", "_static/x.html", "solutions/01_a/1_a.html"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("<html></html>")
    pages = site_pages(tmp_path)
    assert "_static/x.html" not in pages and len(pages) == 5
    assert screenshot_pages(pages) == ["intro.html", "lessons/01_a/1_a.html", "lessons/02_c/1_c.html"]


def test_a_clean_page_has_no_problems():
    report = {"mathjax": True, "math": 3, "unrendered": 0, "mathErrors": [], "rawTex": [],
              "brokenImages": [], "text": "All fine."}
    assert page_problems(PageResult("a.html", report)) == []


def test_each_kind_of_problem_is_reported_naming_the_page():
    report = {"mathjax": False, "math": 2, "unrendered": 2, "mathErrors": ["Undefined control sequence"],
              "mathHeadings": ["L(N) = ..."],
              "rawTex": ["\\(x\\)"], "brokenImages": ["../_images/a.png"],
              "text": "x\n### BEGIN SOLUTION\n"}
    result = PageResult("a.html", report, console_errors=["Uncaught SyntaxError"],
                        failed_requests=["HTTP 404: /favicon.ico"])
    problems = page_problems(result)
    assert all(problem.startswith("a.html: ") for problem in problems)
    for words in ("console error: Uncaught SyntaxError", "request failed: HTTP 404",
                  "MathJax did not load", "2 of 2 math elements not rendered", "MathJax error",
                  "raw TeX", "math in a heading", "image not loaded: ../_images/a.png", "'### BEGIN SOLUTION' shows"):
        assert any(words in problem for problem in problems), (words, problems)


def test_links_to_missing_files_or_ids_are_broken(tmp_path):
    (tmp_path / "a.html").write_text("")
    (tmp_path / "b.html").write_text("")
    links = [f"{ORIGIN}/b.html#here", f"{ORIGIN}/b.html#gone", f"{ORIGIN}/c.html", "https://example.org/"]
    results = [PageResult("a.html", {"links": links, "ids": []}),
               PageResult("b.html", {"links": [], "ids": ["here"]})]
    assert link_problems(results, tmp_path, ORIGIN) == [
        f"a.html: broken link: {ORIGIN}/b.html#gone (no id 'gone' on b.html)",
        f"a.html: broken link: {ORIGIN}/c.html (no file c.html)",
    ]

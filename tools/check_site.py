"""Test the built site in a real browser, offline: `make check-site` (after `make site`).

    python tools/check_site.py [--site _build/html] [--browser /usr/bin/chromium]

Serves the built site on 127.0.0.1 (a free port), opens every page in headless Chromium (Debian's
`chromium`, driven by Playwright) with the outside unreachable (every request to a host other
than the loopback fails, and is reported), and checks each page:

- math is rendered: every `.math` element holds MathJax output, no MathJax error, and no raw
  `\\(`, `\\[` or `$$` is left in the text (code excepted); no heading holds math (the sidebar
  and the page's contents show headings as text);
- every image loaded, with a non-zero natural size;
- no console error, no uncaught exception, no failed or blocked request;
- every internal link resolves: to a file of the site, and its `#fragment` to an id on that page;
- no `### BEGIN SOLUTION` / `### END SOLUTION` marker shows.

It saves screenshots of the landing page and of the first lesson of each chapter under
_build/screenshots/, prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import posixpath
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_SCHEMES = {"data", "blob", "about"}
MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
# Jupyter Book's index.html only redirects to the landing page: its target is checked as a link.
REDIRECT = re.compile(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.I)
# Chromium's own background traffic (updates, sync, safe browsing) would hit the closed network.
CHROMIUM_ARGS = [
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--no-first-run", "--disable-gpu", "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1280, "height": 1000}

# Runs in the page once it has loaded: waits for MathJax and the images, then reports.
PAGE_REPORT_JS = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await document.fonts.ready;  // MathJax's own fonts, so that the screenshots show them
  const images = [...document.images];
  await Promise.all(images.map(img => img.complete ? null
    : new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
  const rawTex = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent;
    if (/\\\(|\\\[|\$\$/.test(text) && !node.parentElement.closest(skip)) {
      rawTex.push(text.trim().slice(0, 80));
    }
  }
  const math = [...document.querySelectorAll('.math')];
  return {
    mathjax: !!(window.MathJax && MathJax.startup),
    math: math.length,
    unrendered: math.filter(e => !e.querySelector('mjx-container')).length,
    mathHeadings: [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')]
                  .filter(h => h.querySelector('.math'))
                  .map(h => h.textContent.replace(/[#¶]\s*$/, '').trim().slice(0, 80) + ' (TeX: '
                       + (window.MathJax ? MathJax.startup.document.getMathItemsWithin(h)
                          .map(item => item.math).join(', ') : '?') + ')'),
    mathErrors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80)),
    rawTex: rawTex,
    brokenImages: images.filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0))
                        .map(i => i.getAttribute('src')),
    images: images.length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id)
         .concat([...document.querySelectorAll('a[name]')].map(a => a.name)),
    text: document.body.innerText,
  };
}
"""


@dataclass
class PageResult:
    """What one page showed: its report from the browser, and what the listeners caught."""

    name: str
    report: dict = field(default_factory=dict)
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)


def is_local(url: str) -> bool:
    """Whether the browser may fetch `url`: the loopback, or data inside the page."""
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.hostname or "") in LOOPBACK_HOSTS


def site_pages(site: Path) -> list[str]:
    """Every HTML page of the built site, as paths relative to it, sorted."""
    skipped = {"_static", "_sources", "_images"}
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not skipped & set(p.relative_to(site).parts))


def link_target(href: str, origin: str) -> tuple[str, str] | None:
    """(site-relative path, fragment) for an internal link, None for any other link."""
    parts = urlsplit(href)
    if parts.scheme not in ("http", "https") or f"{parts.scheme}://{parts.netloc}" != origin:
        return None
    path = unquote(parts.path).lstrip("/")
    if path == "" or path.endswith("/"):
        path += "index.html"
    return path, unquote(parts.fragment)


def page_problems(result: PageResult) -> list[str]:
    """The problems one page showed, one line each, each naming the page."""
    report, name = result.report, result.name
    problems = [f"{name}: console error: {message}" for message in result.console_errors]
    problems += [f"{name}: request failed: {request}" for request in result.failed_requests]
    if report.get("math") and not report.get("mathjax"):
        problems.append(f"{name}: {report['math']} math elements but MathJax did not load")
    if report.get("unrendered"):
        problems.append(f"{name}: {report['unrendered']} of {report['math']} math elements not rendered")
    problems += [f"{name}: MathJax error: {error}" for error in report.get("mathErrors", [])]
    problems += [f"{name}: math in a heading (the sidebar and page contents show it raw): {heading!r}"
                 for heading in report.get("mathHeadings", [])]
    problems += [f"{name}: raw TeX in the text: {text!r}" for text in report.get("rawTex", [])]
    problems += [f"{name}: image not loaded: {src}" for src in report.get("brokenImages", [])]
    problems += [f"{name}: solution marker {marker!r} shows" for marker in MARKERS
                 if marker in report.get("text", "")]
    return problems


def link_problems(results: list[PageResult], site: Path, origin: str) -> list[str]:
    """Internal links that lead to no file of the site, or to no such id on their page."""
    ids = {result.name: set(result.report.get("ids", [])) for result in results}
    problems = []
    for result in results:
        for href in sorted(set(result.report.get("links", []))):
            target = link_target(href, origin)
            if target is None:
                continue
            path, fragment = target
            if not (site / path).is_file():
                problems.append(f"{result.name}: broken link: {href} (no file {path})")
            elif fragment and path in ids and fragment not in ids[path]:
                problems.append(f"{result.name}: broken link: {href} (no id {fragment!r} on {path})")
    return problems


def screenshot_pages(pages: list[str]) -> list[str]:
    """The landing page and the first lesson of each chapter."""
    chosen = [page for page in ("intro.html",) if page in pages]
    chapters = {}
    for page in pages:
        match = re.match(r"lessons/([^/]+)/", page)
        if match:
            chapters.setdefault(match.group(1), page)
    return chosen + [chapters[chapter] for chapter in sorted(chapters)]


def serve(site: Path) -> http.server.ThreadingHTTPServer:
    """An HTTP server for `site` on 127.0.0.1 at a free port, running in a thread."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_site(site: Path, browser_path: str, screenshots: Path) -> list[str]:
    """Open every page of `site` in the browser; return the problems found."""
    from playwright.sync_api import sync_playwright  # installed by `make check-site`

    pages = site_pages(site)
    if not pages:
        return [f"no HTML pages under {site}: run `make site` first"]
    server = serve(site)
    dead_end = socket.socket()  # bound, never listening: connections to it are refused
    dead_end.bind(("127.0.0.1", 0))
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    wanted_screenshots = set(screenshot_pages(pages))
    screenshots.mkdir(parents=True, exist_ok=True)
    results: list[PageResult] = []
    try:
        with sync_playwright() as playwright:
            # The outside is unreachable: every request but the loopback's (which Chromium
            # never sends to a proxy) goes to a proxy that is a bound port nobody listens on.
            # (Chromium's own flag: Playwright's proxy option would send the loopback there too.)
            proxy = f"--proxy-server=http://127.0.0.1:{dead_end.getsockname()[1]}"
            browser = playwright.chromium.launch(executable_path=browser_path,
                                                 args=CHROMIUM_ARGS + [proxy])
            context = browser.new_context(viewport=VIEWPORT)
            current = PageResult("")
            page = context.new_page()
            page.on("console", lambda message: message.type == "error"
                    and current.console_errors.append(message.text))
            page.on("pageerror", lambda error: current.console_errors.append(f"uncaught: {error}"))
            page.on("response", lambda response: response.status >= 400
                    and current.failed_requests.append(f"HTTP {response.status}: {response.url}"))
            # A request cut short by leaving the page (net::ERR_ABORTED) is no failure; a
            # missing file shows as an HTTP error above, a blocked one in route().
            page.on("requestfailed", lambda request: current.failed_requests.append(
                f"{request.failure}: {request.url}" if is_local(request.url)
                else f"outside the loopback, unreachable: {request.url}")
                if request.failure != "net::ERR_ABORTED" or not is_local(request.url) else None)
            for name in pages:
                current = PageResult(name)
                redirect = REDIRECT.search((site / name).read_text(encoding="utf-8", errors="replace"))
                if redirect:
                    current.report = {"links": [f"{origin}/{posixpath.join(posixpath.dirname(name), redirect.group(1))}"]}
                    results.append(current)
                    continue
                page.goto(f"{origin}/{name}", wait_until="load")
                current.report = page.evaluate(PAGE_REPORT_JS)
                if name in wanted_screenshots:
                    shot = screenshots / (name.removesuffix(".html").replace("/", "-") + ".png")
                    page.screenshot(path=str(shot), full_page=name == "intro.html")
                results.append(current)
            browser.close()
    finally:
        server.shutdown()
        dead_end.close()
    problems = [problem for result in results for problem in page_problems(result)]
    problems += link_problems(results, site, origin)
    math_pages = sum(1 for result in results if result.report.get("math"))
    print(f"checked {len(results)} pages ({math_pages} with math, "
          f"{sum(r.report.get('math', 0) for r in results)} math elements, "
          f"{sum(r.report.get('images', 0) for r in results)} images); "
          f"screenshots in {screenshots}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "_build" / "html", help="the built site")
    parser.add_argument("--browser", default="/usr/bin/chromium", help="the Chromium to drive")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots")
    args = parser.parse_args(argv)
    if not Path(args.browser).is_file():
        print(f"error: no browser at {args.browser}: install Debian's `chromium` "
              "(make check-site does, as root) or pass --browser", file=sys.stderr)
        return 2
    start = time.perf_counter()
    problems = check_site(args.site, args.browser, args.screenshots)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems in {time.perf_counter() - start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

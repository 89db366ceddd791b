"""The report as a reader sees it: rendered in a real headless Chromium (Playwright), checked for
what issue 25 found by eye (a page that scrolls sideways, stray backticks, "± 0", broken figures),
and photographed for a person to look at. Run by `tox -e browser` (needs `playwright` and a Chromium:
`apt-get install chromium-headless-shell`, or `TRILEMMA_CHROMIUM=/path/to/chrome`).

The run rendered is the committed `reports/cpu-quick` (re-rendered by this code, nothing trained);
the screenshots go to `$TRILEMMA_SCREENSHOTS` (default `.tox/screenshots`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from trilemma.cli import main

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "reports" / "cpu-quick"
WIDTH, HEIGHT = 1400, 900

#: Run in the page: everything a reader would notice, as data the test asserts on.
INSPECT = """() => {
  const wide = document.scrollingElement.scrollWidth;
  const tables = [...document.querySelectorAll('table')].map(t => {
    const box = t.parentElement;
    return {wider: t.scrollWidth > box.clientWidth + 1, scrolls: ['auto', 'scroll'].includes(getComputedStyle(box).overflowX),
            inPage: box.getBoundingClientRect().right <= window.innerWidth + 1};
  });
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
  const headings = [...document.querySelectorAll('h1,h2,h3,h4')].map(h => h.textContent);
  const level = e => /^H[1-6]$/.test(e.tagName) ? Number(e.tagName[1]) : 99;
  const emptySections = [...document.querySelectorAll('h2,h3')].filter(h => {
    const next = h.nextElementSibling; return !next || level(next) <= level(h);
  }).map(h => h.textContent);
  return {wide, tables, images, headings, emptySections, text: document.body.innerText};
}"""


def chromium() -> str:
    found = os.environ.get("TRILEMMA_CHROMIUM") or next(
        (path for name in ("chromium-headless-shell", "chromium", "google-chrome") if (path := shutil.which(name))), None)
    if not found:
        pytest.fail("no Chromium: `apt-get install chromium-headless-shell` (or set TRILEMMA_CHROMIUM)")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """The committed quick run, and a comparison of it with itself, rendered by this code."""
    if not (RUN / "results.csv").exists():
        pytest.fail(f"{RUN} is not in this checkout")
    run = tmp_path_factory.mktemp("report") / "cpu-quick"
    shutil.copytree(RUN, run, ignore=shutil.ignore_patterns("checkpoints", "report.*", "plots"))
    assert main(["report", str(run)]) == 0
    compared = run.parent / "compared"
    assert main(["report", str(run), str(run), "--compare", "--force", "--out", str(compared)]) == 0
    return {"run": run / "report.html", "compare": compared / "report.html"}


@pytest.fixture(scope="module")
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium())
        yield browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        browser.close()


def shots() -> Path:
    where = Path(os.environ.get("TRILEMMA_SCREENSHOTS", ROOT / ".tox" / "screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.mark.parametrize("which", ["run", "compare"])
def test_the_report_reads_in_a_browser_without_sideways_scrolling_or_stray_marks(rendered, page, which):
    page.goto(rendered[which].as_uri())
    page.wait_for_load_state("load")
    seen = page.evaluate(INSPECT)
    page.screenshot(path=str(shots() / f"{which}-top.png"))
    page.screenshot(path=str(shots() / f"{which}-full.png"), full_page=True)

    assert seen["wide"] <= WIDTH, f"the page scrolls sideways: {seen['wide']} px in a {WIDTH} px window"
    assert seen["tables"], "no table rendered"
    for table in seen["tables"]:  # a wide table scrolls in its own box, inside the page
        assert table["inPage"] and (table["scrolls"] or not table["wider"]), table
    assert all(image["ok"] for image in seen["images"]), [i["src"] for i in seen["images"] if not i["ok"]]
    assert not [h for h in seen["headings"] if "`" in h], seen["headings"]
    assert not seen["emptySections"], f"headings with nothing under them: {seen['emptySections']}"
    assert not re.search(r"± 0(?![.\d])", seen["text"]), "a constant shown as '± 0'"
    if which == "run":
        assert len(seen["images"]) >= 5, "the run report shows its figures and sample grids"

"""`make site`: the executed course as static HTML, checked in the real browser.

- the builder on hand-made executed notebooks (fast): pages, index, report, exercise links, alt text,
  error outputs flagged;
- a small course executed by `python -m labkit_dev.course` and built into a site, opened page by page in Chromium
  with the network cut off: every page loads, the lesson that trains shows its loss-curve image,
  no page shows an error;
- the real site of `make course` (build/course), the same checks plus a screenshot of the index
  (build/site-screenshot.png). It needs `make course` first: `make site` runs it with
  LABKIT_REQUIRE_SITE=1; elsewhere it skips when build/course does not exist.
"""

import base64
import io
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest

from labkit.plots import LiveLossPlot
from labkit_dev.site import SiteError, build_site

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "build" / "site-screenshot.png"
# A lesson whose code calls one of these trains, and must show its loss curve: an image whose alt
# text starts with "Loss curve" (LiveLossPlot.ALT; a live plot of another trainer names itself the same way).
TRAINS = ("train_sft(", "train_dpo(")


def _png() -> str:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([3, 1, 2])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _checkout(tmp_path: Path) -> Path:
    """A minimal course checkout: the real pyproject.toml and exercises, lessons to be added."""
    root = tmp_path / "course"
    (root / "lessons").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(ROOT / "exercises", root / "exercises")
    return root


def _executed_lesson(path: Path, title: str, outputs: list) -> None:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("h = train_sft(model, tok, train)")
    code.outputs = outputs
    code.execution_count = 1 if outputs else None
    nb.cells = [nbformat.v4.new_markdown_cell(f"[![badge](x.svg)](y)\n# {title}\nText."), code]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def test_site_builder_pages_index_report_and_errors(tmp_path):
    root = _checkout(tmp_path)
    course = root / "build" / "course"
    with pytest.raises(SiteError, match="make course"):
        build_site(root)
    curve = nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"},
                                   metadata={"image/png": {"alt": LiveLossPlot.ALT}})
    _executed_lesson(course / "05_train.ipynb", "Lesson five", [curve])
    boom = nbformat.v4.new_output("error", ename="AssertionError", evalue="claim broken", traceback=["boom"])
    _executed_lesson(course / "06_broken.ipynb", "Lesson six", [boom])
    _executed_lesson(course / "07_stopped.ipynb", "Lesson seven", [])  # its code cell never ran
    (root / "build" / "course-report.md").write_text("# Course runtime report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    index = build_site(root)
    text = index.read_text()
    assert 'href="lessons/05_train.html">Lesson five<' in text and "Lesson six" in text
    assert "error: AssertionError: claim broken" in text  # a broken lesson is flagged, not hidden
    assert "stopped before cell 1" in text  # so is one whose kernel died half way
    assert 'href="report.html"' in text and "<table>" in (index.parent / "report.html").read_text()
    exercises = sorted((root / "exercises").glob("*.ipynb"))
    assert exercises and all(f'href="exercises/{e.stem}.html"' in text for e in exercises)
    lesson = (index.parent / "lessons" / "05_train.html").read_text()
    assert f'alt="{LiveLossPlot.ALT}"' in lesson and 'href="../index.html"' in lesson
    assert "Worked solutions" not in text  # none executed: no empty section
    _executed_lesson(course / "solutions" / "e7_family.ipynb", "E7 family", [curve])
    text = build_site(root).read_text()
    assert "Worked solutions, executed" in text and 'href="solutions/e7_family.html">E7 family<' in text
    assert 'href="../index.html"' in (index.parent / "solutions" / "e7_family.html").read_text()
    (course / "06_broken.ipynb").unlink()
    build_site(root)
    assert not (index.parent / "lessons" / "06_broken.html").exists()  # no page of a removed lesson


# ------------------------------------------------------------------------------------------------
# In the browser


def _file_url(path: Path) -> str:
    return path.resolve().as_uri()


def check_site_in_browser(index: Path, course_dir: Path, screenshot: Path | None = None) -> list[str]:
    """Open the index and every page it links to in Chromium, network cut off → pages checked."""
    from test_browser import CHROMIUM, CHROMIUM_ARGS, _require_browser

    sync_playwright = _require_browser()
    trains = {p.stem for p in course_dir.glob("*.ipynb")
              if any(t in c.source for c in nbformat.read(str(p), as_version=4).cells for t in TRAINS)}
    checked = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # Offline: only the site's own files load; CDN scripts (widgets) are refused, not waited for.
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                       else route.abort())
            page.goto(_file_url(index))
            if screenshot is not None:  # first, so it shows the site as it is, failures included
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            assert "labkit" in page.title()
            assert not page.locator(".fail").count(), page.locator(".fail").first.inner_text()
            hrefs = page.locator("a[href$='.html']").evaluate_all("links => links.map(a => a.href)")
            assert any("/lessons/" in h for h in hrefs) and any("/exercises/" in h for h in hrefs), hrefs
            for href in hrefs:
                response = page.goto(href)
                assert response is None or response.ok, href
                name = href.rsplit("/", 1)[-1].removesuffix(".html")
                body = page.locator("body").inner_text()
                assert body.strip() and "Traceback (most recent call last)" not in body, f"{href} shows an error"
                widths = page.locator("img[src^='data:image/png']").evaluate_all(
                    "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
                assert all(w > 0 for w in widths), f"{href}: an image did not render ({widths})"
                if "/lessons/" in href and name in trains:
                    curve = page.locator("img[alt^='Loss curve']")
                    assert curve.count() >= 1, f"{href} trains but shows no loss-curve image"
                    curve.first.scroll_into_view_if_needed()
                    assert curve.first.is_visible()
                checked.append(name)
        finally:
            browser.close()
    return checked


_PLOT_LESSON = [
    "# A plotting lesson\nNo training.",
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([3, 1, 2])",
    "from labkit.report import headline\nheadline('plotted')",
]
_TRAIN_LESSON = [
    "# A training lesson\nA tiny model, a few steps.",
    "from labkit.data import to_record\nfrom labkit.models import tiny_model\nfrom labkit.train import train_sft\n"
    "model, tok = tiny_model(seed=0)\nrecs = [to_record('Add one.', f'{i + 1}', input=str(i)) for i in range(12)]\n"
    "h = train_sft(model, tok, recs[:8], recs[8:], epochs=2, batch_size=4, progress=False, output_dir='run',\n"
    "              logging_steps=1)",
    "from labkit.report import headline\nheadline(f'val loss {h.val_loss[0]:.2f} -> {h.val_loss[-1]:.2f}')",
]


def _lesson(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(cells[0])] + [nbformat.v4.new_code_cell(c) for c in cells[1:]]
    nbformat.write(nb, str(path))


@pytest.mark.slow
@pytest.mark.browser
def test_a_small_executed_course_as_a_site_in_the_browser(tmp_path):
    from labkit_dev.course import run_course

    root = _checkout(tmp_path)
    _lesson(root / "lessons" / "01_plot.ipynb", _PLOT_LESSON)
    _lesson(root / "lessons" / "02_train.ipynb", _TRAIN_LESSON)
    runs = run_course(root=root)
    assert [r.ok for r in runs] == [True, True], [r.error for r in runs]
    index = build_site(root)
    checked = check_site_in_browser(index, root / "build" / "course")
    exercises = {p.stem for p in (root / "exercises").glob("*.ipynb")}
    assert {"01_plot", "02_train", "report"} | exercises <= set(checked), checked


@pytest.mark.slow
@pytest.mark.browser
def test_the_course_site_in_the_browser():
    course = ROOT / "build" / "course"
    if not list(course.glob("*.ipynb")):
        if os.environ.get("LABKIT_REQUIRE_SITE") == "1":
            pytest.fail(f"No executed course in {course}: run `make course` before `make site`.")
        pytest.skip("no executed course in build/course (run `make course`, then `make site`)")
    index = build_site(ROOT)
    checked = check_site_in_browser(index, course, SCREENSHOT)
    assert {p.stem for p in course.glob("*.ipynb")} <= set(checked)
    assert SCREENSHOT.stat().st_size > 10_000

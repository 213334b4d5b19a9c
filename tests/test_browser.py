"""The course in a real browser: JupyterLab + headless Chromium.

Unit tests drive the widgets' Python side; these prove the front end too:
- lesson 01 runs in JupyterLab, the decision widget renders, a click and a typed value reach the
  kernel and the recommendation on screen changes (screenshot: build/browser/01_decide.png);
- a figure *appears*: a plain matplotlib plot and labkit's live loss plot (updated several times)
  each show exactly one rendered image, so the live plot leaves no stale copy
  (screenshot: build/browser/figures.png).

Needs Debian's Chromium and Playwright's Python package (not its bundled browsers):
    apt-get install -y chromium && pip install playwright
The lesson is copied to a temporary folder first, so running it never writes into lessons/.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from labkit_dev.notebooks import INLINE_BACKEND

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "lessons" / "01_decide.ipynb"
SCREENSHOT = ROOT / "build" / "browser" / "01_decide.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIGURES_SCREENSHOT = ROOT / "build" / "browser" / "figures.png"
TOKEN = "labkit-browser-test"
INSTALL = "apt-get update && apt-get install -y chromium && pip install playwright"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _start_lab(workdir: Path, port: int) -> tuple[subprocess.Popen, Path]:
    settings = workdir / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "news" toast over the notebook in the screenshot, no update check (no internet in CI).
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Keep every cell in the DOM (no virtual scrolling), so the selectors below find off-screen outputs.
    notebook = workdir / "user-settings" / "@jupyterlab" / "notebook-extension"
    notebook.mkdir(parents=True)
    (notebook / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    log = workdir / "jupyterlab.log"
    # The kernels draw figures as a learner's do (inline PNGs), even where CI exports MPLBACKEND=Agg.
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(workdir / "runtime"), MPLBACKEND=INLINE_BACKEND,
               HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--port-retries=0", f"--ServerApp.token={TOKEN}",
           f"--ServerApp.root_dir={workdir / 'nb'}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.user_settings_dir={workdir / 'user-settings'}",
           f"--LabApp.workspaces_dir={workdir / 'workspaces'}"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, log


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started and everything it started (its kernels): its own process group."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _skip_or_fail(reason: str) -> None:
    """Developers without Chromium get a skip that says how to install it; CI (which sets
    LABKIT_REQUIRE_BROWSER=1 in .ci/run) fails instead, so the test can never silently vanish."""
    if os.environ.get("LABKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (LABKIT_REQUIRE_BROWSER=1: the browser test must run)")
    pytest.skip(reason)


def _require_browser():
    if not CHROMIUM.exists():
        _skip_or_fail(f"{CHROMIUM} missing; install with: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail(f"playwright missing; install with: {INSTALL}")
    return sync_playwright


@contextmanager
def _lab_page(tmp_path: Path, notebook: Path):
    """JupyterLab serving a copy of `notebook`, open in Chromium, every cell run, the last cell's
    `HEADLINE:` on screen (so every cell ran without error) → the Playwright page."""
    sync_playwright = _require_browser()
    (tmp_path / "nb").mkdir()
    shutil.copy(notebook, tmp_path / "nb" / notebook.name)
    port = _free_port()
    proc, log = _start_lab(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/status?token={TOKEN}", proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(f"{base}/lab/tree/{notebook.name}?token={TOKEN}", timeout=120_000)
                page.wait_for_selector(".jp-NotebookPanel", timeout=120_000)
                # The kernel must be up before "run all", or the cells queue against nothing.
                page.wait_for_function(
                    "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                    " const k = w && w.sessionContext && w.sessionContext.session &&"
                    " w.sessionContext.session.kernel; return k && k.status === 'idle'; }", timeout=180_000)
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                page.wait_for_selector(".jp-OutputArea-output >> text=HEADLINE:", timeout=240_000)
                yield page
            finally:
                browser.close()
    finally:
        _stop(proc)


def test_decision_widget_in_jupyterlab(tmp_path):
    with _lab_page(tmp_path, LESSON) as page:
        result = page.locator(".labkit-decision-result")
        result.wait_for(state="visible")
        result.scroll_into_view_if_needed()
        # The lesson's own cell left the widget at facts + behaviour + 2,000 examples.
        page.wait_for_function(
            "() => document.querySelector('.labkit-decision-result').innerText"
            ".includes('Recommendation: Fine-tune + RAG')", timeout=30_000)
        before = result.inner_text()

        # A real click: untick "private facts" → plain fine-tune.
        page.locator(".labkit-decision input[type=checkbox]").first.click()
        page.wait_for_function(
            "() => /Recommendation: Fine-tune\\s*$/m.test("
            "document.querySelector('.labkit-decision-result').innerText)", timeout=30_000)
        after_click = result.inner_text()
        assert after_click != before

        # Type 20 into the slider's readout → too few examples → prompting.
        readout = page.locator(".labkit-decision .widget-readout").first
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type("20")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => document.querySelector('.labkit-decision-result').innerText"
            ".includes('Recommendation: Prompting')", timeout=30_000)
        after_typing = result.inner_text()
        assert "collect 480 more" in after_typing

        page.locator(".labkit-decision").scroll_into_view_if_needed()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


_FIGURE_CELLS = [
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(4, 3))\nax.plot([3, 1, 2])\n"
    "ax.set_title('a plain figure')",
    # Several live updates, spaced so the browser really receives each one, then the final one.
    "import time\nfrom labkit.plots import LiveLossPlot\nfrom labkit.train import History\n"
    "live = LiveLossPlot(min_interval=0)\n"
    "for n in range(1, 5):\n"
    "    live.update(History(train_loss=[1 / k for k in range(1, n + 1)], val_loss=[1.5]))\n"
    "    time.sleep(0.5)\n"
    "live.update(History(train_loss=[1 / k for k in range(1, 6)], val_loss=[1.5, 0.6], best_epoch=1), final=True)",
    "print('HEADLINE: figures drawn')",
]


def _rendered_images(page, cell: int) -> list[int]:
    """naturalWidth of every image in one code cell's outputs (0 = an image that did not render)."""
    return page.locator(".jp-CodeCell").nth(cell).locator(".jp-OutputArea-output img").evaluate_all(
        "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")


def test_a_figure_appears_in_jupyterlab_and_the_live_plot_leaves_one(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in _FIGURE_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "figures.ipynb"
    nbformat.write(nb, str(path))
    with _lab_page(tmp_path, path) as page:
        page.locator(".jp-CodeCell").nth(0).locator(".jp-OutputArea-output img").first.wait_for(state="visible")
        plain, live = _rendered_images(page, 0), _rendered_images(page, 1)
        assert len(plain) == 1 and plain[0] > 100, f"plain figure: {plain} (want one rendered image)"
        assert len(live) == 1 and live[0] > 100, f"live loss plot: {live} (want one image, no stale copy)"
        assert not page.locator(".jp-OutputArea-output >> text=<Figure size").count()
        page.locator(".jp-CodeCell").nth(1).scroll_into_view_if_needed()
        FIGURES_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(FIGURES_SCREENSHOT))
    assert FIGURES_SCREENSHOT.stat().st_size > 10_000

"""The course runner (`python -m labkit_dev.course`, `make course`): executed copies hold real images,
one per live loss plot, and a quiet terminal."""

import base64
import hashlib
import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest

from labkit.plots import LiveLossPlot
from labkit.train import History
from labkit_dev.course import BUDGET_SECONDS, NotebookRun, report_markdown, run_course, run_notebook


def _notebook(tmp_path, *sources: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    path = tmp_path / "nb" / "plots.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, str(path))
    return path


def _executed(tmp_path, *sources: str):
    run = run_notebook(_notebook(tmp_path, *sources), tmp_path / "out")
    assert run.ok, run.error
    return nbformat.read(str(tmp_path / "out" / "plots.ipynb"), as_version=4)


def _pngs(cell) -> list[str]:
    return [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]


def test_report_shows_time_against_budget_and_flags_overruns():
    text = report_markdown([NotebookRun("00_setup", 12.0, True, 900.0, "ok"),
                            NotebookRun("05_qlora", BUDGET_SECONDS + 30, True, 2000.0, "EM 31/32")])
    assert "| 00_setup | 0:12 | 4% | 900 | pass | ok |" in text
    assert "| 05_qlora | 5:30 | **OVER** (110%) |" in text
    assert "Over the 5:00 budget: 05_qlora." in text
    assert "Every notebook within" in report_markdown([NotebookRun("00_setup", 12.0, True, 900.0, "ok")])
    timeout = report_markdown([NotebookRun("05", 1.0, False, 1.0, "", "CellTimeoutError: timed out\nfrom a | b")])
    assert "| FAIL: CellTimeoutError: timed out from a \\| b |" in timeout  # one table row


def test_live_plot_headless_draws_only_the_final_figure_and_leaves_pyplot_empty():
    before = plt.get_fignums()
    live = LiveLossPlot(min_interval=0)
    assert not live.live
    live.update(History(train_loss=[1.0, 0.5], val_loss=[1.2]))
    assert live.fig is None  # headless: no drawing while training
    live.update(History(train_loss=[1.0, 0.5, 0.2], val_loss=[1.2, 0.4], best_epoch=1), final=True)
    ax = live.fig.axes[0]
    assert [len(line.get_xdata()) for line in ax.lines][:2] == [3, 2]  # train curve, val curve
    assert plt.get_fignums() == before  # detached from pyplot: nothing else will show it


def test_live_plots_know_a_kernel_by_its_shell_class_not_its_name(monkeypatch):
    import IPython
    from ipykernel.zmqshell import ZMQInteractiveShell

    from labkit.plots import _in_notebook

    colab = type("Shell", (ZMQInteractiveShell,), {})  # Colab's kernel shell: a subclass, another name
    impostor = type("ZMQInteractiveShell", (), {})  # the right name on the wrong class
    for shell, expected in ((colab.__new__(colab), True), (impostor(), False), (None, False)):
        monkeypatch.setattr(IPython, "get_ipython", lambda shell=shell: shell)
        assert _in_notebook() is expected, shell
    monkeypatch.setattr(IPython, "get_ipython", lambda: colab.__new__(colab))
    monkeypatch.delitem(sys.modules, "ipykernel.zmqshell")  # no kernel has loaded ipykernel: a script
    assert _in_notebook() is False


@pytest.mark.slow
def test_executed_figures_are_images_even_when_the_shell_says_agg(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what .ci/run and many shells export
    nb = _executed(tmp_path, "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([3, 1, 2])")
    assert len(_pngs(nb.cells[0])) == 1
    err = capfd.readouterr().err
    assert "without encryption" not in err, err  # the kernel's TCP warning stays out of the terminal
    html = (tmp_path / "out" / "plots.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 1, "one image on the page"
    assert "&lt;Figure size" not in html
    assert not list((tmp_path / "nb").glob("kernel-ipc*")), "kernel sockets left beside the notebook"


@pytest.mark.slow
def test_live_plot_in_a_kernel_leaves_exactly_one_current_image(tmp_path):
    nb = _executed(
        tmp_path,
        "from labkit.plots import LiveLossPlot\nfrom labkit.train import History\n"
        "live = LiveLossPlot(min_interval=0)\n"
        "for n in range(1, 6):\n"
        "    live.update(History(train_loss=[1 / k for k in range(1, n + 1)], val_loss=[1.5]))\n"
        "live.update(History(train_loss=[1 / k for k in range(1, 8)], val_loss=[1.5, 0.6, 0.7], best_epoch=1),"
        " final=True)",
        # The picture of the final state, rendered by the same formatter: the stored image must be it.
        "import base64, hashlib\npng = get_ipython().display_formatter.format(live.fig)[0]['image/png']\n"
        "png = base64.b64decode(png) if isinstance(png, str) else png\nprint(hashlib.sha256(png).hexdigest())",
    )
    images = _pngs(nb.cells[0])
    assert len(images) == 1, f"{len(images)} images: the live plot left stale copies"
    final = nb.cells[1].outputs[0]["text"].strip()
    assert hashlib.sha256(base64.b64decode(images[0])).hexdigest() == final, "the stored image is not the final one"
    assert nb.cells[0].outputs[0]["metadata"]["image/png"]["alt"] == LiveLossPlot.ALT


@pytest.mark.slow
def test_training_in_a_notebook_shows_one_loss_curve_image(tmp_path):
    nb = _executed(
        tmp_path,
        "from labkit.data import to_record\nfrom labkit.models import tiny_model\nfrom labkit.train import train_sft\n"
        "model, tok = tiny_model(seed=0)\n"
        "recs = [to_record('Add one.', f'{i + 1}', input=str(i)) for i in range(12)]\n"
        "h = train_sft(model, tok, recs[:8], recs[8:], epochs=2, batch_size=4, progress=False,\n"
        "              output_dir='run', logging_steps=1)",
    )
    images = [o for o in nb.cells[0].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, [o.get("output_type") for o in nb.cells[0].outputs]
    assert images[0]["metadata"]["image/png"]["alt"] == LiveLossPlot.ALT


def test_a_silent_runner_failure_says_where_it_happened():
    from labkit_dev.course import _runner_error

    try:
        raise AssertionError()  # an exception with an empty message, like nbclient's
    except AssertionError as exc:
        text = _runner_error(exc)
    assert text.startswith("AssertionError: (no message) at test_course.py:"), text


def test_course_report_table(tmp_path):
    text = report_markdown([NotebookRun("00_setup", 12.0, True, 900.0, "ok"),
                            NotebookRun("05_qlora", 200.0, False, 2000.0, "", "AssertionError")])
    assert "| 00_setup | 0:12 | 4% | 900 | pass | ok |" in text
    assert "FAIL: AssertionError" in text and "1/2 notebooks passed" in text


@pytest.mark.slow
def test_course_runs_a_notebook_and_collects_its_headline(tmp_path):
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from labkit.report import headline\nheadline('it works')")]
    nbformat.write(nb, str(lessons / "01_x.ipynb"))
    bad = nbformat.v4.new_notebook()
    bad.cells = [nbformat.v4.new_code_cell("assert 1 == 2, 'claim broken'")]
    nbformat.write(bad, str(lessons / "02_y.ipynb"))
    runs = run_course(lessons, tmp_path / "build" / "course")
    assert [r.ok for r in runs] == [True, False]
    assert runs[0].headline == "it works" and "claim broken" in runs[1].error
    assert (tmp_path / "build" / "course-report.md").exists()
    assert (tmp_path / "build" / "course" / "01_x.html").exists()


def test_course_also_runs_the_named_worked_solutions(tmp_path):
    """`make course` executes E7's solution too (the site shows its table): into build/course/solutions/."""
    import shutil

    root = tmp_path / "course"
    for folder in ("lessons", "solutions"):
        (root / folder).mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "pyproject.toml", root / "pyproject.toml")
    for where, name, code in (("lessons", "01_x", "headline('lesson')"), ("solutions", "e7_y", "headline('table')")):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(f"from labkit.report import headline\n{code}")]
        nbformat.write(nb, str(root / where / f"{name}.ipynb"))
    runs = run_course(root=root, solutions=["e7"])
    assert [(r.name, r.headline) for r in runs] == [("01_x", "lesson"), ("e7_y", "table")]
    assert (root / "build" / "course" / "solutions" / "e7_y.ipynb").exists()
    with pytest.raises(FileNotFoundError, match="e9"):
        run_course(root=root, solutions=["e9"])

"""Run the whole course headless: every lesson in order, with a report an instructor can read.

    python -m labkit_dev.course [--only 00 05] [--root PATH]     (`make course`)

Each lesson calls `labkit.report.headline("...")` once with the result it proves (for example
"base EM 0/32 -> tuned EM 31/32"); the runner picks those lines out of the executed notebook.
`headline` is kit (lessons import it from an installed labkit); this runner is a tool for a
checkout: it takes the repository root (`--root`, default found upwards from the working
directory) and writes build/course/ and build/course-report.md there.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from labkit._compat import kernel_pid
from labkit.memory import peak_rss_mb
from labkit.report import HEADLINE_PREFIX
from labkit.tables import markdown_table

# A JupyterLab page, plus: alt text from the output's metadata, a link back to the index, no CDN
# require.js. Loaded from memory (jinja2 DictLoader), so nothing but this module has to be shipped.
_NAV_BLOCK = """{%- block body_header -%}
{{ super() }}
<nav class="labkit-nav" style="padding: 8px 0 16px 0; font-size: 14px;">
<a href="../index.html">&larr; Course index</a></nav>
{%- endblock body_header -%}
"""
_PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
NAV
{% block data_png scoped %}
{%- set alt = output | get_metadata('alt', 'image/png') or 'A figure drawn by the code above' -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}" alt="{{ alt | escape_html }}">
</div>
{% endblock data_png %}
"""
_TEMPLATE_NAME = "labkit_site.html.j2"

BUDGET_SECONDS = 300  # every lesson and solution must run in 5 min on the course's CPU profile


def page_exporter(nav: bool = True):
    """The HTMLExporter for the executed copies (`nav=False`) and every page of `make site` (labkit_dev.site)."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    template = _PAGE_TEMPLATE.replace("NAV\n", _NAV_BLOCK if nav else "")
    return HTMLExporter(extra_loaders=[DictLoader({_TEMPLATE_NAME: template})], template_file=_TEMPLATE_NAME)


@dataclass
class NotebookRun:
    name: str
    seconds: float
    ok: bool
    peak_mb: float
    headline: str
    error: str = ""


def headline_of(nb) -> str:
    """The `labkit.report.headline(...)` line an executed notebook printed ("" when it printed none)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            for line in text.splitlines():
                if line.startswith(HEADLINE_PREFIX):
                    return line.removeprefix(HEADLINE_PREFIX)
    return ""


def _runner_error(exc: Exception) -> str:
    """A failure of the runner itself (not of a cell), with where it happened when it says nothing
    (e.g. a kernel killed from outside surfaces as a bare AssertionError inside nbclient)."""
    import traceback

    text = str(exc).strip()
    if not text and exc.__traceback__ is not None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        text = f"(no message) at {Path(frame.filename).name}:{frame.lineno}; did the kernel stop?"
    return f"{type(exc).__name__}: {text}"[:200]


def run_notebook(path: Path, out_dir: Path, timeout: int = 1800) -> NotebookRun:
    """Execute one notebook; write the executed copy and an HTML copy under out_dir.

    Figures come out as PNG images (the kernel uses the inline backend, whatever MPLBACKEND the
    calling shell has), so the executed copies show what a learner sees in JupyterLab.
    """
    import nbformat
    from nbclient.exceptions import CellExecutionError

    from labkit_dev.notebooks import execute_with, kernel_client

    nb = nbformat.read(str(path), as_version=4)
    client = kernel_client(nb, path.parent, timeout)
    peak = [0.0]
    stop = threading.Event()

    def sample(**_) -> None:
        pid = kernel_pid(client)
        if pid is not None:
            peak[0] = max(peak[0], peak_rss_mb(pid))

    def watch() -> None:
        while not stop.wait(0.5):
            sample()

    # Sampled every 0.5 s and after each cell: a short notebook can finish and shut its kernel
    # down between two samples of the watcher, and its high-water mark would be lost.
    client.on_cell_executed = sample
    watcher = threading.Thread(target=watch, daemon=True)
    start = time.perf_counter()
    ok, error = True, ""
    watcher.start()
    try:
        execute_with(client)
    except CellExecutionError as exc:
        ok, error = False, str(exc).strip().splitlines()[-1][:200]
    except Exception as exc:  # noqa: BLE001 - a report must still be written
        ok, error = False, _runner_error(exc)
    finally:
        stop.set()
        watcher.join(timeout=2)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out_dir / path.name))
    html, _ = page_exporter(nav=False).from_notebook_node(nb)
    (out_dir / path.with_suffix(".html").name).write_text(html)
    return NotebookRun(path.stem, seconds, ok, peak[0], headline_of(nb), error)


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}:{s:02d}"


def report_markdown(runs: list[NotebookRun], budget: float = BUDGET_SECONDS) -> str:
    """The course report: each notebook's time against its budget (over-budget ones flagged)."""
    total = sum(r.seconds for r in runs)
    share = f"of the {_minutes(budget)} budget"
    rows = [{"notebook": r.name, "time": _minutes(r.seconds),
             share: f"{r.seconds / budget:.0%}" if r.seconds <= budget else f"**OVER** ({r.seconds / budget:.0%})",
             "peak MB": f"{r.peak_mb:.0f}", "result": "pass" if r.ok else f"FAIL: {r.error}", "headline": r.headline}
            for r in runs]
    lines = ["# Course runtime report", "", f"Budget: {_minutes(budget)} (m:ss) per notebook on this machine.", "",
             markdown_table(rows, ["notebook", "time", share, "peak MB", "result", "headline"],
                            right=["time", "peak MB"])]
    n_ok = sum(r.ok for r in runs)
    over = [r.name for r in runs if r.seconds > budget]
    lines += ["", f"Total: {total / 60:.1f} min, {n_ok}/{len(runs)} notebooks passed."]
    lines.append(f"Over the {_minutes(budget)} budget: {', '.join(over)}." if over
                 else f"Every notebook within the {_minutes(budget)} budget.")
    return "\n".join(lines) + "\n"


DEFAULT_SOLUTIONS = ("e7_peft_family",)  # worked solutions `make course` also executes, for the site


def run_course(lessons_dir: Path | None = None, out_dir: Path | None = None,
               only: list[str] | None = None, root: Path | None = None,
               solutions: list[str] | None = None) -> list[NotebookRun]:
    """Execute the lessons in order, then the named worked solutions; print and write
    build/course-report.md; return the runs.

    The report holds this run's notebooks: with `only`, the other rows are not in it. `solutions`:
    names (or parts of names) of notebooks in root/solutions, executed into out_dir/solutions for
    the site's "worked solutions" section (exercise E7's table and plot, for example).

    `root`: the course checkout (default: found upwards from the working directory); lessons are
    read from root/lessons and written to root/build/course unless given explicitly.
    """
    if lessons_dir is None or out_dir is None or solutions:
        from labkit_dev.notebooks import find_root

        root = find_root(root)
        lessons_dir = lessons_dir or root / "lessons"
        out_dir = out_dir or root / "build" / "course"
    paths = sorted(lessons_dir.glob("*.ipynb"))
    if only:
        paths = [p for p in paths if any(o in p.stem for o in only)]
    jobs = [(p, out_dir) for p in paths]
    if solutions:
        picked = [p for p in sorted((root / "solutions").glob("*.ipynb")) if any(n in p.stem for n in solutions)]
        missing = [n for n in solutions if not any(n in p.stem for p in picked)]
        if missing:
            raise FileNotFoundError(f"No worked solution named like {missing} in {root / 'solutions'}.")
        jobs += [(p, out_dir / "solutions") for p in picked]
    if not jobs:
        raise FileNotFoundError(f"No lesson notebooks in {lessons_dir}.")
    runs = []
    for path, target in jobs:
        print(f"running {path.name} ...", flush=True)
        run = run_notebook(path, target)
        over = f" (OVER the {_minutes(BUDGET_SECONDS)} budget)" if run.seconds > BUDGET_SECONDS else ""
        print(f"  {'pass' if run.ok else 'FAIL'} in {_minutes(run.seconds)}{over}  {run.headline or run.error}",
              flush=True)
        runs.append(run)
    text = report_markdown(runs)
    (out_dir.parent / "course-report.md").write_text(text)
    print()
    print(text)
    print(f"Executed notebooks and HTML copies: {out_dir}")
    return runs


def main(argv: list[str] | None = None) -> int:
    from labkit_dev.notebooks import run_tool, tool_parser

    p = tool_parser("python -m labkit_dev.course", __doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="run only lessons whose name contains one of these")
    p.add_argument("--solutions", nargs="*", default=None,
                   help=f"worked solutions to execute after the lessons (default: {' '.join(DEFAULT_SOLUTIONS)}; "
                        "none: --solutions with no name)")
    args = p.parse_args(argv)
    solutions = list(DEFAULT_SOLUTIONS) if args.solutions is None and not args.only else args.solutions
    return run_tool(lambda: 0 if all(r.ok for r in run_course(only=args.only, root=args.root,
                                                              solutions=solutions)) else 1)


if __name__ == "__main__":
    sys.exit(main())

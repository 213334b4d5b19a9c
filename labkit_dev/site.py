"""`make site`: a static HTML site of the executed course, built offline from `make course`'s notebooks.

What it holds: an index page; every lesson that `python -m labkit_dev.course` executed (build/course/*.ipynb,
outputs and figures included); the course report (build/course-report.md); every exercise as a page
(blank, as a learner gets it, with its Open-in-Colab badge). The committed notebooks keep their
stripped form; the site is where a reader sees everything without running anything.

Tool: nbconvert's HTMLExporter with its JupyterLab template, plus the small index page written here.
Why: nbconvert is maintained by the Jupyter project, is already in the `[lab]` extra (the course
runner uses it), renders the stored outputs without re-executing anything, and needs no network.
Two template changes: every PNG gets `alt` text, from its output metadata where the code gave one
(so the loss curve is named for screen readers and for the site test; nbconvert would otherwise log
a warning per notebook into the course's terminal), and no require.js from a CDN (nothing needs it).
Widgets render only where the page can reach their CDN; in JupyterLab they are interactive.

This is a tool for a checkout: `python -m labkit_dev.site [--root PATH]`.
"""

from __future__ import annotations

import html
import shutil
import sys
from pathlib import Path

from labkit_dev.course import headline_of, page_exporter

_STYLE = """body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
  line-height: 1.5; color: #1b1b1b; }
table { border-collapse: collapse; margin: 1rem 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; text-align: left; } .fail { color: #b00020; font-weight: bold; }
nav { margin-bottom: 1rem; } code { background: #f3f3f3; padding: 0 3px; }"""


class SiteError(FileNotFoundError):
    """The executed course the site is built from is missing."""


def notebook_title(nb, fallback: str) -> str:
    """The first markdown heading of a notebook (the Colab badge line skipped)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def error_outputs(nb) -> list[str]:
    """`ename: evalue` of every error output in a notebook (an executed lesson should have none)."""
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def not_run(nb) -> list[int]:
    """Indices of code cells that never ran (the kernel stopped or died before them)."""
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and c.source.strip() and c.get("execution_count") is None]


def _page(title: str, body: str, nav: bool = True) -> str:
    """A plain page at the site's top level (index, report)."""
    nav = '<nav><a href="index.html">&larr; Course index</a></nav>' if nav else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{nav}\n{body}\n</body>\n</html>\n")


def _render_notebooks(paths: list[Path], out_dir: Path, exporter) -> list[dict]:
    """Each notebook → out_dir/NAME.html; returns what the index needs about each."""
    import nbformat


    shutil.rmtree(out_dir, ignore_errors=True)  # no page of a lesson that no longer exists
    out_dir.mkdir(parents=True)
    rows = []
    for path in paths:
        nb = nbformat.read(str(path), as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        (out_dir / f"{path.stem}.html").write_text(body, encoding="utf-8")
        rows.append({"name": path.stem, "title": notebook_title(nb, path.stem), "headline": headline_of(nb),
                     "errors": error_outputs(nb), "not_run": not_run(nb), "href": f"{out_dir.name}/{path.stem}.html"})
    return rows


def _index_html(lessons: list[dict], exercises: list[dict], has_report: bool, solutions: list[dict] = ()) -> str:
    def cells(r: dict) -> str:
        if r["errors"]:
            status = f'<span class="fail">error: {html.escape(r["errors"][0])}</span>'
        elif r["not_run"]:
            status = f'<span class="fail">stopped before cell {r["not_run"][0]}</span>'
        else:
            status = "ran"
        return (f'<tr><td><a href="{r["href"]}">{html.escape(r["title"])}</a></td><td>{status}</td>'
                f'<td>{html.escape(r["headline"])}</td></tr>')

    parts = ["<h1>labkit: fine-tuning an LLM, step by step</h1>",
             "<p>Every lesson as <code>make course</code> executed it on this machine: outputs, plots and "
             "results included. To run a lesson yourself, open it in JupyterLab (<code>make lab</code>) "
             "or on Colab (the badge at the top of each page).</p>",
             "<h2>Lessons</h2>",
             "<table><tr><th>lesson</th><th>run</th><th>result</th></tr>",
             *[cells(r) for r in lessons], "</table>"]
    parts.append('<p><a href="report.html">Course report</a>: each notebook\'s time against its budget, '
                 "peak memory and result.</p>" if has_report else
                 "<p>No course report yet: run <code>make course</code>.</p>")
    if solutions:
        parts += ["<h2>Worked solutions, executed</h2>",
                  "<p>Exercises whose measured tables and plots are part of the course's claims, as "
                  "<code>make course</code> ran them.</p>",
                  "<table><tr><th>solution</th><th>run</th><th>result</th></tr>",
                  *[cells(r) for r in solutions], "</table>"]
    parts += ["<h2>Exercises</h2>",
              "<p>Generated from the solutions; each stops at its first blank with a hint.</p><ul>",
              *[f'<li><a href="{r["href"]}">{html.escape(r["title"])}</a></li>' for r in exercises], "</ul>",
              "<p><small>Built offline with nbconvert's HTML exporter (<code>make site</code>).</small></p>"]
    return _page("labkit course", "\n".join(parts), nav=False)


def build_site(root: Path | None = None, course_dir: Path | None = None, out_dir: Path | None = None) -> Path:
    """Write the site (default: root/build/site from root/build/course); returns the index path."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    from labkit_dev.notebooks import find_root

    root = find_root(root)
    course_dir = course_dir or root / "build" / "course"
    out_dir = out_dir or root / "build" / "site"
    executed = sorted(course_dir.glob("*.ipynb"))
    if not executed:
        raise SiteError(f"No executed lessons in {course_dir}: the site shows what `make course` ran. "
                        "Run `make course` first (or `python -m labkit_dev.course --only 00` for a quick one).")
    exporter = page_exporter()
    lessons = _render_notebooks(executed, out_dir / "lessons", exporter)
    exercises = _render_notebooks(sorted((root / "exercises").glob("*.ipynb")), out_dir / "exercises", exporter)
    solutions = _render_notebooks(sorted((course_dir / "solutions").glob("*.ipynb")), out_dir / "solutions", exporter)
    report = course_dir.parent / "course-report.md"
    if report.is_file():
        body = markdown2html_mistune(report.read_text(encoding="utf-8"))
        (out_dir / "report.html").write_text(_page("Course report", body), encoding="utf-8")
    index = out_dir / "index.html"
    index.write_text(_index_html(lessons, exercises, report.is_file(), solutions), encoding="utf-8")
    for r in lessons + solutions:
        if r["errors"]:
            print(f"warning: {r['name']} holds an error output: {r['errors'][0]}", file=sys.stderr)
        elif r["not_run"]:
            print(f"warning: {r['name']} stopped before cell {r['not_run'][0]}", file=sys.stderr)
    return index


def main(argv: list[str] | None = None) -> int:
    from labkit_dev.notebooks import run_tool, tool_parser

    args = tool_parser("python -m labkit_dev.site", __doc__.splitlines()[0]).parse_args(argv)

    def work() -> int:
        print(f"site: {build_site(args.root)}")
        return 0

    return run_tool(work, errors=(SiteError,))


if __name__ == "__main__":
    sys.exit(main())

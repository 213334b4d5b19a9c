"""Generate `exercises/` from `solutions/`: the single source of every exercise.

In a solution notebook, a region

    ### BEGIN SOLUTION: write the prompt template
    ...the answer...
    ### END SOLUTION

becomes, in the exercise, one line at the marker's indentation:

    raise NotImplementedError("Your turn: write the prompt template")

so an unfilled exercise stops at its first blank with a message that says what to do, never an
obscure NameError further down. Markdown cells may hold the same markers (the answer text becomes
"*Your answer here.*"). Exercises carry no outputs. Never edit `exercises/` by hand: CI rebuilds it
and fails on any difference.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

from labkit_dev import notebooks as nbs

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?::\s*(?P<hint>.*))?$")
END = re.compile(r"^[ \t]*### END SOLUTION\s*$")
DEFAULT_HINT = "fill in this part"


class MarkerError(ValueError):
    """A solution notebook's markers are unbalanced."""


def blank_out(source: str, markdown: bool = False, where: str = "") -> tuple[str, int]:
    """Replace each solution region in one cell's source; return (new source, regions replaced)."""
    out, n, inside = [], 0, False
    for lineno, line in enumerate(source.splitlines(), 1):
        m = BEGIN.match(line)
        if m:
            if inside:
                raise MarkerError(f"{where} line {lineno}: BEGIN SOLUTION inside another solution region")
            inside, n = True, n + 1
            hint = (m.group("hint") or DEFAULT_HINT).strip()
            if markdown:
                out.append(f"{m.group('indent')}*Your answer here.* ({hint})")
            else:
                out.append(f"{m.group('indent')}raise NotImplementedError({('Your turn: ' + hint)!r})")
            continue
        if END.match(line):
            if not inside:
                raise MarkerError(f"{where} line {lineno}: END SOLUTION without BEGIN")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: BEGIN SOLUTION is never closed by END SOLUTION")
    return "\n".join(out), n


def exercise_from_solution(nb, name: str = "") -> tuple[object, int]:
    """A new exercise notebook from a solution notebook (the input is not modified)."""
    ex = nbformat.reads(nbformat.writes(nb), as_version=4)
    total = 0
    for i, cell in enumerate(ex.cells):
        if cell.cell_type in ("code", "markdown"):
            cell.source, n = blank_out(cell.source, cell.cell_type == "markdown", f"{name} cell {i}")
            total += n
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return ex, total


def exercise_path(solution: Path, root: Path) -> Path:
    return root / "exercises" / solution.name


def build(root: Path | None = None, check_only: bool = False) -> list[str]:
    """Write every exercise (or, with check_only, list those that differ). Returns messages.

    `root`: the course checkout (default: found upwards from the working directory)."""
    root = nbs.find_root(root)
    settings = nbs.project_settings(root)
    msgs = []
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    expected = {exercise_path(s, root) for s in solutions}
    for stale in sorted((root / "exercises").glob("*.ipynb")):
        if stale not in expected:
            msgs.append(f"exercises/{stale.name} has no solution in solutions/")
            if not check_only:
                stale.unlink()
    for sol in solutions:
        ex, n = exercise_from_solution(nbs.read(sol), sol.name)
        if n == 0:
            raise MarkerError(f"solutions/{sol.name} has no ### BEGIN SOLUTION region")
        rel = f"exercises/{sol.name}"
        nbs.stamp(ex, rel, settings)
        nbs.clean(ex, keep_checked_outputs=False)
        text = nbformat.writes(ex) + "\n"
        target = exercise_path(sol, root)
        if not target.exists() or target.read_text() != text:
            msgs.append(f"{rel} is out of date with solutions/{sol.name}")
            if not check_only:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text)
    return msgs


def main(argv: list[str] | None = None) -> int:
    p = nbs.tool_parser("python -m labkit_dev.exercises", "exercises from solutions")
    p.add_argument("command", choices=["build", "check"])
    args = p.parse_args(argv)
    return nbs.run_tool(lambda: _report(args.command, build(args.root, check_only=args.command == "check")))


def _report(command: str, msgs: list[str]) -> int:
    for m in msgs:
        print(m)
    if command == "check" and msgs:
        print("Regenerate with: python -m labkit_dev.exercises build")
        return 1
    print(f"exercises: {'in sync' if not msgs else f'{len(msgs)} written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Grade learners' exercise notebooks: run each one, read its checks' results, print a table.

    python -m labkit_dev.grade NOTEBOOK... [--csv FILE] [--timeout S] [--allow-network]
    labkit grade NOTEBOOK...          (the same, from a checkout of the course)

Each notebook runs top to bottom in a fresh kernel, like "Restart and run all", with one time
limit for the whole notebook. The grade of a check is what the learner's own `labkit.exercises.
check_*` call returned in that kernel (each check records its outcome in
`labkit.exercises.feedback.RESULTS`, which this reads once the notebook stops): the same checks as
the solutions, no second copy. Which checks an exercise has comes from its solution in the
checkout (`solutions/eN_*.ipynb`), so a deleted check cell is a failed row, not a missing one.
A notebook that stops (a blank still raising NotImplementedError, an error, the time limit, a
notebook that is not valid JSON) gives failed rows that say where and why; grading never crashes
on a learner's notebook.

Network: by default each kernel runs in its own empty network namespace (`unshare -rn`, Linux
user namespaces), so a learner's code cannot reach any host; where that is unavailable grading
stops and says so, and `--allow-network` runs the kernels with the network on.

Grading runs the learner's code, so it is as trustworthy as that code: a notebook can redefine a
check or write to RESULTS. It is a workshop tool, not an exam proctor.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.tables import format_table

DEFAULT_TIMEOUT = 600  # s per notebook: twice the course's 5-minute CPU budget, for a slower laptop
COLUMNS = ("student", "notebook", "exercise", "check", "result", "seconds", "detail")
TABLE_COLUMNS = ("notebook", "exercise", "check", "result", "seconds", "detail")
_RESULTS_MARK = "labkit-grade-results:"
_TIMEOUT = "LabkitGradeTimeout"
# What a finished notebook's kernel prints for the grader: the checks' recorded outcomes. It reads
# sys.modules and imports nothing, so a notebook that never ran a check reads as "no results".
_READ_RESULTS = ("import json as _j, sys as _s\n"
                 "_m = _s.modules.get('labkit.exercises.feedback')\n"
                 f"print({_RESULTS_MARK!r} + _j.dumps(getattr(_m, 'RESULTS', [])))")
_CHECK_CALL = re.compile(r"\b(check_\w+)\s*\(")
_NAME = re.compile(r"^(?:(?P<student>.+?)[_\- ])?(?P<exercise>e\d+)(?:[_\- (].*)?$", re.IGNORECASE)
# Offline switches for the libraries a notebook uses (belt and braces inside the namespace; the only
# protection where --allow-network is not given but the namespace is, for example, a proxy).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
ISOLATE = ["unshare", "--user", "--map-root-user", "--net", "--"]


@dataclass
class Row:
    """One check of one notebook: the grade an instructor reads."""

    student: str
    notebook: str
    exercise: str
    check: str
    result: str  # "pass" or "fail"
    seconds: float
    detail: str = ""


@dataclass
class Stop:
    """Why a notebook did not run to its end."""

    cell: int  # 1-based position in the notebook, as a learner counts cells
    reason: str


def isolation_problem() -> str:
    """"" when a kernel can be started without network access here, else why it cannot."""
    if sys.platform != "linux":
        return f"network namespaces are Linux-only (this is {sys.platform})"
    try:
        done = subprocess.run([*ISOLATE, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare` could not run ({exc})"
    if done.returncode != 0:
        return f"`unshare -rn` failed: {done.stderr.strip() or done.returncode} (user namespaces disabled?)"
    return ""


def _isolated_kernel_manager():
    """A jupyter_client kernel manager whose kernel starts inside `unshare -rn` (no network, only a
    loopback that is down). The kernel talks to the grader over Unix sockets (labkit_dev.notebooks
    sets the IPC transport), which a network namespace does not cut. `unshare` execs the kernel, so
    its process id, interrupts and shutdown are the kernel's own. Tested on jupyter_client 8.x,
    whose `format_kernel_cmd` builds the command line the provisioner launches."""
    from jupyter_client import AsyncKernelManager

    class IsolatedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return [*ISOLATE, *super().format_kernel_cmd(extra_arguments)]

    return IsolatedKernelManager


def kernel_env(allow_network: bool) -> dict[str, str]:
    env = dict(os.environ)
    if not allow_network:
        env.update(OFFLINE_ENV)
        for var in _PROXY_VARS:
            env.pop(var, None)
    return env


def expected_checks(nb) -> list[str]:
    """The `check_*` calls of labkit.exercises in a notebook's code, in order (one per call)."""
    import labkit.exercises

    calls = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            code = line.split("#", 1)[0]
            calls += [name for name in _CHECK_CALL.findall(code) if hasattr(labkit.exercises, name)]
    return calls


def identify(path: Path) -> tuple[str, str]:
    """(student, exercise id) from a file name: `alice_e1_make_the_call.ipynb` -> ("alice", "e1");
    `submissions/bob/e1_make_the_call.ipynb` -> ("bob", "e1") (the parent folder names the student)."""
    m = _NAME.match(path.stem)
    student = (m.group("student") if m else "") or path.parent.name
    return student, (m.group("exercise").lower() if m else "")


def solution_for(exercise: str, root: Path | None) -> Path | None:
    if not exercise or root is None:
        return None
    found = sorted((root / "solutions").glob(f"{exercise}_*.ipynb"))
    return found[0] if found else None


def _stop_reason(exc, index: int) -> Stop:
    """A learner-readable reason from nbclient's error for cell `index`."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    cell = index + 1
    if isinstance(exc, CellTimeoutError) or getattr(exc, "ename", "") == _TIMEOUT:
        return Stop(cell, "")  # filled in by the caller, which knows the limit
    if isinstance(exc, CellExecutionError):
        if exc.ename == "NotImplementedError" and "Your turn" in (exc.evalue or ""):
            return Stop(cell, f"not attempted: cell {cell} still raises NotImplementedError ({exc.evalue})")
        return Stop(cell, f"error in cell {cell}: {exc.ename}: {exc.evalue}")
    if isinstance(exc, DeadKernelError):
        return Stop(cell, f"the kernel died in cell {cell} (out of memory?)")
    return Stop(cell, f"could not run cell {cell}: {type(exc).__name__}: {exc}")


def _read_results(client) -> list[dict]:
    """The outcomes the notebook's check calls recorded in its kernel ([] when none ran or the
    kernel no longer answers)."""
    import nbformat

    cell = nbformat.v4.new_code_cell(_READ_RESULTS)
    client.timeout_func, client.timeout = None, 60
    client.nb.cells.append(cell)  # nbclient looks cells up by index; only this in-memory copy changes
    try:
        client.execute_cell(cell, len(client.nb.cells) - 1)
    except Exception:  # noqa: BLE001 - a kernel that died or hangs has no results to give
        return []
    finally:
        client.nb.cells.pop()
    for out in cell.outputs:
        for line in out.get("text", "").splitlines():
            if line.startswith(_RESULTS_MARK):
                return json.loads(line.removeprefix(_RESULTS_MARK))
    return []


def run_notebook(nb, cwd: Path, timeout: float, allow_network: bool) -> tuple[Stop | None, list[dict], float]:
    """Execute every cell in a fresh kernel within `timeout` seconds in all; return why it stopped
    early (None when it ran to the end), the recorded check outcomes, and the seconds it took."""
    from labkit_dev.notebooks import INLINE_BACKEND, kernel_client

    client = kernel_client(nb, cwd)
    if not allow_network:
        client.kernel_manager_class = _isolated_kernel_manager()
    start = time.monotonic()
    client.timeout_func = lambda cell: max(1, math.ceil(start + timeout - time.monotonic()))
    # Past the limit nbclient interrupts the kernel (which then still answers the results query) and
    # fails the cell with this error name.
    client.interrupt_on_timeout = True
    client.error_on_timeout = {"ename": _TIMEOUT, "evalue": f"over {timeout:g} s", "traceback": []}
    env = dict(kernel_env(allow_network), MPLBACKEND=INLINE_BACKEND)
    stop, results = None, []
    try:
        with client.setup_kernel(env=env):
            index = 0
            try:
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
            except Exception as exc:  # noqa: BLE001 - a learner's notebook must become a row
                stop = _stop_reason(exc, index)
                if not stop.reason:
                    stop.reason = f"timed out: the notebook took over {timeout:g} s (stopped in cell {stop.cell})"
            results = _read_results(client)
    except Exception as exc:  # noqa: BLE001 - e.g. the kernel would not start
        stop = stop or Stop(0, f"could not start a kernel: {type(exc).__name__}: {exc}")
    return stop, results, time.monotonic() - start


def grade_notebook(path: Path, root: Path | None, timeout: float = DEFAULT_TIMEOUT,
                   allow_network: bool = False) -> list[Row]:
    """One row per check the exercise has; failed rows say why (never raises on a learner's file)."""
    import nbformat

    student, exercise = identify(path)
    solution = solution_for(exercise, root)
    checks = expected_checks(nbformat.read(str(solution), as_version=4)) if solution else []
    name = solution.stem if solution else (exercise or path.stem)

    def rows(outcomes: list[tuple[str, str, str]], seconds: float) -> list[Row]:
        return [Row(student, str(path), name, check, result, round(seconds, 1), detail)
                for check, result, detail in outcomes]

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # noqa: BLE001 - not JSON, not a notebook, unreadable: a failed row
        why = f"cannot read the notebook: {_one_line(f'{type(exc).__name__}: {exc}')}"
        return rows([(c, "fail", why) for c in checks or ["-"]], 0.0)
    checks = checks or expected_checks(nb)
    stop, results, seconds = run_notebook(nb, path.parent, timeout, allow_network)
    return rows(match(checks, results, stop), seconds)


def match(checks: list[str], results: list[dict], stop: Stop | None) -> list[tuple[str, str, str]]:
    """(check, "pass"/"fail", detail) for each expected check call, taking the recorded outcomes of
    each check name in call order. A check with no outcome failed because the notebook stopped
    before it (`stop`), or because the notebook never called it."""
    by_name: dict[str, list[dict]] = {}
    for r in results:
        by_name.setdefault(r.get("check", ""), []).append(r)
    not_run = stop.reason if stop else "the notebook ran to its end without calling this check"
    out = []
    for check in checks:
        done = by_name.get(check, [])
        if not done:
            out.append((check, "fail", not_run))
            continue
        r = done.pop(0)
        detail = f"{r.get('passed', 0)} cases passed" if r.get("ok") else _one_line(r.get("failure") or "")
        out.append((check, "pass" if r.get("ok") else "fail", detail))
    if not checks:
        out.append(("-", "fail", stop.reason if stop else "this notebook calls no labkit.exercises check"))
    return out


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def network_line(allow_network: bool) -> str:
    if allow_network:
        return "network: ON (--allow-network): learners' code can reach any host this machine can"
    return ("network: OFF: each kernel runs in its own empty network namespace (unshare -rn); "
            "Hugging Face offline switches set, proxies unset")


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def _find_root(root: Path | None) -> Path | None:
    from labkit_dev.notebooks import RepoRootNotFound, find_root

    try:
        return find_root(root)
    except RepoRootNotFound:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit_dev.grade", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 when every check passed, 1 when any failed, "
                                            "2 when grading could not start.")
    parser.add_argument("notebooks", nargs="+", type=Path, help="learners' notebooks, e.g. submissions/*/e1_*.ipynb")
    parser.add_argument("--csv", type=Path, help="also write one row per check (with a student column) here")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per notebook, all cells together (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--allow-network", action="store_true",
                        help="run kernels with network access (default: none, see the module help)")
    parser.add_argument("--root", type=Path, help="the course checkout whose solutions/ list each exercise's checks")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("nbclient") is None or importlib.util.find_spec("nbformat") is None:
        print("labkit grade runs notebooks with nbclient, part of the [lab] extra: "
              "pip install 'labkit[lab]' (or `make setup` in the checkout), then rerun.", file=sys.stderr)
        return 2
    problem = "" if args.allow_network else isolation_problem()
    if problem:
        print(f"labkit grade: cannot cut the network off for the learners' kernels here: {problem}.\n"
              "Grade on Linux with user namespaces enabled (or inside a container without network),\n"
              "or rerun with --allow-network to run the notebooks with the network on.", file=sys.stderr)
        return 2
    print(network_line(args.allow_network))
    root = _find_root(args.root)
    rows: list[Row] = []
    for path in args.notebooks:
        rows += grade_notebook(path, root, args.timeout, args.allow_network)
    print(format_table([asdict(r) for r in rows], TABLE_COLUMNS, fmt=_cell))
    passed = sum(r.result == "pass" for r in rows)
    print(f"{passed} of {len(rows)} checks passed in {len(args.notebooks)} notebooks")
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0 if passed == len(rows) else 1


def _cell(column: str, value) -> str:
    if column == "seconds":
        return f"{value:.1f}"
    return _one_line(value, 90) if column == "detail" else str(value)


if __name__ == "__main__":
    sys.exit(main())

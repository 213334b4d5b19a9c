"""`make test` in parallel: which files start first, and how many threads each test process gets.

`make test` runs pytest in TEST_WORKERS processes (pytest-xdist, `--dist loadfile`: a notebook's
cells stay in one process, so in one kernel). On the 2-core course CPU two single-threaded
processes did 1.5x the work of one two-threaded process (E7's all-linear LoRA run, 2026-12-07: one
run 28.4 s at 2 threads, 34.7 s at 1; two runs at 1 thread side by side 38.0 s).

Used two ways:
- as a pytest plugin (`-p labkit_dev.parallel_tests`): the slowest files are collected first, so
  they start first and the run does not end with one process working through a long notebook
  while the other idles (xdist hands out files in collection order with `--no-loadscope-reorder`);
- `python -m labkit_dev.parallel_tests WORKERS` prints each process's share of the cores, for
  OMP_NUM_THREADS (at least 1).
"""

import os
import sys
import time
from pathlib import PurePath

import pytest

# The slowest files of `make test`, slowest first: the seconds each took at 1 thread in the parallel run
# (2026-12-07, bf16, `--durations=0`, the sum of its cells or tests; the top three are within 2%). A
# stale order costs only time, never a result.
SLOWEST_FIRST = (
    "solutions/e7_peft_family.ipynb",  # 329
    "lessons/08_preference_tuning.ipynb",  # 336
    "lessons/05_qlora_training.ipynb",  # 330
    "solutions/e5_forgetting.ipynb",  # 278
    "solutions/e4_rank_sweep.ipynb",  # 269
    "solutions/e8_data_quality.ipynb",  # 217
    "lessons/06_pitfalls.ipynb",  # 161
    "solutions/e9_qlora_vs_lora.ipynb",  # 154
    "solutions/e6_debug_overfitting.ipynb",  # 106
    "lessons/07_knowledge_or_behaviour.ipynb",  # 98
    "tests/test_bundle.py",  # 73
    "tests/test_export.py",  # 52 (~10 of it in `make test-fast`)
    "tests/test_cli.py",  # 17 (~13 of it in `make test-fast`)
)


_WORKER_SECONDS: dict[str, float] = {}


def _rank(path: str) -> int:
    for i, slow in enumerate(SLOWEST_FIRST):
        if path == slow or path.endswith("/" + slow):
            return i
    return len(SLOWEST_FIRST)


def pytest_collection_modifyitems(items) -> None:
    """Slowest files first; every other file keeps its place (sorted() is stable)."""
    items[:] = sorted(items, key=lambda item: _rank(PurePath(item.nodeid.split("::")[0]).as_posix()))


def pytest_sessionstart(session) -> None:
    session.config._labkit_started = time.monotonic()


def pytest_sessionfinish(session) -> None:
    """A worker reports how long it ran, so the summary shows whether the order left one idling."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["labkit_seconds"] = time.monotonic() - session.config._labkit_started


@pytest.hookimpl(optionalhook=True)  # an xdist hook
def pytest_testnodedown(node, error) -> None:
    seconds = getattr(node, "workeroutput", {}).get("labkit_seconds")
    if seconds is not None:
        _WORKER_SECONDS[node.gateway.id] = seconds


def pytest_terminal_summary(terminalreporter) -> None:
    if _WORKER_SECONDS:
        terminalreporter.write_line("test processes ran: " + ", ".join(
            f"{name} {seconds:.0f} s" for name, seconds in sorted(_WORKER_SECONDS.items())))


def threads_per_worker(workers: int) -> int:
    """The cores this process may use, shared among `workers` processes (0 = no parallel run)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


if __name__ == "__main__":
    print(threads_per_worker(int(sys.argv[1]) if len(sys.argv) > 1 else 1))

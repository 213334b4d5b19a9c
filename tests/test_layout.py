"""The architecture as a layout: labkit/ is the kit the wheel ships, labkit_dev/ is course tooling.

The kit must install and import without Jupyter's notebook libraries (a learner's `pip install
labkit`, Colab's setup cell) and without the tooling; the tooling needs a checkout. The slow test
builds the real wheel and imports every module it ships in a clean virtualenv.
"""

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KIT, TOOLING = ROOT / "labkit", ROOT / "labkit_dev"
# Notebook machinery: the [lab] extra, which a plain install (and Colab's setup cell) leaves out.
NOTEBOOK_LIBS = ("nbformat", "nbclient", "nbconvert", "jupyter_client", "jupyter_core", "jupyterlab", "nbval")
FORBIDDEN = (*NOTEBOOK_LIBS, "labkit_dev")
# Absent from the clean venv: the [lab] extra's own packages (not what ipywidgets, a kit dependency,
# brings along, such as traitlets) and the tooling.
BLOCKED = ("nbformat", "nbclient", "nbconvert", "jupyterlab", "nbval", "labkit_dev")
# Modules that once lived in labkit and are tooling now: none may come back into the wheel.
TOOLING_MODULES = ("labkit/notebooks.py", "labkit/site.py", "labkit/course.py", "labkit/exercises/build.py",
                   "labkit/exercises/__main__.py")


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module a Python file imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def forbidden_imports(files: dict[str, str]) -> dict[str, set[str]]:
    """{file: the notebook libraries or tooling it imports} for the files that import any."""
    bad = {name: imported_modules(src) & set(FORBIDDEN) for name, src in files.items()}
    return {name: mods for name, mods in bad.items() if mods}


def test_the_kit_imports_neither_notebook_libraries_nor_the_tooling():
    files = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in KIT.rglob("*.py")}
    assert files and forbidden_imports(files) == {}


def test_the_import_check_sees_an_import_inside_a_function():
    src = "def f():\n    import nbformat\n    from labkit_dev.notebooks import find_root\n"
    assert forbidden_imports({"x.py": src}) == {"x.py": {"nbformat", "labkit_dev"}}


def test_the_tooling_modules_left_the_kit():
    assert [m for m in TOOLING_MODULES if (ROOT / m).exists()] == []
    assert {"notebooks.py", "exercises.py", "course.py", "site.py", "invoices.py"} <= {p.name for p in TOOLING.glob("*.py")}


def test_the_wheel_metadata_names_the_same_repository_as_the_badges():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert data["project"]["urls"]["Repository"] == data["tool"]["labkit"]["repo"]


def _build_wheel(tmp_path: Path) -> Path:
    """labkit's wheel, built from a copy of the checkout (so the build leaves nothing in it)."""
    src = tmp_path / "src"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "runs", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, src, ignore=junk)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(src)], check=True, cwd=tmp_path)
    (wheel,) = out.glob("labkit-*.whl")
    return wheel


_BLOCKER = textwrap.dedent("""\
    # A clean machine for labkit's wheel: the notebook libraries and the course tooling are absent.
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the clean venv)", name=name)
            return None
    sys.meta_path.insert(0, Absent())
    """)

_IMPORT_ALL = textwrap.dedent("""\
    import importlib, importlib.metadata, json, sys, traceback
    modules = json.loads(sys.argv[1])
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException:
            failed[name] = traceback.format_exc()[-800:]
    blocked = []
    for name in ("nbformat", "nbclient", "nbconvert", "labkit_dev"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            blocked.append(name)
    import labkit
    dist = importlib.metadata.distribution("labkit")
    print(json.dumps({"failed": failed, "blocked": blocked, "labkit_file": labkit.__file__,
                      "dist": str(dist.locate_file(""))}))
    """)


def _clean_venv(tmp_path: Path) -> Path:
    """A venv that sees the shared third-party packages (torch, transformers ...) but not labkit's
    checkout, its editable install, the notebook libraries or the tooling; returns its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    shared = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    # A path line in a .pth file only appends the folder: the .pth files *in* it (the shared venv's
    # editable labkit finder) are not run, so `import labkit` can only find the installed wheel.
    (site / "shared-third-party.pth").write_text("\n".join(shared) + "\n")
    (site / "labkit_clean_blocker.py").write_text(_BLOCKER.format(blocked=BLOCKED))
    (site / "labkit-clean-blocker.pth").write_text("import labkit_clean_blocker\n")
    return py


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


@pytest.mark.slow
def test_the_wheel_ships_the_kit_and_imports_every_module_without_notebook_libraries(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        listed = [line.split(",")[0] for line in zf.read(record).decode().splitlines() if line]
        sources = {n: zf.read(n).decode("utf-8") for n in listed if n.endswith(".py")}
    assert not [n for n in listed if n.startswith("labkit_dev/") or n in TOOLING_MODULES], "tooling in the wheel"
    shipped_data = {p.relative_to(ROOT).as_posix() for p in (KIT / "datasets").glob("*.json*")}
    assert shipped_data and shipped_data <= set(listed), f"datasets missing: {sorted(shipped_data - set(listed))}"
    assert forbidden_imports(sources) == {}
    modules = sorted(n.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in sources)
    assert "labkit.report" in modules and "labkit.exercises" in modules and len(modules) >= 25

    py = _clean_venv(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, env=_clean_env())
    away = tmp_path / "elsewhere"  # not the checkout, so the working directory cannot supply labkit
    away.mkdir()
    run = subprocess.run([py, "-c", _IMPORT_ALL, json.dumps(modules)], cwd=away, env=_clean_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["blocked"] == ["nbformat", "nbclient", "nbconvert", "labkit_dev"]
    assert result["labkit_file"].startswith(str(tmp_path / "venv")), result["labkit_file"]
    assert result["dist"].startswith(str(tmp_path / "venv")), result["dist"]
    assert result["failed"] == {}, "\n".join(f"{k}:\n{v}" for k, v in result["failed"].items())

    # What an installed labkit says about examples/, which it does not ship: where the folder is.
    help_text = subprocess.run([py, "-m", "labkit.cli", "train", "--help"], cwd=away, env=_clean_env(),
                               capture_output=True, text=True, check=True).stdout
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["labkit"]["repo"]
    assert f"course repository, {repo}" in " ".join(help_text.split())

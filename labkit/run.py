"""A whole run from a config file: the same calls as lesson 05, in the order it makes them.

`train_from_config(cfg)` loads the base (`labkit.models.load_model`), prepares the records
(`labkit.data.load_records`, `validate_records`, `clean`), trains with
LoRA (`labkit.train.train_sft` with `lora=`), evaluates base vs tuned (`labkit.evaluate.evaluate_records`, `compare`) and
the general probe, and writes the output folder:

    adapter/            the LoRA adapter (PEFT safetensors) + labkit.yaml (the config it came from)
    checkpoints/        the Trainer's checkpoints (what --resume continues from)
    metrics.json        base vs tuned, the probe, losses, time, tokens/s, peak memory
    loss_curve.png      train loss per step, validation loss per epoch
    report.md           all of the above, readable

Launched with `torchrun --nproc_per_node N` or `accelerate launch`, the Trainer runs data-parallel
(accelerate reads the launcher's environment); only rank 0 evaluates and writes the folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labkit._compat import checkpointing_key
from labkit.config import ConfigError, RunConfig, config_to_dict, load_config
from labkit.data import (
    _PROMPT_RE,
    clean,
    course_dataset,
    find_overlap,
    format_prompt,
    load_records,
    split,
    validate_records,
)
from labkit.evaluate import compare, evaluate_records
from labkit.lora import (
    attach_lora,
    count_parameters,
    is_quantized,
    merge_and_verify,
    merge_into_dequantized,
    peft_config,
    save_adapter,
)
from labkit.memory import estimate_training_memory
from labkit.models import REGISTRY, load_model
from labkit.probe import general_probe
from labkit.report import METRIC_LABELS, write_run_report
from labkit.train import train_sft

__all__ = ["DataSummary", "PreparedData", "prepare_data", "load_base", "peft_method_config", "dry_run",
           "train_from_config", "RunResult", "rank", "world_size", "is_main_process", "load_adapter",
           "ADAPTER_CONFIG"]

ADAPTER_CONFIG = "labkit.yaml"  # written next to the adapter: which base and template it belongs to


def rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


# ------------------------------------------------------------------------------------------------
# Data


@dataclass
class DataSummary:
    """What went into the run: where the records came from, how many, and every drop with its reason."""

    source: str
    template: str
    loaded: dict[str, int]
    used: dict[str, int]
    drops: list[str] = field(default_factory=list)
    clean_report: str = ""
    overlap: int = 0  # test records also (nearly) in train: contamination, reported not dropped
    longest_tokens: int = 0

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {self.used[k]} (of {self.loaded[k]})" for k in self.used)
        lines = [f"data: {self.source}, template {self.template!r}", f"  records used: {counts}",
                 f"  longest training record: {self.longest_tokens} tokens"]
        if self.clean_report:
            lines.append("  cleaning (train): " + self.clean_report.replace("\n", "\n  "))
        lines += [f"  dropped: {d}" for d in self.drops] or ["  dropped for length: none"]
        lines.append(f"  test records overlapping train (contamination): {self.overlap}")
        return "\n".join(lines)


@dataclass
class PreparedData:
    train: list[dict]
    val: list[dict]
    test: list[dict]
    summary: DataSummary


def _load_splits(cfg: RunConfig) -> tuple[dict[str, list[dict]], str]:
    """The three splits, as load_records returns them, before limits and cleaning."""
    d = cfg.data
    if d.course is not None:
        sets = course_dataset(d.course)
        if not isinstance(sets, dict):  # an unsplit shipped set (faq)
            parts = split(sets, d.val_fraction, d.test_fraction, seed=d.seed)
            sets = {"train": parts.train, "val": parts.val, "test": parts.test}
        return {k: sets.get(k, []) for k in ("train", "val", "test")}, f"course data set {d.course!r}"
    files = {k: cfg.data_path(k) for k in ("train", "val", "test")}
    sets = {k: load_records(p) if p is not None else None for k, p in files.items()}
    if sets["val"] is None or sets["test"] is None:
        parts = split(sets["train"], d.val_fraction if sets["val"] is None else 0.0,
                      d.test_fraction if sets["test"] is None else 0.0, seed=d.seed)
        sets = {"train": parts.train, "val": sets["val"] if sets["val"] is not None else parts.val,
                "test": sets["test"] if sets["test"] is not None else parts.test}
    return sets, ", ".join(f"{k} {p.name}" for k, p in files.items() if p is not None)


def _to_prompt_completion(record: dict, template: str, tokenizer) -> dict:
    """Any loaded record → prompt/completion in the chosen template (the text the model sees)."""
    if "messages" in record:
        msgs = record["messages"]
        if msgs[-1]["role"] != "assistant":
            raise ValueError("a chat record must end with the assistant's answer (the text to learn).")
        if template == "chat":
            prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
            return {"prompt": prompt, "completion": msgs[-1]["content"].strip()}
        users = [m for m in msgs[:-1] if m["role"] == "user"]
        if len(users) != 1:
            raise ValueError("the course template holds one question and one answer; this chat record has "
                             f"{len(users)} user turns. Use data.template: chat for conversations.")
        return {"prompt": format_prompt(users[0]["content"]), "completion": msgs[-1]["content"].strip()}
    if template == "chat":
        m = _PROMPT_RE.match(record["prompt"])
        if m:  # a course-template record (Alpaca files are read into it): re-render it as a chat
            question = m.group("instruction") + (f"\n\n{m.group('input')}" if m.group("input") else "")
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                   add_generation_prompt=True)
            return {"prompt": prompt, "completion": record["completion"]}
    return {"prompt": record["prompt"], "completion": record["completion"]}


def prepare_data(cfg: RunConfig, tokenizer) -> PreparedData:
    """Load, limit, template, clean (train) and length-check the records; every drop is reported."""
    sets, source = _load_splits(cfg)
    d = cfg.data
    loaded = {k: len(v) for k, v in sets.items()}
    for key, n in (("train", d.n_train), ("val", d.n_val), ("test", d.n_test)):
        if n is not None:
            sets[key] = sets[key][:n]
    sets = {k: [_to_prompt_completion(r, d.template, tokenizer) for r in v] for k, v in sets.items()}
    summary = DataSummary(source, d.template, loaded, {})
    if d.clean:
        result = clean(sets["train"], max_chars=10 ** 9)  # length is checked in tokens below
        sets["train"], summary.clean_report = result.kept, result.report
    for key in ("train", "val"):
        kept, lengths = [], []
        for i, rec in enumerate(sets[key]):
            n_prompt = len(tokenizer(rec["prompt"])["input_ids"])
            n_total = n_prompt + len(tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]) + 1
            if n_prompt >= cfg.training.max_length - 1:
                summary.drops.append(f"{key} record {i}: prompt of {n_prompt} tokens leaves no room for the "
                                     f"answer within training.max_length={cfg.training.max_length}")
                continue
            if n_total > cfg.training.max_length:
                summary.drops.append(f"{key} record {i}: kept but truncated ({n_total} > max_length "
                                     f"{cfg.training.max_length} tokens): its answer's end is not learned")
            kept.append(rec)
            lengths.append(n_total)
        sets[key] = kept
        if key == "train":
            summary.longest_tokens = max(lengths, default=0)
    for key in ("train", "test"):
        validate_records(sets[key], key)
    if sets["val"]:
        validate_records(sets["val"], "val")
    summary.used = {k: len(v) for k, v in sets.items()}
    summary.overlap = len({o.test_idx for o in find_overlap(sets["train"], sets["test"])})
    return PreparedData(sets["train"], sets["val"], sets["test"], summary)


# ------------------------------------------------------------------------------------------------
# Models


def load_base(name: str, quantization: str | None, double_quant: bool = True):
    """A course model by registry name, or a local model folder (labkit.models.load_model takes both)."""
    return load_model(name, quantization=quantization, double_quant=double_quant)


def peft_method_config(cfg: RunConfig):
    """The config's lora section as a PEFT config chosen by name (`lora.method`, labkit.lora.peft_config):
    the `lora=` every labkit trainer takes. `dora: true` with method lora is DoRA."""
    method = cfg.lora.effective_method
    return peft_config(method, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                       targets=cfg.lora_targets if method != "ia3" or "targets" in cfg.lora.model_fields_set else None,
                       num_virtual_tokens=cfg.lora.virtual_tokens)


def load_adapter(adapter_dir: str | Path) -> tuple[Any, Any, RunConfig]:
    """An adapter folder written by a run → (PeftModel on its base, tokenizer, the run's config)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "adapter").is_dir() and not (adapter_dir / "adapter_config.json").is_file():
        adapter_dir = adapter_dir / "adapter"  # the run's output folder was given
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir} is not an adapter folder (no adapter_config.json). Give the adapter/ "
                          "folder of a `labkit train` run, or its output folder.")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"{adapter_dir} has no {ADAPTER_CONFIG}, so the base model it belongs to is unknown. "
                          "Adapters written by `labkit train` carry one.")
    cfg = load_config(adapter_dir / ADAPTER_CONFIG, check_files=False)
    base, tok = load_base(cfg.model, cfg.quantization_arg, cfg.double_quant)
    return PeftModel.from_pretrained(base, str(adapter_dir)), tok, cfg


# ------------------------------------------------------------------------------------------------
# Dry run


def effective_batch(cfg: RunConfig, processes: int | None = None) -> int:
    """Records per optimizer update: per-device batch × accumulation steps × processes."""
    return cfg.training.batch_size * cfg.training.gradient_accumulation_steps * (processes or world_size())


def dry_run(cfg: RunConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Validate everything a run needs and say what it would do; trains nothing. → the numbers printed."""
    model, tok = load_base(cfg.model, cfg.quantization_arg, cfg.double_quant)
    data = prepare_data(cfg, tok)

    model = attach_lora(model, peft_method_config(cfg))
    params = count_parameters(model)
    method = "qlora" if cfg.quantization == "nf4" else "lora"
    dtype_bytes = model.get_base_model().dtype.itemsize if hasattr(model, "get_base_model") else 4
    est = estimate_training_memory(model.config, method=method, r=cfg.lora.r, target_modules=cfg.lora_targets,
                                   batch_size=cfg.training.batch_size, seq_len=data.summary.longest_tokens or 1,
                                   dtype_bytes=dtype_bytes,
                                   gradient_checkpointing=bool(cfg.training.gradient_checkpointing),
                                   lora_dropout=cfg.lora.dropout)
    eff = effective_batch(cfg)
    steps = -(-len(data.train) // eff) * cfg.training.epochs
    print_fn(str(data.summary))
    what = (f"LoRA r={cfg.lora.r} on {', '.join(cfg.lora_targets)}" if cfg.lora.method == "lora"
            else f"PEFT method {cfg.lora.method}")
    print_fn(f"model: {cfg.model} ({cfg.quantization}), {what}")
    print_fn(str(params))
    print_fn(f"effective batch: {cfg.training.batch_size} per device × {cfg.training.gradient_accumulation_steps} "
             f"accumulation × {world_size()} process(es) = {eff}; about {steps:.0f} optimizer steps")
    print_fn(f"memory estimate per device ({method}, batch {cfg.training.batch_size} × "
             f"{data.summary.longest_tokens} tokens):\n{est}")
    print_fn(f"output: {cfg.output_dir} (dry run: nothing trained, nothing written)")
    return {"trainable": params.trainable, "total": params.total, "effective_batch": eff, "steps": steps,
            "memory_gb": est.total_gb, "data": data.summary}


# ------------------------------------------------------------------------------------------------
# Training and evaluation


@dataclass
class RunResult:
    """What `train_from_config` did: the numbers in metrics.json, the folder, and the trained model."""

    output_dir: Path
    metrics: dict
    history: Any = field(repr=False, default=None)
    model: Any = field(repr=False, default=None)
    written: bool = False  # False on ranks other than 0: only rank 0 writes


def _max_new_tokens(cfg: RunConfig, tok, test: Sequence[dict]) -> int:
    """The evaluation.max_new_tokens, else a little above the longest reference (as lesson 05)."""
    if cfg.evaluation.max_new_tokens:
        return cfg.evaluation.max_new_tokens
    return max(len(tok(r["completion"])["input_ids"]) for r in test) + 4


def evaluate_base_and_tuned(cfg: RunConfig, model, tok, test: Sequence[dict], progress: bool = True) -> dict:
    """Tuned (adapters on) and base (adapters off, same weights otherwise) on the test records → metrics."""
    kw = dict(max_new_tokens=_max_new_tokens(cfg, tok, test), batch_size=cfg.evaluation.batch_size,
              progress=progress)
    tuned = evaluate_records(model, tok, test, name="tuned", **kw)
    results = {"tuned": tuned}
    probe = {"tuned": general_probe(model, tok)} if cfg.evaluation.probe else {}
    if cfg.evaluation.base:
        with model.disable_adapter():
            results["base"] = evaluate_records(model, tok, test, name="base", **kw)
            if cfg.evaluation.probe:
                probe["base"] = general_probe(model, tok)
    keep = {"exact_match": "exact_match", "json_valid": "json_valid", "f1": "f1"}
    out: dict[str, Any] = {name: {m: getattr(r, keep[m]) for m in cfg.evaluation.metrics} | {"n": r.n,
                                                                                          "n_correct": r.n_correct}
                           for name, r in results.items()}
    out["misses"] = [{"reference": ref, "prediction": pred} for ref, pred in tuned.misses]
    if probe:
        out["probe"] = {k: v.score for k, v in probe.items()} | {"chance": probe["tuned"].chance,
                                                                 "n": probe["tuned"].n}
    out["table"] = str(_metrics_table(compare(results["base"], tuned), cfg.evaluation.metrics)
                       if "base" in results else tuned)
    return out


def _metrics_table(table, metrics: Sequence[str]):
    """compare()'s table with only the rows of the configured metrics (evaluation.metrics)."""
    table.rows = [row for row in table.rows if row["metric"] in {METRIC_LABELS[m] for m in metrics}]
    return table


def _train(cfg: RunConfig, model, tok, data: PreparedData, out: Path, resume: bool, progress: bool,
           callbacks: Sequence) -> Any:
    t = cfg.training
    overrides: dict[str, Any] = {"ddp_timeout": t.timeout_s, "report_to": cfg.reporters or "none"}
    if not t.group_by_length:
        overrides["train_sampling_strategy"] = "random"
    if t.gradient_checkpointing is not None:
        overrides[checkpointing_key()] = t.gradient_checkpointing
    if t.max_steps is not None:
        overrides["max_steps"] = t.max_steps
    if t.optim is not None:
        overrides["optim"] = t.optim
    return train_sft(model, tok, data.train, data.val or None, lora=peft_method_config(cfg), epochs=t.epochs, learning_rate=t.learning_rate,
                     batch_size=t.batch_size, max_length=t.max_length, output_dir=out / "checkpoints",
                     resume=resume, early_stopping_patience=t.early_stopping_patience,
                     max_grad_norm=t.max_grad_norm, warmup_ratio=t.warmup_ratio, lr_scheduler=t.lr_scheduler,
                     weight_decay=t.weight_decay, gradient_accumulation_steps=t.gradient_accumulation_steps,
                     seed=t.seed, plot=False, progress=progress, callbacks=callbacks, **overrides)


def train_from_config(cfg: RunConfig, resume: bool = False, progress: bool = True,
                      callbacks: Sequence = (), output_dir: str | Path | None = None) -> RunResult:
    """Run the whole config: load, prepare, train, evaluate, write the output folder (rank 0 only).

    train_sft seeds the run and attaches the config's LoRA (the one run path, labkit.train.TrainingRun).
    """
    out = Path(output_dir) if output_dir is not None else cfg.output_dir
    start = time.perf_counter()
    model, tok = load_base(cfg.model, cfg.quantization_arg, cfg.double_quant)
    data = prepare_data(cfg, tok)
    history = _train(cfg, model, tok, data, out, resume, progress, callbacks)
    model = history.model
    train_s = time.perf_counter() - start
    metrics: dict[str, Any] = {"training": _training_metrics(history, train_s, cfg)}
    if not is_main_process():
        return RunResult(out, metrics, history, model, written=False)

    if cfg.evaluation.metrics or cfg.evaluation.probe:  # `metrics: []` and `probe: false`: the run only trains
        metrics["evaluation"] = evaluate_base_and_tuned(cfg, model, tok, data.test, progress=progress)
    metrics["wall_seconds"] = time.perf_counter() - start
    save_adapter(model, out / "adapter")
    _write_adapter_config(cfg, out / "adapter" / ADAPTER_CONFIG)

    write_run_report(out, cfg, data.summary, history, metrics)
    return RunResult(out, metrics, history, model, written=True)


def _training_metrics(history, train_s: float, cfg: RunConfig) -> dict:
    return {"train_loss": history.train_loss, "train_epochs": history.train_epochs,
            "epoch_train_loss": history.epoch_train_loss, "val_loss": history.val_loss,
            "best_epoch": history.best_epoch, "steps": history.steps, "train_seconds": history.wall_seconds,
            "load_and_train_seconds": train_s,
            # the Trainer counts the tokens of every rank (gathered), so this is the whole run's throughput
            "tokens_per_sec": history.tokens_per_sec,
            "tokens_per_sec_per_process": history.tokens_per_sec / world_size(),
            "seconds_per_step": history.train_seconds / max(1, history.steps),
            "trainable_params": count_parameters(history.model).trainable,
            "peak_memory_mb": history.peak_memory_mb, "memory_at_start_mb": history.memory_at_start_mb,
            "processes": world_size(),
            "effective_batch": effective_batch(cfg)}


def train_in_fresh_process(config: dict, output_dir: str | Path, timeout_s: int = 1800,
                           env: dict[str, str] | None = None) -> dict:
    """Run one config (a dict, as in a YAML file) with `labkit train` in a new Python process → its metrics.json.

    Why a process per run: on a CPU, memory is measured as the process's resident set, which keeps
    what earlier runs in the same process touched (the allocator's spare pages); a fresh process
    measures one run alone, the way `labkit train` runs on your data. Exercise E7 compares the PEFT
    methods and the memory mechanics this way. `env` adds to the new process's environment (e.g.
    labkit.memory.MALLOC_TRACKS_TENSORS). The config is written to `output_dir/run.yaml`; a failed run
    raises RuntimeError with the end of its output.
    """
    import subprocess
    import sys

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", "train", str(path), "--quiet", "--output", str(out)],
                          capture_output=True, text=True, timeout=timeout_s, env=os.environ | (env or {}))
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"labkit train {path} failed (exit {proc.returncode}):\n{tail}")
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def _write_adapter_config(cfg: RunConfig, path: Path) -> None:
    """The config the adapter came from, with the base model as an absolute folder if it is one."""
    d = config_to_dict(cfg)
    if Path(cfg.model).expanduser().is_dir():
        d["model"] = str(Path(cfg.model).expanduser().resolve())
    for key in ("train", "val", "test"):
        p = cfg.data_path(key)
        d["data"][key] = str(p.resolve()) if p is not None else None
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")


def evaluate_adapter(cfg: RunConfig, adapter_dir: str | Path, progress: bool = True) -> dict:
    """`labkit eval`: the adapter and its base on the config's test records → metrics (as in metrics.json)."""
    model, tok, _ = load_adapter(adapter_dir)
    data = prepare_data(cfg, tok)
    return evaluate_base_and_tuned(cfg, model, tok, data.test, progress=progress)


# ------------------------------------------------------------------------------------------------
# Chat and merge


def prompt_for(cfg: RunConfig, tokenizer, text: str) -> str:
    """A request typed by a user → the prompt in the template the adapter was trained with."""
    return _to_prompt_completion({"messages": [{"role": "user", "content": text},
                                               {"role": "assistant", "content": "-"}]},
                                 cfg.data.template, tokenizer)["prompt"]


def merge_adapter(adapter_dir: str | Path, out: str | Path):
    """Merge into a full-precision base (labkit.lora.merge_and_verify), save safetensors, the tokenizer and
    the run config (labkit.yaml: the prompt template, which `labkit export gguf` writes into the Modelfile)
    → the MergeReport. A QLoRA run's adapter goes into its NF4 base dequantised to fp32, the weights it
    learned on (labkit.lora.merge_into_dequantized; exercise E9 measures why not the original base)."""
    model, tok, cfg = load_adapter(adapter_dir)
    if is_quantized(model.get_base_model()):
        report = merge_into_dequantized(model, tokenizer=tok)
    else:
        base_source: Any = cfg.model if cfg.model in REGISTRY else load_base(cfg.model, None)[0]
        report = merge_and_verify(model, base_source=base_source, tokenizer=tok)
    out = Path(out)
    report.merged_model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    _write_adapter_config(cfg, out / ADAPTER_CONFIG)  # the template it was trained with, for `labkit export`
    return report

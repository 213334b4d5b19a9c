"""The run config: one YAML file describes one fine-tuning run (`labkit train CONFIG.yaml`).

A config has six sections, every key optional except the data:

    model: smollm2-135m          # a course registry name, or a local folder with a transformers model
    quantization: nf4            # none | nf4 | int8
    data:      {course: invoices} or {train: my.jsonl, val: ..., test: ...}, template, limits, clean
    lora:      {r, alpha, dropout, targets, dora}
    training:  {epochs, learning_rate, batch_size, gradient_accumulation_steps, max_length, ...}
    evaluation: {metrics, probe, max_new_tokens}
    output:    {dir}

Why a schema of dataclasses and not a free dict: a typo (`learning_rat`) or a wrong type must stop
the run before a model is loaded, with an error that names the file, the line, the key path, what
was wrong and what is allowed. `ConfigError` carries all of that; `load_config` raises it.
Data paths are relative to the config file; `output.dir` is relative to where you run the command.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "RunConfig", "DataSection", "LoraSection", "TrainingSection", "EvaluationSection",
           "OutputSection", "load_config", "config_from_dict", "config_to_dict", "QUANTIZATIONS", "TEMPLATES",
           "METRICS", "TARGET_PRESETS"]

QUANTIZATIONS = ("none", "nf4", "int8")
TEMPLATES = ("course", "chat")
METRICS = ("exact_match", "json_valid", "f1")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
TARGET_PRESETS = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
                  "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


class ConfigError(ValueError):
    """A run config is wrong; the message names the file (and line), the key path, and what is allowed."""

    def __init__(self, message: str, file: str | Path | None = None, key: str | None = None,
                 line: int | None = None):
        where = ", ".join(p for p in (str(file) if file else "", f"line {line}" if line else "",
                                      f"key {key!r}" if key else "") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.key, self.line = file, key, line


def _opt(default: Any = None, *, choices: tuple | None = None, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, doc: str = "") -> Any:
    """A schema field: default, allowed choices or range (lo/hi inclusive unless lo_open), help text."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "doc": doc}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataSection:
    course: str | None = _opt(doc="a data set shipped with labkit (e.g. invoices); or give train/val/test files")
    train: str | None = _opt(doc="JSONL/JSON file of training records (path relative to the config file)")
    val: str | None = _opt(doc="validation records; without it, val_fraction of train is held out")
    test: str | None = _opt(doc="test records; without it, test_fraction of train is held out")
    val_fraction: float = _opt(0.1, lo=0.0, hi=0.5, doc="share of train held out for validation (no val file)")
    test_fraction: float = _opt(0.1, lo=0.0, hi=0.5, doc="share of train held out for testing (no test file)")
    n_train: int | None = _opt(lo=1, doc="use only the first N training records")
    n_val: int | None = _opt(lo=1, doc="use only the first N validation records")
    n_test: int | None = _opt(lo=1, doc="use only the first N test records")
    template: str = _opt("course", choices=TEMPLATES,
                         doc="course: '### Instruction / ### Response'; chat: the tokenizer's chat template")
    clean: bool = _opt(True, doc="drop empty, one-word, too-long and duplicate training records (reported)")
    seed: int = _opt(0, lo=0, doc="seed of the train/val/test cut when files are not given")


@dataclass
class LoraSection:
    r: int = _opt(16, lo=1, hi=1024, doc="adapter rank")
    alpha: float = _opt(32, lo=0, lo_open=True, doc="scale = alpha / r (2·r is the usual start)")
    dropout: float = _opt(0.05, lo=0.0, hi=0.9, doc="dropout on the adapter input")
    targets: list[str] | str = _opt("attention", doc="'attention' (q,k,v,o), 'all' (+ gate, up, down) or a list")
    dora: bool = _opt(False, doc="DoRA: magnitude/direction split, LoRA on the direction")


@dataclass
class TrainingSection:
    epochs: float = _opt(2, lo=0, hi=100, lo_open=True, doc="passes over the training records")
    learning_rate: float = _opt(2e-4, lo=0, hi=1, lo_open=True, doc="peak learning rate")
    batch_size: int = _opt(4, lo=1, hi=4096, doc="records per device per step")
    gradient_accumulation_steps: int = _opt(1, lo=1, hi=1024, doc="steps summed before each update")
    max_length: int = _opt(256, lo=8, hi=131072, doc="tokens per record (longer prompts are dropped, reported)")
    early_stopping_patience: int | None = _opt(lo=1, doc="stop after N epochs without a better val loss")
    seed: int = _opt(0, lo=0, doc="seed of everything random in training")
    warmup_ratio: float = _opt(0.1, lo=0.0, hi=0.9, doc="share of steps with a rising learning rate")
    lr_scheduler: str = _opt("cosine", choices=SCHEDULERS, doc="learning-rate schedule")
    weight_decay: float = _opt(0.0, lo=0.0, hi=1.0, doc="AdamW weight decay")
    max_grad_norm: float = _opt(1.0, lo=0, lo_open=True, doc="gradient clipping")
    gradient_checkpointing: bool | None = _opt(doc="recompute activations to save memory (default: by device)")
    group_by_length: bool = _opt(True, doc="batch records of similar length together (less padding)")
    timeout_s: int = _opt(1800, lo=10, doc="multi-process: how long a rank waits for the others before failing")


@dataclass
class EvaluationSection:
    metrics: list[str] = _opt(list(METRICS), choices=METRICS, doc="what to report (base vs tuned, test set)")
    probe: bool = _opt(True, doc="general-knowledge probe before/after: did the model forget?")
    max_new_tokens: int | None = _opt(lo=1, doc="generation cap (default: longest test answer + 4 tokens)")
    batch_size: int = _opt(16, lo=1, doc="prompts generated together")
    base: bool = _opt(True, doc="also evaluate the base model (adapters off) for the comparison")


@dataclass
class OutputSection:
    dir: str | None = _opt(doc="output folder (default: runs/<config name>), relative to where you run labkit")
    plot: bool = _opt(True, doc="write loss_curve.png")


@dataclass
class RunConfig:
    model: str = _opt("smollm2-135m", doc="a course model name (labkit.models.REGISTRY) or a local model folder")
    quantization: str = _opt("nf4", choices=QUANTIZATIONS, doc="base weights: none, nf4 (QLoRA) or int8")
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    output: OutputSection = field(default_factory=OutputSection)
    name: str | None = _opt(doc="run name (default: the config file's name)")
    source: str | None = field(default=None, repr=False, metadata={"internal": True})  # the config file

    @property
    def base_dir(self) -> Path:
        """Folder that relative data paths start from: the config file's folder (else the cwd)."""
        return Path(self.source).parent if self.source else Path.cwd()

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else Path("runs") / (self.name or "run")

    @property
    def quantization_arg(self) -> str | None:
        """The value for labkit.models.load_model: None, 'nf4' or 'int8'."""
        return None if self.quantization == "none" else self.quantization

    @property
    def lora_targets(self) -> tuple[str, ...]:
        t = self.lora.targets
        return TARGET_PRESETS[t] if isinstance(t, str) else tuple(t)

    def data_path(self, key: str) -> Path | None:
        value = getattr(self.data, key)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


# ------------------------------------------------------------------------------------------------
# Building and checking


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(args[0])}"
    return {str: "text", int: "a whole number", float: "a number", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value converted to tp). YAML 1.1 reads 1e-3 as text, so numeric text is accepted for floats."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in typing.get_args(tp), None
        for arg in typing.get_args(tp):
            if arg is not type(None):
                ok, v = _coerce(value, arg)
                if ok:
                    return True, v
        return False, value
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, value
        out = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    return False, value


def _check_range(value: Any, meta: dict, err) -> None:
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    items = value if isinstance(value, list) else [value]
    if choices:
        for v in items:
            if v not in choices:
                close = difflib.get_close_matches(str(v), [str(c) for c in choices], n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                err(f"{v!r} is not allowed. Allowed values: {', '.join(map(str, choices))}.{hint}")
    if value is None or isinstance(value, list | str | bool):
        return
    low_bad = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    if low_bad or (hi is not None and value > hi):
        left = "(" if meta.get("lo_open") else "["
        rng = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        err(f"{value!r} is out of range: allowed {rng}.")


def _build(cls: type, raw: Any, prefix: str, file: str | None, lines: dict[str, int]):
    """raw mapping → an instance of the dataclass cls, every key and value checked."""
    def fail(key: str, message: str):
        raise ConfigError(message, file, key or None, lines.get(key))

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        fail(prefix, f"must be a section of 'key: value' lines, got {type(raw).__name__} {raw!r:.60}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            fail(path, f"unknown key.{hint} Valid keys{' in ' + prefix if prefix else ''}: {', '.join(fields)}.")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, path, file, lines)
            continue
        ok, converted = _coerce(value, tp)
        if not ok:
            fail(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r:.60}. "
                       f"({fields[key].metadata.get('doc', '')})")
        _check_range(converted, fields[key].metadata, lambda m, p=path: fail(p, m))
        values[key] = converted
    return cls(**values)


def _key_lines(text: str) -> dict[str, int]:
    """Key path → 1-based line in the YAML text, so an error can point at the line."""
    import yaml

    out: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = f"{prefix}.{k.value}" if prefix else str(k.value)
                out[path] = k.start_mark.line + 1
                walk(v, path)

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return out


def config_from_dict(raw: Any, file: str | Path | None = None, lines: dict[str, int] | None = None,
                     check_files: bool = True) -> RunConfig:
    """A parsed YAML mapping → a checked RunConfig (ConfigError names the key path and the file)."""
    file_s = str(file) if file is not None else None
    cfg = _build(RunConfig, raw, "", file_s, lines or {})
    cfg.source = file_s
    if cfg.name is None and file is not None:
        cfg.name = Path(file).stem
    _check_semantics(cfg, lines or {}, check_files)
    return cfg


def _check_semantics(cfg: RunConfig, lines: dict[str, int], check_files: bool) -> None:
    """Rules that span keys: one data source, files exist, known model, valid targets."""
    def fail(key: str, message: str):
        raise ConfigError(message, cfg.source, key, lines.get(key))

    d = cfg.data
    if d.course is None and d.train is None:
        fail("data", "no training data: set data.course (a shipped set, e.g. invoices) or data.train "
                     "(a JSONL file of records).")
    if d.course is not None and any(getattr(d, k) is not None for k in ("train", "val", "test")):
        fail("data.course", "set either data.course or data.train/val/test files, not both.")
    if d.course is not None:
        from labkit.data import available_datasets

        known = available_datasets()
        if d.course not in known:
            close = difflib.get_close_matches(d.course, known, n=1)
            fail("data.course", f"no shipped data set {d.course!r}.{' Did you mean ' + repr(close[0]) + '?' if close else ''}"
                                f" Available: {', '.join(known)}.")
    if check_files:
        for key in ("train", "val", "test"):
            p = cfg.data_path(key)
            if p is not None and not p.is_file():
                fail(f"data.{key}", f"data file not found: {p} (paths are relative to the config file's folder).")
    if not d.val and not d.test and d.course is None and d.val_fraction + d.test_fraction >= 1:
        fail("data.val_fraction", "val_fraction + test_fraction must leave records to train on (sum below 1).")
    t = cfg.lora.targets
    if isinstance(t, str) and t not in TARGET_PRESETS:
        close = difflib.get_close_matches(t, list(TARGET_PRESETS), n=1)
        fail("lora.targets", f"{t!r} is not a preset. Allowed: {', '.join(TARGET_PRESETS)} or a list of module "
                             f"names such as [q_proj, v_proj].{' Did you mean ' + repr(close[0]) + '?' if close else ''}")
    if isinstance(t, list) and not t:
        fail("lora.targets", "the list is empty: name at least one module (e.g. [q_proj, v_proj]).")
    _check_model(cfg.model, fail)
    if cfg.training.early_stopping_patience is not None and d.course is None and not d.val and d.val_fraction == 0:
        fail("training.early_stopping_patience", "early stopping needs validation records: set data.val or "
                                                  "data.val_fraction > 0.")


def _check_model(name: str, fail) -> None:
    from labkit.models import REGISTRY

    if name in REGISTRY:
        return
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            fail("model", f"the folder {p} has no config.json: it is not a transformers model folder.")
        return
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    fail("model", f"{name!r} is neither a course model nor an existing folder.{hint} Course models: "
                  f"{', '.join(REGISTRY)}; or give the path of a folder saved with save_pretrained().")


def load_config(path: str | Path, check_files: bool = True) -> RunConfig:
    """Read and check a run config YAML file → RunConfig (raises ConfigError naming file, line and key)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Start from one in examples/ (e.g. examples/invoices.yaml), "
                          "a folder of the course repository (`labkit train --help` says where).")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}. Check indentation and colons.",
                          path, line=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict):
        raise ConfigError("the file must be a mapping of sections (model:, data:, lora:, training: ...), "
                          f"got {type(raw).__name__}.", path)
    return config_from_dict(raw, path, _key_lines(text), check_files=check_files)


def config_to_dict(cfg: RunConfig) -> dict:
    """RunConfig → a plain dict (what the report and the saved config.yaml show)."""
    d = dataclasses.asdict(cfg)
    d.pop("source", None)
    return d

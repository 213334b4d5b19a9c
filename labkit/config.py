"""The run config: one YAML file describes one fine-tuning run (`labkit train CONFIG.yaml`).

A config has six sections, every key optional except the data:

    model: smollm2-135m          # a course registry name, or a local folder with a transformers model
    quantization: nf4            # none | nf4 | int8
    data:      {course: invoices} or {train: my.jsonl, val: ..., test: ...}, template, limits, clean
    lora:      {r, alpha, dropout, targets, dora, method, virtual_tokens}
    training:  {epochs, learning_rate, batch_size, gradient_accumulation_steps, max_length, report_to, ...}
    evaluation: {metrics, probe, max_new_tokens}
    output:    {dir}

Why a schema (pydantic models) and not a free dict: a typo (`learning_rat`) or a wrong type must
stop the run before a model is loaded, with an error that names the file, the line, the key path,
what was wrong and what is allowed. pydantic checks types, ranges and choices; this module turns
its first error (the one earliest in the file) into a `ConfigError` that carries all of that, in
words for a learner. Rules that span keys or look at the disk (one data source, files exist, a known
model) run after the schema. Data paths are relative to the config file; `output.dir` is relative
to where you run the command.
"""

from __future__ import annotations

import difflib
import importlib.util
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

__all__ = ["ConfigError", "RunConfig", "DataSection", "LoraSection", "TrainingSection", "EvaluationSection",
           "OutputSection", "load_config", "config_from_dict", "config_to_dict", "QUANTIZATIONS", "TEMPLATES",
           "METRICS", "TARGET_PRESETS", "REPORTERS", "OPTIMIZERS"]

QUANTIZATIONS = ("none", "nf4", "int8")
TEMPLATES = ("course", "chat")
METRICS = ("exact_match", "json_valid", "f1")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
REPORTERS = ("none", "tensorboard", "wandb", "trackio")  # transformers' report_to names labkit allows
TARGET_PRESETS = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
                  "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}

Quantization = Literal["none", "nf4", "int8"]
Template = Literal["course", "chat"]
Metric = Literal["exact_match", "json_valid", "f1"]
Scheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]
Reporter = Literal["none", "tensorboard", "wandb", "trackio"]
PeftMethod = Literal["lora", "dora", "ia3", "prompt_tuning", "prefix_tuning"]  # labkit.lora.PEFT_METHODS
Optimizer = Literal["adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor"]
OPTIMIZERS = typing.get_args(Optimizer)  # transformers' OptimizerNames that labkit tests (8-bit: bitsandbytes)
for _alias, _names in ((Quantization, QUANTIZATIONS), (Template, TEMPLATES), (Metric, METRICS),
                       (Scheduler, SCHEDULERS), (Reporter, REPORTERS)):
    assert typing.get_args(_alias) == _names  # one list of names: the tuples above are the public ones


class ConfigError(ValueError):
    """A run config is wrong; the message names the file (and line), the key path, what is wrong and
    the hint (what is allowed, the closest valid name)."""

    def __init__(self, message: str, file: str | Path | None = None, key: str | None = None,
                 line: int | None = None, hint: str | None = None):
        where = ", ".join(p for p in (str(file) if file else "", f"line {line}" if line else "",
                                      f"key {key!r}" if key else "") if p)
        text = f"{message} {hint}" if hint else message
        super().__init__(f"{where}: {text}" if where else text)
        self.file, self.key, self.line, self.hint = file, key, line, hint


def _numeric_text(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads 1e-3 as the text "1e-3"; a learner writes it anyway: accept it as a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Number = Annotated[float, BeforeValidator(_numeric_text)]


class _Section(BaseModel):
    """Strict: no unknown keys, no "4" for 4 or true for 1 (YAML already gives real ints and bools)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DataSection(_Section):
    course: str | None = Field(None, description="a data set shipped with labkit (e.g. invoices); or give "
                                                 "train/val/test files")
    train: str | None = Field(None, description="JSONL/JSON file of training records (path relative to the "
                                                "config file)")
    val: str | None = Field(None, description="validation records; without it, val_fraction of train is held out")
    test: str | None = Field(None, description="test records; without it, test_fraction of train is held out")
    val_fraction: Number = Field(0.1, ge=0.0, le=0.5, description="share of train held out for validation "
                                                                  "(no val file)")
    test_fraction: Number = Field(0.1, ge=0.0, le=0.5, description="share of train held out for testing "
                                                                   "(no test file)")
    n_train: int | None = Field(None, ge=1, description="use only the first N training records")
    n_val: int | None = Field(None, ge=1, description="use only the first N validation records")
    n_test: int | None = Field(None, ge=1, description="use only the first N test records")
    template: Template = Field("course", description="course: '### Instruction / ### Response'; chat: the "
                                                     "tokenizer's chat template")
    clean: bool = Field(True, description="drop empty, one-word, too-long and duplicate training records "
                                          "(reported)")
    seed: int = Field(0, ge=0, description="seed of the train/val/test cut when files are not given")


class LoraSection(_Section):
    r: int = Field(16, ge=1, le=1024, description="adapter rank")
    alpha: Number = Field(32, gt=0, description="scale = alpha / r (2·r is the usual start)")
    dropout: Number = Field(0.05, ge=0.0, le=0.9, description="dropout on the adapter input")
    targets: list[str] | str = Field("attention", description="'attention' (q,k,v,o), 'all' (+ gate, up, down) "
                                                              "or a list")
    dora: bool = Field(False, description="DoRA: magnitude/direction split, LoRA on the direction")
    method: PeftMethod = Field("lora", description="the PEFT method, by name (labkit.lora.peft_config): lora, dora, "
                                                   "ia3, prompt_tuning, prefix_tuning")
    virtual_tokens: int = Field(20, ge=1, le=512, description="prompt/prefix tuning: trained virtual tokens")

    @property
    def effective_method(self) -> str:
        """The method that trains: `dora: true` with method lora is DoRA (the one rule; run and report read it)."""
        return "dora" if self.method == "lora" and self.dora else self.method


class TrainingSection(_Section):
    epochs: Number = Field(2, gt=0, le=100, description="passes over the training records")
    learning_rate: Number = Field(2e-4, gt=0, le=1, description="peak learning rate")
    batch_size: int = Field(4, ge=1, le=4096, description="records per device per step")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="steps summed before each update")
    max_steps: int | None = Field(None, ge=1, description="stop after N updates (instead of the epochs' count)")
    optim: Optimizer | None = Field(None, description="the optimizer, by transformers' name: adamw_torch, "
                                                      "adamw_bnb_8bit, paged_adamw_8bit, paged_adamw_32bit, "
                                                      "adafactor (default: by device)")
    max_length: int = Field(256, ge=8, le=131072, description="tokens per record (longer prompts are dropped, "
                                                              "reported)")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N epochs without a better "
                                                                        "val loss")
    seed: int = Field(0, ge=0, description="seed of everything random in training")
    warmup_ratio: Number = Field(0.1, ge=0.0, le=0.9, description="share of steps with a rising learning rate")
    lr_scheduler: Scheduler = Field("cosine", description="learning-rate schedule")
    weight_decay: Number = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay")
    max_grad_norm: Number = Field(1.0, gt=0, description="gradient clipping")
    gradient_checkpointing: bool | None = Field(None, description="recompute activations to save memory "
                                                                  "(default: by device)")
    group_by_length: bool = Field(True, description="batch records of similar length together (less padding)")
    timeout_s: int = Field(1800, ge=10, description="multi-process: how long a rank waits for the others "
                                                    "before failing")
    report_to: Reporter | list[Reporter] = Field("none", description="where the trainer also logs: none, "
                                                                     "tensorboard, wandb, trackio, or a list")


class EvaluationSection(_Section):
    metrics: list[Metric] = Field(default_factory=lambda: list(METRICS),
                                  description="what to report (base vs tuned, test set); [] with probe: false "
                                              "evaluates nothing (the run only trains)")
    probe: bool = Field(True, description="general-knowledge probe before/after: did the model forget?")
    max_new_tokens: int | None = Field(None, ge=1, description="generation cap (default: longest test answer "
                                                               "+ 4 tokens)")
    batch_size: int = Field(16, ge=1, description="prompts generated together")
    base: bool = Field(True, description="also evaluate the base model (adapters off) for the comparison")


class OutputSection(_Section):
    dir: str | None = Field(None, description="output folder (default: runs/<config name>), relative to where "
                                              "you run labkit")
    plot: bool = Field(True, description="write loss_curve.png")


class RunConfig(_Section):
    model: str = Field("smollm2-135m", description="a course model name (labkit.models.REGISTRY) or a local "
                                                   "model folder")
    quantization: Quantization = Field("nf4", description="base weights: none, nf4 (QLoRA) or int8")
    double_quant: bool = Field(True, description="nf4: store the per-block scales in 8 bits too (QLoRA's "
                                                 "double quantisation, ~0.37 bit per weight less)")
    data: DataSection = Field(default_factory=DataSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    output: OutputSection = Field(default_factory=OutputSection)
    name: str | None = Field(None, description="run name (default: the config file's name)")
    _source: str | None = PrivateAttr(None)  # the config file: set by config_from_dict, never a YAML key

    @field_validator("data", "lora", "training", "evaluation", "output", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        return {} if value is None else value  # `lora:` with nothing under it: all defaults

    @property
    def source(self) -> str | None:
        return self._source

    @source.setter
    def source(self, value: str | None) -> None:
        self._source = value

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

    @property
    def reporters(self) -> list[str]:
        """training.report_to as a list (what transformers' `report_to` takes); [] for none."""
        r = self.training.report_to
        return [x for x in ([r] if isinstance(r, str) else r) if x != "none"]

    def data_path(self, key: str) -> Path | None:
        value = getattr(self.data, key)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


# ------------------------------------------------------------------------------------------------
# pydantic's errors -> one ConfigError in words


def _unwrap(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _type_name(tp: Any) -> str:
    tp = _unwrap(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(args[0])}"
    if typing.get_origin(tp) is Literal:
        return "text"
    return {str: "text", int: "a whole number", float: "a number", bool: "true/false"}.get(tp, str(tp))


def _choices(tp: Any) -> tuple | None:
    """The allowed values of a Literal field (also inside `X | list[X]`), else None."""
    tp = _unwrap(tp)
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp):
        if (found := _choices(arg)) is not None:
            return found
    return None


def _range(field) -> str:
    """'[lo, hi]' / '(lo, hi]' from a field's ge / gt / le constraints."""
    bound = {name: getattr(m, name) for m in field.metadata for name in ("ge", "gt", "le") if hasattr(m, name)}
    lo, hi, left = bound.get("ge", bound.get("gt")), bound.get("le"), "(" if "gt" in bound else "["
    return f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"


def _locate(loc: tuple) -> tuple[type[BaseModel], list[str]]:
    """pydantic's error location → (the model that owns the key, the key path).

    Location parts after a field (a union member's tag, a list index) are not keys: dropped.
    """
    model, path = RunConfig, []
    for part in loc:
        if not isinstance(part, str):
            break
        path.append(part)
        field = model.model_fields.get(part)
        sub = _unwrap(field.annotation) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            break
        model = sub
    return model, path


def _value_at(raw: Any, path: list[str]) -> Any:
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _describe(errors: list[dict], model: type[BaseModel], path: list[str], value: Any) -> tuple[str, str | None]:
    """The errors pydantic gives for one key → (what is wrong, the hint)."""
    first, key, prefix = errors[0], path[-1], ".".join(path[:-1])
    kind = first["type"]
    if kind == "extra_forbidden":
        keys = list(model.model_fields)
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        return "unknown key.", f"{hint}Valid keys{' in ' + prefix if prefix else ''}: {', '.join(keys)}."
    if kind == "model_type":
        return f"must be a section of 'key: value' lines, got {type(value).__name__} {value!r:.60}.", None
    field = model.model_fields[key]
    choices = _choices(field.annotation) or ()
    for e in errors:  # a name of the right type, but not one of the allowed ones
        if e["type"] == "literal_error" and isinstance(e["input"], str):
            close = difflib.get_close_matches(e["input"], [str(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return f"{e['input']!r} is not allowed.", f"Allowed values: {', '.join(map(str, choices))}.{hint}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal"):
        return f"{_numeric_text(first['input'])!r} is out of range: allowed {_range(field)}.", None
    if kind == "finite_number":
        return f"{value!r} is not a finite number.", f"({field.description})"
    return f"expected {_type_name(field.annotation)}, got {type(value).__name__} {value!r:.60}.", \
        f"({field.description})"


def _first_error(exc: ValidationError, raw: dict, file: str | None, lines: dict[str, int]) -> ConfigError:
    """The error earliest in the file (pydantic reports them in schema order) as a ConfigError."""
    groups: dict[str, tuple[type[BaseModel], list[str], list[dict]]] = {}
    for e in exc.errors():
        model, path = _locate(e["loc"])
        groups.setdefault(".".join(path), (model, path, []))[2].append(e)
    key = min(groups, key=lambda k: (lines.get(k, 1 << 30), list(groups).index(k)))
    model, path, errors = groups[key]
    message, hint = _describe(errors, model, path, _value_at(raw, path))
    return ConfigError(message, file, key, lines.get(key), hint)


# ------------------------------------------------------------------------------------------------
# Building and checking


def _key_lines(text: str) -> dict[str, int]:
    """Key path → 1-based line in the YAML text, so an error can point at the line."""
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
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError("the file must be a mapping of sections (model:, data:, lora:, training: ...), "
                          f"got {type(raw).__name__}.", file_s)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc, raw, file_s, lines or {}) from None
    cfg.source = file_s
    if cfg.name is None and file is not None:
        cfg.name = Path(file).stem
    _check_semantics(cfg, lines or {}, check_files)
    return cfg


def _check_semantics(cfg: RunConfig, lines: dict[str, int], check_files: bool) -> None:
    """Rules that span keys: one data source, files exist, known model, valid targets."""
    def fail(key: str, message: str, hint: str | None = None):
        raise ConfigError(message, cfg.source, key, lines.get(key), hint)

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
            fail("data.course", f"no shipped data set {d.course!r}.",
                 f"{'Did you mean ' + repr(close[0]) + '? ' if close else ''}Available: {', '.join(known)}.")
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
        fail("lora.targets", f"{t!r} is not a preset.", f"Allowed: {', '.join(TARGET_PRESETS)} or a list of module "
                             f"names such as [q_proj, v_proj].{' Did you mean ' + repr(close[0]) + '?' if close else ''}")
    if isinstance(t, list) and not t:
        fail("lora.targets", "the list is empty: name at least one module (e.g. [q_proj, v_proj]).")
    if cfg.lora.dora and cfg.lora.method not in ("lora", "dora"):
        fail("lora.dora", f"dora: true is LoRA's variant; it does nothing with method {cfg.lora.method}.",
             "Remove dora, or set method: dora.")
    _check_reporters(cfg.training.report_to, fail)
    _check_model(cfg.model, fail)
    if cfg.training.early_stopping_patience is not None and d.course is None and not d.val and d.val_fraction == 0:
        fail("training.early_stopping_patience", "early stopping needs validation records: set data.val or "
                                                  "data.val_fraction > 0.")


def _check_reporters(report_to: str | list[str], fail) -> None:
    """training.report_to: "none" alone or a list of loggers, each installed (the trainer would fail at start)."""
    names = [report_to] if isinstance(report_to, str) else report_to
    if not names:
        fail("training.report_to", "the list is empty.", "Write none to log nowhere, or name loggers: "
                                                         "[tensorboard, wandb].")
    if "none" in names and len(names) > 1:
        fail("training.report_to", f"'none' cannot be combined with other loggers ({names}).",
             "Write either none, or the list of loggers without it.")
    missing = [n for n in names if n != "none" and importlib.util.find_spec(n) is None]
    if missing:
        fail("training.report_to", f"logging to {', '.join(missing)} needs the package(s) {', '.join(missing)}, "
                                   "which are not installed.",
             f"Install with: pip install {' '.join(missing)}; or set training.report_to: none.")


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
    hint = f"Did you mean {close[0]!r}? " if close else ""
    fail("model", f"{name!r} is neither a course model nor an existing folder.",
         f"{hint}Course models: {', '.join(REGISTRY)}; or give the path of a folder saved with save_pretrained().")


def load_config(path: str | Path, check_files: bool = True) -> RunConfig:
    """Read and check a run config YAML file → RunConfig (raises ConfigError naming file, line and key)."""
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
    return cfg.model_dump()

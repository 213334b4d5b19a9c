"""The run config: every kind of mistake is caught before a model loads, naming file, line and key path."""

import json
import textwrap
from pathlib import Path

import pytest

from labkit.config import ConfigError, RunConfig, config_from_dict, config_to_dict, load_config
from labkit.data import RecordError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value), "the error must name the file"
    return info.value


# ------------------------------------------------------------------------------------------------
# The happy path


@pytest.mark.parametrize("name", ["invoices.yaml", "dates.yaml"])
def test_shipped_examples_load(name):
    cfg = load_config(ROOT / "examples" / name)
    assert isinstance(cfg, RunConfig) and cfg.name == Path(name).stem


def test_invoices_example_has_lesson_05_settings():
    cfg = load_config(ROOT / "examples" / "invoices.yaml")
    assert (cfg.model, cfg.quantization_arg) == ("smollm2-135m", "nf4")
    assert (cfg.data.course, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test) == ("invoices", 160, 16, 32)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.0)
    assert cfg.lora_targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    t = cfg.training
    assert (t.epochs, t.learning_rate, t.batch_size, t.gradient_accumulation_steps) == (2, 1e-3, 4, 1)


def test_minimal_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "data: {course: invoices}\n", "mini.yaml"))
    assert cfg.model == "smollm2-135m" and cfg.quantization == "nf4"
    assert cfg.lora.r == 16 and cfg.training.batch_size == 4 and cfg.evaluation.probe is True
    assert cfg.output_dir == Path("runs") / "mini"


def test_yaml_1e3_is_read_as_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as the text "1e-3"; a learner writes it anyway.
    cfg = load_config(write(tmp_path, "data: {course: invoices}\ntraining: {learning_rate: 1e-3}\n"))
    assert cfg.training.learning_rate == pytest.approx(1e-3)


def test_data_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.jsonl").write_text(json.dumps({"prompt": "a\n", "completion": "b c"}) + "\n")
    cfg = load_config(write(tmp_path / "sub", "data: {train: mine.jsonl}\n"))
    assert cfg.data_path("train") == tmp_path / "sub" / "mine.jsonl"


def test_targets_list_and_presets(tmp_path):
    cfg = config_from_dict({"data": {"course": "invoices"}, "lora": {"targets": ["q_proj", "v_proj"]}})
    assert cfg.lora_targets == ("q_proj", "v_proj")
    cfg = config_from_dict({"data": {"course": "invoices"}, "lora": {"targets": "attention"}})
    assert cfg.lora_targets == ("q_proj", "k_proj", "v_proj", "o_proj")


# ------------------------------------------------------------------------------------------------
# Unknown keys: rejected, with the closest valid name


def test_unknown_top_level_key_suggests_the_closest(tmp_path):
    err = error_of(tmp_path, "modle: smollm2-135m\ndata: {course: invoices}\n")
    assert err.key == "modle" and err.line == 1
    assert "unknown key" in str(err) and "Did you mean 'model'?" in str(err)


def test_unknown_nested_key_names_the_key_path_and_line(tmp_path):
    err = error_of(tmp_path, """\
        data:
          course: invoices
        training:
          epochs: 2
          learning_rat: 0.001
        """)
    assert err.key == "training.learning_rat" and err.line == 5
    assert "Did you mean 'learning_rate'?" in str(err) and "line 5" in str(err)


def test_unknown_key_without_a_close_name_lists_the_valid_ones(tmp_path):
    err = error_of(tmp_path, "data: {course: invoices}\nlora: {zzz: 1}\n")
    assert "Did you mean" not in str(err)
    assert "Valid keys in lora: r, alpha, dropout, targets, dora" in str(err)


# ------------------------------------------------------------------------------------------------
# Wrong types and out-of-range values: key path, what is allowed, the file


@pytest.mark.parametrize("section, value, expected", [
    ("training: {batch_size: four}", "batch_size", "expected a whole number, got str 'four'"),
    ("training: {batch_size: 2.5}", "batch_size", "expected a whole number, got float 2.5"),
    ("training: {batch_size: true}", "batch_size", "expected a whole number, got bool True"),
    ("training: {learning_rate: fast}", "learning_rate", "expected a number, got str 'fast'"),
    ("lora: {dora: 'yes'}", "dora", "expected true/false, got str 'yes'"),
    ("lora: {targets: 7}", "targets", "expected a list of text or text, got int 7"),
    ("evaluation: {metrics: exact_match}", "metrics", "expected a list of text"),
])
def test_wrong_types_are_named(tmp_path, section, value, expected):
    err = error_of(tmp_path, f"data: {{course: invoices}}\n{section}\n")
    assert err.key.endswith(value) and err.line == 2
    assert expected in str(err)


@pytest.mark.parametrize("section, key, allowed", [
    ("training: {batch_size: 0}", "training.batch_size", "allowed [1, 4096]"),
    ("training: {learning_rate: 0}", "training.learning_rate", "allowed (0, 1]"),
    ("training: {epochs: -1}", "training.epochs", "allowed (0, 100]"),
    ("lora: {dropout: 1.5}", "lora.dropout", "allowed [0.0, 0.9]"),
    ("lora: {r: 0}", "lora.r", "allowed [1, 1024]"),
    ("data: {course: invoices, n_test: 0}", "data.n_test", "allowed [1, inf]"),
])
def test_out_of_range_values_say_the_allowed_range(tmp_path, section, key, allowed):
    text = section if section.startswith("data") else f"data: {{course: invoices}}\n{section}"
    err = error_of(tmp_path, text + "\n")
    assert err.key == key and "out of range" in str(err) and allowed in str(err)


def test_choice_lists_the_allowed_values_and_the_closest(tmp_path):
    err = error_of(tmp_path, "quantization: nf8\ndata: {course: invoices}\n")
    assert err.key == "quantization"
    assert "Allowed values: none, nf4, int8" in str(err) and "Did you mean 'nf4'?" in str(err)
    err = error_of(tmp_path, "data: {course: invoices}\nevaluation: {metrics: [exact_match, bleu]}\n")
    assert err.key == "evaluation.metrics" and "'bleu' is not allowed" in str(err)


def test_section_that_is_not_a_mapping(tmp_path):
    err = error_of(tmp_path, "data: {course: invoices}\nlora: 16\n")
    assert err.key == "lora" and "section" in str(err)


def test_bad_lora_target_preset_and_empty_list(tmp_path):
    err = error_of(tmp_path, "data: {course: invoices}\nlora: {targets: atention}\n")
    assert err.key == "lora.targets" and "Did you mean 'attention'?" in str(err)
    err = error_of(tmp_path, "data: {course: invoices}\nlora: {targets: []}\n")
    assert "empty" in str(err)


# ------------------------------------------------------------------------------------------------
# Data and model sources


def test_missing_data_file_is_named(tmp_path):
    err = error_of(tmp_path, "data: {train: nowhere/records.jsonl}\n")
    assert err.key == "data.train" and str(tmp_path / "nowhere" / "records.jsonl") in str(err)


def test_no_data_at_all(tmp_path):
    err = error_of(tmp_path, "model: smollm2-135m\n")
    assert err.key == "data" and "data.course" in str(err) and "data.train" in str(err)


def test_course_and_files_together_are_ambiguous(tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    err = error_of(tmp_path, "data: {course: invoices, train: a.jsonl}\n")
    assert "not both" in str(err)


def test_unknown_course_set_suggests_the_closest(tmp_path):
    err = error_of(tmp_path, "data: {course: invoice}\n")
    assert err.key == "data.course" and "Did you mean 'invoices'?" in str(err)


def test_unknown_model_suggests_the_registry_name(tmp_path):
    err = error_of(tmp_path, "model: smollm2-135\ndata: {course: invoices}\n")
    assert err.key == "model" and "Did you mean 'smollm2-135m'?" in str(err)


def test_model_folder_without_config_json(tmp_path):
    (tmp_path / "mymodel").mkdir()
    err = error_of(tmp_path, f"model: {tmp_path / 'mymodel'}\ndata: {{course: invoices}}\n")
    assert "config.json" in str(err)


def test_invalid_yaml_names_the_line(tmp_path):
    err = error_of(tmp_path, "data:\n  course: invoices\n training: {epochs: 2}\n")
    assert "not valid YAML" in str(err) and err.line == 3


def test_not_a_mapping_and_not_found(tmp_path):
    err = error_of(tmp_path, "- a\n- b\n")
    assert "mapping of sections" in str(err)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------------
# Records through the config: bad lines name file and line; drops are reported


def _records_config(tmp_path: Path, lines: list[str], extra: str = "") -> RunConfig:
    (tmp_path / "mine.jsonl").write_text("\n".join(lines) + "\n")
    return load_config(write(tmp_path, f"data: {{train: mine.jsonl{extra}}}\n"))


def test_a_bad_record_line_names_file_and_line(tmp_path, tok):
    from labkit.run import prepare_data

    good = json.dumps({"instruction": "Say hi", "output": "Hello there"})
    cfg = _records_config(tmp_path, [good, good, '{"instruction": "x", "outptu": "y"}'])
    with pytest.raises(RecordError) as info:
        prepare_data(cfg, tok)
    assert info.value.line == 3 and str(info.value.path).endswith("mine.jsonl")
    assert "output" in str(info.value)


def test_three_record_shapes_are_read_and_split(tmp_path, tok):
    from labkit.run import prepare_data

    lines = [json.dumps({"instruction": f"Add {i} and {i}", "output": f"The sum is {2 * i}"}) for i in range(12)]
    lines += [json.dumps({"messages": [{"role": "user", "content": f"Double {i}"},
                                       {"role": "assistant", "content": f"It is {2 * i}"}]}) for i in range(6)]
    lines += [json.dumps({"prompt": f"### Instruction:\nPing {i}\n\n### Response:\n", "completion": f"pong {i}"})
              for i in range(2)]
    cfg = _records_config(tmp_path, lines, ", val_fraction: 0.1, test_fraction: 0.1, clean: false")
    data = prepare_data(cfg, tok)
    assert data.summary.loaded == data.summary.used == {"train": 16, "val": 2, "test": 2}
    every = data.train + data.val + data.test
    assert all(r["prompt"].startswith("### Instruction:\n") for r in every)
    assert sorted(r["completion"] for r in every) == sorted(
        [f"The sum is {2 * i}" for i in range(12)] + [f"It is {2 * i}" for i in range(6)] + ["pong 0", "pong 1"])
    again = prepare_data(cfg, tok)
    assert again.test == data.test, "the cut must be the same on every run (seeded)"


def test_cleaning_drops_duplicates_and_reports_them(tmp_path, tok):
    from labkit.run import prepare_data

    rec = json.dumps({"instruction": "Ping", "output": "pong pong"})
    lines = [json.dumps({"instruction": f"Add {i} and {i}", "output": f"The sum is {2 * i}"}) for i in range(6)]
    (tmp_path / "v.jsonl").write_text(lines[0] + "\n")
    (tmp_path / "t.jsonl").write_text(lines[1] + "\n")
    (tmp_path / "mine.jsonl").write_text("\n".join(lines + [rec, rec]) + "\n")
    cfg = load_config(write(tmp_path, "data: {train: mine.jsonl, val: v.jsonl, test: t.jsonl}\n"))
    data = prepare_data(cfg, tok)
    assert data.summary.loaded["train"] == 8 and data.summary.used["train"] == 7
    assert "exact duplicate  1" in data.summary.clean_report and "kept 7 of 8" in str(data.summary)
    assert data.summary.overlap == 1, "a test record copied from train is reported as contamination"


def test_too_long_prompts_are_dropped_and_reported(tmp_path, tok):
    from labkit.run import prepare_data

    lines = [json.dumps({"instruction": "word " * 300, "output": "short answer"})]
    lines += [json.dumps({"instruction": f"Say {i}", "output": f"number {i}"}) for i in range(8)]
    (tmp_path / "v.jsonl").write_text(lines[1] + "\n")
    (tmp_path / "t.jsonl").write_text(lines[2] + "\n")
    (tmp_path / "mine.jsonl").write_text("\n".join(lines) + "\n")
    cfg = load_config(write(tmp_path, "data: {train: mine.jsonl, val: v.jsonl, test: t.jsonl}\n"
                                      "training: {max_length: 64}\n"))
    data = prepare_data(cfg, tok)
    assert len(data.train) == 8 and data.summary.used["train"] == 8
    assert any("train record 0" in d and "max_length=64" in d for d in data.summary.drops)
    assert "dropped: train record 0" in str(data.summary)


def test_chat_template_renders_with_the_tokenizer(tmp_path, tok):
    from labkit.run import prepare_data, prompt_for

    lines = [json.dumps({"instruction": f"Say {i}", "output": f"number {i}"}) for i in range(10)]
    cfg = _records_config(tmp_path, lines, ", template: chat")
    data = prepare_data(cfg, tok)
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in data.train)
    assert prompt_for(cfg, tok, "Say 3") == tok.apply_chat_template(
        [{"role": "user", "content": "Say 3"}], tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------------------------
# The shipped accelerate configs (parsed by accelerate itself, which rejects unknown keys)


@pytest.mark.parametrize("name, kind, extra", [
    ("ddp.yaml", "MULTI_GPU", {}),
    ("fsdp2.yaml", "FSDP", {"fsdp_version": 2}),
    ("fsdp2_qlora.yaml", "FSDP", {"fsdp_version": 2}),
    ("deepspeed_zero2.yaml", "DEEPSPEED", {"zero_stage": 2}),
    ("deepspeed_zero3.yaml", "DEEPSPEED", {"zero_stage": 3}),
])
def test_accelerate_configs_parse(name, kind, extra):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(ROOT / "examples" / "accelerate" / name))
    assert cfg.distributed_type.value == kind and cfg.num_processes >= 2
    section = cfg.fsdp_config if kind == "FSDP" else cfg.deepspeed_config if kind == "DEEPSPEED" else {}
    assert all(section.get(k) == v for k, v in extra.items())


# ------------------------------------------------------------------------------------------------
# training.report_to: where the trainer also logs


def test_report_to_defaults_to_none_and_takes_a_name_or_a_list(monkeypatch):
    import importlib.util

    cfg = config_from_dict({"data": {"course": "invoices"}})
    assert cfg.training.report_to == "none" and cfg.reporters == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n in ("wandb", "trackio") else real(n, *a))
    cfg = config_from_dict({"data": {"course": "invoices"}, "training": {"report_to": ["wandb", "trackio"]}})
    assert cfg.reporters == ["wandb", "trackio"]


@pytest.mark.parametrize("value, expected", [
    ("mlflow", "'mlflow' is not allowed. Allowed values: none, tensorboard, wandb, trackio."),
    ("[wandb, mlfow]", "'mlfow' is not allowed"),
    ("3", "expected text or a list of text, got int 3"),
    ("[none, wandb]", "'none' cannot be combined"),
    ("[]", "the list is empty"),
])
def test_report_to_errors_name_key_line_and_what_is_allowed(tmp_path, value, expected):
    err = error_of(tmp_path, f"data: {{course: invoices}}\ntraining:\n  report_to: {value}\n")
    assert err.key == "training.report_to" and err.line == 3 and expected in str(err)


def test_report_to_a_logger_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    err = error_of(tmp_path, "data: {course: invoices}\ntraining: {report_to: tensorboard}\n")
    assert err.key == "training.report_to" and err.hint.startswith("Install with: pip install tensorboard")


# ------------------------------------------------------------------------------------------------
# The error object itself


def test_error_carries_file_line_key_and_hint_separately(tmp_path):
    err = error_of(tmp_path, "data: {course: invoices}\n\nlora: {r: 16, dorra: true}\n")
    assert (err.line, err.key) == (3, "lora.dorra") and str(err.file) == str(tmp_path / "run.yaml")
    assert err.hint.startswith("Did you mean 'dora'?") and str(err).endswith(err.hint)


def test_the_first_error_in_the_file_is_the_one_reported(tmp_path):
    # pydantic checks the schema in its own order; the learner reads the file top down.
    err = error_of(tmp_path, "training: {epochs: 0}\ndata: {course: invoices}\nmodle: x\nquantization: nf8\n")
    assert err.key == "training.epochs" and err.line == 1


def test_not_a_finite_number_is_rejected(tmp_path):
    err = error_of(tmp_path, "data: {course: invoices}\ntraining: {learning_rate: .nan}\n")
    assert err.key == "training.learning_rate" and "finite" in str(err)


def test_config_round_trips_through_its_dict():
    cfg = config_from_dict({"data": {"course": "invoices"}, "training": {"report_to": "none", "epochs": 3}})
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg) and "source" not in config_to_dict(cfg)


def test_peft_method_is_chosen_by_name():
    from labkit.run import peft_method_config

    cfg = config_from_dict({"data": {"course": "invoices"}, "lora": {"method": "prefix_tuning", "virtual_tokens": 8}})
    assert type(peft_method_config(cfg)).__name__ == "PrefixTuningConfig"
    assert peft_method_config(cfg).num_virtual_tokens == 8
    cfg = config_from_dict({"data": {"course": "invoices"}, "lora": {"dora": True}})
    assert peft_method_config(cfg).use_dora
    cfg = config_from_dict({"data": {"course": "invoices"}, "lora": {"method": "ia3"}})
    assert type(peft_method_config(cfg)).__name__ == "IA3Config"
    with pytest.raises(ConfigError, match="lora.method"):
        config_from_dict({"data": {"course": "invoices"}, "lora": {"method": "adapters"}})


def test_dora_one_rule_for_the_trainer_and_the_report():
    """`dora: true` or method dora: DoRA in PEFT's config and in the report's words; nothing else is."""
    from labkit.report import _method_text
    from labkit.run import peft_method_config

    for lora, dora in [({"dora": True}, True), ({"method": "dora"}, True), ({}, False), ({"method": "ia3"}, False)]:
        cfg = config_from_dict({"data": {"course": "invoices"}, "lora": lora})
        assert cfg.lora.effective_method == ("dora" if dora else lora.get("method", "lora"))
        assert getattr(peft_method_config(cfg), "use_dora", False) is dora
        assert ("(DoRA)" in _method_text(cfg)) is dora, _method_text(cfg)
    with pytest.raises(ConfigError, match="lora.dora.*nothing with method ia3"):  # not ignored silently
        config_from_dict({"data": {"course": "invoices"}, "lora": {"method": "ia3", "dora": True}})


def test_optimizer_max_steps_and_double_quant_reach_the_trainer_and_the_loader(monkeypatch, tmp_path):
    """training.optim / training.max_steps go to the trainer as transformers' own keywords, and
    double_quant to load_model: configuration, not new code (issue: the PEFT family as config)."""
    import types

    from labkit import run

    cfg = config_from_dict({"data": {"course": "invoices"}, "double_quant": False,
                            "training": {"optim": "paged_adamw_8bit", "max_steps": 3}})
    seen: dict = {}
    monkeypatch.setattr(run, "train_sft", lambda *args, **kw: seen.update(kw))
    run._train(cfg, None, None, types.SimpleNamespace(train=[], val=[]), tmp_path, False, False, ())
    assert seen["optim"] == "paged_adamw_8bit" and seen["max_steps"] == 3
    monkeypatch.setattr(run, "load_model", lambda name, **kw: seen.update(loader=kw))
    run.load_base(cfg.model, cfg.quantization_arg, cfg.double_quant)
    assert seen["loader"] == {"quantization": "nf4", "double_quant": False}
    defaults = config_from_dict({"data": {"course": "invoices"}})
    seen.clear()
    run._train(defaults, None, None, types.SimpleNamespace(train=[], val=[]), tmp_path, False, False, ())
    assert "optim" not in seen and "max_steps" not in seen and defaults.double_quant  # the device decides
    with pytest.raises(ConfigError, match="training.optim"):
        config_from_dict({"data": {"course": "invoices"}, "training": {"optim": "adam_8bit"}})

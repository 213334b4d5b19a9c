"""The `labkit` command line."""

import json

import pytest
from conftest import tiny_tokenizer_dir

from labkit import cli


@pytest.mark.course_model  # without it the doctor's models line is a FAIL, as it should be
def test_doctor_exits_zero_when_nothing_fails(capsys):
    assert cli.main(["doctor"]) == 0
    assert "doctor: 0 FAIL" in capsys.readouterr().out


@pytest.mark.course_model
def test_cache_prints_the_model_folder(capsys):
    assert cli.main(["cache"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit):
        cli.main(["fly"])


# ------------------------------------------------------------------------------------------------
# train / eval / chat / merge


@pytest.mark.parametrize("command", ["train", "eval", "chat", "merge"])
def test_run_commands_have_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"labkit {command} " in out


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_says_where_examples_live_when_labkit_is_installed(command, capsys, monkeypatch):
    import importlib.metadata

    class Meta:  # an installed wheel's metadata: pyproject's [project.urls]
        def get_all(self, key):
            return ["Repository, https://github.com/someone/course"] if key == "Project-URL" else None

    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: Meta())
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "examples/ (run configs to start from) is a folder of the course repository, " \
           "https://github.com/someone/course: clone it" in out


def test_train_with_a_bad_config_says_what_and_where(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {course: invoices}\ntraining: {epoch: 2}\n")
    assert cli.main(["train", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line 2" in err and "training.epoch" in err and "Did you mean 'epochs'?" in err


def test_eval_of_a_folder_that_is_not_an_adapter(tmp_path, capsys):
    assert cli.main(["chat", str(tmp_path), "--prompt", "hi"]) == 2
    assert "not an adapter folder" in capsys.readouterr().err


def test_effective_batch_counts_processes(monkeypatch):
    from labkit.config import config_from_dict
    from labkit.run import effective_batch, is_main_process, rank, world_size

    cfg = config_from_dict({"data": {"course": "invoices"},
                            "training": {"batch_size": 4, "gradient_accumulation_steps": 2}})
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert (effective_batch(cfg), world_size(), rank(), is_main_process()) == (32, 4, 3, False)
    assert effective_batch(cfg, processes=1) == 8


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """A run config on a tiny random Llama saved as a local folder (fast: no real model)."""
    from labkit.models import tiny_model

    root = tmp_path_factory.mktemp("tiny-run")
    model, tok = tiny_model(tokenizer=tiny_tokenizer_dir())
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    cfg = root / "tiny.yaml"
    cfg.write_text(f"model: {root / 'model'}\nquantization: none\n"
                   "data: {course: invoices, n_train: 8, n_val: 2, n_test: 2}\n"
                   "lora: {r: 4, alpha: 8, dropout: 0.0, targets: all}\n"
                   "training: {epochs: 1, learning_rate: 1.0e-3, batch_size: 4, report_to: tensorboard}\n"
                   "evaluation: {max_new_tokens: 4, probe: true}\n"
                   f"output: {{dir: {root / 'out'}}}\n")
    return cfg


def test_dry_run_prints_sizes_and_trains_nothing(tiny_config, capsys):
    assert cli.main(["train", str(tiny_config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "records used: train 8 (of 256), val 2 (of 32), test 2 (of 68)" in out
    assert "trainable params: 8,192" in out
    assert "effective batch: 4 per device × 1 accumulation × 1 process(es) = 4" in out
    assert "memory estimate" in out and "total" in out
    assert not (tiny_config.parent / "out").exists()


@pytest.mark.slow
def test_train_eval_chat_merge_resume_on_a_tiny_model(tiny_config, capsys):
    out = tiny_config.parent / "out"
    assert cli.main(["train", str(tiny_config), "--quiet"]) == 0
    assert {"adapter", "checkpoints", "metrics.json", "loss_curve.png", "report.md"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["evaluation"]) >= {"base", "tuned", "misses", "probe"}
    assert metrics["training"]["steps"] == 2 and len(metrics["training"]["val_loss"]) == 2
    report = (out / "report.md").read_text()
    for part in ("## Results", "exact match", "## Misses", "## Training", "tokens/s", "peak memory",
                 "## Data", "dropped", "## Config", "learning_rate: 0.001"):
        assert part in report, part
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    from labkit.tracking import read_scalars  # training.report_to: tensorboard reached the Trainer

    assert len(read_scalars(out / "checkpoints" / "runs")["train/loss"]) == 2

    capsys.readouterr()
    assert cli.main(["eval", str(out / "adapter"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "base vs tuned on 2 held-out records" in text and "general probe" in text
    assert cli.main(["eval", str(tiny_config), "--quiet"]) == 0  # the config finds its adapter in output.dir
    assert capsys.readouterr().out.split("general probe")[0] == text.split("general probe")[0]

    assert cli.main(["chat", str(out), "--prompt", "Say hi", "--max-new-tokens", "3"]) == 0
    said = capsys.readouterr().out.strip()
    from labkit.data import format_prompt
    from labkit.evaluate import generate
    from labkit.run import load_adapter

    model, tok, _ = load_adapter(out / "adapter")  # the chat answer is the tuned model's, on the course template
    assert said == generate(model, tok, [format_prompt("Say hi")], max_new_tokens=3, progress=False)[0]

    assert cli.main(["merge", str(out / "adapter"), str(out / "merged")]) == 0
    assert "OK" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (out / "merged" / "model.safetensors").exists()
    assert cli._trained_template(out / "merged") == "course"  # labkit merge keeps the run config's template
    export = ["export", "gguf", str(out), str(out / "gguf"), "--type", "f16", "--no-verify"]
    capsys.readouterr()
    assert cli.main(export) == 2  # the tiny tokenizer's hash is not one labkit knows: refused, with the way out
    assert "--pre-tokenizer NAME" in capsys.readouterr().err and not (out / "gguf" / "out-f16.gguf").exists()
    assert cli.main([*export, "--pre-tokenizer", "gpt2"]) == 0  # plain byte-level BPE, as conftest builds it
    assert (out / "gguf" / "out-f16.gguf").is_file()  # the run folder's adapter, merged first
    from gguf import GGUFReader

    assert GGUFReader(out / "gguf" / "out-f16.gguf").fields["tokenizer.ggml.pre"].contents() == "gpt2"
    assert "### Instruction:" in (out / "gguf" / "Modelfile").read_text()  # prompted as it was trained

    assert cli.main(["train", str(tiny_config), "--quiet", "--resume"]) == 0  # already done: nothing to redo
    again = json.loads((out / "metrics.json").read_text())["training"]
    assert again["val_loss"] == metrics["training"]["val_loss"] and again["steps"] == 2


def test_report_table_shows_only_the_configured_metrics():
    from labkit.evaluate import EvalResult, compare
    from labkit.run import _metrics_table

    base = EvalResult(0.0, 0.0, 0.0, 2, ["x", "y"], ["1", "2"], "base")
    tuned = EvalResult(0.5, 0.0, 0.5, 2, ["1", "y"], ["1", "2"], "tuned")
    text = str(_metrics_table(compare(base, tuned), ["exact_match"]))
    assert "exact match  0.0%  50.0%  +50.0%" in text and "JSON valid" not in text and "field F1" not in text


def test_run_report_results_are_a_markdown_table_of_the_evaluated_metrics():
    from labkit.report import results_table

    both = {"base": {"exact_match": 0.0, "f1": 0.25, "n": 4, "n_correct": 0},
            "tuned": {"exact_match": 0.5, "f1": 0.75, "n": 4, "n_correct": 2}}
    text = results_table(both)
    assert "| metric | base | tuned | change |\n|---|---:|---:|---:|" in text
    assert "| exact match | 0.0% | 50.0% | +50.0% |" in text and "| field F1 | 25.0% | 75.0% | +50.0% |" in text
    assert "JSON valid" not in text and "On 4 held-out records." in text
    assert "| exact match | 50.0% |" in results_table({"tuned": both["tuned"]})  # no base: no change column
    assert results_table({}) == ""


def test_merging_a_qlora_adapter_goes_into_its_nf4_base_dequantised(tmp_path):
    """`labkit merge` of a QLoRA run: the adapter learned on the NF4 weights, so it is merged into them,
    dequantised to fp32, not into the original base (exercise E9 measures the difference on SmolLM2)."""
    import torch
    from transformers import AutoModelForCausalLM

    from labkit.config import load_config
    from labkit.lora import add_lora, max_logit_diff, merge_and_verify
    from labkit.models import save_tiny_model
    from labkit.run import ADAPTER_CONFIG, _write_adapter_config, load_adapter, load_base, merge_adapter

    folder = save_tiny_model(tmp_path / "tiny")
    (tmp_path / "q.yaml").write_text(f"model: {folder}\nquantization: nf4\ndata: {{course: invoices}}\n")
    model, _ = load_base(str(folder), "nf4")
    model = add_lora(model, r=4, alpha=8, dropout=0.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-2)  # as after some training
    model.save_pretrained(tmp_path / "adapter")
    _write_adapter_config(load_config(tmp_path / "q.yaml"), tmp_path / "adapter" / ADAPTER_CONFIG)

    report = merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    assert report.ok and report.dequantized and "dequantised" in str(report)
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    trained, tok, _ = load_adapter(tmp_path / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    original = merge_and_verify(trained, load_base(str(folder), None)[0], tokenizer=tok).merged_model
    assert max_logit_diff(trained, merged, tok) < max_logit_diff(trained, original, tok) / 10


def test_train_in_fresh_process_runs_labkit_train_and_returns_its_metrics(tiny_config, tmp_path):
    """E7's path: one config in its own process → metrics.json, with the run's trainable count, its memory
    start and peak, and no evaluation when metrics is [] and probe false; a broken config raises with its end."""
    import yaml

    from labkit.run import train_in_fresh_process

    config = yaml.safe_load(tiny_config.read_text())
    config["lora"] = {"method": "ia3"}
    config["training"] |= {"max_steps": 1, "optim": "adamw_torch", "report_to": "none"}
    config["evaluation"] = {"metrics": [], "probe": False}
    metrics = train_in_fresh_process(config, tmp_path / "ia3")
    tr = metrics["training"]
    assert tr["steps"] == 1 and tr["trainable_params"] > 0 and tr["seconds_per_step"] > 0
    assert 0 < tr["memory_at_start_mb"] <= tr["peak_memory_mb"]
    assert "evaluation" not in metrics and "PEFT method ia3" in (tmp_path / "ia3" / "report.md").read_text()
    with pytest.raises(RuntimeError, match="LABKIT_CPU_DTYPE"):  # `env` reaches the new process
        train_in_fresh_process(config, tmp_path / "env", env={"LABKIT_CPU_DTYPE": "fp17"})
    config["lora"] = {"method": "adapters"}
    with pytest.raises(RuntimeError, match="lora.method"):
        train_in_fresh_process(config, tmp_path / "bad")

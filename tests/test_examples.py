"""The shipped run config is lesson 05 as a file (slow: it trains the real model on the CPU).

What examples/invoices.yaml claims rests on three checks, none of which repeats lesson 05's whole run:
tests/test_config.py checks its settings are the lesson's; this test checks that `labkit train` on it
reads the lesson's records and takes the lesson's steps (the same losses, step by step); and lesson
05 itself, executed by nbval, asserts the result (≥ 90% exact match, base 0/32 on the CPU profile).
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


@pytest.mark.slow
def test_invoices_yaml_takes_the_steps_lesson_05_takes(tmp_path):
    from labkit import env
    from labkit.config import load_config
    from labkit.data import course_dataset
    from labkit.lora import ALL_LINEAR_TARGETS, add_lora
    from labkit.models import load_model
    from labkit.run import prepare_data, train_from_config
    from labkit.train import train_sft

    cfg = load_config(ROOT / "examples" / "invoices.yaml")
    cfg.training.max_steps = STEPS  # the same schedule on both sides: cosine over STEPS steps
    cfg.evaluation.metrics, cfg.evaluation.probe, cfg.output.plot = [], False, False
    run = train_from_config(cfg, progress=False, output_dir=tmp_path / "config")

    env.set_seed(0)  # lesson 05, cells 3-14, with max_steps added
    profile = env.course_profile()
    data = course_dataset("invoices")
    train, val = data["train"][:profile.n_train], data["val"][:profile.n_val]
    model, tok = load_model(quantization="nf4")
    prepared = prepare_data(cfg, tok)
    assert ([r["completion"] for r in prepared.train], [r["completion"] for r in prepared.val]) == (
        [r["completion"] for r in train], [r["completion"] for r in val]), "the config reads the lesson's records"
    model = add_lora(model, r=16, alpha=32, dropout=0.0, targets=ALL_LINEAR_TARGETS)
    lesson = train_sft(model, tok, train, val, epochs=profile.epochs, learning_rate=1e-3, batch_size=profile.batch_size,
                       max_steps=STEPS, plot=False, progress=False)

    print("config:", run.history.train_loss, "lesson:", lesson.train_loss)
    assert len(run.history.train_loss) == STEPS
    assert run.history.train_loss == pytest.approx(lesson.train_loss, abs=1e-5)
    assert run.history.val_loss[0] == pytest.approx(lesson.val_loss[0], abs=1e-5)
    assert (tmp_path / "config" / "adapter" / "adapter_model.safetensors").exists()

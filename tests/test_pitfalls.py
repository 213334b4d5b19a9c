"""Checks of the experiment exercises (E4: rank, E5: forgetting, E6: a bad fine-tune, E7: the PEFT family), on made-up numbers."""

import pytest

from labkit.exercises import check_forgetting, check_overfitting, check_rank_choice
from labkit.exercises.experiments import ablation_table
from labkit.train import History


def summarize(task_before, task_after, probe_before, probe_after):
    return {"task_before": task_before, "task_after": task_after, "probe_before": probe_before,
            "probe_after": probe_after, "task_gain": task_after - task_before,
            "probe_drop": probe_before - probe_after}


def test_check_forgetting_passes_the_claimed_effect(capsys):
    results = {"full": summarize(0.0, 0.9, 0.8, 0.5), "lora": summarize(0.0, 0.8, 0.8, 0.78)}
    assert check_forgetting(summarize, results)
    assert "✅" in capsys.readouterr().out


def test_check_forgetting_catches_a_wrong_sign(capsys):
    def flipped(task_before, task_after, probe_before, probe_after):
        return {"task_gain": task_after - task_before, "probe_drop": probe_after - probe_before}

    assert not check_forgetting(flipped, {})
    assert "probe_drop = probe_before - probe_after" in capsys.readouterr().out


def test_check_forgetting_fails_when_lora_forgot_more_or_nothing_was_learned(capsys):
    assert not check_forgetting(summarize, {"full": summarize(0, 0.9, 0.8, 0.79), "lora": summarize(0, 0.8, 0.8, 0.5)})
    assert "forgot more" in capsys.readouterr().out
    assert not check_forgetting(summarize, {"full": summarize(0, 0.1, 0.8, 0.5), "lora": summarize(0, 0.8, 0.8, 0.8)})
    assert "did not learn" in capsys.readouterr().out


def _history(val, train, best=None):
    return History(val_loss=val, epoch_train_loss=train, best_epoch=best)


def test_check_overfitting_confirms_the_epoch_the_learner_read(capsys):
    bad = _history([2.0, 1.0, 0.8, 0.9, 1.2], [1.5, 0.9, 0.5, 0.2], best=2)
    assert check_overfitting(bad, 2)
    assert "✅" in capsys.readouterr().out


def test_check_overfitting_says_what_is_wrong_without_the_answer(capsys):
    bad = _history([2.0, 1.0, 0.8, 0.9, 1.2], [1.5, 0.9, 0.5, 0.2], best=2)
    assert not check_overfitting(bad, 1)  # too early: val still fell after epoch 1
    early = capsys.readouterr().out
    assert "still fell (1.000 -> 0.800)" in early and "further along" in early
    assert not check_overfitting(bad, 4)  # too late
    late = capsys.readouterr().out
    assert "Look earlier" in late
    assert not check_overfitting(bad, "two")
    assert "whole number" in capsys.readouterr().out
    for text in (early, late):
        assert "epoch 2" not in text and "find_overfitting_epoch" not in text, "feedback must not give the answer"


def test_check_overfitting_needs_an_overfitting_run_and_a_fix_that_helps(capsys):
    no_overfit = _history([2.0, 1.0, 0.8, 0.7], [1.5, 0.9, 0.5])
    assert not check_overfitting(no_overfit, None)
    assert "never rose" in capsys.readouterr().out
    bad = _history([2.0, 1.0, 0.8, 0.9, 1.2], [1.5, 0.9, 0.5, 0.2], best=2)
    assert check_overfitting(bad, 2, {"early stopping": 0.8, "dropout": 1.3})
    capsys.readouterr()
    assert not check_overfitting(bad, 2, {"dropout": 1.3, "lower LR": 1.25})
    assert "No fix left a model better" in capsys.readouterr().out


def test_ablation_table_sorts_best_first_and_measures_against_the_bad_run():
    rows = ablation_table(1.2, {"dropout": 1.3, "early stopping": 0.8})
    assert [r["fix"] for r in rows] == ["none (the bad run)", "early stopping", "dropout"]
    assert rows[1]["change"] == pytest.approx(-0.4) and rows[1]["helped"]
    assert rows[2]["change"] == pytest.approx(0.1) and not rows[2]["helped"]


def _sweep(losses):
    return [{"r": r, "trainable": r * 1000, "val_loss": v} for r, v in zip((2, 8, 16, 64), losses, strict=True)]


def test_check_rank_choice_accepts_the_smallest_rank_that_is_as_good(capsys):
    sweep = _sweep([0.50, 0.30, 0.29, 0.295])
    assert check_rank_choice(sweep, 8)
    assert "✅" in capsys.readouterr().out


def test_check_rank_choice_says_what_is_wrong_without_the_answer(capsys):
    sweep = _sweep([0.50, 0.30, 0.29, 0.295])
    assert not check_rank_choice(sweep, 2)
    too_small = capsys.readouterr().out
    assert "larger rank still paid off" in too_small
    assert not check_rank_choice(sweep, 64)
    too_big = capsys.readouterr().out
    assert "returns had stopped before" in too_big
    assert not check_rank_choice(sweep, 32)
    assert "one of [2, 8, 16, 64]" in capsys.readouterr().out
    for text in (too_small, too_big):
        assert "r=8 " not in text and "r=8." not in text, "feedback must not name the answer"


def test_val_loss_of_is_the_token_weighted_mean_of_the_records_losses():
    import torch

    from labkit.data import to_record, tokenize_with_labels
    from labkit.exercises.experiments import val_loss_of
    from labkit.models import tiny_model

    model, tok = tiny_model()
    records = [to_record("Hi?", "Hello there, how are you today?"), to_record("Capital of France?", "Paris.")]
    losses, counts = [], []
    for r in records:
        enc = tokenize_with_labels(r, tok)
        with torch.no_grad():
            losses.append(model(**{k: torch.tensor([v]) for k, v in enc.items()}).loss.item())
        counts.append(sum(label != -100 for label in enc["labels"][1:]))
    expected = sum(loss * n for loss, n in zip(losses, counts, strict=True)) / sum(counts)
    assert counts[0] != counts[1]  # so a plain mean would differ
    assert val_loss_of(model, tok, records) == pytest.approx(expected, rel=1e-6)


def _peft_rows():
    return [{"method": m, "trainable": t, "val_loss": v} for m, t, v in
            (("LoRA q,k,v,o", 1_800_000, 0.30), ("LoRA all-linear", 4_900_000, 0.20), ("IA3", 50_000, 0.21),
             ("prompt tuning", 11_520, 0.90))]


def test_check_peft_choice_accepts_the_fewest_parameters_that_are_as_good(capsys):
    from labkit.exercises import check_peft_choice

    assert check_peft_choice(_peft_rows(), "IA3")
    assert "✅" in capsys.readouterr().out
    assert not check_peft_choice(_peft_rows(), "prompt tuning")
    assert "learned clearly more" in capsys.readouterr().out
    assert not check_peft_choice(_peft_rows(), "LoRA all-linear")
    assert "IA3 is as good" in capsys.readouterr().out
    assert not check_peft_choice(_peft_rows()[:3], "IA3")
    assert not check_peft_choice(_peft_rows(), "adapters")

"""Checks of the experiment exercises (Exercise 1: forgetting, Exercise 2: a bad fine-tune), on made-up numbers."""

from labkit.exercises import check_forgetting, check_overfitting
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


def test_check_overfitting(capsys):
    bad = _history([2.0, 1.0, 0.8, 0.9, 1.2], [1.5, 0.9, 0.5, 0.2], best=2)
    fixed = _history([2.0, 1.1, 0.85, 0.84], [1.6, 1.0, 0.9], best=3)
    assert check_overfitting(bad, fixed, 2)
    assert not check_overfitting(bad, fixed, 3)  # wrong epoch
    assert "find_overfitting_epoch" in capsys.readouterr().out
    no_overfit = _history([2.0, 1.0, 0.8, 0.7], [1.5, 0.9, 0.5])
    assert not check_overfitting(no_overfit, fixed, None)
    worse_fix = _history([2.0, 1.6, 1.4, 1.3], [1.8, 1.6, 1.5], best=3)
    assert not check_overfitting(bad, worse_fix, 2)
    assert "Lower the learning rate" in capsys.readouterr().out

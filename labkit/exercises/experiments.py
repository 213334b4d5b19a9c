"""Checks for the two experiment exercises: Exercise 1 (forgetting) and Exercise 2 (a bad fine-tune).

These exercises are experiments, so the checks look at two things: that the learner's small
pieces of logic are right (tested on made-up numbers, where the answer is known), and that the
experiment's measured results show what the course claims (with the thresholds stated here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from labkit.exercises.feedback import Feedback, report

# Exercise 1 thresholds: "learned the task" = exact match up by at least this much (fraction).
MIN_TASK_GAIN = 0.25

# made-up before/after numbers → the summary a correct `summarize` returns
SUMMARY_CASES = [
    ("task up, probe down", dict(task_before=0.0, task_after=0.75, probe_before=0.8, probe_after=0.6),
     {"task_gain": 0.75, "probe_drop": 0.2}),
    ("nothing forgotten", dict(task_before=0.1, task_after=0.5, probe_before=0.7, probe_after=0.7),
     {"task_gain": 0.4, "probe_drop": 0.0}),
    ("probe went up (negative drop)", dict(task_before=0.25, task_after=0.25, probe_before=0.5, probe_after=0.55),
     {"task_gain": 0.0, "probe_drop": -0.05}),
]


def _close(a, b, tol: float = 1e-9) -> bool:
    return isinstance(a, (int, float)) and abs(a - b) <= tol


def check_forgetting(summarize: Callable[..., dict], results: Mapping[str, Mapping]) -> bool:
    """Exercise 1: `summarize` computes gain and drop correctly, and the measured `results` show that
    both methods learned the task while full fine-tuning forgot more than LoRA.

    results: {"full": summary, "lora": summary}, each summary with task_before/after,
    probe_before/after, task_gain, probe_drop (what `summarize` returns).
    """
    fb = Feedback("forgetting")
    for name, kwargs, expected in SUMMARY_CASES:
        try:
            got = summarize(**kwargs)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - show the learner what their code raised
            return report(fb.fail(name, expected, f"{type(exc).__name__}: {exc}", "summarize raised an error."))
        if not isinstance(got, Mapping) or not all(_close(got.get(k), v) for k, v in expected.items()):
            shown = {k: got.get(k) for k in expected} if isinstance(got, Mapping) else got
            return report(fb.fail(name, expected, shown,
                                  "task_gain = task_after - task_before (what it learned); probe_drop = "
                                  "probe_before - probe_after (what it forgot: positive means worse)."))
        fb.passed.append(name)

    for method in ("full", "lora"):
        if method not in results:
            return report(fb.fail(f"results[{method!r}]", "a summary dict", sorted(results),
                                  "Store each method's summarize(...) under the keys 'full' and 'lora'."))
        gain = results[method].get("task_gain")
        if not isinstance(gain, (int, float)) or gain < MIN_TASK_GAIN:
            return report(fb.fail(f"{method} learned the task", f"task_gain >= {MIN_TASK_GAIN}", gain,
                                  "This method did not learn the invoice task. Did training run on the train "
                                  "records, and did you measure the *trained* model (history.model)?"))
        fb.passed.append(f"{method} learned the task")
    full, lora = results["full"]["probe_drop"], results["lora"]["probe_drop"]
    if not full > lora:
        return report(fb.fail("full fine-tuning forgot more", f"full drop > LoRA drop ({lora:+.3f})", full,
                              "Full fine-tuning should forget more at an aggressive learning rate. Check that "
                              "the full run updates every weight (lora=None) and uses the aggressive rate."))
    fb.passed.append("full fine-tuning forgot more than LoRA")
    return report(fb)


def check_overfitting(bad, fixed, overfit_epoch: int | None) -> bool:
    """Exercise 2: the bad run overfits (and you found where), the fixed run beats its final val loss.

    bad, fixed: labkit.train.History of the two runs; overfit_epoch: what you found for the bad run.
    """
    from labkit.train import find_overfitting_epoch

    fb = Feedback("debug a bad fine-tune")
    for name, h in (("bad", bad), ("fixed", fixed)):
        if not getattr(h, "val_loss", None) or len(h.val_loss) < 2:
            return report(fb.fail(f"{name} run has validation losses", "val_loss per epoch", getattr(h, "val_loss", h),
                                  "Pass val=... to train_sft so it measures validation loss every epoch."))
    fb.passed.append("both runs measured validation loss")
    expected = find_overfitting_epoch(bad)
    if expected is None:
        return report(fb.fail("the bad run overfits", "an epoch where val loss turns up", bad.val_loss,
                              "With learning rate 1e-3 and 10 epochs on a small set, validation loss should "
                              "rise again. Did the bad run use those settings?"))
    if overfit_epoch != expected:
        return report(fb.fail("overfitting epoch", expected, overfit_epoch,
                              "The overfitting epoch is the last epoch before validation loss rises while "
                              "training loss keeps falling: labkit.train.find_overfitting_epoch(history)."))
    fb.passed.append(f"overfitting found at epoch {expected}")
    if fixed.best_epoch is None:
        return report(fb.fail("the fixed run keeps its best checkpoint", "a best epoch", None,
                              "Use early_stopping_patience=... so the best checkpoint is restored."))
    best_fixed, final_bad = min(fixed.val_loss), bad.val_loss[-1]
    if not best_fixed < final_bad:
        return report(fb.fail("fixed run beats the bad run", f"best val < {final_bad:.4f}", round(best_fixed, 4),
                              "Lower the learning rate (LoRA: ~2e-4), stop early, add LoRA dropout."))
    fb.passed.append("the fixed run's best val loss is below the bad run's final val loss")
    return report(fb)

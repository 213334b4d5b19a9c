"""Checks for the two experiment exercises: E5 (forgetting) and E6 (a bad fine-tune).

These exercises are experiments, so the checks look at two things: that the learner's small
pieces of logic are right (tested on made-up numbers, where the answer is known), and that the
experiment's measured results show what the course claims (with the thresholds stated here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from labkit.exercises.feedback import Feedback, recorded, report

# E5 thresholds: "learned the task" = exact match up by at least this much (fraction).
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


@recorded
def check_forgetting(summarize: Callable[..., dict], results: Mapping[str, Mapping]) -> bool:
    """E5: `summarize` computes gain and drop correctly, and the measured `results` show that
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
                              "Full fine-tuning should forget more at an aggressive learning rate. Does the full "
                              "run really update every weight (train_sft's docstring says how), at FULL_LR?"))
    fb.passed.append("full fine-tuning forgot more than LoRA")
    return report(fb)


def val_loss_of(model, tokenizer, records: Sequence[dict]) -> float:
    """Validation loss of `model` as it is now: the mean loss per answer token (prompts masked),
    as the Trainer weighs it (`labkit.evaluate.answer_loss(..., per="token")`).

    Why measure again instead of reading History.val_loss: this is the model you would ship, so
    it shows whether early stopping really restored the best checkpoint.
    """
    from labkit.evaluate import answer_loss

    return answer_loss(model, tokenizer, records, per="token")


def ablation_table(bad_loss: float, fixed_losses: Mapping[str, float]) -> list[dict]:
    """One row per fix: the val loss of the model it leaves you with, and how much it beat the bad run.

    `bad_loss`: the bad run's final val loss; `fixed_losses`: {fix name: val loss}. Sorted best first,
    so the fix that helped most is on top; `helped` is False where a fix made things worse.
    """
    rows = [{"fix": "none (the bad run)", "val loss": bad_loss, "change": 0.0, "helped": False}]
    for name, loss in sorted(fixed_losses.items(), key=lambda kv: kv[1]):
        rows.append({"fix": name, "val loss": loss, "change": loss - bad_loss, "helped": loss < bad_loss})
    return rows


def _epoch_feedback(bad, my_epoch, expected: int) -> str:
    """What is wrong with the learner's epoch, in terms of the curves, without naming the right one."""
    val, last = bad.val_loss, len(bad.val_loss) - 1
    if isinstance(my_epoch, bool) or not isinstance(my_epoch, int) or not 0 <= my_epoch <= last:
        return f"Name one epoch as a whole number from the 'epoch' column (0 to {last})."
    if my_epoch < expected:
        return (f"After epoch {my_epoch} validation loss still fell ({val[my_epoch]:.3f} -> "
                f"{val[my_epoch + 1]:.3f}): the model was still learning something that carries over to "
                "new questions. Look further along the curve.")
    return (f"At epoch {my_epoch} validation loss ({val[my_epoch]:.3f}) is already above an earlier epoch's, "
            "while training loss kept falling: the model had started to memorise before that. Look earlier.")


@recorded
def check_overfitting(bad, my_epoch: int | None, fixes: Mapping[str, float] | None = None) -> bool:
    """E6: the bad run overfits, the epoch you read off its curves is where it starts (as
    `labkit.train.find_overfitting_epoch` confirms), and, given `fixes` ({fix: val loss of the model
    it leaves you with}), at least one fix beats the bad run's final validation loss.
    """
    from labkit.train import find_overfitting_epoch

    fb = Feedback("debug a bad fine-tune")
    if not getattr(bad, "val_loss", None) or len(bad.val_loss) < 3:
        return report(fb.fail("the bad run has validation losses", "val_loss per epoch", getattr(bad, "val_loss", bad),
                              "Pass val=... to train_sft so it measures validation loss every epoch."))
    fb.passed.append("the bad run measured validation loss")
    expected = find_overfitting_epoch(bad)
    if expected is None:
        return report(fb.fail("the bad run overfits", "an epoch after which val loss turns up", bad.val_loss,
                              "Validation loss never rose while training loss fell. Did the bad run keep the "
                              "colleague's settings (high learning rate, many epochs, a tiny set)?"))
    fb.passed.append("the bad run overfits")
    if my_epoch != expected:
        return report(fb.fail("the epoch where overfitting starts", "the last good epoch", my_epoch,
                              _epoch_feedback(bad, my_epoch, expected)))
    fb.passed.append(f"you read the curves right: overfitting starts after epoch {expected}")
    if fixes is not None:
        if not fixes:
            return report(fb.fail("the fixes", "at least one fix", {}, "Run the fixes before checking them."))
        final_bad = bad.val_loss[-1]
        if not any(loss < final_bad for loss in fixes.values()):
            return report(fb.fail("a fix beats the bad run", f"some val loss < {final_bad:.4f}",
                                  {k: round(v, 4) for k, v in fixes.items()},
                                  "No fix left a model better than the bad run's. Did each fix start from a "
                                  "fresh model and change only its one setting?"))
        fb.passed.append("at least one fix beats the bad run")
    return report(fb)


# E4: "as good as the best rank" = validation loss within this fraction of the best rank's.
RANK_TOLERANCE = 0.05


@recorded
def check_rank_choice(sweep: Sequence[Mapping], my_r: int) -> bool:
    """E4: `my_r` is the smallest rank whose validation loss is within RANK_TOLERANCE of the best rank's.

    sweep: one dict per rank with "r", "trainable" and "val_loss" (what the sweep cell builds).
    """
    fb = Feedback("rank sweep")
    rows = sorted(sweep, key=lambda row: row["r"])
    if len(rows) < 3:
        return report(fb.fail("the sweep", "at least three ranks", [row.get("r") for row in rows],
                              "Run the sweep over RANKS before choosing."))
    fb.passed.append(f"{len(rows)} ranks measured")
    ranks = [row["r"] for row in rows]
    if my_r not in ranks:
        return report(fb.fail("your rank", f"one of {ranks}", my_r, "Pick one of the ranks you measured."))
    best = min(row["val_loss"] for row in rows)
    good_enough = [row["r"] for row in rows if row["val_loss"] <= (1 + RANK_TOLERANCE) * best]
    mine = next(row for row in rows if row["r"] == my_r)
    if my_r not in good_enough:
        return report(fb.fail(f"r={my_r}", f"val loss within {RANK_TOLERANCE:.0%} of the best ({best:.3f})",
                              round(mine["val_loss"], 3),
                              "A larger rank still paid off: its validation loss is clearly lower than this one's."))
    if my_r != good_enough[0]:
        return report(fb.fail(f"r={my_r}", "the smallest rank that is as good", my_r,
                              f"A smaller rank came within {RANK_TOLERANCE:.0%} of the best validation loss with "
                              f"fewer parameters than r={my_r}'s {mine['trainable']:,}: returns had stopped before."))
    fb.passed.append(f"returns stop at r={my_r}")
    return report(fb)


PEFT_TOLERANCE = 0.10  # E7 (the PEFT family): "as good" = validation loss within 10% of the best method's


@recorded
def check_peft_choice(rows: Sequence[Mapping], my_method: str) -> bool:
    """E7: `my_method` is the method with the fewest trainable parameters whose validation loss is within
    PEFT_TOLERANCE of the best method's.

    rows: one dict per method with "method", "trainable" and "val_loss" (what the table cell builds).
    """
    fb = Feedback("PEFT family")
    if len(rows) < 4:
        return report(fb.fail("the table", "at least four methods", [row.get("method") for row in rows],
                              "Train every method in METHODS before choosing."))
    fb.passed.append(f"{len(rows)} methods measured")
    by_name = {row["method"]: row for row in rows}
    if my_method not in by_name:
        return report(fb.fail("your method", f"one of {list(by_name)}", my_method, "Pick a method from the table."))
    best = min(row["val_loss"] for row in rows)
    good = sorted((row for row in rows if row["val_loss"] <= (1 + PEFT_TOLERANCE) * best), key=lambda r: r["trainable"])
    mine = by_name[my_method]
    if mine not in good:
        return report(fb.fail(my_method, f"val loss within {PEFT_TOLERANCE:.0%} of the best ({best:.3f})",
                              round(mine["val_loss"], 3), "Another method learned clearly more at this budget."))
    if mine is not good[0]:
        return report(fb.fail(my_method, "the fewest trainable parameters among the methods that are as good",
                              f"{mine['trainable']:,}", f"{good[0]['method']} is as good with "
                              f"{good[0]['trainable']:,} trainable parameters."))
    fb.passed.append(f"{my_method}: as good as the best with the fewest trainable parameters")
    return report(fb)

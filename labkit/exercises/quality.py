"""Checks for E8 (data quality vs quantity: the three training sets, and the learner's choice) and E9 (where to merge).

The sets are checked against what the experiment needs (same clean records, a known share
damaged, a mix four times larger); the choice against the measured table, so the check holds
whatever this machine measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from labkit.exercises.feedback import Feedback, recorded, report

SET_NAMES = ("clean", "noisy", "clean + 3x noisy")


def _damaged(clean: Sequence[Mapping], other: Sequence[Mapping]) -> int:
    return sum(a["completion"] != b["completion"] for a, b in zip(clean, other, strict=False))


def _check_sets(fb: Feedback, sets: Mapping[str, Sequence[Mapping]], share: float) -> bool:
    if sorted(sets) != sorted(SET_NAMES):
        fb.fail("the sets", sorted(SET_NAMES), sorted(sets), "Name the three training sets as in SET_NAMES.")
        return False
    clean, noisy, mix = (sets[name] for name in SET_NAMES)
    n = len(clean)
    if len(noisy) != n or [r["prompt"] for r in noisy] != [r["prompt"] for r in clean]:
        fb.fail("noisy", f"the same {n} prompts as clean", len(noisy),
                "Corrupt the clean records themselves: the same invoices, some answers damaged.")
        return False
    if _damaged(clean, noisy) != round(share * n):
        fb.fail("noisy", f"{round(share * n)} damaged answers (share {share})", _damaged(clean, noisy),
                "corrupt_records returns the new records and the indices it damaged; use its .records.")
        return False
    fb.passed.append(f"noisy: {round(share * n)} of {n} answers damaged")
    if len(mix) != 4 * n or list(mix[:n]) != list(clean):
        fb.fail("clean + 3x noisy", f"the {n} clean records, then {3 * n} corrupted ones", len(mix),
                "Keep every clean record and add three times as many *other* invoices, all corrupted.")
        return False
    clean_prompts = {r["prompt"] for r in clean}
    if any(r["prompt"] in clean_prompts for r in mix[n:]):
        fb.fail("clean + 3x noisy", "extra invoices that are not in the clean set", "repeats",
                "Take the extra invoices from the rest of the training split, not from the clean set.")
        return False
    fb.passed.append(f"clean + 3x noisy: {4 * n} records")
    return True


@recorded
def check_data_quality(sets: Mapping[str, Sequence[Mapping]], results: Sequence[Mapping], my_choice: str,
                       share: float = 0.5) -> bool:
    """E8: the three sets are built as the experiment needs, and `my_choice` is the set whose model
    scored the highest exact match (ties go to the smaller set: the same quality for less data).

    results: one dict per set with "set", "records" and "exact_match" (what the training cell builds).
    """
    fb = Feedback("data quality")
    if not _check_sets(fb, sets, share):
        return report(fb)
    rows = {row["set"]: row for row in results}
    if sorted(rows) != sorted(SET_NAMES):
        return report(fb.fail("the results", sorted(SET_NAMES), sorted(rows), "Train once on each set first."))
    if my_choice not in rows:
        return report(fb.fail("your choice", f"one of {list(SET_NAMES)}", my_choice, "Pick one of the three sets."))
    best = max(row["exact_match"] for row in results)
    tied = sorted((row for row in results if row["exact_match"] == best), key=lambda row: row["records"])
    if rows[my_choice]["exact_match"] < best:
        return report(fb.fail("your choice", f"a set whose model scored {best:.0%}", my_choice,
                              f"Its model scored {rows[my_choice]['exact_match']:.0%}: read the table again."))
    if my_choice != tied[0]["set"]:
        return report(fb.fail("your choice", "the smallest set with the best score", my_choice,
                              "Another set reached the same exact match with fewer records: cheaper to collect and check."))
    fb.passed.append(f"you would train on {my_choice!r}")
    return report(fb)


@recorded
def check_merge_choice(merges: Mapping[str, Mapping], my_choice: str) -> bool:
    """E9: `my_choice` is the merge to ship: a full-precision one (not 4-bit), and of those the one still
    closest to the model you trained (max |Δlogit| against the QLoRA adapter on its NF4 base).

    merges: {name: {"bits": 4 or 32, "vs_trained": float, ...}}, one per merged model.
    """
    fb = Feedback("where to merge")
    if len(merges) < 2 or not all({"bits", "vs_trained"} <= set(row) for row in merges.values()):
        return report(fb.fail("the merges", "at least two merged models, each with bits and vs_trained",
                              {k: sorted(v) for k, v in merges.items()}, "Measure every merge first."))
    fb.passed.append(f"{len(merges)} merges measured")
    if my_choice not in merges:
        return report(fb.fail("your choice", f"one of {sorted(merges)}", my_choice, "Pick one of the merges you measured."))
    if merges[my_choice]["bits"] <= 4:
        return report(fb.fail("your choice", "a full-precision merge", my_choice, "A 4-bit merge rounded every weight "
                              "again, and it can never be un-merged or re-quantised more finely."))
    full = [name for name in merges if merges[name]["bits"] > 4]
    closest = min(full, key=lambda name: merges[name]["vs_trained"])
    if my_choice != closest:
        return report(fb.fail("your choice", "the full-precision merge closest to the model you trained", my_choice,
                              f"Its logits are up to {merges[my_choice]['vs_trained']:.2f} from the trained model's, "
                              "further than another merge's: ship the merge that is the model you measured."))
    fb.passed.append(f"the merge to ship is {my_choice!r}")
    return report(fb)

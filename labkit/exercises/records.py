"""Checks for the record exercises: E2 (make_record) and E3 (clean)."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable

from labkit.data import describe_difference, to_record
from labkit.exercises.feedback import Feedback, recorded, report

# (question, answer) cases; each catches a plausible slip.
RECORD_CASES: list[tuple[str, tuple[str, str], str]] = [
    ("a plain FAQ pair", ("How do I reset my password?", "Click \"Forgot password\" on the sign-in page."),
     "Compare your prompt with the target above character by character: the line breaks between and "
     "after the sections matter, because the model sees every one of them."),
    ("another pair (nothing hard-coded)", ("Which regions do you run in?", "eu-west, us-east and ap-south."),
     "Build the record from the arguments, not from the example above."),
    ("spaces and newlines around the text", ("  Is my data encrypted?\n", " Yes, with AES-256 at rest.  \n"),
     "Look at the ends of the question and the answer: stray whitespace there makes training prompts "
     "differ from the ones you type at inference."),
    ("a multi-line answer", ("How do I rotate an API key?", "1. Create a new key.\n2. Revoke the old one."),
     "Keep the inside of the answer as it is; only strip its ends."),
]


def _diff_hint(expected: object, got: object) -> str:
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in ("prompt", "completion"):
            if isinstance(got.get(key), str) and got[key] != expected[key]:
                return f"in {key!r}, " + describe_difference(expected[key], got[key], ("expected", "yours"))
    return ""


@recorded
def check_to_record(fn: Callable[[str, str], dict]) -> bool:
    """E2: fn(question, answer) must give the same record as labkit.data.to_record."""
    fb = Feedback("make_record")
    for name, (q, a), hint in RECORD_CASES:
        expected = to_record(q, a)
        try:
            got = fn(q, a)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - show the learner what their code raised
            return report(fb.fail(name, expected, f"{type(exc).__name__}: {exc}", "Your function raised an error."))
        if not isinstance(got, dict) or set(got) != {"prompt", "completion"}:
            return report(fb.fail(name, expected, got, "Return a dict with exactly two keys, 'prompt' and 'completion'."))
        if got != expected:
            where = _diff_hint(expected, got)
            return report(fb.fail(name, expected, got, f"{hint}\n  {where}" if where else hint))
        fb.passed.append(name)
    return report(fb)


# (pairs, how many must survive) cases for E3.
CLEAN_CASES: list[tuple[str, list[tuple[str, str]]]] = [
    ("a small mixed set", [
        ("How do I reset my password?", "Click \"Forgot password\"."),
        ("Does Acme have a mobile app?", ""),
        ("", "An orphan answer."),
        ("Which regions?", "eu-west, us-east and ap-south."),
    ]),
    ("blanks that are only whitespace", [
        ("Is my data encrypted?", "   "),
        ("  \n", "Yes."),
        ("  Can I cancel any time? ", " Yes, under Billing > Plans.\n"),
    ]),
    ("nothing to drop", [
        ("How do I add a member?", "Project > Members > Invite."),
        ("Where are my API keys?", "Project > Settings > API keys."),
    ]),
]


@recorded
def check_clean(fn: Callable[[list[tuple[str, str]]], list[dict]]) -> bool:
    """E3: fn(pairs) keeps non-blank pairs as to_record records and prints how many it dropped."""
    fb = Feedback("clean")
    for name, pairs in CLEAN_CASES:
        survivors = [(q, a) for q, a in pairs if q.strip() and a.strip()]
        expected = [to_record(q, a) for q, a in survivors]
        n_dropped = len(pairs) - len(survivors)
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                got = fn(list(pairs))
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001
            return report(fb.fail(name, expected, f"{type(exc).__name__}: {exc}", "Your function raised an error."))
        if not isinstance(got, list):
            return report(fb.fail(name, expected, got, "Return the list of kept records."))
        if got != expected:
            if len(got) != len(expected):
                hint = (f"{len(survivors)} of {len(pairs)} pairs should survive here, you kept {len(got)}. Which "
                    "rows look empty to a reader but are not the empty string?")
            else:
                bad = next(i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e)
                hint = ("The right pairs survived, but a record is not in the course format. "
                        + _diff_hint(expected[bad], got[bad]))
            return report(fb.fail(name, expected, got, hint))
        printed = out.getvalue()
        if not re.search(rf"(?<![\d.]){n_dropped}(?![\d.])", printed):
            return report(fb.fail(f"{name}: the printed count", f"a line with the number {n_dropped}", printed.strip(),
                                  "Nothing printed the number of dropped pairs: filtering must never drop "
                                  "silently, so say how many went."))
        fb.passed.append(name)
    return report(fb)

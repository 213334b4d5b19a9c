"""Shared feedback for exercise checks: one friendly report per check.

Each check also leaves its outcome in `RESULTS` (this Python process only; nothing printed or
displayed), which is how `python -m labkit_dev.grade` reads the result of the very check a learner's
notebook ran, instead of keeping a second copy of the checks for grading.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

# One dict per check call, in call order: {"check", "exercise", "ok", "passed", "failure"}.
RESULTS: list[dict] = []
_Check = TypeVar("_Check", bound=Callable[..., bool])


@dataclass
class Feedback:
    """What a check found: the cases that passed, and the first that failed (if any)."""

    exercise: str
    passed: list[str] = field(default_factory=list)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def fail(self, case: str, expected, got, hint: str = "") -> Feedback:
        self.failure = f"case {case!r}:\n  expected: {expected!r}\n  got:      {got!r}"
        if hint:
            self.failure += f"\n  hint: {hint}"
        return self


def report(fb: Feedback) -> bool:
    """Print the feedback for a learner and return whether everything passed (and record it)."""
    RESULTS.append({"check": "", "exercise": fb.exercise, "ok": fb.ok, "passed": len(fb.passed),
                    "failure": fb.failure})
    if fb.ok:
        print(f"✅ {fb.exercise}: all {len(fb.passed)} checks passed.")
    else:
        done = f" ({len(fb.passed)} passed before it)" if fb.passed else ""
        print(f"❌ {fb.exercise}: not yet{done}. First failing {fb.failure}")
    return fb.ok


def recorded(check: _Check) -> _Check:
    """Name the outcome a `check_*` function reported after the function (grading matches on it)."""
    @functools.wraps(check)
    def run(*args, **kwargs) -> bool:
        start = len(RESULTS)
        ok = check(*args, **kwargs)
        outcome = RESULTS[-1] if len(RESULTS) > start else {"exercise": "", "passed": 0, "failure": None}
        RESULTS[start:] = [{**outcome, "check": check.__name__, "ok": bool(ok)}]
        return ok

    return run  # type: ignore[return-value]

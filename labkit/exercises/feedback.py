"""Shared feedback for exercise checks: one friendly report per check."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    """Print the feedback for a learner and return whether everything passed."""
    if fb.ok:
        print(f"✅ {fb.exercise}: all {len(fb.passed)} checks passed.")
    else:
        done = f" ({len(fb.passed)} passed before it)" if fb.passed else ""
        print(f"❌ {fb.exercise}: not yet{done}. First failing {fb.failure}")
    return fb.ok

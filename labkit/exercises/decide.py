"""Check for exercise E1, make the call: the learner's `choose(private_facts, new_behaviour, n_examples)`."""

from __future__ import annotations

from collections.abc import Callable

from labkit.decide import APPROACHES, FINE_TUNE_MIN_EXAMPLES, recommend
from labkit.exercises.feedback import Feedback, recorded, report

# (description, private_facts, new_behaviour, n_examples): the course's worked cases first, then the
# edges a rule of thumb lives on (499 vs 500) and the combinations people get wrong.
CHOOSE_CASES: list[tuple[str, bool, bool, int]] = [
    ("answer from private company docs", True, False, 0),
    ("strict output format, 2,000 examples", False, True, 2000),
    ("a tone tweak, 20 examples", False, True, 20),
    ("new behaviour, 499 examples (one short of the rule of thumb)", False, True, FINE_TUNE_MIN_EXAMPLES - 1),
    ("new behaviour, exactly 500 examples", False, True, FINE_TUNE_MIN_EXAMPLES),
    ("private facts and a new format, 1,000 examples", True, True, 1000),
    ("private facts and a new format, 100 examples", True, True, 100),
    ("private facts, 5,000 examples but no new behaviour", True, False, 5000),
    ("nothing new needed, 10,000 examples lying around", False, False, 10000),
]

_HINTS = {
    "RAG": "Private or changing facts belong in retrieval (RAG), whatever the number of examples.",
    "Fine-tune": f"A new behaviour with at least {FINE_TUNE_MIN_EXAMPLES} examples (>=, not >) is worth fine-tuning.",
    "Prompting": f"Without a new behaviour, or with fewer than {FINE_TUNE_MIN_EXAMPLES} examples, a prompt is "
                 "the cheapest approach that fits.",
    "Fine-tune + RAG": "Facts AND behaviour with enough examples: LoRA for behaviour + RAG for facts.",
}


def _normalise(answer: object) -> str | None:
    """Map 'rag', 'Fine-tune+RAG', a Recommendation ... onto the canonical approach names."""
    answer = getattr(answer, "approach", answer)
    if not isinstance(answer, str):
        return None
    key = answer.lower().replace(" ", "").replace("_", "-")
    for approach in APPROACHES:
        if key == approach.lower().replace(" ", ""):
            return approach
    return None


@recorded
def check_choose(choose: Callable[[bool, bool, int], str]) -> bool:
    """Run `choose` on the course's cases; print friendly feedback; True when every case is right."""
    fb = Feedback("make the call (choose)")
    for desc, facts, behaviour, n in CHOOSE_CASES:
        expected = recommend(facts, behaviour, n).approach
        try:
            got = choose(facts, behaviour, n)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - report any learner error as a failed case
            fb.fail(desc, expected, f"{type(exc).__name__}: {exc}",
                    f"choose({facts}, {behaviour}, {n}) raised an error; it should return one of {list(APPROACHES)}.")
            return report(fb)
        name = _normalise(got)
        if name is None:
            fb.fail(desc, expected, got, f"Return one of {list(APPROACHES)} (a string).")
            return report(fb)
        if name != expected:
            fb.fail(f"{desc}: choose({facts}, {behaviour}, {n})", expected, got, _HINTS[expected])
            return report(fb)
        fb.passed.append(desc)
    return report(fb)

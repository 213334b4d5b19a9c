"""Make the call: prompting, RAG or fine-tuning — the cheapest approach that fits the problem.

The course's rules, in the order a practitioner should ask them:
1. Try prompting first: it is free and instant, and many "fine-tuning" projects find that a good
   system prompt does most of the job.
2. Missing private or changing *facts*? Use RAG: retrieval keeps facts current without training,
   and a weight update cannot keep up with documents that change.
3. Need a new consistent *behaviour* (format, tone, niche skill) that prompting can't make
   reliable? Fine-tune — but only with enough examples (rule of thumb: ≥ 500).
4. Both? Best practice: LoRA for behaviour + RAG for facts.

This module imports nothing heavy (standard library only) so the widgets can use it anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from labkit import tables

FINE_TUNE_MIN_EXAMPLES = 500
"""The course's rule of thumb: below this many good examples, fine-tuning is rarely worth it."""

PROMPTING, RAG, FINE_TUNE, FINE_TUNE_RAG = "Prompting", "RAG", "Fine-tune", "Fine-tune + RAG"
APPROACHES = (PROMPTING, RAG, FINE_TUNE, FINE_TUNE_RAG)


@dataclass(frozen=True)
class Recommendation:
    """The approach to try and one or two plain sentences saying why."""

    approach: str
    reason: str

    def __str__(self) -> str:
        return f"{self.approach}: {self.reason}"


def recommend(needs_private_facts: bool, needs_new_behaviour: bool, examples_available: int) -> Recommendation:
    """The cheapest approach that fits: facts → RAG, behaviour with ≥ 500 examples → fine-tune.

    Why this order: prompting costs nothing, RAG costs an index, fine-tuning costs data, compute and
    a model to maintain — so each step up must be forced by what the cheaper one cannot do.
    """
    if isinstance(examples_available, bool) or not isinstance(examples_available, int):
        raise TypeError(
            f"examples_available must be a whole number of training examples, got {examples_available!r}. "
            "Count your instruction/response pairs, e.g. len(records)."
        )
    if examples_available < 0:
        raise ValueError(f"examples_available can't be negative (got {examples_available}); use 0 if you have none.")
    enough = examples_available >= FINE_TUNE_MIN_EXAMPLES
    short = FINE_TUNE_MIN_EXAMPLES - examples_available
    if needs_private_facts and needs_new_behaviour and enough:
        return Recommendation(FINE_TUNE_RAG, (
            f"Retrieve the facts with RAG and teach the behaviour with a LoRA fine-tune on your "
            f"{examples_available} examples. This is the course's best practice: LoRA for behaviour, RAG for facts."))
    if needs_private_facts and needs_new_behaviour:
        return Recommendation(RAG, (
            f"Use RAG for the facts and ask for the behaviour in the prompt for now. With "
            f"{examples_available} examples, collect {short} more before fine-tuning the behaviour."))
    if needs_private_facts:
        return Recommendation(RAG, (
            "The model lacks these facts, and facts that are private or change belong in a retrieval index, "
            "not in the weights. RAG keeps them current without any training."))
    if needs_new_behaviour and enough:
        return Recommendation(FINE_TUNE, (
            f"A consistent new behaviour (format, tone, niche skill) is what fine-tuning teaches, and "
            f"{examples_available} examples meet the rule of thumb of {FINE_TUNE_MIN_EXAMPLES}. "
            "Start with LoRA/QLoRA once a good system prompt has shown it falls short."))
    if needs_new_behaviour:
        return Recommendation(PROMPTING, (
            f"{examples_available} examples are too few to fine-tune reliably (rule of thumb: "
            f"{FINE_TUNE_MIN_EXAMPLES}), so show the behaviour in a system prompt with a few examples. "
            f"If that isn't reliable enough, collect {short} more to reach {FINE_TUNE_MIN_EXAMPLES}."))
    return Recommendation(PROMPTING, (
        "The model already knows what it needs and no new behaviour is required. "
        "A clear prompt is free and instant; nothing to retrieve or train."))


COMPARISON: list[dict[str, str]] = [
    {"approach": "Prompting", "changes weights?": "no", "cost": "free",
     "speed": "instant (minutes to iterate)", "best for": "first try; tasks the model can already do"},
    {"approach": "RAG", "changes weights?": "no", "cost": "low (an index + retrieval)",
     "speed": "hours to set up", "best for": "private or changing facts, citing sources"},
    {"approach": "LoRA/QLoRA", "changes weights?": "small adapters only", "cost": "low to medium (one GPU)",
     "speed": "hours", "best for": "new format, tone or niche skill from ≥ 500 examples"},
    {"approach": "Full fine-tune", "changes weights?": "all", "cost": "high (many GPUs, memory)",
     "speed": "hours to days", "best for": "maximum quality with lots of data; highest forgetting risk"},
    {"approach": "RLHF/DPO", "changes weights?": "all or adapters", "cost": "high (preference data)",
     "speed": "days", "best for": "aligning with human preferences (chosen vs rejected answers)"},
]
"""The course's quick reference: what each approach changes, costs and is best for."""

WHEN_FINE_TUNING_PAYS: list[str] = [
    "Many similar queries: the one-off training cost is amortised over every call, and shorter prompts "
    "(no long instructions or examples) save tokens on each one.",
    "A smaller tuned model can replace a larger prompted one: cheaper and faster to serve.",
    "The data must stay on-premises: a small model you tuned runs on your own hardware.",
]
"""Fine-tuning is an investment; these are the situations in which it pays back."""


def comparison_table() -> list[dict[str, str]]:
    """The quick-reference rows (a copy, so a learner can edit it freely)."""
    return [dict(row) for row in COMPARISON]


def format_table(rows: list[dict[str, str]] | None = None) -> str:
    """Rows of dicts as an aligned plain-text table (prints the same everywhere, unlike HTML)."""
    return tables.format_table(comparison_table() if rows is None else rows, sep=" | ", rule="-+-")


def break_even_queries(training_cost: float, cost_per_query_before: float, cost_per_query_after: float) -> int:
    """How many queries until fine-tuning pays for itself (the 'many similar queries' argument).

    before = serving the large prompted model per query, after = the smaller tuned one.
    """
    saving = cost_per_query_before - cost_per_query_after
    if saving <= 0:
        raise ValueError(
            f"The tuned model costs {cost_per_query_after} per query, not less than {cost_per_query_before}: "
            "fine-tuning never pays back on serving cost alone. It may still pay for privacy or quality."
        )
    if training_cost < 0:
        raise ValueError(f"training_cost can't be negative (got {training_cost}).")
    return math.ceil(training_cost / saving)

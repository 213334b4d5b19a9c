"""Prompting first: measure what a better prompt gets you *before* you fine-tune.

A careful instruction or a few solved examples in the prompt cost nothing to train, but every call
pays for them in prompt tokens. Fine-tuning costs data and compute once, then calls are short.
These helpers rewrite a record set's prompts so that each prompting variant is scored by the same
`evaluate_records` (same records, same greedy decoding, same exact match) as the tuned model:
the comparison is only fair when everything but the prompt is held fixed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from labkit.data import split_prompt, validate_records
from labkit.evaluate import EvalResult, Table, evaluate_records

__all__ = ["split_prompt", "as_chat", "PromptingRow", "measure_prompt", "prompting_table"]

def _turn(record: dict) -> str:
    instruction, input_ = split_prompt(record["prompt"])
    return f"{instruction}\n\n{input_}" if input_ else instruction


def as_chat(records: Sequence[dict], tokenizer, system: str | None = None, examples: Sequence[dict] = ()) -> list[dict]:
    """Each record's prompt rewritten in the model's own chat template, the way a chat model is prompted.

    An optional system message comes first; each example (take them from the *training* split) is a
    user turn with its answer as the assistant turn (few-shot); the record is the last user turn. The
    answers are kept, so the variants are scored against the same references.
    """
    validate_records(records, "prompting")
    if examples:
        validate_records(examples, "few-shot examples")
    leaked = {e["prompt"] for e in examples} & {r["prompt"] for r in records}
    if leaked:
        raise ValueError(f"{len(leaked)} few-shot example(s) are also records to score (an exact match for free); "
                         "take the examples from the training split.")
    head = [{"role": "system", "content": system.strip()}] if system else []
    for e in examples:
        head += [{"role": "user", "content": _turn(e)}, {"role": "assistant", "content": e["completion"]}]
    return [{"prompt": tokenizer.apply_chat_template(head + [{"role": "user", "content": _turn(r)}], tokenize=False,
                                                     add_generation_prompt=True),
             "completion": r["completion"]} for r in records]


@dataclass
class PromptingRow:
    """One way of prompting (or a tuned model), scored, with what each call costs."""

    name: str
    result: EvalResult
    prompt_tokens: float
    seconds_per_call: float

    def as_row(self) -> dict:
        r = self.result
        return {"approach": self.name, "exact match": r.exact_match, "JSON valid": r.json_valid,
                "field F1": r.f1, "prompt tokens": round(self.prompt_tokens), "s/call": self.seconds_per_call}


def measure_prompt(model, tokenizer, records: Sequence[dict], name: str, max_new_tokens: int = 128,
                   progress: bool = True) -> PromptingRow:
    """Score `records` as prompted, and measure the mean prompt length and seconds per answer."""
    start = time.perf_counter()
    result = evaluate_records(model, tokenizer, records, max_new_tokens=max_new_tokens, name=name, progress=progress)
    seconds = (time.perf_counter() - start) / len(records)
    tokens = sum(len(tokenizer(r["prompt"])["input_ids"]) for r in records) / len(records)
    return PromptingRow(name, result, tokens, seconds)


def prompting_table(rows: Sequence[PromptingRow]) -> Table:
    """One row per approach: the scores, and the prompt tokens and time each call costs."""
    if not rows:
        raise ValueError("prompting_table needs at least one measured approach (from measure_prompt).")
    if len({row.result.n for row in rows}) > 1 or len({tuple(row.result.references) for row in rows}) > 1:
        raise ValueError("The approaches were scored on different records; score them on the same test set.")
    return Table([row.as_row() for row in rows], percent=["exact match", "JSON valid"],
                 title=f"prompting vs fine-tuning on {rows[0].result.n} held-out records")



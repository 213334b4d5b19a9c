"""Did fine-tuning help? Measure it on held-out data, the same way for the base and the tuned model.

- `generate`: batched greedy decoding with LEFT padding (a decoder continues from the last token,
  so padding must go on the left or the model would continue after pad tokens), stopping at EOS.
- `exact_match`, `json_validity`, `field_scores`: the metrics for an extraction task whose answer
  is JSON. Exact match is strict (one wrong field = wrong); field F1 gives partial credit, so it
  shows *how* wrong; JSON validity is format compliance.
- `evaluate_records` → `EvalResult`; `compare(base, tuned)` → a `Table` (prints as text, renders
  as HTML in Jupyter); `side_by_side` prints a few generations next to the reference.
- `general_probe` (from `labkit.probe`): a fixed general-knowledge set, to measure forgetting.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape

import torch
from tqdm.auto import tqdm

from labkit._compat import generate_kwargs
from labkit.data import tokenize_with_labels, validate_records
from labkit.models import eval_mode
from labkit.probe import ProbeResult, general_probe, load_probe, mean_kl  # noqa: F401 - re-exported
from labkit.tables import format_table

__all__ = [
    "generate", "exact_match", "json_validity", "field_scores", "EvalResult", "evaluate_records",
    "Table", "compare", "side_by_side", "general_probe", "ProbeResult", "mean_kl", "load_probe",
]


# ------------------------------------------------------------------------------------------------
# Generation


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable

    return tqdm(iterable, total=total, desc=desc, leave=False)


def generate(model, tokenizer, prompts: Sequence[str] | str, max_new_tokens: int = 128,
             batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy completions of `prompts` → the new text only (special tokens removed, stripped).

    Why greedy: evaluation must be deterministic, so base and tuned are compared on the model's
    single most likely answer, not on a lucky sample. Prompts are batched by length (less padding,
    faster) and padded on the left; results come back in the order given. The model's train/eval
    mode and the tokenizer's padding side are restored afterwards.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token, so prompts of different lengths cannot be "
                         "batched. Load it with labkit.models.load_model(), or set tokenizer.pad_token.")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    out: list[str | None] = [None] * len(prompts)
    try:
        tokenizer.padding_side = "left"
        with eval_mode(model), torch.inference_mode():
            for idx in _progress(batches, len(batches), "generate", progress):
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     temperature=None, top_p=None, top_k=None,
                                     pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id, **generate_kwargs(model))
                new = ids[:, enc["input_ids"].shape[1]:]
                for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                    out[i] = text.strip()
    finally:
        tokenizer.padding_side = old_side
    return out  # type: ignore[return-value]


def answer_loss(model, tokenizer, records: Sequence[dict], per: str = "record") -> float:
    """Mean loss of the records' reference answers given their prompts (prompt tokens masked).

    Where generation asks "what does the model say?", this asks "how surprised is it by the right
    answer?": finer-grained, and it needs no decoding. per="record" averages each record's mean
    loss (every record counts the same); per="token" averages over all answer tokens, the way the
    Trainer's validation loss weighs them (long answers count more). Inputs go to the model's
    device; only the scalar comes back. Prompts that do not end in a newline warn about token
    merging: silenced, since lesson 06 does that on purpose.
    """
    if per not in ("record", "token"):
        raise ValueError(f"per must be 'record' or 'token', not {per!r}.")
    validate_records(records, "answer_loss")
    device = next(model.parameters()).device
    losses, weights = [], []
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in records:
            enc = tokenize_with_labels(r, tokenizer)
            weights.append(sum(label != -100 for label in enc["labels"][1:]) if per == "token" else 1)
            batch = {k: torch.tensor([v], device=device) for k, v in enc.items()}
            losses.append(float(model(**batch).loss))
    return sum(x * w for x, w in zip(losses, weights, strict=True)) / sum(weights)


# ------------------------------------------------------------------------------------------------
# Metrics (pure functions: easy to test, easy to read)


_NOT_JSON = object()


def _parse(text: str):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return _NOT_JSON


def _check_pair(preds: Sequence, refs: Sequence) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"Got {len(preds)} predictions but {len(refs)} references: they must pair "
                         "up one to one (did a batch get dropped, or the wrong split passed?).")
    if not preds:
        raise ValueError("No predictions to score: the list is empty.")


def _same(pred: str, ref: str) -> bool:
    p, r = _parse(pred), _parse(ref)
    if p is not _NOT_JSON and r is not _NOT_JSON:
        return p == r
    return str(pred).strip() == str(ref).strip()


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference.

    When both sides parse as JSON, the parsed values are compared, so key order and spacing do not
    matter (`{"a": 1, "b": 2}` == `{"b":2,"a":1}`) but every value must; otherwise the stripped
    strings are compared.
    """
    _check_pair(preds, refs)
    return sum(_same(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds)


def json_validity(preds: Sequence[str]) -> float:
    """Fraction of predictions that parse as a JSON object or array (format compliance).

    A bare number or quoted string is valid JSON, but not the structured answer an extraction task
    asks for, so it does not count.
    """
    if not preds:
        raise ValueError("No predictions to score: the list is empty.")
    return sum(isinstance(_parse(p), (dict, list)) for p in preds) / len(preds)


def _flatten(value, path: str = "") -> Iterable[tuple[str, object]]:
    """(key path, leaf value) pairs. List items share the path `key[]`, so item order does not matter."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v, f"{path}[]")
    else:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 12.0 and 12 are the same price
        yield path, json.dumps(value, sort_keys=True)


def _pairs(text: str) -> Counter:
    parsed = _parse(text)
    if parsed is _NOT_JSON:
        return Counter({("$text", str(text).strip()): 1})
    return Counter(_flatten(parsed))


def field_scores(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Field-level precision, recall and F1, micro-averaged over all records.

    Each JSON answer is flattened into (key path, value) pairs, e.g. `items[].price = 2.5`, and the
    pairs are matched as a multiset: precision = correct predicted pairs / predicted pairs, recall =
    correct pairs / reference pairs. Partial credit: one wrong price costs one pair, not the record.
    A prediction that is not JSON counts as a single wrong pair (it finds none of the fields).
    """
    _check_pair(preds, refs)
    tp = n_pred = n_ref = 0
    for p, r in zip(preds, refs, strict=True):
        pp, rp = _pairs(p), _pairs(r)
        tp += sum((pp & rp).values())
        n_pred += sum(pp.values())
        n_ref += sum(rp.values())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ------------------------------------------------------------------------------------------------
# Whole evaluations


@dataclass
class EvalResult:
    """Scores of one model on one set of records, plus what it generated (to look at, not just count)."""

    exact_match: float
    json_valid: float
    f1: float
    n: int
    predictions: list[str] = field(repr=False)
    references: list[str] = field(repr=False)
    name: str = "model"

    @property
    def n_correct(self) -> int:
        return round(self.exact_match * self.n)

    @property
    def misses(self) -> list[tuple[str, str]]:
        """(reference, prediction) for every answer that is not an exact match: read them, don't just count."""
        return [(ref, pred) for pred, ref in zip(self.predictions, self.references, strict=True)
                if not _same(pred, ref)]

    def __str__(self) -> str:
        return (f"{self.name}: exact match {self.exact_match:.1%} ({self.n_correct}/{self.n}), "
                f"JSON valid {self.json_valid:.1%}, field F1 {self.f1:.3f}")


def evaluate_records(model, tokenizer, records: Sequence[dict], max_new_tokens: int = 128,
                     batch_size: int = 16, progress: bool = True, name: str = "model") -> EvalResult:
    """Generate an answer for each record's prompt and score it against its completion."""
    validate_records(records, "evaluation")
    refs = [rec["completion"] for rec in records]
    preds = generate(model, tokenizer, [rec["prompt"] for rec in records], max_new_tokens=max_new_tokens,
                     batch_size=batch_size, progress=progress)
    scores = field_scores(preds, refs)
    return EvalResult(exact_match=exact_match(preds, refs), json_valid=json_validity(preds),
                      f1=scores["f1"], n=len(records), predictions=preds, references=refs, name=name)


class Table:
    """A small table: rows of dicts. Prints as aligned text; renders as HTML in Jupyter.

    Floats are shown as percentages in columns listed in `percent`, else with 3 decimals; the raw
    numbers stay in `rows` for asserts.
    """

    def __init__(self, rows: list[dict], columns: Sequence[str] | None = None, title: str = "",
                 percent: Sequence[str] = ()):
        self.rows = rows
        self.columns = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
        self.title = title
        self.percent = set(percent)

    def _fmt(self, col: str, value, signed: bool = False) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "" if value is None else str(value)
        if isinstance(value, int) and col not in self.percent:
            return str(value)
        sign = "+" if signed else ""
        if col in self.percent:
            return f"{value * 100:{sign}.1f}%"
        return f"{value:{sign}.3f}"

    def _cell(self, col: str, value) -> str:
        return self._fmt(col, value, signed=col.startswith(("change", "Δ", "gain", "drop")))

    def _cells(self) -> list[list[str]]:
        return [[self._cell(c, r.get(c)) for c in self.columns] for r in self.rows]

    def __str__(self) -> str:
        return format_table(self.rows, self.columns, fmt=self._cell, rule="  ", right_align=True, title=self.title)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in self._cells())
        caption = f"<caption>{escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def compare(base, tuned, test_records: Sequence[dict] | None = None, tokenizer=None,
            names: tuple[str, str] = ("base", "tuned"), **eval_kwargs) -> Table:
    """Base vs tuned, one row per metric with the change.

    Pass two `EvalResult`s (already computed), or two models plus `test_records` and `tokenizer`
    (they are evaluated here with `evaluate_records`). The same records must be used for both,
    or the comparison means nothing.
    """
    results = []
    for model_or_result, name in zip((base, tuned), names, strict=True):
        if isinstance(model_or_result, EvalResult):
            results.append(model_or_result)
            continue
        if test_records is None or tokenizer is None:
            raise ValueError(f"{name!r} is a model, not an EvalResult: pass test_records=... and "
                             "tokenizer=... so compare() can evaluate it.")
        results.append(evaluate_records(model_or_result, tokenizer, test_records, name=name, **eval_kwargs))
    a, b = results
    if a.n != b.n or a.references != b.references:
        raise ValueError(f"The two results were scored on different records ({a.n} vs {b.n}, or other "
                         "references); compare them on the same test set.")
    rows = [{"metric": metric, names[0]: getattr(a, attr), names[1]: getattr(b, attr),
             "change": getattr(b, attr) - getattr(a, attr)}
            for metric, attr in (("exact match", "exact_match"), ("JSON valid", "json_valid"),
                                 ("field F1", "f1"))]
    return Table(rows, columns=["metric", names[0], names[1], "change"], percent=[names[0], names[1], "change"],
                 title=f"{names[0]} vs {names[1]} on {a.n} held-out records")


def side_by_side(records: Sequence[dict], base_preds: Sequence[str], tuned_preds: Sequence[str],
                 n: int = 3, width: int = 100, names: tuple[str, str] = ("base", "tuned")) -> None:
    """Print the first `n` records: prompt (shortened), reference, and each model's answer (✓/✗)."""
    if not (len(records) == len(base_preds) == len(tuned_preds)):
        raise ValueError(f"records ({len(records)}), base_preds ({len(base_preds)}) and tuned_preds "
                         f"({len(tuned_preds)}) must have the same length.")
    for i, rec in enumerate(records[:n]):
        ref = rec["completion"]
        print(f"── example {i + 1} " + "─" * 40)
        print(textwrap.shorten(rec["prompt"].replace("\n", " ⏎ "), width=width, placeholder=" …"))
        print(f"  reference : {textwrap.shorten(ref, width=width, placeholder=' …')}")
        for name, preds in zip(names, (base_preds, tuned_preds), strict=True):
            mark = "✓" if _same(preds[i], ref) else "✗"
            shown = textwrap.shorten(preds[i].replace("\n", " ⏎ "), width=width, placeholder=" …") or "(empty)"
            print(f"  {name:<10}{mark} {shown}")

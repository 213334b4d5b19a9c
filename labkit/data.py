"""Training records: templates, loading with per-line errors, cleaning, splits and label masks.

A fine-tuning example is a *record*. The course uses three shapes, all plain dicts:

- prompt/completion: {"prompt": "### Instruction:\\n…\\n\\n### Response:\\n", "completion": "…"}
  (the shape the trainer and the evaluator read; `to_record` builds it);
- Alpaca: {"instruction": …, "input": … (optional), "output" or "response": …} — `load_records`
  turns it into prompt/completion with `to_record`;
- chat: {"messages": [{"role": "user", "content": …}, {"role": "assistant", "content": …}]} —
  rendered by the tokenizer's own chat template (`render_chat`).

The prompt must be byte-for-byte the same at training and at inference: `format_prompt` is the
one function that writes it, and `check_template` points at the first character where two
prompts differ.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

# ------------------------------------------------------------------------------------------------
# Templates

PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
PROMPT_TEMPLATE_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
_PROMPT_RE = re.compile(
    r"\A### Instruction:\n(?P<instruction>.*?)\n\n(?:### Input:\n(?P<input>.*?)\n\n)?### Response:\n\Z", re.S
)

DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
SPLITS = ("train", "val", "test")
UNSPLIT_DATASETS = ("faq",)  # record files shipped whole, for the record and cleaning lessons


def format_prompt(instruction: str, input: str | None = None) -> str:
    """The prompt for one instruction (and optional input): the same text at training and inference.

    Whitespace around the parts is stripped, so a stray space or newline in your data cannot make
    the training prompt differ from the one you type later. An empty input means "no input".
    """
    instruction = instruction.strip()
    if input is not None and input.strip():
        return PROMPT_TEMPLATE_WITH_INPUT.format(instruction=instruction, input=input.strip())
    return PROMPT_TEMPLATE.format(instruction=instruction)


# The course template's three fixed parts, read from the template itself (one place to change it).
_HEAD, _REST = PROMPT_TEMPLATE_WITH_INPUT.split("{instruction}")
_INPUT, _TAIL = _REST.split("{input}")


def split_prompt(prompt: str) -> tuple[str, str | None]:
    """A course-format prompt → (instruction, input or None): the inverse of `format_prompt`."""
    if not (prompt.startswith(_HEAD) and prompt.endswith(_TAIL)):
        raise ValueError("Not a course-format prompt (it must start with '### Instruction:' and end with "
                         f"'### Response:'; see labkit.data.PROMPT_TEMPLATE): {prompt[:60]!r}...")
    body = prompt[len(_HEAD):-len(_TAIL)]
    instruction, sep, input_ = body.partition(_INPUT)
    return instruction, (input_ if sep else None)


def to_record(instruction: str, response: str, input: str | None = None) -> dict[str, str]:
    """One prompt/completion training record (the answer stripped; EOS is added at tokenisation)."""
    return {"prompt": format_prompt(instruction, input), "completion": response.strip()}


def to_chat(instruction: str, response: str, system: str | None = None) -> dict[str, list[dict[str, str]]]:
    """The same example as chat messages with roles, for models trained on a chat template."""
    messages = [{"role": "system", "content": system.strip()}] if system else []
    messages += [{"role": "user", "content": instruction.strip()},
                 {"role": "assistant", "content": response.strip()}]
    return {"messages": messages}


def _as_messages(record: dict) -> list[dict[str, str]]:
    if "messages" in record:
        return list(record["messages"])
    if "instruction" in record:
        inst = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return to_chat(inst, record.get("output", record.get("response", "")))["messages"]
    raise ValueError(
        "render_chat needs a chat record {'messages': [...]} (or an Alpaca record). A prompt/completion "
        "record already carries its own '### Instruction' template; rendering it again would wrap one "
        "template in another. Build a chat record with to_chat(instruction, response)."
    )


def render_chat(record: dict, tokenizer, add_generation_prompt: bool = False) -> str:
    """The text the model really sees for a chat record, written by the tokenizer's own chat template.

    With add_generation_prompt=True a final assistant message is left out and the template's
    assistant header is appended: that is exactly the prompt to use at inference.
    """
    messages = _as_messages(record)
    if add_generation_prompt and messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


# ------------------------------------------------------------------------------------------------
# Loading


class RecordError(ValueError):
    """A record in a data file is malformed; the message names the file, the line and the field."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        where = ", ".join(p for p in (str(path) if path is not None else "",
                                      f"line {line}" if line is not None else "",
                                      f"field {field!r}" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.line, self.field = path, line, field

    @property
    def file(self) -> str | Path | None:
        """The data file (same as .path)."""
        return self.path


_FORMATS_HELP = ('{"prompt": ..., "completion": ...}, {"instruction": ..., "input": ... (optional), '
                 '"output": ...} or {"messages": [{"role": ..., "content": ...}, ...]}')


def _need_str(obj: dict, key: str, path, line, label: str | None = None, optional: bool = False) -> str | None:
    label = label or key
    if key not in obj:
        if optional:
            return None
        raise RecordError(f"the field is missing (the record has {sorted(obj)}).", path, line, label)
    value = obj[key]
    if optional and value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {type(value).__name__} {value!r}. Quote it in the file.",
                          path, line, label)
    return value


def validate_records(records: Sequence, name: str = "train",
                     fields: Sequence[str] = ("prompt", "completion")) -> None:
    """THE record validator (train, evaluate, alignment and the run config all call it): raise a
    RecordError naming the set, the record index and the field when a record cannot be used.

    `fields` are the text fields every record needs: ("prompt", "completion") for SFT and
    evaluation, ("prompt", "chosen", "rejected") for preference pairs.
    """
    if records is None or len(records) == 0:
        raise RecordError(f"The {name} set is empty: there is nothing to learn from. Pass a list of "
                          f"records with {', '.join(repr(f) for f in fields)}, e.g. "
                          "labkit.data.course_dataset('invoices', 'train').")
    for i, rec in enumerate(records):
        where = f"{name} record {i}"
        if not isinstance(rec, dict):
            raise RecordError(f"{where} is a {type(rec).__name__}, not a dict with "
                              f"{', '.join(repr(f) for f in fields)}.")
        for key in fields:
            if key not in rec:
                raise _field_error(f"{where} has no {key!r} field (it has {sorted(rec)}). Build records with "
                                   "labkit.data.to_record(instruction, response, input=...).", key)
            if not isinstance(rec[key], str) or not rec[key].strip():
                raise _field_error(f"{where}: field {key!r} is empty or not text ({rec[key]!r}).", key)


def _field_error(message: str, key: str) -> RecordError:
    """A RecordError about an in-memory record: the message already names it; .field names the key."""
    err = RecordError(message)
    err.field = key
    return err


def parse_record(obj: Any, path: str | Path | None = None, line: int | None = None) -> dict:
    """Validate one decoded record and bring it to prompt/completion or chat shape (see module doc)."""
    if not isinstance(obj, dict):
        raise RecordError(f"a record must be a JSON object {{...}}, got {type(obj).__name__}.", path, line)
    if "prompt" in obj:
        _need_str(obj, "prompt", path, line)
        _need_str(obj, "completion", path, line)
        return dict(obj)
    if "instruction" in obj:
        instruction = _need_str(obj, "instruction", path, line)
        inp = _need_str(obj, "input", path, line, optional=True)
        key = "response" if "response" in obj and "output" not in obj else "output"
        if key not in obj:
            raise RecordError("an Alpaca record needs an 'output' (or 'response') with the answer.",
                              path, line, "output")
        response = _need_str(obj, key, path, line)
        extra = {k: v for k, v in obj.items() if k not in ("instruction", "input", "output", "response")}
        return {**to_record(instruction, response, inp), **extra}
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise RecordError("'messages' must be a non-empty list of {'role', 'content'} objects.",
                              path, line, "messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise RecordError("each message must be an object {'role': ..., 'content': ...}.",
                                  path, line, f"messages[{i}]")
            _need_str(m, "role", path, line, f"messages[{i}].role")
            _need_str(m, "content", path, line, f"messages[{i}].content")
        return dict(obj)
    raise RecordError(f"unknown record format with keys {sorted(obj)}. Use one of: {_FORMATS_HELP}.",
                      path, line)


def load_records(path: str | Path) -> list[dict]:
    """Read records from JSONL (one object a line) or JSON (a list of objects); check every one.

    Returns prompt/completion dicts (Alpaca records converted by to_record) and chat dicts as they
    are. The first bad record raises RecordError naming the file, line and field, so you can open
    the file at that line instead of finding out mid-training.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"not valid JSON ({exc.msg}, column {exc.colno}).", path, exc.lineno) from None
        if not isinstance(data, list):
            raise RecordError("a .json data file must hold a list of records [{...}, {...}]; for one "
                              "record a line use .jsonl.", path, 1)
        return [parse_record(obj, path, i) for i, obj in enumerate(data, 1)]  # line = record number
    if path.suffix != ".jsonl":
        raise RecordError("unsupported file type: use .jsonl (one JSON record a line) or .json (a list).",
                          path)
    return [parse_record(obj, path, lineno) for lineno, obj in read_jsonl(path)]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line of a JSONL file: the one JSONL reader.

    A line that is not JSON raises RecordError naming the file and line, so every JSONL file the
    course reads (records, the probe, the preference answers) fails the same clear way.
    """
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"not valid JSON ({exc.msg} at column {exc.colno}): {line.strip()[:60]!r}. Each "
                                  "line must be one complete JSON object; check quotes, commas and braces.",
                                  path, lineno) from None


def dataset_path(name: str, split: str | None = None) -> Path:
    """Where a shipped course data set lives (labkit/datasets/{name}.jsonl or {name}_{split}.jsonl)."""
    return DATASETS_DIR / (f"{name}_{split}.jsonl" if split else f"{name}.jsonl")


def available_datasets() -> list[str]:
    """Names accepted by course_dataset: the shipped unsplit record files and every split data set."""
    names = {n for n in UNSPLIT_DATASETS if dataset_path(n).exists()}
    for f in DATASETS_DIR.glob("*.jsonl"):
        for s in SPLITS:
            if f.stem.endswith(f"_{s}"):
                names.add(f.stem.removesuffix(f"_{s}"))
    return sorted(names)


def course_dataset(name: str, split: str | None = None) -> list[dict] | dict[str, list[dict]]:
    """A data set shipped with the course, read (and checked) by load_records.

    For a split data set (e.g. "invoices"), split="train"/"val"/"test" gives that list and
    split=None a dict of every split present. An unsplit set ("faq") is one list.
    """
    if name in UNSPLIT_DATASETS and dataset_path(name).exists():
        if split is not None:
            raise ValueError(f"The {name!r} data set is not split; call course_dataset({name!r}) and use "
                             "labkit.data.split() to make train/val/test.")
        return load_records(dataset_path(name))
    if split is not None and split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)} (or None for all).")
    present = [s for s in SPLITS if dataset_path(name, s).exists()]
    if not present:
        known = ", ".join(repr(n) for n in available_datasets()) or "none"
        hint = ((" labkit ships them: reinstall it (pip install --force-reinstall labkit). In a checkout of "
                 "the course they are written by `python -m labkit_dev.invoices`.")
                if name == "invoices" else "")
        raise FileNotFoundError(f"No course data set {name!r}: no {dataset_path(name, 'train').name} in "
                                f"{DATASETS_DIR}. Available: {known}.{hint}")
    if split is None:
        return {s: load_records(dataset_path(name, s)) for s in present}
    if split not in present:
        raise FileNotFoundError(f"The {name!r} data set has no {split!r} split ({dataset_path(name, split)} "
                                f"is missing); present: {', '.join(present)}.")
    return load_records(dataset_path(name, split))


# ------------------------------------------------------------------------------------------------
# A common view of any record: question, answer, and the text that identifies the example


class _View(NamedTuple):
    question: str  # the instruction (or user turn)
    answer: str  # the completion (or last assistant turn)
    key: str  # the part that makes this example this example: input if any, else instruction; + answer


def _view(item: Any) -> _View:
    """Read (question, answer) out of a record or an (instruction, response) pair."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        q, a = item
        return _View(q, a, f"{q}\n{a}")
    if isinstance(item, dict):
        if "prompt" in item:
            m = _PROMPT_RE.match(item["prompt"])
            q = m.group("instruction") if m else item["prompt"]
            inp = (m.group("input") or "") if m else ""
            a = item.get("completion", "")
            return _View(q + (f"\n{inp}" if inp else ""), a, f"{inp or q}\n{a}")
        if "instruction" in item:
            inp = item.get("input") or ""
            a = item.get("output", item.get("response", ""))
            return _View(item["instruction"] + (f"\n{inp}" if inp else ""), a, f"{inp or item['instruction']}\n{a}")
        if "messages" in item:
            users = "\n".join(m["content"] for m in item["messages"] if m["role"] == "user")
            last = item["messages"][-1]
            a = last["content"] if last["role"] == "assistant" else ""
            return _View(users, a, f"{users}\n{a}")
    raise TypeError(f"Not a record or an (instruction, response) pair: {item!r:.80}. Use dicts made by "
                    "to_record/to_chat, or 2-tuples of strings.")


def _squash(text: str) -> str:
    """Whitespace-insensitive form: exact duplicates differ only in spacing."""
    return " ".join(text.split())


def _normalise(text: str) -> str:
    """Lowercase, punctuation removed, spaces collapsed: the text near-duplicate detection compares."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


SHINGLE = 5  # characters per shingle


def _shingles(text: str) -> set[str]:
    t = _normalise(text)
    if len(t) <= SHINGLE:
        return {t}
    return {t[i:i + SHINGLE] for i in range(len(t) - SHINGLE + 1)}


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of two texts' character 5-gram sets (1.0 = same shingles)."""
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _near_pairs(left: list[str], right: list[str] | None, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, jaccard) with jaccard >= threshold: MinHash LSH proposes, exact Jaccard decides.

    Without `right`, pairs i < j within `left`. LSH (datasketch) avoids comparing every pair, so
    this scales to real data sets; its threshold is set lower than ours so it misses almost
    nothing, and the exact Jaccard on the shingle sets removes MinHash's estimation noise — the
    result does not depend on hash luck, and a threshold means what it says.
    """
    from datasketch import MinHash, MinHashLSH

    if not 0 < threshold <= 1:
        raise ValueError(f"A similarity threshold is a Jaccard similarity in (0, 1], got {threshold}; 0.8 is typical.")
    sets_l = [_shingles(t) for t in left]
    sets_r = sets_l if right is None else [_shingles(t) for t in right]

    def minhash(s: set[str]) -> MinHash:
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([x.encode("utf-8") for x in s])
        return m

    lsh = MinHashLSH(threshold=max(0.1, threshold - 0.25), num_perm=128)
    for i, s in enumerate(sets_l):
        lsh.insert(i, minhash(s))
    out = []
    for j, s in enumerate(sets_r):
        for i in lsh.query(minhash(s)):
            if right is None and i >= j:
                continue
            sim = len(sets_l[i] & s) / len(sets_l[i] | s)
            if sim >= threshold:
                out.append((i, j, sim))
    return sorted(out)


# ------------------------------------------------------------------------------------------------
# Cleaning

REASONS = ("empty", "one-word answer", "too long", "exact duplicate", "near duplicate")


@dataclass
class CleanResult:
    """What clean() kept, and every dropped item with its reason: nothing disappears silently."""

    kept: list
    dropped: list[tuple[Any, str]]
    details: list[str] = field(default_factory=list, repr=False)  # one line per dropped item

    @property
    def counts(self) -> dict[str, int]:
        """Dropped items by reason, in a fixed order (zero counts included)."""
        c = Counter(reason for _, reason in self.dropped)
        return {r: c.get(r, 0) for r in REASONS}

    @property
    def report(self) -> str:
        total = len(self.kept) + len(self.dropped)
        lines = [f"kept {len(self.kept)} of {total}, dropped {len(self.dropped)}"]
        lines += [f"  {reason:<16} {n}" for reason, n in self.counts.items()]
        lines += [f"  - {d}" for d in self.details]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report


def _snippet(text: str, n: int = 40) -> str:
    t = _squash(text)
    return repr(t if len(t) <= n else t[: n - 1] + "…")


def clean(pairs: Iterable, max_chars: int = 1000, min_words: int = 2,
          near_dup_threshold: float = 0.8) -> CleanResult:
    """Drop the examples that teach the wrong thing, and say which and why.

    Items are records (prompt/completion, Alpaca or chat dicts) or (instruction, response) pairs;
    kept items are returned unchanged, in order. Checked in this order (first reason wins):

    - empty: instruction or answer is blank after strip;
    - one-word answer: fewer than `min_words` words (``\\w+`` runs, so compact JSON is many words):
      a bare "Yes." teaches the model to be curt;
    - too long: answer over `max_chars` characters — outliers dominate the loss and the memory;
    - exact duplicate: same instruction, input and answer up to whitespace (the first one stays);
    - near duplicate: Jaccard similarity >= `near_dup_threshold` of character 5-gram shingles of the
      lower-cased, punctuation-free input (or instruction) + answer, against an earlier kept item.
      Character shingles catch rewordings of short FAQ texts ("How do I" vs "How can I") that
      word shingles would miss; candidates come from MinHash LSH (datasketch), the decision from
      the exact Jaccard, so it scales and stays deterministic.
    """
    items = list(pairs)
    views = [_view(x) for x in items]
    kept_idx: list[int] = []
    dropped: list[tuple[int, str, str]] = []  # (index, reason, detail)
    seen: dict[tuple[str, str], int] = {}

    def drop(i: int, reason: str, why: str) -> None:
        dropped.append((i, reason, f"#{i} {reason}: {why}"))

    for i, v in enumerate(views):
        q, a = v.question.strip(), v.answer.strip()
        n_words = len(re.findall(r"\w+", a))
        exact_key = (_squash(v.question), _squash(v.answer))
        if not q or not a:
            drop(i, "empty", f"blank answer to {_snippet(q)}" if q else f"blank instruction for {_snippet(a)}")
        elif n_words < min_words:
            drop(i, "one-word answer", f"{_snippet(a)} to {_snippet(q)}")
        elif len(a) > max_chars:
            drop(i, "too long", f"{len(a)}-character answer (max_chars={max_chars}) to {_snippet(q)}")
        elif exact_key in seen:
            drop(i, "exact duplicate", f"{_snippet(q)} same as #{seen[exact_key]}")
        else:
            seen[exact_key] = i
            kept_idx.append(i)

    near = _near_pairs([views[i].key for i in kept_idx], None, near_dup_threshold)
    removed: set[int] = set()
    for a_pos, b_pos, sim in near:  # sorted: each later item compared with an earlier kept one
        if a_pos in removed or b_pos in removed:
            continue
        removed.add(b_pos)
        i, j = kept_idx[a_pos], kept_idx[b_pos]
        drop(j, "near duplicate", f"{_snippet(views[j].question)} ~ #{i} {_snippet(views[i].question)} "
                                  f"(similarity {sim:.2f})")
    kept = [items[i] for pos, i in enumerate(kept_idx) if pos not in removed]
    dropped.sort()
    return CleanResult(kept, [(items[i], reason) for i, reason, _ in dropped], [d for _, _, d in dropped])


# ------------------------------------------------------------------------------------------------
# Splits and contamination


class Split(NamedTuple):
    train: list
    val: list
    test: list


def split(records: Sequence, val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0) -> Split:
    """Shuffle with a fixed seed, then cut into train / val / test (same seed → same split).

    Hold out 5–10 % for validation; the test split is touched only for the final score. Clean
    (deduplicate) *before* splitting, or copies of one example land on both sides.
    """
    if not 0 <= val_frac < 1 or not 0 <= test_frac < 1 or val_frac + test_frac >= 1:
        raise ValueError(f"val_frac={val_frac} and test_frac={test_frac} must be in [0, 1) and leave "
                         "records for training (their sum below 1).")
    items = list(records)
    random.Random(seed).shuffle(items)
    n = len(items)
    n_val, n_test = round(n * val_frac), round(n * test_frac)
    if n and n_val + n_test >= n:
        raise ValueError(f"{n} records are too few for val_frac={val_frac}, test_frac={test_frac}: "
                         "nothing would be left to train on.")
    return Split(items[n_val + n_test:], items[:n_val], items[n_val:n_val + n_test])


class Overlap(NamedTuple):
    train_idx: int
    test_idx: int
    similarity: float
    kind: str  # "exact" or "near"


def find_overlap(train: Sequence, test: Sequence, threshold: float = 0.8) -> list[Overlap]:
    """Test examples that also appear in training, exactly or nearly (data contamination).

    Compared on what identifies an example — its input (or instruction, when there is no input)
    plus its answer — so a task instruction shared by every record does not count as overlap.
    A contaminated test set measures memory, not skill.
    """
    tv, sv = [_view(x).key for x in train], [_view(x).key for x in test]
    exact: dict[str, int] = {}
    for i, k in enumerate(tv):
        exact.setdefault(_squash(k), i)
    out = [Overlap(exact[_squash(k)], j, 1.0, "exact") for j, k in enumerate(sv) if _squash(k) in exact]
    exact_tests = {o.test_idx for o in out}
    out += [Overlap(i, j, round(sim, 4), "near") for i, j, sim in _near_pairs(tv, sv, threshold)
            if j not in exact_tests]
    return sorted(out, key=lambda o: (o.test_idx, o.train_idx))


# ------------------------------------------------------------------------------------------------
# Corruption: the data-quality experiment's noisy records

CORRUPTIONS = ("broken JSON", "wrong numbers", "wrong label")


@dataclass
class Corrupted:
    """What corrupt_records did: the new records, and which of them were damaged and how."""

    records: list[dict]
    corrupted: list[int]  # indices (into records) of the damaged answers
    kinds: dict[int, str] = field(default_factory=dict)  # index -> one of CORRUPTIONS


def _leaves(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, key)
    else:
        yield key, value


def _mapped(value: Any, fn, key: str = "") -> Any:
    """value with every leaf replaced by fn(key, leaf)."""
    if isinstance(value, dict):
        return {k: _mapped(v, fn, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mapped(v, fn, key) for v in value]
    return fn(key, value)


def _damage(answer: dict, kind: str, pool: dict[str, list[str]], rng: random.Random) -> str:
    if kind == "broken JSON":  # the kind a bad export or a cut-off scrape gives: not parseable
        return json.dumps(answer, separators=(",", ":"))[:-1]
    if kind == "wrong numbers":  # prices and totals that no longer match the invoice
        factor = rng.choice((0.5, 1.5, 2.0, 3.0))
        return json.dumps(_mapped(answer, lambda k, v: round(v * factor, 2) if isinstance(v, float) else v),
                          separators=(",", ":"))

    def swap(k: str, v: Any) -> Any:  # "wrong label": another record's value for the same key
        others = [o for o in pool.get(k, []) if o != v] if isinstance(v, str) else []
        return rng.choice(others) if others else v

    return json.dumps(_mapped(answer, swap), separators=(",", ":"))


def corrupt_records(records: Sequence[dict], share: float, seed: int = 0) -> Corrupted:
    """Damage `share` of the records' JSON answers, the ways real training data goes bad, and say which.

    Why: "quality beats quantity" is a claim to measure, and measuring it needs noisy data whose
    noise is known. The chosen records (a seeded sample) get, in turn, broken JSON (the closing brace
    cut), wrong numbers (every decimal value scaled, so prices and totals contradict the invoice) or
    wrong labels (each string value replaced by another record's value for the same key: a wrong
    currency, a wrong product name). Prompts are never changed; the input list is not modified.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"share={share} must be between 0 and 1 (the fraction of records to corrupt).")
    validate_records(records, "corrupt_records")
    answers = []
    for i, rec in enumerate(records):
        try:
            answers.append(json.loads(rec["completion"]))
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"record {i}: corrupt_records needs prompt/completion records whose completion is "
                             f"JSON (like the invoice task's); {exc}") from exc
    pool: dict[str, list[str]] = {}
    for answer in answers:
        for k, v in _leaves(answer):
            if isinstance(v, str) and v not in pool.setdefault(k, []):
                pool[k].append(v)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(records)), round(share * len(records))))
    out, kinds = [dict(r) for r in records], {}
    for n, i in enumerate(chosen):
        kinds[i] = CORRUPTIONS[n % len(CORRUPTIONS)]
        out[i]["completion"] = _damage(answers[i], kinds[i], pool, rng)
    return Corrupted(out, chosen, kinds)


# ------------------------------------------------------------------------------------------------
# Tokenisation with label masks


def _prompt_and_completion(record: dict, tokenizer) -> tuple[str, str, bool]:
    """(prompt text, completion text, whether the text already carries the template's special tokens)."""
    if "messages" in record:
        msgs = record["messages"]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError("A chat record to train on must end with an assistant message (the answer to learn).")
        prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("This tokenizer's chat template renders the conversation differently from its "
                             "prompt, so the answer cannot be separated cleanly. Use prompt/completion records.")
        return prompt, full[len(prompt):], True
    if "instruction" in record:
        record = parse_record(record)
    if "prompt" not in record or "completion" not in record:
        raise ValueError(f"Not a training record: keys {sorted(record)}. Use to_record(...) or to_chat(...).")
    return record["prompt"], record["completion"], False


def tokenize_with_labels(record: dict, tokenizer, max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids, attention mask and labels for one record: the prompt is masked, the answer learned.

    Labels are -100 (ignored by the loss) on prompt tokens, so the model is trained to *answer*,
    not to write prompts; the answer is followed by EOS, which is learned, so the model learns
    to stop. Prompt and completion are tokenised separately and their ids concatenated: the prompt
    tokens are then exactly those the model gets at inference from tokenizer(prompt). A warning
    says when that differs from tokenising the joined text (TRL's way; a token merging across the
    boundary) — end prompts on a newline, as the course template does, and it never happens.
    """
    prompt, completion, templated = _prompt_and_completion(record, tokenizer)
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    joint = tokenizer(prompt + completion, add_special_tokens=not templated)["input_ids"]
    if eos is not None and eos not in completion_ids:  # the answer must end with EOS, learned
        completion_ids, joint = completion_ids + [eos], joint + [eos]
    if joint != prompt_ids + completion_ids:
        warnings.warn(f"Tokens merge across the prompt/completion boundary ({prompt[-12:]!r} + "
                      f"{completion[:12]!r}): tokenising the joined text differs from prompt + completion. "
                      "End the prompt with a newline and strip the completion.", stacklevel=2)
    input_ids = prompt_ids + completion_ids
    labels = [-100] * len(prompt_ids) + completion_ids
    if max_length is not None and len(input_ids) > max_length:
        if len(prompt_ids) >= max_length:
            raise ValueError(f"The prompt alone is {len(prompt_ids)} tokens, max_length={max_length}: no answer "
                             "token would be left to learn. Raise max_length or shorten/drop this record.")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        warnings.warn(f"Record truncated to max_length={max_length}: the end of its answer and its EOS are cut, "
                      "so the model does not learn where this answer stops.", stacklevel=2)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def label_table(encoded: dict[str, list[int]], tokenizer) -> list[tuple[str, int, str]]:
    """(token text, label, "masked"|"learned") per position: to see what the loss trains on."""
    return [(tokenizer.decode([t]), lab, "masked" if lab == -100 else "learned")
            for t, lab in zip(encoded["input_ids"], encoded["labels"], strict=True)]


# ------------------------------------------------------------------------------------------------
# Template check


class TemplateMismatch(ValueError):
    """The inference prompt is not byte-for-byte the training prompt."""


def first_difference(a: str, b: str) -> int | None:
    """Index of the first character where a and b differ (len of the shorter if one is a prefix)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def describe_difference(a: str, b: str, names: tuple[str, str] = ("train", "inference"), width: int = 20) -> str:
    """A short, repr-quoted view of both texts around their first difference ('' if equal)."""
    i = first_difference(a, b)
    if i is None:
        return ""
    line, col = a[:i].count("\n") + 1, i - (a[:i].rfind("\n") + 1) + 1
    lo = max(0, i - width)
    got = [repr(t[i]) if i < len(t) else "end of text" for t in (a, b)]
    return (f"first difference at character {i} (line {line}, column {col}): {names[0]} has {got[0]}, "
            f"{names[1]} has {got[1]}\n"
            f"  {names[0]:<9}: …{a[lo:i + width]!r}\n"
            f"  {names[1]:<9}: …{b[lo:i + width]!r}")


def check_template(train_prompt: str, inference_prompt: str) -> None:
    """Raise TemplateMismatch unless the two prompts are identical, pointing at the first difference.

    A model fine-tuned on one template and prompted with another (a missing newline, "Response"
    vs "Answer", an extra space) sees text it was never trained on and falls back to base-model
    behaviour: the fine-tune seems not to have worked.
    """
    if train_prompt != inference_prompt:
        raise TemplateMismatch("The inference prompt differs from the training prompt: the model would see a "
                               "format it was never trained on.\n"
                               + describe_difference(train_prompt, inference_prompt)
                               + "\nBuild both with the same function (labkit.data.format_prompt).")

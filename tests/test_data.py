"""labkit.data and the record exercises: templates, loading errors, cleaning, splits, label masks."""

from __future__ import annotations

import json
import warnings

import pytest

from labkit import data
from labkit.data import (
    PROMPT_TEMPLATE,
    RecordError,
    TemplateMismatch,
    check_template,
    clean,
    course_dataset,
    find_overlap,
    format_prompt,
    load_records,
    render_chat,
    split,
    to_chat,
    to_record,
    tokenize_with_labels,
)
from labkit.exercises import check_clean, check_to_record

# ---------------------------------------------------------------------------------------------
# templates


def test_to_record_and_format_prompt():
    rec = to_record("  What is 2+2? ", " 4, of course.\n")
    assert rec == {"prompt": "### Instruction:\nWhat is 2+2?\n\n### Response:\n", "completion": "4, of course."}
    assert rec["prompt"] == format_prompt("What is 2+2?") == PROMPT_TEMPLATE.format(instruction="What is 2+2?")
    with_input = to_record("Extract.", "{}", input="Invoice 7")
    assert with_input["prompt"] == "### Instruction:\nExtract.\n\n### Input:\nInvoice 7\n\n### Response:\n"
    assert to_record("Q", "A", input="  ") == to_record("Q", "A")  # blank input = no input section


def test_to_chat_and_render_chat(tok):
    rec = to_chat("Hi?", "Hello!", system="Be brief.")
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    text = render_chat(rec, tok)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n")
    prompt = render_chat(rec, tok, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "Hello!" not in prompt
    assert text.startswith(prompt)
    with pytest.raises(ValueError, match="to_chat"):
        render_chat(to_record("a", "b"), tok)


# ---------------------------------------------------------------------------------------------
# loading


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


GOOD = [
    json.dumps({"prompt": "P1", "completion": "C1", "meta": {"k": 1}}),
    json.dumps({"instruction": "Q2", "input": "", "output": "A2"}),
    "",
    json.dumps({"instruction": "Q3", "response": "A3", "input": "X3"}),
    json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}),
]


def test_load_records_formats(tmp_path):
    recs = load_records(_write(tmp_path, "ok.jsonl", GOOD))
    assert recs[0] == {"prompt": "P1", "completion": "C1", "meta": {"k": 1}}
    assert recs[1] == to_record("Q2", "A2")
    assert recs[2] == to_record("Q3", "A3", input="X3")
    assert recs[3]["messages"][1]["content"] == "a"
    as_json = tmp_path / "ok.json"
    as_json.write_text(json.dumps([json.loads(x) for x in GOOD if x]))
    assert load_records(as_json) == recs


@pytest.mark.parametrize("bad_line, field, words", [
    ('{"prompt": "P", "completion": "C"', None, "not valid JSON"),
    ('{"prompt": "P"}', "completion", "missing"),
    ('{"instruction": "Q", "output": 42}', "output", "expected a string"),
    ('{"instruction": "Q"}', "output", "output"),
    ('{"question": "Q", "answer": "A"}', None, "unknown record format"),
    ('{"messages": [{"role": "user"}]}', "messages[0].content", "missing"),
    ('["P", "C"]', None, "JSON object"),
])
def test_record_errors_name_file_line_field(tmp_path, bad_line, field, words):
    path = _write(tmp_path, "bad.jsonl", GOOD[:2] + ["", bad_line, GOOD[3]])
    with pytest.raises(RecordError) as err:
        load_records(path)
    e = err.value
    assert (e.line, e.field) == (4, field)
    assert "bad.jsonl" in str(e) and "line 4" in str(e) and words in str(e)
    if field:
        assert repr(field) in str(e)


def test_record_error_in_json_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": None}]))
    with pytest.raises(RecordError, match="line 2.*'completion'") as err:
        load_records(p)
    assert err.value.line == 2 and err.value.field == "completion"


# ---------------------------------------------------------------------------------------------
# cleaning, splitting, contamination


def test_clean_reasons_on_faq():
    faq = course_dataset("faq")
    res = clean(faq)
    assert res.counts == {"empty": 2, "one-word answer": 1, "too long": 1, "exact duplicate": 2, "near duplicate": 2}
    assert len(res.kept) + len(res.dropped) == len(faq) == 40
    assert all(r in faq for r in res.kept) and all(r in faq for r, _ in res.dropped)
    text = res.report
    assert text.startswith("kept 32 of 40, dropped 8") and text.count("\n  - #") == 8
    assert "'How can I reset my password?' ~ #1" in text


def test_clean_pairs_and_parameters():
    pairs = [("Q1", "A long enough answer"), ("Q1", "A long enough answer "), ("Q2", ""), ("Q3", "Yes")]
    res = clean(pairs)
    assert res.kept == [pairs[0]] and [r for _, r in res.dropped] == ["exact duplicate", "empty", "one-word answer"]
    assert clean([("Q", "x" * 50 + " y")], max_chars=20).counts["too long"] == 1
    assert clean([("Q", "Yes")], min_words=1).kept == [("Q", "Yes")]
    chats = [to_chat("Hi there?", "Hello, how can I help?"), to_chat("Hi there? ", "Hello, how can I help?"),
             {"instruction": "Hi there!", "output": "Hello, how can I help?"}]
    assert [r for _, r in clean(chats).dropped] == ["exact duplicate", "near duplicate"]
    # compact JSON is many words, not a "one-word answer"
    assert clean([to_record("Extract.", '{"a":1,"b":"c"}', input="x")]).dropped == []


def test_near_duplicate_threshold():
    a = ("How do I reset my password?", "Use the Forgot password link on the sign-in page.")
    b = ("How can I reset my password?", "Use the Forgot password link on the sign-in page.")
    c = ("Which regions do you run in?", "Dublin, Virginia and Singapore.")
    assert data.jaccard("\n".join(a), "\n".join(b)) > 0.8 > data.jaccard("\n".join(a), "\n".join(c))
    assert clean([a, b, c]).counts["near duplicate"] == 1
    assert clean([a, b, c], near_dup_threshold=0.99).counts["near duplicate"] == 0
    with pytest.raises(ValueError, match="Jaccard"):
        find_overlap([a], [b], threshold=80)


def test_split_deterministic_and_disjoint():
    recs = [to_record(f"Q{i}", f"answer {i}") for i in range(50)]
    s1, s2, s3 = split(recs, 0.1, 0.2, seed=0), split(recs, 0.1, 0.2, seed=0), split(recs, 0.1, 0.2, seed=1)
    assert s1 == s2 and s1 != s3
    assert (len(s1.train), len(s1.val), len(s1.test)) == (35, 5, 10)
    ids = [r["prompt"] for part in s1 for r in part]
    assert sorted(ids) == sorted(r["prompt"] for r in recs)
    with pytest.raises(ValueError, match="nothing would be left"):
        split(recs[:2], 0.5, 0.5 - 1e-9)


def test_find_overlap_exact_and_near():
    train = [to_record("Extract.", '{"t":1}', input="Invoice 1: mouse 9.99"),
             to_record("Extract.", '{"t":2}', input="Invoice 2: keyboard 19.99 and a desk lamp 24.99")]
    test = [to_record("Extract.", '{"t":2}', input="Invoice 2: keyboard 19.99 and a desk lamp 24.99"),
            to_record("Extract.", '{"t":2}', input="Invoice 2: keyboard 19.99 and a desk-lamp 24.99!"),
            to_record("Extract.", '{"t":3}', input="Receipt 9: a stapler for 4.49")]
    found = find_overlap(train, test)
    assert [(o.train_idx, o.test_idx, o.kind) for o in found] == [(1, 0, "exact"), (1, 1, "near")]
    assert found[1].similarity >= 0.8
    # the shared instruction alone is not contamination
    assert find_overlap(train[:1], test[2:]) == []


def test_faq_contamination_before_and_after_cleaning():
    faq = course_dataset("faq")
    raw = split(faq, 0.0, 0.3, seed=0)
    assert find_overlap(raw.train, raw.test)  # duplicates straddle the split
    cleaned = split(clean(faq).kept, 0.0, 0.3, seed=0)
    assert find_overlap(cleaned.train, cleaned.test) == []


def test_corrupt_records_damages_the_share_it_reports():
    records = course_dataset("invoices", "train")[:30]
    before = [dict(r) for r in records]
    out = data.corrupt_records(records, 0.5, seed=3)
    assert records == before, "the input list must not be modified"
    assert len(out.corrupted) == 15 and out.corrupted == sorted(out.kinds)
    assert sorted(set(out.kinds.values())) == sorted(data.CORRUPTIONS)
    for i, (old, new) in enumerate(zip(records, out.records, strict=True)):
        assert new["prompt"] == old["prompt"]
        assert (new["completion"] != old["completion"]) == (i in out.corrupted), i
    for i, kind in out.kinds.items():
        if kind == "broken JSON":
            with pytest.raises(json.JSONDecodeError):
                json.loads(out.records[i]["completion"])
        else:
            wrong, right = json.loads(out.records[i]["completion"]), json.loads(records[i]["completion"])
            assert wrong.keys() == right.keys() and wrong != right
            if kind == "wrong numbers":
                assert wrong["total"] != right["total"] and wrong["currency"] == right["currency"]
    assert data.corrupt_records(records, 0.5, seed=3) == out, "same seed, same corruption"
    assert data.corrupt_records(records, 0.0).corrupted == []
    assert len(data.corrupt_records(records, 1.0).corrupted) == 30


def test_corrupt_records_errors():
    with pytest.raises(ValueError, match="share"):
        data.corrupt_records(course_dataset("invoices", "train")[:4], 1.5)
    with pytest.raises(ValueError, match="record 1"):
        data.corrupt_records([to_record("Say.", '{"a": "b"}'), to_record("Say.", "not json")], 0.5)


def test_course_dataset_errors():
    with pytest.raises(FileNotFoundError, match="Available: .*'faq'"):
        course_dataset("nope")
    with pytest.raises(ValueError, match="not split"):
        course_dataset("faq", "train")
    with pytest.raises(ValueError, match="Unknown split"):
        course_dataset("invoices", "training")


def test_course_dataset_invoices_present_or_clear_error():
    if data.dataset_path("invoices", "train").exists():
        all_splits = course_dataset("invoices")
        assert set(all_splits) >= {"train", "test"} and all_splits["train"] == course_dataset("invoices", "train")
        assert all("prompt" in r and "completion" in r for r in all_splits["train"])
    else:
        with pytest.raises(FileNotFoundError, match="python -m labkit_dev.invoices"):
            course_dataset("invoices")


def test_course_dataset_missing_split(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATASETS_DIR", tmp_path)
    (tmp_path / "toy_train.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    assert data.available_datasets() == ["toy"]
    assert course_dataset("toy") == {"train": [{"prompt": "p", "completion": "c"}]}
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        course_dataset("toy", "test")


# ---------------------------------------------------------------------------------------------
# label masks and templates


def test_tokenize_with_labels_masks_prompt_keeps_eos(tok):
    rec = to_record("How do I reset my password?", "Click Forgot password.")
    enc = tokenize_with_labels(rec, tok)
    n_prompt = len(tok(rec["prompt"])["input_ids"])
    assert enc["input_ids"][:n_prompt] == tok(rec["prompt"])["input_ids"]  # what inference sees
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:] and enc["labels"][-1] == tok.eos_token_id
    assert tok.decode(enc["input_ids"][n_prompt:-1]) == rec["completion"]
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])
    # same ids as tokenising the joined text (TRL's way), for the course template
    assert enc["input_ids"] == tok(rec["prompt"] + rec["completion"])["input_ids"] + [tok.eos_token_id]
    table = data.label_table(enc, tok)
    assert table[0][2] == "masked" and table[-1] == ("<|im_end|>", tok.eos_token_id, "learned")


def test_tokenize_with_labels_alpaca_chat_and_limits(tok):
    assert tokenize_with_labels({"instruction": "Q", "output": "An answer"}, tok) == \
        tokenize_with_labels(to_record("Q", "An answer"), tok)
    chat = tokenize_with_labels(to_chat("Hi?", "Hello there!"), tok)
    learned = [t for t, lab in zip(chat["input_ids"], chat["labels"], strict=True) if lab != -100]
    assert tok.decode(learned).startswith("Hello there!<|im_end|>") and tok.eos_token_id in learned
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        short = tokenize_with_labels(to_record("Q", "one two three four five six"), tok, max_length=14)
    assert len(short["input_ids"]) == 14 and any("truncated" in str(x.message) for x in w)
    with pytest.raises(ValueError, match="no answer"):
        tokenize_with_labels(to_record("Q " * 50, "A"), tok, max_length=14)
    assert tok.tokenize("Total") == ["Total"]
    with pytest.warns(UserWarning, match="merge across"):  # "Tot" + "al" tokenises as the one token "Total"
        tokenize_with_labels({"prompt": "Tot", "completion": "al"}, tok)


def test_check_template():
    check_template(format_prompt("Q"), to_record("Q", "A")["prompt"])
    with pytest.raises(TemplateMismatch) as err:
        check_template(format_prompt("Q"), "### Instruction:\nQ\n\n### Response: ")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "character 33 (line 4, column 14)" in msg and "'\\n'" in msg and "' '" in msg
    with pytest.raises(TemplateMismatch, match="end of text"):
        check_template(format_prompt("Q"), format_prompt("Q").rstrip("\n"))


# ---------------------------------------------------------------------------------------------
# exercise checks


def _good_clean(pairs):
    kept = [to_record(q, a) for q, a in pairs if q.strip() and a.strip()]
    print(f"dropped {len(pairs) - len(kept)} of {len(pairs)}")
    return kept


def test_check_to_record_accepts_solution_rejects_slips(capsys):
    assert check_to_record(to_record)
    assert check_to_record(lambda q, a: {"prompt": f"### Instruction:\n{q.strip()}\n\n### Response:\n",
                                         "completion": a.strip()})
    assert not check_to_record(lambda q, a: {"prompt": f"### Instruction:\n{q}\n### Response:\n", "completion": a})
    assert not check_to_record(lambda q, a: {"prompt": f"### Instruction:\n{q}\n\n### Response:\n", "completion": a})
    assert not check_to_record(lambda q, a: {"prompt": f"### Instruction:\n{q.strip()}\n\n### Response:",
                                             "completion": a.strip()})
    assert not check_to_record(lambda q, a: 1 / 0)
    out = capsys.readouterr().out
    assert "first difference" in out and "ZeroDivisionError" in out and "stray whitespace" in out
    assert "### Instruction:\\n' + question" not in out, "feedback says what is wrong, not the solution"


def test_check_clean_accepts_solution_rejects_slips(capsys):
    assert check_clean(_good_clean)

    def no_strip(pairs):
        kept = [to_record(q, a) for q, a in pairs if q and a]
        print(f"dropped {len(pairs) - len(kept)}")
        return kept

    def no_count(pairs):
        kept = [to_record(q, a) for q, a in pairs if q.strip() and a.strip()]
        print(f"kept {len(kept)}")
        return kept

    def raw_pairs(pairs):
        kept = [(q, a) for q, a in pairs if q.strip() and a.strip()]
        print(f"dropped {len(pairs) - len(kept)}")
        return kept

    assert not check_clean(no_strip)
    assert not check_clean(no_count)
    assert not check_clean(raw_pairs)
    out = capsys.readouterr().out
    assert "not in the course format" in out and "Which rows look empty" in out
    assert "print(f" not in out and ".strip()" not in out, "feedback says what is wrong, not the solution"


@pytest.mark.slow
def test_labels_match_trl_sft_trainer(tiny, tmp_path):
    """Our ids and masks equal what TRL's SFTTrainer builds for prompt/completion records."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from labkit.models import tiny_model

    tokenizer = tiny[1]
    model = tiny_model()[0]  # SFTTrainer changes the model it is given: never the shared session fixture
    recs = course_dataset("faq")[:10] + [{"prompt": format_prompt("Say hi"), "completion": " leading space"}]
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(recs),
                         args=SFTConfig(output_dir=str(tmp_path), report_to=[], completion_only_loss=True,
                                        use_cpu=True))
    for rec, ex in zip(recs, trainer.train_dataset, strict=True):
        ours = tokenize_with_labels(rec, tokenizer)
        assert ours["input_ids"] == ex["input_ids"] and ours["labels"] == ex["labels"]

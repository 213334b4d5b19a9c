"""The invoice course task: shipped files equal the generator's output, splits are clean, and the
task is extraction (every number is in the text), not arithmetic."""

import json
import re
import statistics

import pytest

from labkit import invoices
from labkit.data import course_dataset, find_overlap, format_prompt, load_records


@pytest.fixture(scope="module")
def generated():
    return invoices.make_records()


def test_shipped_files_match_generator(generated):
    for split, records in generated.items():
        shipped = load_records(invoices.DATASET_DIR / f"invoices_{split}.jsonl")
        assert shipped == records, f"invoices_{split}.jsonl drifted: run `python -m labkit_dev.invoices`"


def test_split_sizes_and_hard_cases(generated):
    assert len(generated["train"]) == 256
    assert len(generated["val"]) == 32
    assert len(generated["test"]) == 64 + len(invoices.HARD_CASES)
    # hard cases lead the test split, so the CPU profile's first 32 include them
    hard_prompts = [format_prompt(invoices.INSTRUCTION, text) for text, _ in invoices.HARD_CASES]
    assert [r["prompt"] for r in generated["test"][: len(hard_prompts)]] == hard_prompts
    assert course_dataset("invoices", "test") == generated["test"]


def test_deterministic_and_seeded():
    assert invoices.make_records(seed=7) == invoices.make_records(seed=7)
    assert invoices.make_records(seed=7)["train"] != invoices.make_records(seed=8)["train"]


def test_no_overlap_between_splits(generated):
    assert find_overlap(generated["train"], generated["test"]) == []
    assert find_overlap(generated["train"], generated["val"]) == []
    assert find_overlap(generated["val"], generated["test"]) == []


def test_records_are_prompt_completion_with_fixed_instruction(generated):
    for records in generated.values():
        for rec in records:
            assert set(rec) == {"prompt", "completion"}
            assert rec["prompt"].startswith(f"### Instruction:\n{invoices.INSTRUCTION}\n\n### Input:\n")
            assert rec["prompt"].endswith("### Response:\n")


def _numbers_in(text: str) -> set[str]:
    return {m.replace(",", ".") for m in re.findall(r"\d+[.,]\d\d", text)}


def test_targets_are_consistent_json_extractable_from_text(generated):
    hard_texts = {t for t, _ in invoices.HARD_CASES}
    for records in generated.values():
        for rec in records:
            data = json.loads(rec["completion"])
            assert list(data) == ["items", "currency", "total"]
            assert 1 <= len(data["items"]) <= 3
            assert data["currency"] in {"EUR", "USD", "GBP", "CHF"}
            total = sum(it["qty"] * it["price"] for it in data["items"])
            assert abs(total - data["total"]) < 1e-6, rec
            text = rec["prompt"].split("### Input:\n")[1].split("\n\n### Response:")[0]
            if text in hard_texts:
                continue
            shown = _numbers_in(text)
            for it in data["items"]:
                assert it["name"] in text
                assert f"{it['price']:.2f}" in shown and str(it["price"]) == f"{it['price']:.2f}"
            assert f"{data['total']:.2f}" in shown and str(data["total"]) == f"{data['total']:.2f}"


@pytest.mark.course_model  # the lengths are in the course tokenizer's tokens
def test_records_are_short(generated):
    from labkit.models import load_tokenizer

    tok = load_tokenizer()
    lengths = [len(tok(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in generated["train"]]
    assert statistics.mean(lengths) <= 120, statistics.mean(lengths)
    assert max(lengths) <= 200


@pytest.mark.parametrize("style", invoices.NEW_LAYOUTS)
def test_a_new_layout_keeps_the_answer_and_is_one_training_never_shows(generated, style):
    record = generated["test"][len(invoices.HARD_CASES)]
    moved = invoices.relayout(record, style)
    assert moved["completion"] == record["completion"] and moved["prompt"] != record["prompt"]
    data = json.loads(record["completion"])
    invoice = moved["prompt"].split("### Input:\n")[1]
    # every field is still printed: the name, the quantity and each amount (in the currency's first format)
    assert all(item["name"] in invoice and f"{item['price']:.2f}" in invoice for item in data["items"])
    assert f"{data['total']:.2f}" in invoice
    marker = {"one field per line": "Unit price: ", "swapped columns": "Price | Qty | Item"}[style]
    assert marker in invoice and not [r for r in generated["train"] if marker in r["prompt"]]


def test_an_unknown_layout_names_the_known_ones():
    with pytest.raises(ValueError, match="one field per line"):
        invoices.relayout({"prompt": "", "completion": "{}"}, "diagonal")

"""The private-facts catalogue of lesson 07: the shipped file equals the generator's output, the facts
are unique, test questions are rewordings (never training copies), and the fact check is strict."""

import pytest

from labkit import knowledge
from labkit.knowledge import (
    Question,
    edit_price,
    eval_questions,
    fact_accuracy,
    has_fact,
    load_catalogue,
    make_catalogue,
    train_records,
    write_catalogue,
)


def test_shipped_file_matches_generator(tmp_path):
    shipped = (knowledge.DATASETS_DIR / knowledge.CATALOGUE_FILE).read_bytes()
    assert write_catalogue(tmp_path).read_bytes() == shipped, "knowledge.jsonl drifted: run `python -m labkit.knowledge`"
    assert load_catalogue() == make_catalogue()


def test_deterministic_and_seeded():
    assert make_catalogue(seed=7) == make_catalogue(seed=7)
    assert make_catalogue(seed=7) != make_catalogue(seed=8)


def test_facts_are_unique_and_stated_in_the_document():
    cat = make_catalogue()
    assert len(cat) == knowledge.N_PRODUCTS
    assert len({p.name for p in cat}) == len({p.price for p in cat}) == len(cat)
    for p in cat:
        assert f"{p.price} euros" in p.document and p.town in p.document and p.name in p.document


def test_eval_questions_are_not_training_copies():
    cat = make_catalogue()
    qs = eval_questions(cat)
    assert len(qs) == 2 * len(cat)
    trained = "\n".join(r["prompt"] for r in train_records(cat))
    assert not [q.question for q in qs if q.question in trained]
    answers = "\n".join(r["completion"] for r in train_records(cat))
    assert all(q.fact in answers for q in qs)  # every tested fact is taught: the fine-tune has its chance


@pytest.mark.parametrize(("answer", "fact", "want"), [
    ("It costs 149 euros.", "149", True), ("€149", "149", True), ("1490 euros", "149", False),
    ("14.9 euros", "149", False), ("149.50 euros", "149", False), ("It costs 149.", "149", True),
    ("made in lindholt", "Lindholt", True), ("made in Lindhurst", "Lindholt", False), ("", "149", False)])
def test_has_fact(answer, fact, want):
    assert has_fact(answer, fact) is want


def test_fact_accuracy_pairs_up():
    qs = [Question("FW-01", "price", "q", "12"), Question("FW-02", "town", "q", "Elstow")]
    assert fact_accuracy(["12 euros", "in Penrow"], qs) == 0.5
    with pytest.raises(ValueError, match="pair up"):
        fact_accuracy(["12"], qs)


def test_edit_price_changes_one_document_only():
    cat = make_catalogue()
    edited = edit_price(cat, cat[0].id, 999)
    assert edited[0].price == 999 and "999 euros" in edited[0].document and f"{cat[0].price} euros" not in edited[0].document
    assert edited[1:] == cat[1:] and cat[0].price != 999
    with pytest.raises(KeyError, match="No product"):
        edit_price(cat, "FW-99", 1)

"""BM25 retrieval for lesson 07: the right document comes first, recall@k counts hits, the RAG prompt
is in the course template with the passages before the question."""

import pytest

from labkit.knowledge import documents, edit_price, eval_questions, load_catalogue
from labkit.prompting import split_prompt
from labkit.retrieval import RAG_INSTRUCTION, Retriever, rag_prompt, recall_at_k

DOCS = ["The Zephyr kettle costs 49 euros.", "Our shop is in Tromso.", "Returns are accepted within 30 days.",
        "The Zephyr mug costs 9 euros."]


def test_search_ranks_the_matching_document_first():
    r = Retriever(DOCS)
    assert r.search("how much is the kettle?", k=2)[0] == 0
    assert r.search("where is the shop?", k=1) == [1]
    assert r.passages("mug price", k=1) == [DOCS[3]]


def test_recall_at_k_counts_the_gold_document_in_the_top_k():
    r = Retriever(DOCS)
    questions, gold = ["kettle", "returns days", "kettle"], [0, 2, 3]  # the last one's gold is not top-1
    assert recall_at_k(r, questions, gold, k=1) == pytest.approx(2 / 3)
    assert recall_at_k(r, questions, gold, k=len(DOCS)) == 1.0
    with pytest.raises(ValueError, match="pair up"):
        recall_at_k(r, questions, gold[:1], k=1)


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="at least one document"):
        Retriever([])
    with pytest.raises(ValueError, match="k must be between"):
        Retriever(DOCS).search("kettle", k=5)


def test_rag_prompt_is_a_course_prompt_with_numbered_passages():
    prompt = rag_prompt("How much is the kettle?", DOCS[:2])
    instruction, input_ = split_prompt(prompt)
    assert instruction == RAG_INSTRUCTION
    assert input_ == f"Passages:\n[1] {DOCS[0]}\n[2] {DOCS[1]}\n\nQuestion: How much is the kettle?"


def test_catalogue_questions_retrieve_their_document_and_reindexing_follows_an_edit():
    cat = load_catalogue()
    qs = eval_questions(cat)
    ids = [p.id for p in cat]
    r = Retriever(documents(cat))
    assert recall_at_k(r, [q.question for q in qs], [ids.index(q.product_id) for q in qs], k=3) >= 0.95
    edited = Retriever(documents(edit_price(cat, cat[0].id, 999)))
    assert "999 euros" in edited.passages(qs[0].question, k=1)[0]

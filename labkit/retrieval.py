"""Retrieval: find the passages that answer a question, and put them in the prompt (RAG).

Retrieval-augmented generation keeps facts *outside* the model: a retriever picks the top-k
documents for a question and the prompt carries them, so changing a document changes the answer
with no retraining. The retriever here is BM25 (word overlap weighted by rarity) from the `bm25s`
package: it needs no model download, runs offline in milliseconds, and on questions that name the
product it is looking for, exact word overlap is what matters. `recall_at_k` measures whether the
right document is among the top k: measure that before you blame the generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labkit.data import format_prompt

__all__ = ["Retriever", "recall_at_k", "rag_prompt", "RAG_INSTRUCTION"]

RAG_INSTRUCTION = "Answer the customer's question in one short sentence, using the passages."


@dataclass
class Retriever:
    """BM25 over a list of documents: `search(question, k)` → the indices of the top-k documents.

    English stopwords are dropped and no stemming is done (bm25s' defaults without the optional
    PyStemmer dependency). Build a new Retriever when the documents change: that *is* re-indexing,
    and it takes milliseconds.
    """

    documents: list[str]

    def __post_init__(self) -> None:
        import bm25s

        if not self.documents:
            raise ValueError("A retriever needs at least one document to index; got an empty list.")
        self.documents = list(self.documents)
        self._index = bm25s.BM25()
        self._index.index(self._tokens(self.documents), show_progress=False)

    @staticmethod
    def _tokens(texts: Sequence[str]):
        import bm25s

        return bm25s.tokenize(list(texts), stopwords="en", show_progress=False)

    def search(self, question: str, k: int = 3) -> list[int]:
        """Indices of the k best documents for `question`, best first (ties: lower index first)."""
        return self.search_many([question], k)[0]

    def search_many(self, questions: Sequence[str], k: int = 3) -> list[list[int]]:
        """`search` for each question."""
        if not 1 <= k <= len(self.documents):
            raise ValueError(f"k must be between 1 and the number of documents ({len(self.documents)}), got {k}.")
        found, _scores = self._index.retrieve(self._tokens(questions), k=k, show_progress=False, n_threads=1)
        return [[int(i) for i in row] for row in found]

    def passages(self, question: str, k: int = 3) -> list[str]:
        """The text of the top-k documents for `question`."""
        return [self.documents[i] for i in self.search(question, k)]


def recall_at_k(retriever: Retriever, questions: Sequence[str], gold: Sequence[int], k: int) -> float:
    """Fraction of questions whose right document (`gold[i]`, an index) is among the top k retrieved."""
    if len(questions) != len(gold) or not questions:
        raise ValueError(f"Got {len(questions)} questions and {len(gold)} gold documents: they must pair up, "
                         "and there must be at least one.")
    hits = retriever.search_many(questions, k)
    return sum(g in row for g, row in zip(gold, hits, strict=True)) / len(questions)


def rag_prompt(question: str, passages: Sequence[str], instruction: str = RAG_INSTRUCTION) -> str:
    """The course-format prompt with the retrieved passages, numbered, before the question."""
    context = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
    return format_prompt(instruction, f"Passages:\n{context}\n\nQuestion: {question}")

"""Private facts: a small product catalogue the base model cannot know, to compare RAG and fine-tuning.

Lesson 07 asks where a fact should live: in the prompt (retrieved from documents) or in the weights
(fine-tuned in). To measure that fairly the facts must be ones no pretrained model has seen, so this
module *generates* them from a fixed seed: 30 products of a fictional shop, Fernwood Outfitters,
each with a made-up name, a price and the town of the workshop that makes it. Each product has

- one **document** (its catalogue entry: what a retriever searches and what fine-tuning reads),
- **training questions**: paraphrased Q/A pairs made from the document (for fine-tuning only),
- **test questions**: other rewordings, never trained on, each scored by whether the answer
  contains the key fact (`has_fact`: the price as a number, or the town's name).

`edit_price` changes one document's price (a price list update) without touching anything else,
so a lesson can show which approaches follow the edit without retraining.
The shipped file `labkit/datasets/knowledge.jsonl` is written by `python -m labkit_dev.knowledge`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from labkit.data import DATASETS_DIR, to_record

__all__ = ["Product", "make_catalogue", "load_catalogue", "write_catalogue", "documents", "train_records",
           "eval_questions", "Question", "has_fact", "fact_accuracy", "edit_price", "INSTRUCTION", "SHOP"]

SEED = 2026
N_PRODUCTS = 30
SHOP = "Fernwood Outfitters"
INSTRUCTION = f"Answer the customer's question about a {SHOP} product in one short sentence."
CATALOGUE_FILE = "knowledge.jsonl"

_NAMES = ["Kestrel", "Marten", "Osprey", "Vole", "Heron", "Lynx", "Plover", "Stoat", "Curlew", "Badger",
          "Wren", "Otter", "Merlin", "Dipper", "Ermine", "Petrel", "Shrike", "Tern", "Finch", "Linnet",
          "Ptarmigan", "Pipit", "Grouse", "Dunlin", "Bittern", "Avocet", "Sparrow", "Raven", "Siskin", "Hobby"]
_KINDS = ["tent", "backpack", "sleeping bag", "rain jacket", "stove", "head torch", "trekking pole set",
          "water filter", "camp chair", "hammock"]
_TOWNS = ["Lindholt", "Brackenridge", "Carrow Vale", "Dunmere", "Elstow", "Farrowby", "Glenhallow",
          "Harwick", "Ivybridge Down", "Kelsmoor", "Larkhythe", "Millbeck", "Northwold", "Oakhurst Fen",
          "Penrow"]
_EXTRAS = ["It comes in moss green and slate grey.", "It packs down small enough for a day trip.",
           "It is covered by our two-season guarantee.", "Customers like it for winter camping.",
           "It is one of our lightest designs.", "It was redesigned this spring."]
# Three layouts, so that documents do not all read alike.
_DOC_LAYOUTS = [
    "The {name} is a {kind} sold by {shop}. It costs {price} euros and is made in our {town} workshop. {extra}",
    "{shop} catalogue entry: {name} ({kind}). Price: {price} euros. Made in {town}. {extra}",
    "Made in {town}, the {name} is our {kind} for every season. {extra} Its price is {price} euros.",
]
# Training rewordings (fine-tuning sees these) and test rewordings (never trained on) of each question.
TRAIN_TEMPLATES = {
    "price": ["How much does the {name} cost?", "What is the price of the {name}?"],
    "town": ["Where is the {name} made?", "In which town is the {name} produced?"],
}
TEST_TEMPLATES = {
    "price": ["What would I pay for the {name}?"],
    "town": ["Which workshop town makes the {name}?"],
}
_ANSWERS = {"price": "The {name} costs {price} euros.", "town": "The {name} is made in {town}."}


@dataclass(frozen=True)
class Product:
    """One catalogue entry: the facts, and the document that states them."""

    id: str
    name: str
    kind: str
    price: int
    town: str
    document: str

    def fact(self, field: str) -> str:
        """The key fact a correct answer must contain: the price as a number, or the town."""
        return str(self.price) if field == "price" else self.town


@dataclass(frozen=True)
class Question:
    """One test question, and the fact its answer must contain."""

    product_id: str
    field: str
    question: str
    fact: str


def _document(p: dict, layout: int, extra: str) -> str:
    return _DOC_LAYOUTS[layout].format(shop=SHOP, extra=extra, **p)


def make_catalogue(seed: int = SEED, n: int = N_PRODUCTS) -> list[Product]:
    """The catalogue, deterministic for a seed: unique names, unique prices (so no guess is right twice)."""
    if not 1 <= n <= len(_NAMES):
        raise ValueError(f"n must be between 1 and {len(_NAMES)} (one product per name), got {n}.")
    rng = random.Random(seed)
    names = rng.sample(_NAMES, n)
    prices = rng.sample(range(23, 480), n)
    out = []
    for i, (word, price) in enumerate(zip(names, prices, strict=True)):
        kind = rng.choice(_KINDS)
        p = {"name": f"{word} {kind.title()}", "kind": kind, "price": price, "town": rng.choice(_TOWNS)}
        doc = _document(p, layout=i % len(_DOC_LAYOUTS), extra=rng.choice(_EXTRAS))
        out.append(Product(id=f"FW-{i + 1:02d}", document=doc, **p))
    return out


def write_catalogue(folder: Path, seed: int = SEED) -> Path:
    """Write the catalogue as JSON lines (one product a line) into `folder` → the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CATALOGUE_FILE
    path.write_text("".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in make_catalogue(seed)),
                    encoding="utf-8")
    return path


def load_catalogue(path: str | Path | None = None) -> list[Product]:
    """The shipped catalogue (or one at `path`), one Product per line."""
    path = Path(path) if path else DATASETS_DIR / CATALOGUE_FILE
    if not path.exists():
        raise FileNotFoundError(f"No catalogue at {path}. It is written by `python -m labkit_dev.knowledge`; "
                                "run it in the course checkout (or reinstall labkit).")
    return [Product(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def documents(catalogue: Sequence[Product]) -> list[str]:
    """The documents a retriever indexes, in catalogue order."""
    return [p.document for p in catalogue]


def train_records(catalogue: Sequence[Product]) -> list[dict]:
    """Fine-tuning records: each document (recited on request) and its paraphrased Q/A pairs.

    The documents alone teach facts in one wording; the Q/A pairs add the question-answer shape and
    more wordings (Ovadia et al. 2023 found fine-tuning needed many paraphrases to absorb facts).
    Test questions use other wordings (`TEST_TEMPLATES`), so a test is never a training copy.
    """
    records = []
    for p in catalogue:
        records.append(to_record(f"Show the {SHOP} catalogue entry for the {p.name}.", p.document))
        for field, templates in TRAIN_TEMPLATES.items():
            answer = _ANSWERS[field].format(**asdict(p))
            records += [to_record(INSTRUCTION, answer, input=t.format(name=p.name)) for t in templates]
    return records


def eval_questions(catalogue: Sequence[Product], fields: Sequence[str] = ("price", "town")) -> list[Question]:
    """Held-out questions (test rewordings only), each with the fact its answer must contain."""
    return [Question(p.id, field, t.format(name=p.name), p.fact(field))
            for p in catalogue for field in fields for t in TEST_TEMPLATES[field]]


def has_fact(answer: str, fact: str) -> bool:
    """Does the answer state the fact? A number must appear as a whole number (149 is not in 1490 or
    14.9); a name must appear, case ignored. Containment, not exact match: the wording may vary."""
    if fact.isdigit():
        return re.search(rf"(?<![\d.,]){fact}(?![\d]|[.,]\d)", answer) is not None
    return fact.lower() in answer.lower()


def fact_accuracy(answers: Sequence[str], questions: Sequence[Question]) -> float:
    """Fraction of answers that contain their question's key fact."""
    if len(answers) != len(questions) or not answers:
        raise ValueError(f"Got {len(answers)} answers for {len(questions)} questions: they must pair up one to "
                         "one, and there must be at least one.")
    return sum(has_fact(a, q.fact) for a, q in zip(answers, questions, strict=True)) / len(answers)


def edit_price(catalogue: Sequence[Product], product_id: str, new_price: int) -> list[Product]:
    """A copy of the catalogue with one product's price changed, in its document too (a price update)."""
    out, found = [], False
    for p in catalogue:
        if p.id == product_id:
            old = f"{p.price} euros"
            if old not in p.document:
                raise ValueError(f"{p.id}'s document does not state its price as {old!r}: {p.document!r}")
            p = replace(p, price=new_price, document=p.document.replace(old, f"{new_price} euros"))
            found = True
        out.append(p)
    if not found:
        raise KeyError(f"No product {product_id!r} in the catalogue; ids run {catalogue[0].id}..{catalogue[-1].id}.")
    return out

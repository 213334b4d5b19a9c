"""The course task: invoice text → compact JSON of its line items, currency and total.

Why this task: the answer is checkable (exact match on JSON), prompting alone cannot give the
exact schema a downstream program expects (key names, ISO currency codes, numbers not strings),
and a 135M model learns it from ~160 examples in two epochs. Every number the JSON needs is
printed in the invoice, so the model learns *extraction and normalisation* (€ → "EUR",
"3,49" → 3.49, layouts → one schema), never arithmetic.

Records are short on purpose: on a CPU, tokens are the cost of training.
The shipped files labkit/datasets/invoices_{train,val,test}.jsonl are generated at build time, in a
checkout, by `python -m labkit_dev.invoices [--root PATH]` (course tooling, not in the wheel); a
test regenerates them in memory and compares, so they cannot drift from this code. Nothing writes into the installed package at run
time: lessons read the shipped files (`labkit.data`), or call `make_records()` in memory.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from labkit.data import to_record

INSTRUCTION = "Extract the invoice as JSON."
SEED = 1234
SPLIT_SIZES = {"train": 256, "val": 32, "test": 64}
DATASET_DIR = Path(__file__).resolve().parent / "datasets"  # where the shipped files are read from

PRODUCTS = [
    "USB cable", "Mouse", "Keyboard", "Desk lamp", "Notebook", "Pen set", "Coffee mug", "Stapler",
    "Monitor stand", "HDMI adapter", "Webcam", "Headphones", "Paper A4", "Ink cartridge", "Chair mat",
    "Phone case", "Power bank", "Tape", "Marker", "Folder", "Calculator", "Backpack", "Water bottle",
    "Router", "SD card", "Charger", "Speaker", "Printer paper", "Envelopes", "Scissors", "Whiteboard",
    "Sticky notes", "Laptop sleeve", "Cable ties", "Batteries", "Desk fan", "Tea box", "Label tape",
]

# currency code → ways an invoice writes an amount (the model must map each back to the code)
_FORMATS = {
    "EUR": ["€{a}", "{a} EUR", "{c} €"],
    "USD": ["${a}", "{a} USD", "US${a}"],
    "GBP": ["£{a}", "{a} GBP"],
    "CHF": ["CHF {a}", "{a} CHF"],
}
_HEADERS = ["Invoice #{n}", "INVOICE {n}", "Receipt {n}", "Order {n}", "", "", "", ""]
_TOTAL_WORDS = ["Total", "TOTAL", "Total due", "Amount due"]


def _cents_ok(cents: int) -> bool:
    """Amounts whose last cent digit is not 0, so "3.49" in the text is 3.49 in the JSON as is
    (json writes 3.5 for 3.50: a formatting quirk we keep out of the task)."""
    return cents % 10 != 0


def _amount(cents: int, fmt: str) -> str:
    a = f"{cents // 100}.{cents % 100:02d}"
    return fmt.format(a=a, c=a.replace(".", ","))


def _layout(rng: random.Random, items: list[tuple[str, int, int]], fmt: str, total: int) -> str:
    """One of five invoice layouts, with optional header; lines stay short to save tokens."""
    style = rng.randrange(5)
    word = rng.choice(_TOTAL_WORDS)
    header = rng.choice(_HEADERS).format(n=rng.randint(10, 999))
    if style == 0:
        lines = [f"{q} x {p} @ {_amount(c, fmt)}" for p, q, c in items]
    elif style == 1:
        lines = [f"{p}  qty {q}  {_amount(c, fmt)}" for p, q, c in items]
    elif style == 2:
        lines = ["Item | Qty | Price"] + [f"{p} | {q} | {_amount(c, fmt)}" for p, q, c in items]
    elif style == 3:
        lines = [f"{p} (x{q}) ... {_amount(c, fmt)} each" for p, q, c in items]
    else:
        body = "; ".join(f"{q} {p} at {_amount(c, fmt)}" for p, q, c in items)
        lines = [f"Bought {body}."]
    lines.append(f"{word}: {_amount(total, fmt)}")
    return "\n".join(([header] if header else []) + lines)


def to_json(items: list[tuple[str, int, int]], currency: str, total: int) -> str:
    """The target: compact JSON, keys in a fixed order, prices as numbers."""
    data = {
        "items": [{"name": p, "qty": q, "price": c / 100} for p, q, c in items],
        "currency": currency,
        "total": total / 100,
    }
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def make_invoice(rng: random.Random) -> tuple[str, str]:
    """One random invoice → (invoice text, target JSON)."""
    while True:
        n = rng.choices([1, 2, 3], weights=[5, 4, 1])[0]
        names = rng.sample(PRODUCTS, n)
        items = []
        for name in names:
            cents = rng.randint(50, 2999)
            while not _cents_ok(cents):
                cents = rng.randint(50, 2999)
            items.append((name, rng.choices([1, 2, 3, 4, 5, 10], weights=[5, 4, 3, 2, 1, 1])[0], cents))
        total = sum(q * c for _, q, c in items)
        if _cents_ok(total):
            break
    currency = rng.choice(list(_FORMATS))
    fmt = rng.choice(_FORMATS[currency])
    return _layout(rng, items, fmt, total), to_json(items, currency, total)


# Hand-written hard cases (in test only): layouts and details never generated for training.
HARD_CASES: list[tuple[str, str]] = [
    ("Receipt 77\n1 x Standing desk @ €349.99\nTotal: €349.99",
     to_json([("Standing desk", 1, 34999)], "EUR", 34999)),
    ("Bought 12 Pencil at 0.25 USD.\nTotal: 3.00 USD",
     '{"items":[{"name":"Pencil","qty":12,"price":0.25}],"currency":"USD","total":3.0}'),
    ("Item | Qty | Price\nTea box | 2 | 4,05 €\nTea box | 1 | 4,05 €\nTotal: 12,15 €",
     to_json([("Tea box", 2, 405), ("Tea box", 1, 405)], "EUR", 1215)),
    ("INVOICE 5\nWebcam  qty 1  CHF 59.95\nMouse  qty 3  CHF 9.99\nTotal due: CHF 89.92",
     to_json([("Webcam", 1, 5995), ("Mouse", 3, 999)], "CHF", 8992)),
]


def make_records(seed: int = SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """All splits, deterministic for a seed. Invoices are drawn once and deduplicated before
    splitting, so no invoice text appears in two splits."""
    sizes = sizes or SPLIT_SIZES
    rng = random.Random(seed)
    need = sum(sizes.values())
    seen: set[str] = {text for text, _ in HARD_CASES}
    pairs: list[tuple[str, str]] = []
    while len(pairs) < need:
        text, target = make_invoice(rng)
        if text not in seen:
            seen.add(text)
            pairs.append((text, target))
    out: dict[str, list[dict]] = {}
    start = 0
    for split, n in sizes.items():
        out[split] = [to_record(INSTRUCTION, target, input=text) for text, target in pairs[start:start + n]]
        start += n
    # hard cases first, so every prefix of the test set (the CPU profile uses the first 32) has them
    out["test"] = [to_record(INSTRUCTION, t, input=x) for x, t in HARD_CASES] + out.get("test", [])
    return out


# Layouts the generator never writes (`_layout` has five), for measuring overfitting to format: the same
# invoice, its fields in another arrangement. Amounts use the currency's first format.
NEW_LAYOUTS = ("one field per line", "swapped columns")


def relayout(record: dict, style: str) -> dict:
    """The invoice of `record` (a course record) in a layout training never showed → a record with the same
    answer. Why: a model can learn where the fields sit instead of what they are, which only a new layout
    reveals (lesson 05 measures it). Rebuilt from the answer JSON, so nothing but the layout changes."""
    if style not in NEW_LAYOUTS:
        raise ValueError(f"Unknown layout {style!r}; choose from {list(NEW_LAYOUTS)}.")
    data = json.loads(record["completion"])
    fmt = _FORMATS[data["currency"]][0]

    def money(value: float) -> str:
        return _amount(round(value * 100), fmt)

    if style == "one field per line":
        lines = [line for item in data["items"] for line in (
            f"Product: {item['name']}", f"Quantity: {item['qty']}", f"Unit price: {money(item['price'])}")]
    else:  # "swapped columns": a training layout's table, its columns in the reverse order
        lines = ["Price | Qty | Item"] + [f"{money(item['price'])} | {item['qty']} | {item['name']}" for item in data["items"]]
    lines.append(f"Total: {money(data['total'])}")
    return to_record(INSTRUCTION, record["completion"], input="\n".join(lines))


def write_datasets(folder: Path, seed: int = SEED) -> dict[str, Path]:
    """Write invoices_{split}.jsonl (one JSON record per line) into `folder` → {split: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in make_records(seed).items():
        path = folder / f"invoices_{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        paths[split] = path
    return paths

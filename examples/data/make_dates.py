"""Write the dates example data set: a date written any way → ISO 8601 (YYYY-MM-DD).

A second task for `examples/dates.yaml`, to show that a run config is not tied to invoices. The
records are Alpaca-shaped ({"instruction", "input", "output"}), the shape most public data sets use.
Generated from a fixed seed, so the files are the same on every machine:

    python examples/data/make_dates.py        # rewrites examples/data/dates_{train,val,test}.jsonl

The model must read the day, month and year out of many layouts (month names, abbreviations,
ordinals, day-first and month-first with the month spelled out, two-digit years) and write one format.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

INSTRUCTION = "Rewrite the date in ISO 8601 format (YYYY-MM-DD)."
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
SIZES = {"train": 240, "val": 24, "test": 48}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


LAYOUTS = [
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",
    lambda d: f"{d.day}-{MONTHS[d.month - 1][:3]}-{d.year}",
    lambda d: f"{MONTHS[d.month - 1]} {_ordinal(d.day)}, '{d.year % 100:02d}" if d.year >= 2000 else
              f"{MONTHS[d.month - 1]} {_ordinal(d.day)}, {d.year}",
    lambda d: f"{d.strftime('%A')}, {d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
]
CONTEXTS = ["{}", "Delivered on {}.", "Meeting: {}", "Invoice date {}", "born {}", "Due by {}"]


def make_records(n: int, rng: random.Random) -> list[dict]:
    start, span = dt.date(1950, 1, 1), (dt.date(2035, 12, 31) - dt.date(1950, 1, 1)).days
    out = []
    for _ in range(n):
        d = start + dt.timedelta(days=rng.randrange(span))
        text = rng.choice(CONTEXTS).format(rng.choice(LAYOUTS)(d))
        out.append({"instruction": INSTRUCTION, "input": text, "output": d.isoformat()})
    return out


def main(folder: Path | None = None) -> None:
    folder = folder or Path(__file__).resolve().parent
    rng = random.Random(20260512)
    seen: set[str] = set()
    for split, n in SIZES.items():
        records = []
        while len(records) < n:  # no input appears in two splits (or twice): a clean held-out test
            for r in make_records(n - len(records), rng):
                if r["input"] not in seen:
                    seen.add(r["input"])
                    records.append(r)
        path = folder / f"dates_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        print(f"wrote {len(records)} records to {path.name}")


if __name__ == "__main__":
    main()

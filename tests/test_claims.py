"""The claims register (docs/claims.md) points at asserts that exist.

Each row names a claim, the notebook that makes it, backticked fragments of how it is checked, and a status.
A `measured` row's fragments must each occur inside an `assert` statement of a code cell of that notebook
(whitespace aside); a `shown` row's inside a code cell; a `prose only: reason` row's (if any) in its markdown.
Notebooks are read as JSON here, not through labkit, so the check does not depend on the tooling it checks.

Run `python tests/test_claims.py` for the counts by status.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTER = ROOT / "docs" / "claims.md"
STATUSES = ("measured", "shown", "prose only", "missing")
_FRAGMENT = re.compile(r"`([^`]+)`")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    where: str
    fragments: tuple[str, ...]
    status: str  # one of STATUSES
    reason: str  # after "prose only:"; "" otherwise
    line: int  # in the register, for error messages


def parse_register(text: str) -> list[Claim]:
    """The rows of the register's table (the one whose header starts with `| id |`)."""
    rows, in_table = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("| id |"):
            in_table = True
            continue
        if not in_table or not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(line.strip())[1:-1]]
        if len(cells) != 5:
            raise ValueError(f"{REGISTER.name} line {n}: {len(cells)} columns, expected 5 "
                             "(id | claim | where | how measured | status); escape a | inside a fragment as \\|")
        cid, claim, where, how, status = cells
        kind, _, reason = status.partition(":")
        rows.append(Claim(cid, claim, where, tuple(_FRAGMENT.findall(how)), kind.strip(), reason.strip(), n))
    return rows


def _squash(text: str) -> str:
    """Whitespace (and backslash line continuations) out, so a fragment may be quoted on one line."""
    return re.sub(r"\s+", "", text.replace("\\\n", ""))


def _code(cell: dict) -> str:
    """A code cell's source with IPython magics and shell lines blanked, so ast can parse it."""
    lines = "".join(cell["source"]).split("\n")
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)


def notebook_parts(path: Path) -> dict[str, list[str]]:
    """{"assert": [...], "code": [...], "markdown": [...]}: each assert statement's source, each code
    cell, each markdown cell, whitespace squashed."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    parts: dict[str, list[str]] = {"assert": [], "code": [], "markdown": []}
    for cell in cells:
        if cell["cell_type"] == "markdown":
            parts["markdown"].append(_squash("".join(cell["source"])))
        elif cell["cell_type"] == "code":
            src = _code(cell)
            parts["code"].append(_squash(src))
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.Assert):
                    parts["assert"].append(_squash(ast.get_source_segment(src, node) or ""))
    return parts


_WHERE_FRAGMENTS_LIVE = {"measured": "assert", "shown": "code", "prose only": "markdown"}


def problems(claims: list[Claim], root: Path = ROOT) -> list[str]:
    """Every way the register disagrees with the notebooks, as learner-readable lines."""
    out, cache = [], {}
    for dup, n in Counter(c.id for c in claims).items():
        if n > 1:
            out.append(f"id {dup!r} is used {n} times")
    for c in claims:
        at = f"{REGISTER.name} line {c.line} ({c.id})"
        if c.status not in STATUSES:
            out.append(f"{at}: status {c.status!r} is not one of {', '.join(STATUSES)}")
            continue
        if c.status == "prose only" and not c.reason:
            out.append(f"{at}: 'prose only' needs a reason: 'prose only: why no cell can check it'")
        if c.status in ("measured", "shown") and not c.fragments:
            out.append(f"{at}: a {c.status} claim must quote what checks it, in backticks")
        if c.status == "missing":
            continue
        path = root / c.where
        if not c.where.endswith(".ipynb") or not path.is_file():
            out.append(f"{at}: notebook {c.where!r} does not exist")
            continue
        parts = cache.setdefault(c.where, notebook_parts(path))
        kind = _WHERE_FRAGMENTS_LIVE[c.status]
        for frag in c.fragments:
            if not any(_squash(frag) in text for text in parts[kind]):
                out.append(f"{at}: no {kind} {'statement' if kind == 'assert' else 'cell'} of {c.where} "
                           f"contains `{frag}`")
    return out


def load_claims() -> list[Claim]:
    return parse_register(REGISTER.read_text(encoding="utf-8"))


def status_counts(claims: list[Claim]) -> dict[str, int]:
    counts = Counter(c.status for c in claims)
    return {s: counts.get(s, 0) for s in STATUSES}


# ------------------------------------------------------------------------------------------------


def test_register_parses_and_every_row_has_a_status():
    claims = load_claims()
    assert len(claims) >= 50, f"only {len(claims)} rows read from {REGISTER}: is the table header '| id |'?"
    assert all(c.id and c.claim and c.where for c in claims)
    print("claims register:", status_counts(claims))


def test_every_quoted_check_exists_in_its_notebook():
    found = problems(load_claims())
    assert not found, f"{len(found)} problems in {REGISTER}:\n" + "\n".join(found)


def test_checker_can_fail(tmp_path):
    """A fragment that is in a code cell but not in an assert, a missing notebook, a status without a
    reason: each is reported."""
    nb = {"cells": [{"cell_type": "code", "source": ["%pip install x\n", "y = 3\n",
                                                      "assert y == 3, \\\n    'three'\n"]},
                    {"cell_type": "markdown", "source": ["Three is **three**."]}]}
    (tmp_path / "lessons").mkdir()
    (tmp_path / "lessons" / "a.ipynb").write_text(json.dumps(nb))
    register = "\n".join([
        "| id | claim | where | how measured | status |", "|---|---|---|---|---|",
        "| ok | y is 3 | lessons/a.ipynb | `y == 3`; `'three'` | measured |",
        "| code-not-assert | y is set | lessons/a.ipynb | `y = 3` | measured |",
        "| shown | y is set | lessons/a.ipynb | `y = 3` | shown |",
        "| prose | three | lessons/a.ipynb | `**three**` | prose only: a definition |",
        "| no-reason | three | lessons/a.ipynb | | prose only |",
        "| gone | x | lessons/b.ipynb | `x` | measured |",
        "| pipe | or | lessons/a.ipynb | `a \\| b` | bogus |"])
    claims = parse_register(register)
    assert [c.id for c in claims] == ["ok", "code-not-assert", "shown", "prose", "no-reason", "gone", "pipe"]
    assert claims[-1].fragments == ("a | b",)
    found = problems(claims, tmp_path)
    assert len(found) == 4, found
    assert "code-not-assert" in found[0] and "no assert statement" in found[0]
    assert "needs a reason" in found[1] and "does not exist" in found[2] and "'bogus'" in found[3]


if __name__ == "__main__":  # python tests/test_claims.py
    claims = load_claims()
    print(f"{len(claims)} claims:", status_counts(claims))
    issues = problems(claims)
    print("\n".join(issues) or "every quoted check is where the register says")
    sys.exit(1 if issues else 0)

"""One plain-text table renderer for every table the course prints.

Plain text, not HTML, because it prints the same in a notebook, a terminal, a CI log and nbval's
checked outputs. Callers choose how a cell reads (`fmt`) and the look (separator, rule line,
numbers right-aligned); the alignment is done here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, *,
                 fmt: Callable[[str, Any], str] = lambda col, value: "" if value is None else str(value),
                 sep: str = "  ", rule: str | None = None, right_align: bool = False, title: str = "") -> str:
    """Rows of dicts → an aligned text table ("" for no rows).

    columns: which keys, in order (default: every key, in first-seen order). fmt(column, value) → the
    cell text. rule: the separator between the rule line's dashes ("  " or "-+-"); None for no rule.
    right_align: every column but the first right-aligned (numbers line up). Lines are right-stripped.
    """
    if not rows:
        return ""
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    cells = [[fmt(c, r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(cols)]

    def line(values: Sequence[str], align: bool) -> str:
        return sep.join(v.rjust(w) if align and j else v.ljust(w)
                        for j, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    out = [title] if title else []
    out.append(line(cols, False))
    if rule is not None:
        out.append(rule.join("-" * w for w in widths))
    out += [line(row, right_align) for row in cells]
    return "\n".join(out)

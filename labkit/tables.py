"""The table renderers: one plain-text table for every table the course prints, one Markdown table
for every report it writes (the run report, the course report, the GPU report).

Plain text, not HTML, because it prints the same in a notebook, a terminal, a CI log and nbval's
checked outputs. Callers choose how a cell reads (`fmt`) and the look (separator, rule line,
numbers right-aligned); the alignment is done here once. Markdown for the reports because they are
read rendered (GitHub, the course site); there a cell must stay on one line and a `|` must not split it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def _text(column: str, value: Any) -> str:
    return "" if value is None else str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, *,
                 fmt: Callable[[str, Any], str] = _text,
                 sep: str = "  ", rule: str | None = None, right_align: bool = False, title: str = "") -> str:
    """Rows of dicts → an aligned text table ("" for no rows).

    columns: which keys, in order (default: every key, in first-seen order). fmt(column, value) → the
    cell text. rule: the separator between the rule line's dashes ("  " or "-+-"); None for no rule.
    right_align: every column but the first right-aligned (numbers line up). Lines are right-stripped.
    """
    if not rows:
        return ""
    cols = _columns(rows, columns)
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


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, *,
                   fmt: Callable[[str, Any], str] = _text, right: Sequence[str] = ()) -> str:
    """Rows of dicts → a Markdown (GitHub) table, header and rule included ("" for no rows).

    columns and fmt as in format_table; right: the columns aligned right (numbers). Each cell is made
    one line, its `|` escaped, so a multi-line error message stays one row.
    """
    if not rows:
        return ""
    cols = _columns(rows, columns)

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(" ".join(v.split()).replace("|", "\\|") for v in values) + " |"

    rule = "|" + "|".join("---:" if c in right else "---" for c in cols) + "|"
    return "\n".join([line(cols), rule, *(line([fmt(c, r.get(c)) for c in cols]) for r in rows)])


def _columns(rows: Sequence[dict], columns: Sequence[str] | None) -> list[str]:
    """The columns asked for, else every key in first-seen order."""
    return list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))

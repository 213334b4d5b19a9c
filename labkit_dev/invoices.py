"""Build step: regenerate the invoice files the wheel ships, labkit/datasets/invoices_{split}.jsonl.

    python -m labkit_dev.invoices [--root PATH]

The generator itself (`labkit.invoices.make_records`) is kit, so lessons and tests can draw records
in memory; only writing into a checkout's labkit/datasets/ is tooling (an installed labkit is never
written to at run time). tests/test_invoices.py fails when the shipped files drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from labkit.invoices import write_datasets
from labkit_dev.notebooks import find_root, run_tool, tool_parser


def main(argv: list[str] | None = None) -> int:
    args = tool_parser("python -m labkit_dev.invoices", __doc__.splitlines()[0]).parse_args(argv)
    return run_tool(lambda: _write(find_root(args.root) / "labkit" / "datasets"))


def _write(folder: Path) -> int:
    for split, path in write_datasets(folder).items():
        n = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{split}: {n} records -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

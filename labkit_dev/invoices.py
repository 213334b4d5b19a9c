"""Build step: regenerate the invoice files the wheel ships, labkit/datasets/invoices_{split}.jsonl.

    python -m labkit_dev.invoices [--root PATH]

The generator itself (`labkit.invoices.make_records`) is kit, so lessons and tests can draw records
in memory; only writing into a checkout's labkit/datasets/ is tooling (an installed labkit is never
written to at run time). tests/test_invoices.py fails when the shipped files drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labkit.invoices import write_datasets
from labkit_dev.notebooks import RepoRootNotFound, find_root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit_dev.invoices", description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=None,
                   help="the course checkout (default: found upwards from the working directory)")
    args = p.parse_args(argv)
    try:
        folder = find_root(args.root) / "labkit" / "datasets"
    except RepoRootNotFound as exc:
        print(exc, file=sys.stderr)
        return 2
    for split, path in write_datasets(folder).items():
        n = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{split}: {n} records -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

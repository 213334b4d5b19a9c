"""Build step: regenerate the private-facts catalogue the wheel ships, labkit/datasets/knowledge.jsonl.

    python -m labkit_dev.knowledge [--root PATH]

The generator itself (`labkit.knowledge.make_catalogue`) is kit; only writing into a checkout's
labkit/datasets/ is tooling. tests/test_knowledge.py fails when the shipped file drifts from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labkit.knowledge import write_catalogue
from labkit_dev.notebooks import RepoRootNotFound, find_root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit_dev.knowledge", description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=None,
                   help="the course checkout (default: found upwards from the working directory)")
    args = p.parse_args(argv)
    try:
        folder = find_root(args.root) / "labkit" / "datasets"
    except RepoRootNotFound as exc:
        print(exc, file=sys.stderr)
        return 2
    path = write_catalogue(folder)
    print(f"{sum(1 for _ in path.open(encoding='utf-8'))} products -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

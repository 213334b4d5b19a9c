"""The `labkit` command: `labkit doctor`, `labkit course`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description="The fine-tuning course's lab kit.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="preflight checks before a workshop (OK / WARN / FAIL per line)")
    sub.add_parser("cache", help="convert the embedded model to the fast cache now (before a workshop)")
    course = sub.add_parser("course", help="run every lesson headless and print the course report")
    course.add_argument("--only", nargs="*", help="run only lessons whose name contains one of these")
    course.add_argument("--root", type=Path, default=None,
                        help="the course checkout (default: found upwards from the working directory)")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from labkit.doctor import doctor

        checks = doctor()
        return 1 if any(c.status == "FAIL" for c in checks) else 0
    if args.command == "cache":
        from labkit.models import ensure_cached

        print(ensure_cached())
        return 0
    if args.command == "course":
        from labkit.course import run_course
        from labkit.notebooks import RepoRootNotFound

        try:
            runs = run_course(only=args.only, root=args.root)
        except RepoRootNotFound as exc:
            print(exc, file=sys.stderr)
            return 2
        return 0 if all(r.ok for r in runs) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())

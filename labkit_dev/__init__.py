"""The course's own tooling, for a checkout of the course repository; not part of the labkit wheel.

labkit/ is the kit: what `pip install labkit` ships and what a learner's notebook imports. This
package is what keeps the course itself in shape and runs only beside lessons/, solutions/ and
exercises/ (it needs the `[lab]` extra: nbformat, nbclient, nbconvert):

    python -m labkit_dev.notebooks check|fix|stamp|clean|refresh   the committed-notebook policy
    python -m labkit_dev.exercises build|check                     exercises/ generated from solutions/
    python -m labkit_dev.course [--only 00 05]                     every lesson headless + the course report
    python -m labkit_dev.site                                      the executed course as a static site
    python -m labkit_dev.invoices                                  regenerate labkit/datasets/invoices_*.jsonl
    python -m labkit_dev.grade NOTEBOOK... [--csv F]               grade learners' notebooks (`labkit grade`)

Each takes `--root PATH` (default: found upwards from the working directory, see
labkit_dev.notebooks.find_root). The kit never imports from here (tests/test_layout.py).
"""

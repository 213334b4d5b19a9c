"""Exercises: `check_*` functions that give a learner friendly feedback, and the generator.

Each check prints what passed or, for the first case that fails, the input, what was expected
and what the learner's code gave; it returns True/False so a notebook cell can assert on it.
`python -m labkit.exercises build` regenerates `exercises/` from `solutions/` (see build.py).
"""

# Each topic's checks live in their own module; import them here so notebooks can write
# `from labkit.exercises import check_to_record`.
from labkit.exercises.decide import check_choose  # noqa: F401,E402
from labkit.exercises.experiments import check_forgetting, check_overfitting, check_rank_choice  # noqa: F401,E402
from labkit.exercises.feedback import Feedback, report  # noqa: F401
from labkit.exercises.records import check_clean, check_to_record  # noqa: F401,E402

"""Exercises: the `check_*` functions that give a learner friendly feedback.

Each check prints what passed or, for the first case that fails, the input, what was expected
and what the learner's code gave; it returns True/False so a notebook cell can assert on it.
The exercise notebooks themselves are generated from `solutions/` by course tooling in a checkout
(`python -m labkit_dev.exercises build`); only these checks ship with labkit.
"""

# Each topic's checks live in their own module; import them here so notebooks can write
# `from labkit.exercises import check_to_record`.
from labkit.exercises.decide import check_choose  # noqa: F401,E402
from labkit.exercises.experiments import (  # noqa: F401,E402
    check_forgetting,
    check_overfitting,
    check_peft_choice,
    check_rank_choice,
)
from labkit.exercises.feedback import Feedback, report  # noqa: F401
from labkit.exercises.records import check_clean, check_to_record  # noqa: F401,E402

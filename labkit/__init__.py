"""labkit: the small library behind the fine-tuning course's notebooks.

Each module is one course noun (env, models, data, lora, memory, train, evaluate, plots, ...);
a notebook cell calls one verb on it so the cell shows the idea, not the plumbing.
"""

import logging as _logging
import os as _os

__version__ = "0.1.0"

# Keep notebooks quiet and offline-friendly by default; a learner can still override these.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# bitsandbytes tries to fetch an optional CPU kernel from the Hub at import and logs a warning when
# it cannot (always, offline). The built-in kernel is used instead; the line only confuses learners.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "kernels-community" not in record.getMessage()
)

"""labkit: the small library behind the fine-tuning course's notebooks.

Each module is one course noun (env, models, data, lora, memory, train, evaluate, plots, ...);
a notebook cell calls one verb on it so the cell shows the idea, not the plumbing.
"""

import os as _os
import warnings as _warnings

__version__ = "0.1.0"

# Keep notebooks quiet and offline-friendly by default; a learner can still override these.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_warnings.filterwarnings("ignore", message=".*kernels-community.*")

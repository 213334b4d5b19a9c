"""labkit: the small library behind the fine-tuning course's notebooks.

Each module is one course noun (env, models, data, lora, memory, train, evaluate, plots, ...);
a notebook cell calls one verb on it so the cell shows the idea, not the plumbing.

Importing labkit sets no environment variable: the quiet, offline-friendly library defaults are
`labkit.env.library_defaults()`, which `load_model`, `load_tokenizer` and `labkit doctor` call
before they touch the libraries.
"""

from labkit._compat import quiet_bitsandbytes_kernel_fetch as _quiet_bitsandbytes

__version__ = "0.1.0"

# The one effect of `import labkit`, kept on purpose: bitsandbytes logs a failed optional-kernel
# download (always, offline) at *its* import, and `from labkit.train import train_sft` imports it
# (transformers' Trainer -> peft -> bitsandbytes) before any labkit function runs, so an explicit
# call would come too late for a lesson's import cell. It drops that one line on one logger and
# changes nothing a child process or another library sees. (Cheap: _compat imports torch lazily.)
_quiet_bitsandbytes()

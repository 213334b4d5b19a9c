"""Every private or version-specific third-party access in labkit, in one place.

Rule: no other labkit module touches a private name (`_x`) or a version-dependent spelling of
torch / transformers / TRL / PEFT / bitsandbytes / accelerate / datasets / jupyter
(tests/test_layers.py checks the private names with the AST). This module imports nothing from
labkit: it is the lowest layer. Each function here says which versions it is tested
on and what happens when the library moves; tests/test_drift.py calls each one and checks its
*effect*, so an upgrade that breaks one fails loudly there instead of silently in a lesson.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

# torch is imported where it is used, so `import labkit` (which runs one function of this module,
# see labkit/__init__.py) stays cheap.
if TYPE_CHECKING:
    import torch

# ------------------------------------------------------------------------------------------------
# torch: the CPU's native bf16 probes (tested on torch 2.11-2.13).


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX tiles (labkit.env.cpu_bf16 decides the CPU dtype on it).

    torch exposes the answer only as the private `torch.cpu._is_avx512_bf16_supported` and
    `torch.cpu._is_amx_tile_supported` (cpuinfo's view, which includes the OS enabling the state).
    If torch renames them, this answers False: such a CPU computes in fp32 (correct, ~2x slower), and
    tests/test_drift.py fails, since it compares the answer with the CPU's flags in /proc/cpuinfo.
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


# ------------------------------------------------------------------------------------------------
# bitsandbytes: the CPU repacking trap (tested on bitsandbytes 0.50.x).
#
# On CPUs with AVX512-BF16, a `Linear4bit` that runs in eval mode without gradients repacks its NF4
# weight in place into an inference-only layout (`quant_state.packing_format_for_cpu = True`).
# Matmuls on that layout pass no gradient back, so LoRA layers below it never learn and the loss
# stays flat. Each layer decides with its own `support_avx512bf16_for_cpu` flag; the inverse is the
# private `bitsandbytes.functional._convert_weight_packed_for_cpu_inverse`.
# If bitsandbytes renames either, `no_repacking` raises (it never switches itself off silently) and
# tests/test_drift.py fails.

# The tested bitsandbytes range, for every "install it" message; equals pyproject.toml's pin
# (tests/test_drift.py checks it).
BITSANDBYTES_REQUIREMENT = "bitsandbytes>=0.50,<0.51"


class _DropKernelFetchWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


_KERNEL_FETCH_LOGGER = "bitsandbytes.backends.cpu.ops"
_KERNEL_FETCH_FILTER = _DropKernelFetchWarning()


def quiet_bitsandbytes_kernel_fetch() -> None:
    """Drop bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning.

    bitsandbytes 0.50 (tested on 0.50.x) tries at import to fetch an optional CPU kernel from the
    Hub's kernels-community and logs a warning on `bitsandbytes.backends.cpu.ops` when it cannot
    (always, offline); it then uses its built-in kernel, so the line only confuses learners. Must
    run before bitsandbytes is imported; idempotent. If bitsandbytes renames the logger the line
    shows again (harmless) and tests/test_drift.py fails.
    """
    logger = logging.getLogger(_KERNEL_FETCH_LOGGER)
    if _KERNEL_FETCH_FILTER not in logger.filters:
        logger.addFilter(_KERNEL_FETCH_FILTER)


def _bitsandbytes():
    """The bitsandbytes module, None when it is not installed; a broken install raises."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    quiet_bitsandbytes_kernel_fetch()
    try:
        import bitsandbytes
    except Exception as exc:  # noqa: BLE001 - installed but broken: say so, never guess
        raise RuntimeError(f"bitsandbytes is installed but fails to import ({type(exc).__name__}: {exc}). "
                           "4-bit models cannot be trained safely. Reinstall it: "
                           f"pip install --force-reinstall '{BITSANDBYTES_REQUIREMENT}'") from exc
    return bitsandbytes


def linear4bit_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every bitsandbytes 4-bit linear layer in `model`."""
    bnb = _bitsandbytes()
    if bnb is None:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def quantized_linear_classes() -> tuple[type, ...]:
    """bitsandbytes' 4-bit and 8-bit linear layer classes, () when bitsandbytes is not installed.

    For isinstance checks (a class-name comparison would also match a look-alike and miss a
    subclass); here because bitsandbytes is optional at import time on some platforms.
    """
    bnb = _bitsandbytes()
    return () if bnb is None else (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


def is_params4bit(param: torch.Tensor) -> bool:
    """Is this parameter a bitsandbytes packed 4-bit weight (two 4-bit numbers per storage byte)?"""
    bnb = _bitsandbytes()
    return bnb is not None and isinstance(param, bnb.nn.Params4bit)


def quant_constants_bytes(param: torch.Tensor) -> int:
    """Bytes of a 4-bit weight's quantisation constants (bitsandbytes' `quant_state`, tested on 0.50.x):
    one absmax per block of 64 (fp32, or uint8 with double quantisation plus the second level's fp32
    absmax per 256 blocks and its offset). `get_memory_footprint` counts none of these. 0 for other tensors;
    if bitsandbytes renames the fields this raises AttributeError (tests/test_drift.py)."""
    state = getattr(param, "quant_state", None) if is_params4bit(param) else None
    if state is None:
        return 0
    nbytes = state.absmax.numel() * state.absmax.element_size()
    if state.nested:
        nbytes += state.state2.absmax.numel() * state.state2.absmax.element_size()
        nbytes += state.offset.numel() * state.offset.element_size()
    return nbytes


def _is_packed(module: torch.nn.Module) -> bool:
    return bool(getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False))


def packed_nf4_layers(model: torch.nn.Module) -> list[str]:
    """Names of 4-bit layers whose weight is in bitsandbytes' inference-only CPU layout."""
    return [n for n, m in linear4bit_layers(model) if _is_packed(m)]


def unpack_nf4_for_training(model: torch.nn.Module) -> int:
    """Undo CPU repacking on every 4-bit layer → how many were unpacked.

    The packing rounded each block's scale to bf16, so the unpacked weights match the originals
    to within that rounding (< 1%), not bit for bit.
    """
    packed = [m for _, m in linear4bit_layers(model) if _is_packed(m)]
    if not packed:
        return 0
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    for m in packed:
        m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu_inverse(m.weight.data,
                                                                                    m.weight.quant_state)
    return len(packed)


@contextmanager
def no_repacking(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """THE guard against the repacking trap: unpack every 4-bit weight and keep bitsandbytes from
    repacking it (an eval pass would) until exit; each layer's own flag is restored afterwards.

    Everything in labkit that trains a possibly-4-bit model, or must leave it trainable, runs inside it.
    """
    layers = [m for _, m in linear4bit_layers(model)]
    saved = [(m, m.__dict__.get("support_avx512bf16_for_cpu")) for m in layers]
    unpack_nf4_for_training(model)
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    try:
        yield model
    finally:
        for m, old in saved:
            if old is None:
                m.__dict__.pop("support_avx512bf16_for_cpu", None)
            else:
                m.support_avx512bf16_for_cpu = old


# ------------------------------------------------------------------------------------------------
# TRL: the fused LM head's device hook (tested on trl 1.16.x; pyproject.toml admits trl < 2 because a
# move only costs CPU speed and tests/test_drift.py fails loudly on it).


@contextmanager
def trl_fused_head_labelled_only(device: str) -> Iterator[None]:
    """On a CPU, let TRL's fused LM head project only the positions that have a label.

    TRL's SFTTrainer computes the loss with a fused, chunked LM head. On Triton devices it projects
    only the positions whose label is not -100; elsewhere it projects every position (prompt and
    padding too), because on compilers such as Neuron a changing number of positions recompiles
    the kernel. A CPU recompiles nothing, and with completion-only loss the prompt and padding are
    over half of each batch: projecting them through a 49k-token vocabulary was ~38% of a CPU step
    (measured: 4.1 s → 2.6 s per step, batch 4, SmolLM2-135M NF4). Same loss and gradients, only
    fewer rows (tests/test_train.py checks both). TRL decides this with the private
    `trl.trainer.utils._use_triton(device)`. If TRL moves it, this does nothing (training stays
    correct, only slower) and tests/test_drift.py fails loudly. Other devices keep TRL's behaviour.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if device != "cpu" or original is None:
        yield
        return
    trl_utils._use_triton = lambda dev: dev.type == "cpu" or original(dev)
    try:
        yield
    finally:
        trl_utils._use_triton = original


# ------------------------------------------------------------------------------------------------
# transformers


def rewrap_after_eval(trainer) -> bool:
    """Let `trainer.train()` wrap the model in DDP after a `trainer.evaluate()` (tested on transformers
    5.24 / accelerate 1.15) → True if it had to.

    `evaluate()` before `train()` prepares the model for evaluation only (`prepare_model(...,
    evaluation_mode=True)`: no DistributedDataParallel) and marks it `_is_accelerate_prepared`;
    `train()` then finds the mark and never wraps it. Each rank trains on its own shard with no
    gradient sync: the run finishes, the ranks silently disagree, and rank 0 saves a model trained
    on 1/N of the data. labkit evaluates before training (the epoch-0 validation loss), so it clears
    the mark (and the autocast forward that prepare added) in multi-process DDP runs. FSDP and
    DeepSpeed are prepared fully by evaluate() and are left alone. If accelerate renames the mark,
    tests/test_ddp.py fails (2-process losses no longer match 1 process).
    """
    model = trainer.model
    acc = trainer.accelerator
    if acc.num_processes < 2 or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return False
    if not getattr(model, "_is_accelerate_prepared", False) or trainer.model_wrapped is not model:
        return False
    if hasattr(model, "_original_forward"):  # undo prepare's autocast wrapper; train() adds it again
        model.forward = model._original_forward
        del model._original_forward
    model._is_accelerate_prepared = False
    acc._models[:] = [m for m in acc._models if m is not model]
    return True


def tensorboard_logs_to(trainer, log_dir) -> bool:
    """Point the trainer's TensorBoard callback (report_to="tensorboard") at `log_dir` → True if one was found.

    Without this, transformers' TensorBoardCallback picks its folder on its first log; labkit's
    epoch-0 evaluation logs before training starts, when the callback has not yet read output_dir,
    so the event files would land in ./runs of whatever the working directory is. `logging_dir` is a
    plain attribute of TensorBoardCallback, read when its SummaryWriter is made (transformers
    5.23-5.x); tests/test_tracking.py checks the event files land in the run's folder.
    """
    from transformers.integrations import TensorBoardCallback

    found = False
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir, found = str(log_dir), True
    return found


def checkpointing_key() -> str:
    """The TrainingArguments name of gradient checkpointing.

    transformers 5.2x renamed `gradient_checkpointing` to `activation_checkpointing` (the old name
    still works there, with a warning). Tested on transformers 5.23-5.x; falls back to the old name.
    """
    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments).parameters
    return "activation_checkpointing" if "activation_checkpointing" in params else "gradient_checkpointing"


def generate_kwargs(model) -> dict:
    """Extra `generate()` keywords a model needs → {"use_cache": False} for a PEFT prefix-tuning model, else {}.

    PEFT hands the trained prefix to the model as `past_key_values`. transformers 5.2x renamed that
    argument `cache` and, when generate() passes its own (empty) `cache`, ignores `past_key_values`
    with a FutureWarning, so with the cache on `generate()` silently answers as the base model
    (measured: the base model's tokens, while a forward pass with the prefix picks others). Without
    a cache the prefix is used on every step: correct, and slower (each step re-reads the text).
    Tested on PEFT 0.21 with transformers 5.24; tests/test_drift.py checks that the cached path still
    ignores the prefix, so the day PEFT fixes it that test fails and this can go.
    """
    config = getattr(model, "active_peft_config", None)
    kind = getattr(getattr(config, "peft_type", None), "value", None)
    return {"use_cache": False} if kind == "PREFIX_TUNING" else {}


def additive_attention_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean [batch, 1, q, k] "may attend" mask → the additive float mask transformers accepts.

    transformers 5.x passes a 4-D float mask straight through to both the sdpa and the eager
    attention code (0 = attend, dtype-min = blocked); a boolean 4-D mask is read differently by the
    two. Used by the probe to score all options of a question in one packed sequence. Tested on
    transformers 5.23-5.x; tests/test_probe.py checks packed == one-option-at-a-time scores.
    """
    import torch

    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


# ------------------------------------------------------------------------------------------------
# jupyter_client: the running kernel's process (tested on jupyter_client 8.x).


def kernel_pid(client) -> int | None:
    """The OS process id of an nbclient NotebookClient's kernel, None when not (yet) known.

    jupyter_client 8 keeps the process on the kernel manager's provisioner (`km.provisioner.process`),
    which is not a documented API; if it moves, the course report shows no peak memory (0 MB).
    """
    km = getattr(client, "km", None)
    proc = getattr(getattr(km, "provisioner", None), "process", None) if km else None
    return getattr(proc, "pid", None)


def rope_parameters(config) -> dict:
    """A transformers config's rotary settings as {"rope_theta": ..., "rope_type": ...} (labkit.export).

    transformers 5 keeps them in `config.rope_parameters` (a dict); 4.x had `config.rope_theta` and
    `config.rope_scaling`. Tested on transformers 5.2x; reads the 4.x spelling when the dict is absent.
    """
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return dict(params)
    scaling = getattr(config, "rope_scaling", None) or {}
    return {"rope_theta": getattr(config, "rope_theta", 10000.0),
            "rope_type": scaling.get("rope_type", scaling.get("type", "default"))}

"""Supervised fine-tuning in one call: `train_sft(model, tokenizer, train, val)` → a `History`.

A thin layer over TRL's `SFTTrainer`. What labkit adds, and why:
- device-aware defaults (`sft_config_kwargs`): fp32 without gradient checkpointing on a CPU (TRL's
  defaults, bf16 autocast + checkpointing, are slower there), bf16 on Ampere+, fp16 + gradient
  checkpointing + a paged 8-bit optimizer on a T4; every value can be overridden;
- loss on the completion only (the prompt is masked), with EOS appended by TRL, so the model
  learns to answer and then stop;
- validation loss before training (epoch 0) and after every epoch, checkpoints per epoch,
  `resume=True`, optional early stopping that restores the best checkpoint;
- a live train/val loss plot in a notebook;
- two guards against a fine-tune that silently learns nothing: the bitsandbytes CPU repacking
  trap (below) and a first-step gradient check that fails loudly;
- on a CPU, TRL's fused LM head scores only the answer tokens (`labkit._compat.trl_fused_head_labelled_only`).

The repacking trap: on CPUs with AVX512-BF16, bitsandbytes repacks an NF4 weight into an
inference-only layout the first time the layer runs in eval mode without gradients (any
`generate()`, and the Trainer's own evaluation loop). Matmuls on a repacked weight do not pass
gradients back, so LoRA layers below it never learn and the loss stays flat. `train_sft` trains
inside `labkit._compat.no_repacking`, the one guard against it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils.notebook import NotebookProgressCallback

from labkit import env
from labkit._compat import (
    checkpointing_key,
    no_repacking,
    packed_nf4_layers,
    rewrap_after_eval,
    tensorboard_logs_to,
    trl_fused_head_labelled_only,
    unpack_nf4_for_training,
)
from labkit.data import validate_records
from labkit.lora import attach_lora, is_quantized, lora_config
from labkit.memory import PeakMeter

__all__ = [
    "History", "train_sft", "sft_config_kwargs", "device_training_kwargs", "find_overfitting_epoch",
    "records_to_dataset", "GradientCheck", "ThroughputMeter", "unpack_nf4_for_training", "packed_nf4_layers",
]

_VAL0_FILE = "labkit_val0.json"


# ------------------------------------------------------------------------------------------------
# History


@dataclass
class RunStats:
    """What every labkit training run measures, whatever the trainer (SFT, DPO): the fields that
    `TrainingRun.train` fills in, so each trainer's history adds only its own losses."""

    tokens_per_sec: float = 0.0  # non-padding tokens per second of training steps
    peak_memory_mb: float = 0.0  # CUDA: peak allocated; CPU: peak resident set of the process
    peak_memory_whole_process: bool = False  # the peak could not be reset: it covers the whole process
    memory_at_start_mb: float = 0.0  # the same measure when training began (model loaded): peak - this = what training added
    wall_seconds: float = 0.0
    train_seconds: float = 0.0  # inside training steps only (no evaluation, no setup): seconds per step × steps
    steps: int = 0
    output_dir: str = ""
    model: Any = field(default=None, repr=False)

    def stats_line(self) -> str:
        """The run's cost in one line: steps, minutes, throughput, peak memory."""
        scope = " (since the process started: could not be reset here)" if self.peak_memory_whole_process else ""
        return (f"{self.steps} steps, {self.wall_seconds / 60:.1f} min, {self.tokens_per_sec:.0f} tok/s, "
                f"peak {self.peak_memory_mb:.0f} MB{scope}")


@dataclass
class History(RunStats):
    """What a supervised run did, as plain numbers a notebook can print, plot and assert on.

    val_loss[0] is the loss before training, val_loss[k] after epoch k; best_epoch indexes it
    (the epoch whose checkpoint had the lowest validation loss; None without a val set).
    """

    train_loss: list[float] = field(default_factory=list)  # per logged step
    train_epochs: list[float] = field(default_factory=list)  # fractional epoch of each logged step
    epoch_train_loss: list[float] = field(default_factory=list)  # mean train loss of each epoch
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None

    def summary(self) -> str:
        """One line per epoch: train loss, val loss; marks the best epoch."""
        lines = [f"{'epoch':>5} {'train loss':>10} {'val loss':>9}"]
        n = max(len(self.epoch_train_loss) + 1, len(self.val_loss))
        for e in range(n):
            tr = f"{self.epoch_train_loss[e - 1]:10.4f}" if 0 < e <= len(self.epoch_train_loss) else f"{'-':>10}"
            va = f"{self.val_loss[e]:9.4f}" if e < len(self.val_loss) else f"{'-':>9}"
            mark = "  <- best" if e == self.best_epoch else ""
            lines.append(f"{e:>5} {tr} {va}{mark}")
        lines.append(self.stats_line())
        return "\n".join(lines)


def find_overfitting_epoch(history: History) -> int | None:
    """The first epoch after which validation loss rises while training loss keeps falling → the
    epoch to stop at (the last good one); None if that never happens.

    That divergence is the signature of overfitting: the model memorises the training records
    at the expense of records it has not seen.
    """
    val, tr = history.val_loss, history.epoch_train_loss
    for e in range(1, len(val) - 1):
        if e >= len(tr):
            break
        if val[e + 1] > val[e] and tr[e] < tr[e - 1]:
            return e
    return None


# ------------------------------------------------------------------------------------------------
# Records


def records_to_dataset(records: Sequence[dict]):
    """Records → a datasets.Dataset of prompt/completion (other keys such as 'meta' are dropped)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])


# ------------------------------------------------------------------------------------------------
# Configuration


def device_training_kwargs(dev: str | None = None) -> dict[str, Any]:
    """The TrainingArguments keywords that depend on the device (shared by SFT and DPO configs).

    CPU → `use_cpu`, fp32, or bf16 autocast where the CPU has native bf16 (`labkit.env.cpu_bf16`);
    CUDA with bf16 → bf16 autocast; CUDA without bf16 (a T4, or LABKIT_GPU=t4)
    → fp16 autocast with fp32 master weights, gradient checkpointing (`labkit.env.gradient_checkpointing`,
    the one rule) and paged 8-bit AdamW. Apple MPS → fp32 (see `labkit.env.compute_dtype`).
    """
    dev = dev or env.device()
    gc = checkpointing_key()
    kw: dict[str, Any] = {"optim": "adamw_torch", "bf16": False, "fp16": False, gc: env.gradient_checkpointing(dev)}
    if dev == "cpu":
        kw.update(use_cpu=True, bf16=env.cpu_bf16())
    elif dev == "cuda" and env.cuda_supports_bf16():
        kw["bf16"] = True
    elif dev == "cuda":
        kw.update(fp16=True, optim="paged_adamw_8bit")
    return kw


def _with_checkpointing_kwargs(kw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply `overrides` (either checkpointing spelling accepted); checkpoint with use_reentrant=False,
    the variant that works when the inputs carry no gradient (a frozen base under LoRA, and DDP)."""
    gc = checkpointing_key()
    for old in ("gradient_checkpointing", "gradient_checkpointing_kwargs"):
        if old in overrides and gc != old:
            overrides[old.replace("gradient", "activation")] = overrides.pop(old)
    kw.update(overrides)
    if kw[gc] and f"{gc}_kwargs" not in kw:
        kw[f"{gc}_kwargs"] = {"use_reentrant": False}
    return kw


def sft_config_kwargs(output_dir: str, *, device: str | None = None, epochs: float = 2,
                      learning_rate: float = 2e-4, batch_size: int = 8, max_length: int = 256,
                      has_val: bool = True, early_stopping_patience: int | None = None,
                      max_grad_norm: float = 1.0, warmup_ratio: float = 0.1, lr_scheduler: str = "cosine",
                      weight_decay: float = 0.0, gradient_accumulation_steps: int = 1, seed: int = 0,
                      progress: bool = True, **overrides) -> dict:
    """Every SFTConfig keyword labkit sets, in one place → a dict (`SFTConfig(**kwargs)`).

    Device defaults come from `device_training_kwargs`; CPU batches are grouped by length (less
    padding). `warmup_ratio` is the fraction of all steps spent warming up; transformers 5 takes it
    through `warmup_steps` (a float in [0, 1) is read as that fraction). `overrides` win over
    everything (any SFTConfig field).
    """
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio={warmup_ratio} must be a fraction of the training steps in [0, 1), "
                         "e.g. 0.1 for the first 10%. For an exact number of steps pass warmup_steps=N.")
    kw: dict[str, Any] = dict(
        output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm,
        warmup_steps=warmup_ratio,  # the fraction, as transformers 5 spells it (see the docstring)
        lr_scheduler_type=lr_scheduler, weight_decay=weight_decay, seed=seed, data_seed=seed,
        max_length=max_length,
        completion_only_loss=True,  # loss on the answer only; TRL appends EOS to the completion
        logging_strategy="steps", logging_steps=1, logging_first_step=True,
        save_strategy="epoch", save_total_limit=2, eval_strategy="epoch" if has_val else "no",
        report_to="none", disable_tqdm=not progress, include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length",  # batches of similar length: less padding
        dataloader_num_workers=0,
        **device_training_kwargs(device),
    )
    if has_val:
        kw.update(metric_for_best_model="eval_loss", greater_is_better=False)
    if early_stopping_patience is not None:
        if not has_val:
            raise ValueError("early_stopping_patience needs a validation set: pass val=... records.")
        kw["load_best_model_at_end"] = True
    return _with_checkpointing_kwargs(kw, overrides)


# ------------------------------------------------------------------------------------------------
# Callbacks


class GradientCheck(TrainerCallback):
    """At the first optimizer step of a run, check that gradients reach what should learn.

    LoRA: every lora_B has a finite, non-zero gradient (lora_A's is legitimately zero at step 1,
    because B starts at zero). Full fine-tuning: every trainable parameter. Also: no 4-bit layer
    is in the packed inference layout. Otherwise raise RuntimeError naming the layers.
    """

    def __init__(self, allow_nonfinite: bool = False):
        self.done = False
        self.allow_nonfinite = allow_nonfinite  # fp16 loss scaling may skip a first overflowing step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.done or model is None:
            return
        self.done = True
        check_first_step_gradients(model, allow_nonfinite=self.allow_nonfinite)


def check_first_step_gradients(model, allow_nonfinite: bool = False) -> None:
    """Raise RuntimeError if a layer that should learn got no usable gradient (see GradientCheck)."""
    packed = packed_nf4_layers(model)
    if packed:
        raise RuntimeError(
            f"{len(packed)} 4-bit layers are in bitsandbytes' inference-only CPU layout during training "
            f"(e.g. {packed[0]}): gradients do not flow through them, so the model would not learn. This is "
            "the CPU repacking trap: a generate() or eval pass in no-grad mode repacked them. Train with "
            "labkit.train.train_sft (it unpacks them), or call labkit.train.unpack_nf4_for_training(model)."
        )
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lora_b = [(n, p) for n, p in params if "lora_B" in n]
    watched = lora_b or params
    bad = []
    for n, p in watched:
        g = p.grad
        if g is None:
            bad.append((n, "no gradient (None)"))
        elif not allow_nonfinite and not torch.isfinite(g).all():
            bad.append((n, "gradient is NaN/inf"))
        elif not g.any():
            bad.append((n, "gradient is exactly zero"))
    if bad:
        names = "\n".join(f"  {n}: {why}" for n, why in bad[:8])
        more = f"\n  ... and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise RuntimeError(
            f"First training step: {len(bad)} of {len(watched)} {'lora_B' if lora_b else 'trainable'} parameters "
            f"got no usable gradient:\n{names}{more}\nTraining would run but these layers would not learn. "
            "Usual causes: parameters frozen by mistake (requires_grad=False, or a hook that detaches), a 4-bit "
            "layer in the packed CPU layout (the repacking trap: call labkit.train.unpack_nf4_for_training), "
            "or a NaN in the data or learning rate. Check the model with labkit.lora.count_parameters(model)."
        )


class ThroughputMeter(TrainerCallback):
    """Time spent in training steps and non-padding tokens seen → tokens/s (evaluation excluded)."""

    def __init__(self):
        self.seconds = 0.0
        self._t0: float | None = None
        self._tokens0: int | None = None
        self.tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._tokens0 = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None
        self.tokens = state.num_input_tokens_seen - (self._tokens0 or 0)

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class _LivePlotCallback(TrainerCallback):
    """Feeds the run's history, rebuilt from the log, to a live plot as each log line arrives."""

    def __init__(self, plot, history: Callable[[list[dict]], Any]):
        self.plot = plot
        self.history = history

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.plot.update(self.history(state.log_history))


# ------------------------------------------------------------------------------------------------
# Building the history


def history_from_log(log_history: list[dict], val0: float | None) -> History:
    """Trainer's log_history (+ the pre-training val loss) → History (losses only)."""
    h = History()
    per_epoch: dict[int, list[float]] = {}
    evals: list[float] = []
    for entry in log_history:
        if "loss" in entry and "epoch" in entry:
            h.train_loss.append(float(entry["loss"]))
            ep = float(entry["epoch"])
            h.train_epochs.append(ep)
            per_epoch.setdefault(max(0, math.ceil(ep - 1e-9) - 1), []).append(float(entry["loss"]))
        elif "eval_loss" in entry:
            evals.append(float(entry["eval_loss"]))
    h.epoch_train_loss = [sum(v) / len(v) for _, v in sorted(per_epoch.items())]
    h.val_loss = ([val0] if val0 is not None else []) + evals
    if len(h.val_loss) > 1:
        h.best_epoch = min(range(1, len(h.val_loss)), key=lambda e: h.val_loss[e])
    return h


# ------------------------------------------------------------------------------------------------
# One run path: what every labkit trainer (SFT here, DPO in labkit.alignment) shares


def _fp32_master_weights(model) -> int:
    """Cast every trainable fp16/bf16 parameter to fp32 → how many were cast.

    Mixed precision keeps the weights being trained in fp32 and computes in fp16/bf16 (autocast):
    fp16 weights cannot hold small updates, and the fp16 gradient scaler refuses them ("Attempting
    to unscale FP16 gradients"). A T4 loads the base in fp16, so full fine-tuning needs this; LoRA
    adapters are already fp32 (PEFT), and frozen weights stay as loaded.
    """
    cast = [p for p in model.parameters() if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16)]
    for p in cast:
        p.data = p.data.float()
    return len(cast)


def _is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def lora_peft_config(lora):
    """The `lora=` argument of every labkit trainer → a peft config (None stays None).

    lora: None (train the model as given), a dict of labkit.lora.add_lora keywords, or a peft
    LoraConfig (any PeftConfig PEFT can apply).
    """
    if lora is None:
        return None
    from peft import PeftConfig


    config = lora_config(**lora) if isinstance(lora, dict) else lora
    if not isinstance(config, PeftConfig):
        raise TypeError(f"lora must be None, a dict of labkit.lora.add_lora keywords or a peft LoraConfig, "
                        f"not {type(lora).__name__}.")
    return config


def _last_checkpoint(output_dir: Path) -> Path | None:

    if not output_dir.is_dir():
        return None
    last = get_last_checkpoint(str(output_dir))
    return Path(last) if last else None


def _oom_message(exc: BaseException, batch_size: int, max_length: int) -> str:
    return (f"Out of GPU memory while training ({str(exc).splitlines()[0][:120]}). Knobs to turn, cheapest first: "
            f"batch_size (now {batch_size}: halve it and set gradient_accumulation_steps=2 to keep the effective "
            f"batch), max_length (now {max_length}: shorter records), gradient_checkpointing=True, load the base "
            "in 4-bit (quantization='nf4'), or a smaller model. Restart the runtime to free the memory first.")


class TrainingRun:
    """One training run of any labkit trainer: the seed, the device (and so the dtype recipe,
    `device_training_kwargs`), the output folder and resume, the `lora=` attachment, the guards
    (no_repacking, the first-step GradientCheck, the adapter dtype), throughput, peak memory, the
    OOM message, the live plot and the history it returns.

    A trainer (`train_sft`, `labkit.alignment.train_dpo`) is a thin TRL config over it: it checks
    its records, builds its TRL config from `run.out` and `run.device`, and calls
    `run.train(config, model, make_trainer, history)`.
    """

    def __init__(self, *, output_dir: str | os.PathLike | None = None, resume: bool = False, seed: int = 0,
                 device: str | None = None, batch_size: int | None = None, max_length: int = 256,
                 plot: bool = True, progress: bool = True, callbacks: Sequence[TrainerCallback] = (),
                 kind: str = "train"):
        if resume and output_dir is None:
            raise ValueError("resume=True needs the output_dir of the run to continue.")
        env.set_seed(seed)
        self.device = device or env.device()
        self.batch_size = batch_size or env.course_profile().batch_size
        self.max_length, self.plot, self.progress = max_length, plot, progress
        self.callbacks = list(callbacks)
        self.out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix=f"labkit-{kind}-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.checkpoint = _last_checkpoint(self.out) if resume else None
        if resume and self.checkpoint is None:
            print(f"resume=True but {self.out} has no checkpoint yet: starting from the beginning.")

    def check_batch(self, n_records: int, what: str = "records") -> None:
        """A batch larger than the data would make one batch the whole set: refuse it."""
        if self.batch_size > n_records:
            raise ValueError(f"batch_size={self.batch_size} is larger than the train set ({n_records} {what}), so "
                             f"one batch would be the whole set. Pass batch_size={max(1, n_records // 4)} or fewer, "
                             f"or add {what}.")

    def trainable_model(self, model, lora):
        """Attach LoRA as asked (labkit.lora.attach_lora, the one LoRA path), insist on something to
        train, and keep trainable weights in fp32 (mixed precision's master weights)."""
        config = lora_peft_config(lora)
        if config is not None:
            model = attach_lora(model, config)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("The model has no trainable parameters (all requires_grad=False). Pass lora={...} "
                             "to add adapters, or unfreeze the weights you mean to train.")
        _fp32_master_weights(model)
        return model

    def model_for_trainer_adapters(self, model, lora):
        """For a TRL trainer that attaches the adapters itself (DPOTrainer: its reference is then the
        adapter switched off) → (model ready for them, the peft config to pass as peft_config).

        The same `lora=` rule as trainable_model; a 4-bit base gets PEFT's k-bit preparation as
        labkit.lora.attach_lora gives it; a model with adapters already cannot take new ones.
        """
        config = lora_peft_config(lora)
        if config is None:
            return self.trainable_model(model, None), None
        if _is_peft(model):
            raise ValueError("The model already has LoRA adapters and lora=... asks for new ones. Pass lora=None to "
                             "keep training its adapters (the reference is then a frozen copy of them), or merge "
                             "them first with model.merge_and_unload().")
        if is_quantized(model):
            from peft import prepare_model_for_kbit_training

            # the one checkpointing rule (labkit.env.gradient_checkpointing), as attach_lora applies it
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=env.gradient_checkpointing(self.device))
        return model, config

    def train(self, config, model, make_trainer: Callable[[list[TrainerCallback]], Any],
              history: Callable[[list[dict], float | None], RunStats], *, live_plot=None,
              measure_val0: bool = True) -> RunStats:
        """Build the TRL trainer with the run's callbacks, train it inside the guards → the history.

        history(log_history, val0) turns the Trainer's log into the trainer's History type;
        live_plot() makes the plot it feeds (default: the train/val loss plot); measure_val0 takes
        the validation loss before training (epoch 0).
        """
        with no_repacking(model), trl_fused_head_labelled_only(self.device), warnings.catch_warnings():
            # transformers' own deprecation, raised inside PEFT and TRL (not by the learner's code): noise here
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return self._train(config, make_trainer, history, live_plot, measure_val0)

    def _train(self, config, make_trainer, history, live_plot, measure_val0) -> RunStats:
        meter = ThroughputMeter()
        fp16 = bool(getattr(config, "fp16", False))
        trainer = make_trainer([GradientCheck(allow_nonfinite=fp16), meter, *self.callbacks])
        tensorboard_logs_to(trainer, self.out / "runs")  # report_to="tensorboard": event files in the run's folder
        if fp16:
            # TRL casts QLoRA adapters to bf16 (its QLoRA recipe, for bf16 GPUs). fp16 mixed precision on a
            # T4 has no bf16: keep the trainable weights fp32 there (tests/test_drift.py watches the cast).
            _fp32_master_weights(trainer.model)
        if not self.progress:
            trainer.remove_callback(PrinterCallback)  # progress=False means quiet
        start = time.perf_counter()
        peak = PeakMeter()
        has_val = trainer.eval_dataset is not None
        val0 = _pre_training_val_loss(trainer, self.out, self.checkpoint) if has_val and measure_val0 else None
        rewrap_after_eval(trainer)  # multi-process: evaluate() above must not stop DDP wrapping
        live = self._live_plot(trainer, lambda log: history(log, val0), live_plot)
        try:
            trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
        except torch.OutOfMemoryError as exc:
            raise RuntimeError(_oom_message(exc, self.batch_size, self.max_length)) from exc
        h = history(trainer.state.log_history, val0)
        memory = peak.read()
        h.tokens_per_sec, h.peak_memory_mb = meter.tokens_per_sec, memory.mb
        h.peak_memory_whole_process = not memory.since_start
        h.memory_at_start_mb = memory.start_mb
        h.wall_seconds, h.steps = time.perf_counter() - start, trainer.state.global_step
        h.train_seconds = meter.seconds
        h.output_dir, h.model = str(self.out), trainer.model
        h.model.eval()
        if live is not None:
            live.update(h, final=True)
        return h

    def _live_plot(self, trainer, history, make_plot):
        if not self.plot:
            return None
        if make_plot is None:
            from labkit.plots import LiveLossPlot as make_plot
        live = make_plot()
        live.update(history([]))
        trainer.add_callback(_LivePlotCallback(live, history))
        return live


def _pre_training_val_loss(trainer, out: Path, checkpoint: Path | None) -> float:
    """Epoch-0 validation loss; stored in output_dir so a resumed run reports the same one."""
    path = out / _VAL0_FILE
    if checkpoint is not None and path.is_file():
        return float(json.loads(path.read_text())["val_loss"])

    table = trainer.pop_callback(NotebookProgressCallback)  # before training its table could only say "No log"
    try:
        metrics = trainer.evaluate()
    finally:
        if table is not None:
            trainer.add_callback(table)
    trainer.state.log_history.clear()  # train() starts a fresh log; keep epoch 0 separately
    path.write_text(json.dumps({"val_loss": metrics["eval_loss"]}))
    return float(metrics["eval_loss"])


# ------------------------------------------------------------------------------------------------
# train_sft


def train_sft(model, tokenizer, train: Sequence[dict], val: Sequence[dict] | None = None, *,
              lora=None, epochs: float = 2, learning_rate: float = 2e-4, batch_size: int | None = None,
              max_length: int = 256, output_dir: str | os.PathLike | None = None, resume: bool = False,
              early_stopping_patience: int | None = None, max_grad_norm: float = 1.0,
              warmup_ratio: float = 0.1, lr_scheduler: str = "cosine", weight_decay: float = 0.0,
              gradient_accumulation_steps: int = 1, seed: int = 0, plot: bool = True, progress: bool = True,
              callbacks: Sequence[TrainerCallback] = (), device: str | None = None, **overrides) -> History:
    """Fine-tune `model` on prompt/completion records → History (with `.model`, the trained model).

    lora: None trains the model as given (its adapters if it already is a PeftModel, else every
    weight: full fine-tuning); a dict is passed to labkit.lora.add_lora; a peft LoraConfig is
    applied with labkit.lora.attach_lora. batch_size defaults to the course profile's. Validation
    loss is measured before training and after each epoch; checkpoints go to output_dir (default:
    a fresh temporary folder); resume=True continues from its last checkpoint. device: where to train
    (default `labkit.env.device()`; "cpu" runs the CPU recipe on any machine, for a model loaded
    with `load_model(device="cpu")`). Any SFTConfig field can be overridden by keyword (e.g.
    gradient_checkpointing=True, report_to="tensorboard"). The run itself is a `TrainingRun`.
    """
    from trl import SFTConfig

    val = _checked_val(train, val)
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; load it with labkit.models.load_model().")
    stop_early = _early_stopping(early_stopping_patience)
    run = TrainingRun(output_dir=output_dir, resume=resume, seed=seed, device=device, batch_size=batch_size,
                      max_length=max_length, plot=plot, progress=progress, callbacks=[*callbacks, *stop_early])
    run.check_batch(len(train))
    model = run.trainable_model(model, lora)
    config = SFTConfig(**sft_config_kwargs(
        str(run.out), device=run.device, epochs=epochs, learning_rate=learning_rate, batch_size=run.batch_size,
        max_length=max_length, has_val=val is not None, early_stopping_patience=early_stopping_patience,
        max_grad_norm=max_grad_norm, warmup_ratio=warmup_ratio, lr_scheduler=lr_scheduler,
        weight_decay=weight_decay, gradient_accumulation_steps=gradient_accumulation_steps, seed=seed,
        progress=progress, **overrides))
    return run.train(config, model, lambda cbs: _sft_trainer(model, tokenizer, train, val, config, cbs),
                     history_from_log)


def _checked_val(train: Sequence[dict], val: Sequence[dict] | None) -> Sequence[dict] | None:
    """Validate both sets with the one record validator; an empty val set means none."""
    validate_records(train, "train")
    if val is None or len(val) == 0:
        return None
    validate_records(val, "val")
    if len(val) > len(train):
        raise ValueError(f"The val set ({len(val)} records) is larger than the train set ({len(train)}). "
                         "Swapped arguments? Validation needs only a few records; put most of them in train.")
    return val


def _early_stopping(patience: int | None) -> list[TrainerCallback]:
    if patience is None:
        return []

    return [EarlyStoppingCallback(early_stopping_patience=patience)]


def _sft_trainer(model, tokenizer, train, val, config, callbacks):
    from trl import SFTTrainer

    return SFTTrainer(model=model, args=config, train_dataset=records_to_dataset(train),
                      eval_dataset=records_to_dataset(val) if val is not None else None,
                      processing_class=tokenizer, callbacks=callbacks)

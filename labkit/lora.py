"""LoRA: a frozen weight W plus a small trainable update B·A, scaled by alpha / r.

Two views of the same idea live here. `LoRALinear` is LoRA from scratch in a dozen lines, so a
learner can read every multiplication. `lora_config` / `add_lora` put PEFT's LoRA on a real model,
which is what the course trains with. `count_parameters` and `estimate_lora_params` answer "how
much am I really training?" — the estimate from a config alone, exactly equal to PEFT's count.
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from labkit._compat import is_params4bit, no_repacking, quantized_linear_classes
from labkit.models import eval_mode
from labkit.shapes import (  # noqa: F401 - the course reads these here; torch-free, they live in labkit.shapes
    ALL_LINEAR_TARGETS,
    DEFAULT_TARGETS,
    estimate_lora_params,
    num_layers,
    projection_shapes,
)


class LoRAError(RuntimeError):
    """A LoRA step cannot go on; the message says what happened and what to try."""


# --------------------------------------------------------------------------------------------
# LoRA from scratch


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: y = W x + (B A x) · alpha / r.

    A (rank × in) starts random and B (out × rank) starts at zero, so B·A = 0 and the wrapped layer
    computes exactly what the base layer does at step 0: training starts from the pretrained model,
    not from noise. Only A and B (rank · (in + out) numbers) get gradients.
    """

    def __init__(self, linear: nn.Linear, rank: int = 8, alpha: float = 16):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank}.")
        self.linear = linear
        self.linear.requires_grad_(False)  # W stays frozen
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.A = nn.Parameter(torch.empty(rank, linear.in_features, dtype=linear.weight.dtype,
                                          device=linear.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # the same init PEFT uses for lora_A
        self.B = nn.Parameter(torch.zeros(linear.out_features, rank, dtype=linear.weight.dtype,
                                          device=linear.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + (x @ self.A.T @ self.B.T) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The update B·A·scale that merging adds to W (same shape as W)."""
        return self.B @ self.A * self.scale


def replace_linear_with_lora(model: nn.Module, rank: int = 8, alpha: float = 16,
                             targets: Iterable[str] | None = None) -> nn.Module:
    """Freeze every parameter of `model`, then wrap its `nn.Linear` layers in `LoRALinear` (in place).

    `targets` are child names to wrap (e.g. ("q_proj", "v_proj")); None wraps every nn.Linear.
    Returns the same model, so only the new A and B matrices are trainable.
    """
    model.requires_grad_(False)
    wanted = set(targets) if targets is not None else None
    found = _replace(model, rank, alpha, wanted)
    if wanted is not None and not found:
        raise LoRAError(f"No nn.Linear named any of {sorted(wanted)} in this model, so nothing was "
                        "wrapped. Print the model to see its layer names.")
    return model


def _replace(module: nn.Module, rank: int, alpha: float, wanted: set[str] | None) -> int:
    n = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and (wanted is None or name in wanted):
            setattr(module, name, LoRALinear(child, rank, alpha))
            n += 1
        elif not isinstance(child, LoRALinear):
            n += _replace(child, rank, alpha, wanted)
    return n


# --------------------------------------------------------------------------------------------
# PEFT's LoRA on a real model


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05,
                targets: Sequence[str] = DEFAULT_TARGETS, use_dora: bool = False):
    """A `peft.LoraConfig` for a causal LM with the course's defaults.

    r 16 and alpha 2·r are the usual start; dropout 0.05 regularises the adapter a little;
    q/k/v/o are the attention projections (add gate/up/down for a stronger adaptation).
    `use_dora=True` gives DoRA: the weight split into magnitude and direction, LoRA on the direction.
    """
    from peft import LoraConfig, TaskType

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                      bias="none", task_type=TaskType.CAUSAL_LM, use_dora=use_dora)


PEFT_METHODS = ("lora", "dora", "ia3", "prompt_tuning", "prefix_tuning")
"""The PEFT methods `peft_config` chooses by name (each is one of PEFT's own configs)."""


def peft_config(method: str = "lora", *, r: int = 16, alpha: float | None = None, dropout: float = 0.05,
                targets: Sequence[str] | None = None, num_virtual_tokens: int = 20):
    """A PEFT config for a causal LM chosen by name → LoraConfig, IA3Config, PromptTuningConfig or
    PrefixTuningConfig, ready for `train_sft(lora=...)` or `attach_lora`.

    Why by name: the PEFT family is configuration, not new code. labkit builds PEFT's own config and
    PEFT does the rest (`get_peft_model`). "lora" and "dora" (LoRA + a trained magnitude per output)
    take r, alpha (default 2·r), dropout and targets (default q/k/v/o); "ia3" learns one scale per
    channel of `targets` (default PEFT's own for the model: k, v and the MLP's down projection);
    "prompt_tuning" trains `num_virtual_tokens` input embeddings, "prefix_tuning" a key/value prefix
    for every layer. Keywords a method has no use for are ignored (r for IA3, targets for prompts).
    """
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig, TaskType

    if method not in PEFT_METHODS:
        close = [m for m in PEFT_METHODS if m.split("_")[0] in method.lower()]
        raise ValueError(f"Unknown PEFT method {method!r}. Known: {', '.join(PEFT_METHODS)}"
                         + (f" (did you mean {close[0]!r}?)" if close else "") + ".")
    if method in ("lora", "dora"):
        return lora_config(r, 2 * r if alpha is None else alpha, dropout, targets or DEFAULT_TARGETS,
                           use_dora=method == "dora")
    if method == "ia3":
        if targets is None:
            return IA3Config(task_type=TaskType.CAUSAL_LM)  # PEFT's per-architecture default
        ff = [t for t in targets if t in ("gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "mlp")]
        return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=list(targets), feedforward_modules=ff)
    cls = PromptTuningConfig if method == "prompt_tuning" else PrefixTuningConfig
    return cls(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)


def is_quantized(model: nn.Module) -> bool:
    """True for a model loaded in 4-bit or 8-bit by bitsandbytes."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def add_lora(model: nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.05,
             targets: Sequence[str] = DEFAULT_TARGETS, use_dora: bool = False):
    """Attach LoRA adapters to `model` → a `PeftModel` whose only trainable weights are the adapters.

    The course's keywords for `attach_lora(model, lora_config(...))`. Prints nothing: call
    `count_parameters` to see what you train.
    """
    return attach_lora(model, lora_config(r, alpha, dropout, targets, use_dora))


def attach_lora(model: nn.Module, config) -> nn.Module:
    """Apply a `peft.LoraConfig` → a `PeftModel`: the one path every labkit LoRA takes.

    For a 4/8-bit model (QLoRA) it first calls `peft.prepare_model_for_kbit_training`, which
    freezes the base, upcasts norms to fp32 and makes the inputs carry gradients. Gradient
    checkpointing follows the one rule, `labkit.env.gradient_checkpointing` (a T4 in fp16 only).
    PEFT keeps the adapter weights in fp32 on an fp16/bf16 base (`autocast_adapter_dtype`), so
    fp16 mixed precision can unscale their gradients.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    from labkit import env

    if is_quantized(model):
        use_gc = env.gradient_checkpointing(_device_of(model).type)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=use_gc)
    targets = getattr(config, "target_modules", None)  # prompt and prefix tuning have none
    try:
        with warnings.catch_warnings():  # transformers' own deprecation inside PEFT: noise for a learner
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config, autocast_adapter_dtype=True)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear_like(m)})
        raise LoRAError(f"PEFT could not attach {config.peft_type} to targets {sorted(targets or [])}: {exc}\n"
                        f"Linear layer names in this model: {names}") from exc


def _is_linear_like(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layer

    return isinstance(module, (nn.Linear, Conv1D, *quantized_linear_classes()))


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Counting


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int
    percent: float

    def __str__(self) -> str:  # the same line as PEFT's print_trainable_parameters()
        return (f"trainable params: {self.trainable:,d} || all params: {self.total:,d} "
                f"|| trainable%: {self.percent:.4f}")


def count_parameters(model: nn.Module) -> ParamCount:
    """Trainable and total parameters, counted the way PEFT's `get_nb_trainable_parameters` does.

    bitsandbytes stores a 4-bit weight as packed bytes (two 4-bit numbers per uint8), so its tensor
    reports half the real element count; like PEFT we count a `Params4bit` as elements × 2 × bytes
    per storage element. Tied weights (embedding = lm_head) are counted once.
    """
    trainable = total = 0
    for _, param in model.named_parameters():
        n = param.numel()
        if is_params4bit(param):
            if hasattr(param, "element_size"):
                nbytes = param.element_size()
            else:
                nbytes = getattr(getattr(param, "quant_storage", None), "itemsize", 1)
            n = n * 2 * nbytes
        total += n
        if param.requires_grad:
            trainable += n
    return ParamCount(trainable, total, 100 * trainable / total if total else 0.0)


# --------------------------------------------------------------------------------------------
# Counting LoRA on a config, without weights (the estimate itself, estimate_lora_params, is in labkit.shapes)


def count_lora_on_meta(config, r: int = 16, target_modules: Sequence[str] = DEFAULT_TARGETS,
                       use_dora: bool = False) -> ParamCount:
    """PEFT's own count for LoRA on the model a config describes, with no weights loaded.

    The model is built on PyTorch's meta device (shapes only, no memory), so even a 70B config
    counts in seconds: the ground truth `estimate_lora_params` is checked against.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # GPT-2's Conv1D: PEFT fixes it
        peft_model = get_peft_model(model, LoraConfig(r=r, target_modules=list(target_modules), use_dora=use_dora))
    trainable, total = peft_model.get_nb_trainable_parameters()
    return ParamCount(trainable, total, 100 * trainable / total)


# --------------------------------------------------------------------------------------------
# Saving and merging


def save_adapter(model, path: str | Path) -> float:
    """Save only the adapter (PEFT `save_pretrained`, safetensors) → its weights file size in MB.

    This is what you publish or keep per task: megabytes, against the hundreds of MB (or GB) of
    the base model it needs at load time.
    """
    if not hasattr(model, "peft_config"):
        raise LoRAError("save_adapter needs a PEFT model (from add_lora / get_peft_model); this model "
                        "has no adapters. To save a whole model use model.save_pretrained(path).")
    path = Path(path)
    model.save_pretrained(str(path), safe_serialization=True)
    weights = path / "adapter_model.safetensors"
    return weights.stat().st_size / 1e6


@dataclass
class MergeReport:
    """What merge_and_verify found. `max_abs_diff` is adapter-on-fp32-base vs merged (must be tiny);
    `source_diff` is the model you passed vs merged: quantisation error when you trained on NF4,
    rounding error when its base was bf16/fp16 (`source_16bit`)."""

    merged_model: nn.Module = field(repr=False)
    max_abs_diff: float
    ok: bool
    source_diff: float
    source_quantized: bool
    atol: float
    source_16bit: bool = False
    dequantized: bool = False  # merged into the trained NF4 base, dequantised (merge_into_dequantized)

    def __str__(self) -> str:
        src = ("its NF4 base dequantised: compute precision only, information only" if self.dequantized else
               "NF4/8-bit base (quantisation error, information only)" if self.source_quantized else
               "bf16/fp16 base (rounding error, information only)" if self.source_16bit else "same-precision base")
        base = "dequantised NF4 base" if self.dequantized else "fp32 base"
        return (f"merged vs adapter+{base}: max |Δlogit| = {self.max_abs_diff:.2e} (atol {self.atol:g}) "
                f"-> {'OK' if self.ok else 'MISMATCH'}\n"
                f"merged vs the model you trained ({src}): max |Δlogit| = {self.source_diff:.2e}")


DEFAULT_MERGE_PROMPTS = ("The capital of France is", "Invoice: 2 pens at 1.50 each",
                         "def add(a, b):")


def _logits(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    dev = _device_of(model)
    # no_repacking: the model passed in may be trained further, so its 4-bit weights must not be
    # left in bitsandbytes' inference-only CPU layout by this eval pass (the repacking trap).
    with no_repacking(model), eval_mode(model), torch.no_grad():
        return [model(input_ids=ids.to(dev)).logits.float().cpu() for ids in batches]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def merge_and_verify(peft_model, base_source: str | nn.Module = "smollm2-135m", tokenizer=None,
                     atol: float = 1e-3, prompts: Sequence[str] | None = None) -> MergeReport:
    """Merge the adapter into a FULL-PRECISION copy of the base and prove the merge is faithful.

    Why not merge into the 4-bit base you trained on: merging computes W + B·A·scale and would have
    to re-quantise that sum to 4 bits, rounding every weight a second time (an error this merge does
    not make; `merge_into_4bit` and exercise E9 measure it), and a 4-bit merge cannot be undone or
    re-quantised more finely later. So: load the base in
    fp32 (`base_source`: a course model name, or a clean base model object), load the adapter
    weights onto it, compare its logits with the merged model's on a few prompts (they must agree
    within `atol`), and return the merged model.

    If you trained on NF4, your model and the merged fp32 model differ by the quantisation error
    of the base (the adapter learned on the NF4 weights): reported as `source_diff`, for information;
    `merge_into_dequantized` merges into those weights instead (exercise E9 measures both). The same
    for a bf16/fp16 base (labkit's default on GPUs and on CPUs with native bf16), whose rounding error
    exceeds atol. If you trained on an fp32 base, `source_diff` must be within atol too — a large one
    means the wrong base model.
    """
    if not hasattr(peft_model, "peft_config") or not hasattr(peft_model, "merge_and_unload"):
        raise LoRAError("merge_and_verify needs a PeftModel (from add_lora or training with LoRA); "
                        f"got {type(peft_model).__name__}. A fully fine-tuned model has nothing to merge.")
    if isinstance(base_source, str):
        from labkit.models import load_model, load_tokenizer

        base = load_model(base_source)[0]
        tokenizer = tokenizer or load_tokenizer(base_source)
    else:
        if _has_adapters(base_source):
            raise LoRAError("The base model you passed already contains LoRA layers (get_peft_model / "
                            "add_lora change a model in place). Pass a clean copy of the base, e.g. "
                            "copy.deepcopy(base) made before adding LoRA, or a course model name.")
        base = copy.deepcopy(base_source)
    return _merge_onto(peft_model, base, _name(base_source), tokenizer, atol, prompts)


def _merge_onto(peft_model, base: nn.Module, base_name: str, tokenizer, atol: float,
                prompts: Sequence[str] | None) -> MergeReport:
    """merge_and_verify's work on `base`, which it consumes: cast to fp32 in place (Module.float), the merge
    ends up in it, with no second copy."""
    from peft import PeftModel

    base.float().eval()
    batches = _prompt_batches(tokenizer, prompts, base.config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        try:
            reference = PeftModel.from_pretrained(base, tmp)
        except (RuntimeError, ValueError, KeyError) as exc:  # shape mismatches, unknown target layers
            raise LoRAError(f"The adapter does not fit the base model {base_name}: {exc}\n"
                            "Merge into the same base architecture you trained on.") from exc
    reference_logits = _logits(reference, batches)
    merged = reference.merge_and_unload()
    merged.eval()
    merged_logits = _logits(merged, batches)
    source_logits = _logits(peft_model, batches)
    diff = _max_diff(reference_logits, merged_logits)
    source_diff = _max_diff(source_logits, merged_logits)
    quantized = is_quantized(peft_model.get_base_model())
    sixteen = not quantized and peft_model.get_base_model().dtype in (torch.float16, torch.bfloat16)
    ok = diff <= atol and (quantized or sixteen or source_diff <= atol)
    report = MergeReport(merged, diff, ok, source_diff, quantized, atol, sixteen)
    if not ok:
        why = (f"merged vs adapter-on-fp32-base differs by {diff:.3g} > atol {atol:g}: the merge changed "
               "the model's outputs." if diff > atol else
               f"the merged model differs from the model you trained by {source_diff:.3g} > atol {atol:g}, "
               f"although both are fp32: {base_name} is probably not the base the "
               "adapter was trained on.")
        raise LoRAError(f"Merge verification failed: {why}\n{report}")
    return report


def merge_into_4bit(peft_model) -> nn.Module:
    """Merge the adapter INTO the 4-bit base it was trained on (a copy): what the course says never to do.

    For measuring that advice, not for shipping: PEFT dequantises each NF4 weight, adds B·A·scale and
    re-quantises the sum to NF4, a second rounding of every weight that a merge into fp32 does not
    make, and the result can never be un-merged or re-quantised more finely. How much of the update
    that rounding loses depends on its size next to the NF4 levels' spacing: compare the result with
    the unmerged model (`max_logit_diff`, exact match), as exercise E9 does. Runs inside the repacking
    guard; the model you pass is not changed.
    """
    if not is_quantized(peft_model.get_base_model()):
        raise LoRAError("merge_into_4bit needs a PeftModel on a 4-bit base (load_model(quantization='nf4')).")
    with no_repacking(peft_model):
        return copy.deepcopy(peft_model).merge_and_unload()


def merge_into_dequantized(peft_model, tokenizer=None, atol: float = 1e-3,
                           prompts: Sequence[str] | None = None) -> MergeReport:
    """Merge a QLoRA adapter into its NF4 base *dequantised to fp32*: the faithful QLoRA merge → MergeReport.

    The adapter learned to correct the NF4 base it was trained on, not the original weights. Merged
    into the original fp32 base (`merge_and_verify` with the model's name) it is a different model,
    off by the base's quantisation error; merged into NF4 (`merge_into_4bit`) every weight is rounded a
    second time. Here the NF4 weights are turned back into fp32 numbers (the same values) and B·A·scale
    is added there: the model you trained, in full precision, ready to save or export; it costs the
    full-precision size. `merge_and_verify` checks the merge on that base; the report's `source_diff`
    (merged vs your model) is then compute precision only: ~1e-6 where NF4 computes in fp32, more
    where it computes in bf16. Exercise E9 measures all three merges. The model you pass is not changed.
    """
    if not is_quantized(peft_model.get_base_model()):
        raise LoRAError("merge_into_dequantized needs a PeftModel on a 4-bit base (QLoRA); for a 16/32-bit base "
                        "merge_and_verify is already exact.")
    with no_repacking(peft_model):
        twin = copy.deepcopy(peft_model)
    # transformers' bitsandbytes dequantisation turns the 4-bit layers into fp32; _merge_onto casts the rest
    # (embeddings, norms: bf16 where the model computes in bf16) in place
    base = twin.unload().dequantize(dtype=torch.float32)
    base.is_loaded_in_4bit = base.is_loaded_in_8bit = False  # dequantize() leaves the load-time flags set
    del twin  # the twin's base is `base` now: the merge goes into it, with no further fp32 copy
    report = _merge_onto(peft_model, base, "the NF4 base dequantised to fp32", tokenizer, atol, prompts)
    report.dequantized = True
    return report


def max_logit_diff(model_a: nn.Module, model_b: nn.Module, tokenizer, prompts: Sequence[str] | None = None) -> float:
    """Largest |logit difference| of two models over the same prompts: how far apart their next-token
    scores are (0 = the same model, up to rounding). 4-bit models are read inside the repacking guard."""
    batches = _prompt_batches(tokenizer, prompts, model_a.config.vocab_size)
    return _max_diff(_logits(model_a, batches), _logits(model_b, batches))


def _has_adapters(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer | LoRALinear) for m in model.modules())


def _name(base_source) -> str:
    return repr(base_source) if isinstance(base_source, str) else f"the {type(base_source).__name__} you passed"


def _prompt_batches(tokenizer, prompts: Sequence[str] | None, vocab_size: int) -> list[torch.Tensor]:
    """One [1, T] id tensor per prompt; without a tokenizer, fixed pseudo-random ids."""
    prompts = list(prompts or DEFAULT_MERGE_PROMPTS)
    if tokenizer is not None:
        return [tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts]
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab_size, (1, 12), generator=gen) for _ in prompts]

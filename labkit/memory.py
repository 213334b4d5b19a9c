"""How much GPU memory does training need? Estimates for full fine-tuning, LoRA and QLoRA.

Training memory is four piles: the weights, a gradient for every trainable weight, the optimizer's
state for every trainable weight (AdamW keeps two running averages), and the activations saved
for the backward pass. Full fine-tuning pays the last three for *every* parameter; LoRA only for
the adapters; QLoRA also shrinks the frozen weights to 4 bits. Sizes are in decimal GB (1e9 bytes),
as GPU vendors and the course's worked numbers use them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from labkit.shapes import (  # noqa: F401 - re-exported: lessons read them here
    COURSE_MODEL_SHAPE,
    DEFAULT_TARGETS,
    PRESETS,
    estimate_lora_params,
    num_layers,
    projection_shapes,
)
from labkit.tables import format_table

GB = 1e9
# QLoRA paper (Dettmers et al. 2023): NF4 stores 4 bits per weight; one fp32 absmax per 64 weights adds
# 0.5 bits, which double quantisation (8-bit absmax, one fp32 per 256 of those) cuts to 0.127 bits.
NF4_BITS_PER_PARAM = 4.127

# Optimizer state, bytes per trainable parameter, as a function of the training dtype's bytes.
OPTIMIZERS = {
    "adamw": lambda b: 2 * b,  # two moments kept in the training dtype (pure 16-bit training)
    "adamw_mixed": lambda b: 12,  # fp32 master weights + two fp32 moments (classic mixed precision)
    "adamw_8bit": lambda b: 2,  # two 8-bit moments (bitsandbytes); paged_adamw_8bit is the same size
    "paged_adamw_8bit": lambda b: 2,
    "sgd": lambda b: 0,
}

# GPUs by memory, smallest first: what the hardware table recommends.
GPUS = ((16, "T4 16 GB (free Colab)"), (24, "24 GB (RTX 4090 / A10G)"), (48, "48 GB (A6000 / L40S)"),
        (80, "80 GB (A100 / H100)"))


def preset_config(name: str):
    """A `transformers.LlamaConfig` with the shapes of a real model (no weights, no download)."""
    from transformers import LlamaConfig

    if name not in PRESETS:
        raise KeyError(f"No preset {name!r}; known: {', '.join(PRESETS)}.")
    return LlamaConfig(**PRESETS[name])


def count_params_from_config(config) -> int:
    """Total parameters of the model a config describes (tied embeddings counted once).

    Llama configs are counted by formula (fast); others by building the model on the meta device,
    which allocates no memory.
    """
    if getattr(config, "model_type", None) == "llama":
        return _llama_params(config)
    return count_params_on_meta(config)


def _llama_params(config) -> int:
    h, v = config.hidden_size, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = (config.num_key_value_heads or config.num_attention_heads) * head_dim
    attn = h * q_out + 2 * h * kv_out + q_out * h
    attn += (q_out + 2 * kv_out + h) if getattr(config, "attention_bias", False) else 0
    mlp = 3 * h * config.intermediate_size
    mlp += (2 * config.intermediate_size + h) if getattr(config, "mlp_bias", False) else 0
    layer = attn + mlp + 2 * h  # two RMSNorm weights
    embeddings = v * h * (1 if config.tie_word_embeddings else 2)
    return config.num_hidden_layers * layer + embeddings + h  # + final norm


def count_params_on_meta(config) -> int:
    """Total parameters of the model a config describes, built on the meta device (no memory used)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once


@cache
def preset_params(name: str) -> int:
    """Total parameters of a preset (counted once, then cached)."""
    return count_params_from_config(preset_config(name))


def nearest_preset(n_params: float) -> str:
    """The preset whose size is closest to `n_params`."""
    sizes = {name: preset_params(name) for name in PRESETS}
    return min(sizes, key=lambda name: abs(sizes[name] - n_params))


@dataclass
class MemoryEstimate:
    method: str
    n_params: int
    trainable_params: int
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    total_gb: float
    assumptions: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [("weights", self.weights_gb), ("gradients", self.gradients_gb),
                ("optimizer state", self.optimizer_gb), ("activations (rough)", self.activations_gb),
                ("total", self.total_gb)]
        head = (f"{self.method}: {self.n_params / 1e9:.2f}B params, {self.trainable_params:,d} trainable "
                f"({100 * self.trainable_params / self.n_params:.2f}%)")
        lines = [head] + [f"  {name:<20} {gb:8.2f} GB" for name, gb in rows]
        return "\n".join(lines + ["  assumptions:"] + [f"  - {a}" for a in self.assumptions])


def estimate_training_memory(config_or_n_params, method: str = "full", r: int = 16,
                             target_modules: Sequence[str] = DEFAULT_TARGETS, batch_size: int = 1,
                             seq_len: int = 512, dtype_bytes: int = 2, optimizer: str = "adamw",
                             gradient_checkpointing: bool | None = None, lora_dropout: float = 0.05) -> MemoryEstimate:
    """Estimate training memory for `method` = "full" | "lora" | "qlora" → MemoryEstimate (GB).

    Pass a transformers config (exact shapes) or a parameter count (shapes then come from the
    nearest preset; the assumptions say which). Defaults follow the course's rule of thumb for
    full fine-tuning — pure 16-bit training with AdamW moments in 16-bit: 2 (weights) + 2 (grads)
    + 4 (Adam) = 8 bytes per parameter, so 7B ≈ 56 GB plus activations. Classic mixed precision
    keeps fp32 master weights and moments (`optimizer="adamw_mixed"`, 16 bytes/param, ~112 GB for
    7B). Activations are a rough rule (see assumptions), not a measurement; exercise E7 measures a
    CPU step against it. The rule includes what that measurement showed the textbook rule misses:
    RMSNorm's fp32 copies, the adapters' own copies of their inputs (`lora_dropout` > 0 adds more)
    and the gradient of the fp32 logits.
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be 'full', 'lora' or 'qlora', not {method!r}.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}.")
    assumptions: list[str] = []
    if isinstance(config_or_n_params, int | float):
        n_params = int(config_or_n_params)
        preset = nearest_preset(n_params)
        config = preset_config(preset)
        assumptions.append(f"layer shapes (LoRA size, activations, 4-bit share) from {preset}")
    else:
        config = config_or_n_params
        n_params = count_params_from_config(config)
    if gradient_checkpointing is None:
        gradient_checkpointing = method == "qlora"  # the QLoRA recipe uses it; elsewhere off by default
    opt_bytes = OPTIMIZERS[optimizer](dtype_bytes)

    if method == "full":
        trainable = n_params
        weights = n_params * dtype_bytes
        assumptions.append(f"all {n_params / 1e9:.2f}B weights trained, stored in {dtype_bytes} bytes each")
    else:
        trainable = estimate_lora_params(config, r, target_modules)
        assumptions.append(f"LoRA r={r} on {', '.join(target_modules)}: {trainable:,d} trainable params")
        if method == "lora":
            weights = (n_params + trainable) * dtype_bytes
            assumptions.append(f"frozen base in {dtype_bytes}-byte weights")
        else:
            quantized = min(_quantizable_params(config), n_params)
            weights = quantized * NF4_BITS_PER_PARAM / 8 + (n_params - quantized + trainable) * dtype_bytes
            assumptions.append(f"{quantized / 1e9:.2f}B linear-layer weights in NF4 with double quantisation "
                               f"({NF4_BITS_PER_PARAM} bits each); embeddings, norms, adapters in "
                               f"{dtype_bytes}-byte precision")
    gradients = trainable * dtype_bytes
    optimizer_b = trainable * opt_bytes
    assumptions.append(f"optimizer {optimizer}: {opt_bytes} bytes per trainable param; gradients "
                       f"{dtype_bytes} bytes per trainable param")
    adapted_in = 0 if method == "full" else _adapted_input_features(config, target_modules)
    activations = _activation_bytes(config, batch_size, seq_len, dtype_bytes, gradient_checkpointing,
                                    adapted_in, lora_dropout)
    assumptions.append(
        f"activations ROUGH: batch {batch_size} × {seq_len} tokens, "
        + ("gradient checkpointing (one layer input kept per layer, one layer recomputed with its gradients)"
           if gradient_checkpointing
           else "no checkpointing, ~34·hidden bytes per token per layer (Korthikanti et al. 2022, "
                "fused attention)")
        + ", RMSNorm's fp32 copies"
        + (f", the adapters' copies of their inputs (dropout {lora_dropout})" if adapted_in else "")
        + ", plus fp32 logits and their gradient; CUDA context, fragmentation and framework overhead not included")
    total = weights + gradients + optimizer_b + activations
    return MemoryEstimate(method, n_params, trainable, weights / GB, gradients / GB, optimizer_b / GB,
                          activations / GB, total / GB, assumptions)


def _quantizable_params(config) -> int:
    """Weights bitsandbytes turns into 4-bit: every projection in the decoder layers (not embeddings,
    not lm_head, not norms)."""
    per_layer = sum(i * o for shapes in projection_shapes(config).values() for i, o in shapes)
    return per_layer * num_layers(config)


def _adapted_input_features(config, target_modules: Sequence[str]) -> int:
    """Sum of the input sizes of the adapted projections in one layer (each adapter keeps its own
    copy of its input for the backward pass)."""
    shapes = projection_shapes(config)
    return sum(i for name in target_modules for i, _ in shapes.get(name, ()))


def _activation_bytes(config, batch: int, seq: int, dtype_bytes: int, checkpointing: bool,
                      adapted_in: int = 0, dropout: float = 0.0) -> float:
    """A rough rule, per token and layer: ~34·hidden bytes in 16-bit (Korthikanti et al. 2022, scaled
    to dtype_bytes / 2); RMSNorm computes in fp32 and keeps fp32 copies of its input (two norms:
    16·hidden bytes on a 16-bit model, 8·hidden in fp32); each adapter (PEFT keeps them in fp32)
    keeps an fp32 copy of its input on a 16-bit base, and with dropout also the dropped copy and its
    mask (5 bytes per input number). With checkpointing: the layer inputs, plus one layer's worth
    recomputed and its gradients. On top, the loss: fp32 logits over the vocabulary and their
    gradient, alive together in the backward pass (8 bytes per token and vocabulary entry).

    Measured in E7 on a CPU (SmolLM2-135M, LoRA r=16 on q/k/v/o, batch 8 × 151 tokens, bf16): the
    textbook rule alone was 2.5× below what one step added; with the norm, adapter and logit-gradient
    terms, and with the step run under MALLOC_TRACKS_TENSORS (in this module), every E7 step is within 2×
    (0.76-1.52: batch 8, 4 × 2 accumulated, checkpointed; bf16 and fp32). Under glibc's default the
    fp32 checkpointed step read 2.5× the rule: freed blocks the allocator kept, not tensors.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    layers = num_layers(config)
    tokens = batch * seq
    norms = 2 * hidden * (8 if dtype_bytes < 4 else 4)
    adapters = adapted_in * ((4 if dtype_bytes < 4 else 0) + (5 if dropout > 0 else 0))
    per_layer_full = tokens * (hidden * 34 * dtype_bytes / 2 + norms + adapters)
    if checkpointing:
        body = tokens * hidden * dtype_bytes * layers + 2 * per_layer_full
    else:
        body = per_layer_full * layers
    return body + tokens * config.vocab_size * 8


def weights_memory_table(n_params: float) -> list[dict]:
    """Memory of the weights alone at each precision → rows {precision, bytes_per_param, gb}.

    Just n × bytes: 70B → fp32 280 GB, fp16/bf16 140 GB, int8 70 GB, 4-bit 35 GB. Before
    training pays for gradients, optimizer and activations, this decides whether a model even loads.
    """
    return [{"precision": name, "bytes_per_param": b, "gb": n_params * b / GB}
            for name, b in (("fp32", 4), ("fp16/bf16", 2), ("int8", 1), ("4-bit", 0.5))]


def measure_footprint_mb(model) -> float:
    """What the loaded model's parameters and buffers really take, in MB (`get_memory_footprint`).

    For a bitsandbytes 4-bit model this counts the packed 4-bit weights but not the small
    quantisation constants (absmax), so it is ~3% below NF4's 4.127 bits per weight.
    """
    return model.get_memory_footprint() / 1e6


def quant_constants_mb(model) -> float:
    """The 4-bit weights' quantisation constants in MB: what double quantisation shrinks, and what
    `measure_footprint_mb` leaves out (`labkit._compat.quant_constants_bytes`)."""
    from labkit._compat import quant_constants_bytes

    return sum(quant_constants_bytes(p) for p in model.parameters()) / 1e6


def rss_mb() -> float:
    """This process's resident memory now, in MiB (psutil): the baseline a measured peak is read against."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# For a run whose resident set should track its tensors: glibc's malloc raises its mmap threshold as large
# blocks come and go, then serves them from a heap it keeps after they are freed, and the RSS counts that.
# Fixed at 64 KB, every larger block is mapped and given back when freed. glibc reads it when a process
# starts, so it goes into a fresh process's environment (labkit.run.train_in_fresh_process(env=...)).
# Measured in E7 (one LoRA step, batch 8): checkpointing added 1.70 GB in fp32 without it, 1.04 GB with it.
MALLOC_TRACKS_TENSORS = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def release_freed_memory() -> bool:
    """Hand memory that Python and torch have freed back to the OS (glibc's `malloc_trim`) → True if done.

    Why: after one model is deleted, glibc keeps much of its memory for reuse; the next run then
    grows without the resident set growing, and its peak minus its starting point reads too low
    (measured: an IA3 run read 0 MB added after three earlier runs in one process). Trimmed first,
    what a run adds is its own (measured: a LoRA run repeated after three others read 1,769 MB added,
    against 1,731 MB the first time). Exercise E7 still runs each method in a fresh process: cleaner.
    False where there is no glibc (macOS, Windows, musl): readings there may be low after earlier runs.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False if not possible.

    False means every later `peak_rss_mb()` is the peak since the process started, which may be an
    earlier, larger step (loading a model in fp32 before quantising it): `PeakMeter` says so.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb(pid: int | None = None) -> float:
    """The high-water mark of resident memory of process `pid` (default: this one), in MiB.

    Linux reads VmHWM (any process); elsewhere this process's own peak comes from the OS
    (`getrusage` on macOS, psutil's peak working set on Windows), and another process's is 0.
    """
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid is not None:
        return 0.0
    return _own_peak_mb()


def _own_peak_mb() -> float:
    """This process's lifetime peak RSS without /proc (getrusage: bytes on macOS, KiB elsewhere;
    Windows has no getrusage: psutil's peak working set)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20


@dataclass(frozen=True)
class PeakMemory:
    """A measured peak and what it covers: `since_start` is False when the peak could not be reset,
    so `mb` is the process's peak since it started (an upper bound for the measured work)."""

    mb: float
    source: str  # "cuda" (peak allocated by torch) or "rss" (the process's resident set)
    since_start: bool
    start_mb: float = 0.0  # the same measure when the meter started: the peak minus this is what the work added

    @property
    def added_mb(self) -> float:
        """What the measured work added on top of what was already there (weights, libraries)."""
        return self.mb - self.start_mb

    @property
    def note(self) -> str:
        if self.since_start:
            return f"peak {self.source} memory during the measured work"
        return (f"peak {self.source} memory since the process started: the peak could not be reset on "
                "this platform, so it may come from earlier work (an upper bound)")

    def __str__(self) -> str:
        return f"{self.mb:,.0f} MiB ({self.note})"


class PeakMeter:
    """Peak memory of the work between creating it and `read()`, honest about its scope.

    CUDA: torch's peak allocated bytes (always resettable). CPU: the process's peak RSS, reset
    through /proc on Linux; where that fails (other systems, some sandboxes) the reading says
    `since_start=False` instead of passing off an older peak as this work's.
    """

    def __init__(self) -> None:
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
            self._reset, self._start = True, torch.cuda.memory_allocated() / 2**20
        else:
            release_freed_memory()  # so that what the work adds shows up as growth of the resident set
            self._reset, self._start = reset_peak_rss(), rss_mb()

    def read(self) -> PeakMemory:
        if self._cuda:
            import torch

            return PeakMemory(torch.cuda.max_memory_allocated() / 2**20, "cuda", True, self._start)
        return PeakMemory(peak_rss_mb(), "rss", self._reset, self._start)


def recommend_gpu(total_gb: float) -> str:
    """The smallest common GPU whose memory holds `total_gb` (estimates leave no headroom)."""
    for size, name in GPUS:
        if total_gb <= size:
            return name
    n = int(-(-total_gb // 80))
    return f"{n}× 80 GB (multi-GPU)"


def hardware_table(presets: Sequence[str] = ("llama-3.2-3b", "llama-3-8b", "llama-2-13b", "llama-2-70b"),
                   methods: Sequence[str] = ("full", "lora", "qlora"), **kwargs) -> list[dict]:
    """Estimated total GB and the smallest GPU for each model size × method → rows of dicts.

    Sizes stand for the course's buckets (1–3B, 7–8B, 13B, 70B) at their upper end; kwargs go to
    `estimate_training_memory` (r, batch_size, seq_len, ...).
    """
    rows = []
    for name in presets:
        config = preset_config(name)
        for method in methods:
            est = estimate_training_memory(config, method, **kwargs)
            rows.append({"model": name, "params_b": round(est.n_params / 1e9, 2), "method": method,
                         "total_gb": round(est.total_gb, 1), "gpu": recommend_gpu(est.total_gb)})
    return rows


def format_rows(rows: list[dict]) -> str:
    """Plain-text table of row dicts (same keys), for printing in a notebook."""
    return format_table(rows, fmt=lambda _, v: _fmt(v))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if v >= 1 else f"{v:.3g}"
    return str(v)

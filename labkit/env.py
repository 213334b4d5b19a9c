"""Where am I running, and what does that mean for training?

Every other module asks this one for the device, the dtype, the gradient-checkpointing rule and
the course profile, so a notebook never has to branch on hardware itself. It sits just above
labkit._compat (which holds torch's private CPU probes) and imports nothing else from labkit; it
prints nothing, and only `is_offline()` touches the network.

Four switches, read from the environment:
- LABKIT_GPU=t4 treats any CUDA GPU as a Colab T4 (no bf16: fp16, gradient checkpointing, paged
  8-bit AdamW), so the T4 path can be exercised on whatever GPU is at hand. Unset or "native": the
  GPU's own capabilities decide.
- LABKIT_PROFILE=cpu forces the CPU course sizes on a GPU machine (for comparisons); "gpu" or
  unset: the hardware decides.
- LABKIT_CPU_DTYPE=fp32 keeps a CPU with native bf16 in fp32 (the reference path, and what every
  other CPU uses); "bf16" asks for bf16 anyway; unset: bf16 exactly where the CPU has native bf16.
- LABKIT_OFFLINE=1 (like the Hub's HF_HUB_OFFLINE=1): never touch the network; Hub models are
  refused and the embedded course model is used.
"""

from __future__ import annotations

import functools
import os
import random
import socket
import sys
import threading
from dataclasses import asdict, dataclass

import numpy as np
import torch

from labkit import _compat

# Colab T4 is compute capability 7.5; bf16 needs Ampere (8.0) or newer.
_BF16_MIN_CAPABILITY = (8, 0)
GPU_MODES = ("native", "t4")
PROFILES = ("cpu", "gpu")
CPU_DTYPES = ("fp32", "bf16")


class EnvError(ValueError):
    """An environment switch has a value labkit does not know; the message lists the valid ones."""


def _switch(name: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip().lower()
    if value and value not in allowed:
        raise EnvError(f"{name}={os.environ[name]!r} is not a valid value: use one of {', '.join(allowed)} "
                       f"(or unset it).")
    return value


def device() -> str:
    """The best device here: "cuda", then "mps", else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def t4_mode() -> bool:
    """True when LABKIT_GPU=t4: any CUDA GPU is treated as a T4 (an unknown value raises EnvError)."""
    return _switch("LABKIT_GPU", GPU_MODES) == "t4"


def fsdp_launched() -> bool:
    """True when `accelerate launch` runs this process under FSDP (it sets ACCELERATE_USE_FSDP=true).

    Why the loader must know: FSDP shards only tensors of one float dtype, so a 4-bit base must be
    stored in that dtype and must not be placed on a GPU by device_map (FSDP places the shards).
    """
    return _env_true("ACCELERATE_USE_FSDP")


def _env_true(name: str) -> bool:
    """An on/off environment variable is on ("1", "true", "yes" or "on", any case)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def cuda_supports_bf16() -> bool:
    """True on Ampere or newer, False in T4 mode. Asked via the capability so a mocked T4 (7.5) answers False."""
    if not torch.cuda.is_available() or t4_mode():
        return False
    return tuple(torch.cuda.get_device_capability(0)) >= _BF16_MIN_CAPABILITY


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX tiles: bf16 matmuls run natively, at 2-4x fp32's rate.

    Asked through torch's own CPU probes (private names, so they live in labkit._compat;
    tests/test_drift.py fails if they move); a torch without them answers False, which only costs speed.
    """
    return _compat.cpu_has_native_bf16()


def cpu_bf16() -> bool:
    """Does labkit compute in bf16 on this CPU? Yes where it is native, unless LABKIT_CPU_DTYPE says otherwise.

    Why (issue 15, measured on a 2-core AVX512-BF16 CPU, lesson 05's QLoRA run): an NF4 base that
    dequantises straight to bf16, bf16 autocast and eager attention train ~2.1x faster than fp32,
    with the same held-out exact match (benchmarks/train_throughput.py prints both). Without native
    bf16 the same kernels are slower than fp32, so every other CPU stays in fp32.
    """
    choice = _switch("LABKIT_CPU_DTYPE", CPU_DTYPES)
    return choice == "bf16" if choice else cpu_has_native_bf16()


def cpu_dtype_reason() -> str:
    """Why `cpu_bf16` answers as it does, in words for `labkit doctor`: the switch, or the CPU's probe."""
    choice = _switch("LABKIT_CPU_DTYPE", CPU_DTYPES)
    if choice:
        return f"LABKIT_CPU_DTYPE={choice}"
    return "native bf16 on this CPU" if cpu_has_native_bf16() else "no native bf16 on this CPU"


def compute_dtype(dev: str | None = None) -> torch.dtype:
    """bf16 on CUDA with bf16, fp16 on CUDA without it (T4, or T4 mode), bf16 on a CPU with native
    bf16 (`cpu_bf16`), fp32 elsewhere.

    Why fp32 on other CPUs: CPU kernels do not train in fp16, and without native bf16 instructions
    bf16 is slower than fp32. Why fp32 on Apple MPS: fp16 training there needs loss scaling that not
    every torch/macOS pair supports, and the course model is small enough for fp32 in unified memory.
    """
    dev = dev or device()
    if dev == "cuda":
        return torch.bfloat16 if cuda_supports_bf16() else torch.float16
    if dev == "cpu" and cpu_bf16():
        return torch.bfloat16
    return torch.float32


def attention_implementation(dev: str, dtype: torch.dtype) -> str:
    """"eager" for bf16 on a CPU, "sdpa" everywhere else.

    Why: torch's fused CPU attention kernel is slower in bf16 than the plain matmul-softmax-matmul
    (lesson 05's training step: 6.6 s -> 5.5 s for 6 steps, issue 15); in fp32 the two are equal and
    on GPUs sdpa is the fast one (no FlashAttention on a T4's Turing cores, sdpa still works there).
    """
    return "eager" if dev == "cpu" and dtype == torch.bfloat16 else "sdpa"


def gradient_checkpointing(dev: str | None = None) -> bool:
    """THE rule for gradient (activation) checkpointing: on only on a CUDA GPU without bf16 (a T4).

    It recomputes activations in the backward pass to save memory: worth it on a 16 GB T4 in fp16,
    pure cost (~30% slower) on a CPU, on Apple MPS and on bf16 GPUs with room to spare for the course
    model. Every labkit path (train_sft's config, add_lora, QLoRA preparation) asks this function.
    """
    dev = dev or device()
    return dev == "cuda" and not cuda_supports_bf16()


def nf4_device(dev: str | None = None) -> str:
    """Where a 4-bit (NF4) base model lives: the GPU on CUDA, else the CPU (Apple silicon included).

    Why the CPU on a Mac: bitsandbytes 0.50's MPS backend has 4-bit kernels, but QLoRA training
    through it (the backward pass, the 8-bit optimizers) is not covered by its tests or ours, while
    its CPU library runs the same code path this course tests in CI. So a Mac learner runs the QLoRA
    lessons on the CPU (slower, correct) and everything else on MPS.
    """
    dev = dev or device()
    return "cuda" if dev == "cuda" else "cpu"


def in_colab() -> bool:
    """True inside Google Colab (its kernel imports google.colab)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


# Any of these set to 1/true/yes/on means "never touch the network" (read on every call, so a
# notebook can switch it on midway); LABKIT_OFFLINE is labkit's own, the others are the Hub's.
OFFLINE_SWITCHES = ("LABKIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_offline() -> bool:
    """Offline when LABKIT_OFFLINE / HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE say so (no network touched),
    else when huggingface.co does not resolve within 2 s (asked once per process, then remembered)."""
    if any(_env_true(var) for var in OFFLINE_SWITCHES):
        return True
    return not _hub_reachable()


@functools.cache
def _hub_reachable(timeout: float = 2.0) -> bool:
    """Does huggingface.co resolve within `timeout` seconds? Cached: every model lookup asks, and the
    answer does not change within a lesson (`_hub_reachable.cache_clear()` asks again).

    Why a thread: `socket.setdefaulttimeout` bounds connects and reads, not the resolver; on a
    machine whose DNS server is unreachable `getaddrinfo` blocks for the resolver's own timeouts
    (5 s x attempts x servers, often 10-30 s), and it did so on every call. The lookup runs in a
    daemon thread and is abandoned after `timeout`: no answer in time counts as offline.
    """
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo("huggingface.co", 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="labkit-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def library_defaults() -> None:
    """Quiet, offline-friendly defaults for the libraries under labkit; a value the learner set wins.

    - TOKENIZERS_PARALLELISM=false: a tokenizer used before a DataLoader forks its workers
      otherwise prints a warning per worker (and may deadlock); labkit tokenizes in one process.
    - HF_HUB_DISABLE_TELEMETRY=1: no usage pings from a course run.
    - bitsandbytes' failed kernel download line is dropped (`_compat.quiet_bitsandbytes_kernel_fetch`).

    Called by `load_model`, `load_tokenizer` and the doctor before they import those libraries, and
    idempotent. Not run at `import labkit`: importing a package must not change the environment
    that a learner's script (and every program it starts) sees.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _compat.quiet_bitsandbytes_kernel_fetch()


def set_seed(seed: int = 0) -> None:
    """Seed python, numpy, torch and transformers so a notebook run twice asserts the same."""
    from transformers import set_seed as hf_set_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    hf_set_seed(seed)


# --------------------------------------------------------------------------------------------
# Course profile: one place that sizes the course for the hardware it runs on.


@dataclass(frozen=True)
class Profile:
    """Sizes for the course on this hardware. The CPU profile is what CI runs."""

    name: str
    device: str
    dtype: str
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    batch_size: int
    gradient_checkpointing: bool
    optim: str

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps of one lesson-05 training run: ceil(n_train / batch) per epoch."""
        return -(-self.n_train // self.batch_size) * self.epochs

    def as_dict(self) -> dict:
        return asdict(self)


def course_profile(dev: str | None = None) -> Profile:
    """CPU: small and exact, each notebook in minutes on 2 cores. GPU: more records, same steps or more.

    The CPU profile never skips the step a lesson is about; it only trains on fewer records. The
    GPU profile keeps the CPU's batch size and epochs, so it takes at least as many optimizer steps
    (the course's runs scored lower with fewer steps: batch 8 → 25/32, batch 4 → 29/32). Pure: it
    reads the hardware and LABKIT_PROFILE / LABKIT_GPU, and neither prints nor touches the network.
    """
    dev = dev or device()
    if _switch("LABKIT_PROFILE", PROFILES) == "cpu":
        dev = "cpu"
    if dev == "cuda":
        t4 = not cuda_supports_bf16()
        return Profile(name="gpu-t4" if t4 else "gpu", device=dev,
                       dtype=str(compute_dtype(dev)).removeprefix("torch."),
                       n_train=256, n_val=32, n_test=64, epochs=2, batch_size=4,
                       gradient_checkpointing=gradient_checkpointing(dev),
                       optim="paged_adamw_8bit" if t4 else "adamw_torch")
    return Profile(name="cpu" if dev == "cpu" else dev, device=dev,
                   dtype=str(compute_dtype(dev)).removeprefix("torch."), n_train=160, n_val=16, n_test=32, epochs=2,
                   batch_size=4,  # on a CPU: less padding and more updates than 8 for the same compute
                   gradient_checkpointing=False, optim="adamw_torch")

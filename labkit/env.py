"""Where am I running, and what does that mean for training?

Every other module asks this one for the device, the dtype and the course profile, so a notebook
never has to branch on hardware itself. `doctor()` is the preflight an instructor runs before a
workshop: one line per check, OK / WARN / FAIL, with the fix to try.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import random
import shutil
import socket
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

# Colab T4 is compute capability 7.5; bf16 needs Ampere (8.0) or newer.
_BF16_MIN_CAPABILITY = (8, 0)


def device() -> str:
    """The best device here: "cuda", then "mps", else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def cuda_supports_bf16() -> bool:
    """True on Ampere or newer. Asked via the capability so a mocked T4 (7.5) answers False."""
    if not torch.cuda.is_available():
        return False
    return tuple(torch.cuda.get_device_capability(0)) >= _BF16_MIN_CAPABILITY


def compute_dtype(dev: str | None = None) -> torch.dtype:
    """bf16 on CUDA with bf16, fp16 on CUDA without it (T4), fp32 elsewhere.

    Why fp32 on the CPU: bf16 autocast there is slower than fp32 on most laptops, and fp16 is
    not supported by CPU kernels for training.
    """
    dev = dev or device()
    if dev == "cuda":
        return torch.bfloat16 if cuda_supports_bf16() else torch.float16
    return torch.float32


def in_colab() -> bool:
    """True inside Google Colab (its kernel imports google.colab)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def is_offline() -> bool:
    """Offline when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE say so, or the Hub does not resolve."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return not _hub_reachable()


def _hub_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo("huggingface.co", 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def set_seed(seed: int = 0) -> None:
    """Seed python, numpy, torch and transformers so a notebook run twice asserts the same."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        from transformers import set_seed as hf_set_seed

        hf_set_seed(seed)
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


# --------------------------------------------------------------------------------------------
# Course profile: one place that sizes the course for the hardware it runs on.


@dataclass(frozen=True)
class Profile:
    """Sizes for the course on this hardware. The CPU profile is what CI runs."""

    name: str
    device: str
    dtype: str
    model: str
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    batch_size: int
    gradient_checkpointing: bool
    optim: str

    def as_dict(self) -> dict:
        return asdict(self)


def course_profile(dev: str | None = None) -> Profile:
    """CPU: small and exact, each notebook in minutes on 2 cores. GPU: larger sets and batches.

    The CPU profile never skips the step a lesson is about; it only trains on fewer records.
    Set LABKIT_PROFILE=cpu to force the CPU sizes on a GPU machine (for comparisons), and
    LABKIT_MODEL to try a larger Hub model on a GPU (see `choose_model`).
    """
    dev = dev or device()
    model = choose_model()
    if os.environ.get("LABKIT_PROFILE", "").lower() == "cpu":
        dev = "cpu"
    dtype = compute_dtype(dev)
    if dev == "cuda":
        t4 = dtype == torch.float16
        return Profile(
            name="gpu-t4" if t4 else "gpu",
            device=dev,
            dtype=str(dtype).removeprefix("torch."),
            model=model,
            n_train=256,
            n_val=32,
            n_test=64,
            epochs=2,
            batch_size=16,
            gradient_checkpointing=t4,
            optim="paged_adamw_8bit" if t4 else "adamw_torch",
        )
    return Profile(
        name="cpu",
        device=dev,
        dtype="float32",
        model=model,
        n_train=160,
        n_val=16,
        n_test=32,
        epochs=2,
        batch_size=4,  # on a CPU: less padding and more updates than 8 for the same compute
        gradient_checkpointing=False,
        optim="adamw_torch",
    )


def choose_model() -> str:
    """The course model: the embedded SmolLM2-135M unless LABKIT_MODEL names another registry model.

    A Hub model (e.g. LABKIT_MODEL=smollm2-360m on a Colab GPU) is used only when online; offline
    the course falls back to the embedded model and says so, so a workshop never stalls on a download.
    """
    from labkit.models import DEFAULT_MODEL, get_spec

    wanted = os.environ.get("LABKIT_MODEL", "").strip() or DEFAULT_MODEL
    spec = get_spec(wanted)
    if not spec.embedded and is_offline():
        print(f"labkit: LABKIT_MODEL={wanted} needs the Hugging Face Hub and this runtime is offline; "
              f"using the embedded {DEFAULT_MODEL} instead.")
        return DEFAULT_MODEL
    return wanted


# --------------------------------------------------------------------------------------------
# doctor: the preflight.


@dataclass
class Check:
    name: str
    status: str  # "OK" | "WARN" | "FAIL"
    detail: str
    fix: str = ""

    def line(self) -> str:
        tail = f"  -> {self.fix}" if self.fix and self.status != "OK" else ""
        return f"[{self.status:<4}] {self.name:<18} {self.detail}{tail}"


_KEY_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "datasets",
    "accelerate",
    "gguf",
    "ipywidgets",
)


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_nf4() -> Check:
    """Quantise a tiny layer to NF4 and run a matmul through it, forward and backward."""
    from labkit._compat import BITSANDBYTES_REQUIREMENT

    fix = f"pip install -U '{BITSANDBYTES_REQUIREMENT}'"
    try:
        import bitsandbytes as bnb

        dev = device() if device() == "cuda" else "cpu"
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer = layer.to(dev)
        x = torch.randn(2, 64, device=dev, requires_grad=True)
        y = layer(x)
        y.sum().backward()
        ok = bool(torch.isfinite(y).all()) and x.grad is not None
        return Check("NF4 4-bit", "OK" if ok else "FAIL", f"bitsandbytes {bnb.__version__} on {dev}", fix)
    except Exception as exc:  # noqa: BLE001 - the doctor reports, never crashes
        return Check("NF4 4-bit", "FAIL", f"{type(exc).__name__}: {exc}"[:160], fix)


def doctor(print_report: bool = True) -> list[Check]:
    """Preflight checks for a workshop; prints one line per check and returns them."""
    checks: list[Check] = []
    py = sys.version_info
    checks.append(Check("python", "OK" if py >= (3, 11) else "FAIL", platform.python_version(),
                        "use Python 3.11 or newer (transformers 5 needs it)"))
    for pkg in _KEY_PACKAGES:
        v = _version(pkg)
        checks.append(Check(pkg, "OK" if v else "FAIL", v or "not installed",
                            "make setup  (or: pip install -e '.[dev]')"))

    dev = device()
    dtype = compute_dtype(dev)
    if dev == "cuda":
        name = torch.cuda.get_device_name(0)
        cap = torch.cuda.get_device_capability(0)
        vram = torch.cuda.get_device_properties(0).total_memory / 2**30
        checks.append(Check("device", "OK", f"cuda: {name}, capability {cap[0]}.{cap[1]}, {vram:.1f} GiB VRAM"))
        checks.append(Check("bf16", "OK" if cuda_supports_bf16() else "WARN",
                            f"supported={cuda_supports_bf16()}; training dtype {dtype}",
                            "no bf16 on this GPU (e.g. T4): labkit uses fp16 + gradient checkpointing"))
        checks.append(Check("vram", "OK" if vram >= 12 else "WARN", f"{vram:.1f} GiB",
                            "use the 135M model, batch size 4, or QLoRA"))
    else:
        checks.append(Check("device", "OK" if dev == "cpu" else "WARN",
                            f"{dev} (no CUDA GPU); training dtype {dtype}; {torch.get_num_threads()} threads",
                            "fine for this course: the CPU profile is sized for it"))

    try:
        import psutil

        ram = psutil.virtual_memory().total / 2**30
        checks.append(Check("ram", "OK" if ram >= 8 else "WARN", f"{ram:.1f} GiB", "close other programs"))
    except ImportError:
        checks.append(Check("ram", "WARN", "psutil missing", "pip install psutil"))

    from labkit.models import cache_dir

    cache = cache_dir()
    probe = cache if cache.exists() else cache.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    checks.append(Check("disk", "OK" if free >= 3 else "WARN", f"{free:.1f} GiB free at {probe}",
                        "free some disk: the model cache needs ~0.6 GB"))
    checks.append(_check_nf4())

    offline = is_offline()
    checks.append(Check("network", "OK", "offline: the embedded model is used" if offline
                        else "online: hub models are available too"))

    from labkit.models import INSTALL_EMBEDDED, available_models

    local = available_models(local_only=True)
    checks.append(Check("models", "OK" if local else "FAIL",
                        ", ".join(local) if local else "no course model available offline",
                        INSTALL_EMBEDDED))
    checks.append(Check("profile", "OK", course_profile().name))

    if print_report:
        for c in checks:
            print(c.line())
        n_fail = sum(c.status == "FAIL" for c in checks)
        n_warn = sum(c.status == "WARN" for c in checks)
        print(f"doctor: {n_fail} FAIL, {n_warn} WARN")
    return checks

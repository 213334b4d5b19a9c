"""The preflight an instructor runs before a workshop: `labkit doctor`.

One line per check, OK / WARN / FAIL, with the fix to try. It never crashes: a check that breaks
reports FAIL with the error instead. It says which device and dtype the course will use, whether
T4 mode is on, and where 4-bit (QLoRA) models run on this machine.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import sys
from dataclasses import dataclass

import torch

from labkit import env
from labkit._compat import BITSANDBYTES_REQUIREMENT

KEY_PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "gguf",
                "ipywidgets")
_BNB_FIX = f"pip install -U '{BITSANDBYTES_REQUIREMENT}'"


@dataclass
class Check:
    name: str
    status: str  # "OK" | "WARN" | "FAIL"
    detail: str
    fix: str = ""

    def line(self) -> str:
        tail = f"  -> {self.fix}" if self.fix and self.status != "OK" else ""
        return f"[{self.status:<4}] {self.name:<18} {self.detail}{tail}"


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages() -> list[Check]:
    """Python itself and every library the course imports, with its installed version."""
    py_ok = sys.version_info >= (3, 11)
    checks = [Check("python", "OK" if py_ok else "FAIL", platform.python_version(),
                    "use Python 3.11 or newer (transformers 5 needs it)")]
    for pkg in KEY_PACKAGES:
        v = _version(pkg)
        checks.append(Check(pkg, "OK" if v else "FAIL", v or "not installed", "make setup  (or: pip install -e '.[dev]')"))
    return checks


def check_device() -> list[Check]:
    """The device and training dtype; on CUDA also bf16, VRAM and whether T4 mode is on."""
    dev, dtype = env.device(), env.compute_dtype()
    if dev != "cuda":
        reason = f" ({env.cpu_dtype_reason()})" if dev == "cpu" else ""
        detail = f"{dev} (no CUDA GPU); training dtype {dtype}{reason}; {torch.get_num_threads()} threads"
        return [Check("device", "OK" if dev == "cpu" else "WARN", detail,
                      "fine for this course: the CPU profile is sized for it")]
    name = torch.cuda.get_device_name(0)
    cap = torch.cuda.get_device_capability(0)
    vram = torch.cuda.get_device_properties(0).total_memory / 2**30
    bf16 = env.cuda_supports_bf16()
    checks = [Check("device", "OK", f"cuda: {name}, capability {cap[0]}.{cap[1]}, {vram:.1f} GiB VRAM"),
              Check("bf16", "OK" if bf16 else "WARN", f"supported={bf16}; training dtype {dtype}",
                    "no bf16 on this GPU (e.g. T4): labkit uses fp16 + gradient checkpointing"),
              Check("vram", "OK" if vram >= 12 else "WARN", f"{vram:.1f} GiB", "use the 135M model, batch size 4, or QLoRA")]
    if env.t4_mode():
        checks.append(Check("T4 mode", "WARN", f"LABKIT_GPU=t4: this {name} is treated as a T4 (fp16, gradient "
                            "checkpointing, paged 8-bit AdamW)", "unset LABKIT_GPU to use the GPU natively"))
    return checks


def check_memory() -> list[Check]:
    """RAM, and free disk where the model cache lives (~0.6 GB needed)."""
    import psutil

    from labkit.models import cache_dir

    ram = psutil.virtual_memory().total / 2**30
    probe = cache_dir()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    return [Check("ram", "OK" if ram >= 8 else "WARN", f"{ram:.1f} GiB", "close other programs"),
            Check("disk", "OK" if free >= 3 else "WARN", f"{free:.1f} GiB free at {probe}",
                  "free some disk: the model cache needs ~0.6 GB")]


def check_nf4() -> Check:
    """Quantise a tiny layer to NF4 where QLoRA runs here, then a forward and backward pass through it."""
    dev = env.nf4_device()
    where = ("on the CPU: bitsandbytes' MPS backend is not tested for QLoRA training, its CPU library is"
             if env.device() == "mps" else f"on {dev}")
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(dev)
        x = torch.randn(2, 64, device=dev, requires_grad=True)
        y = layer(x)
        y.sum().backward()
        ok = bool(torch.isfinite(y).all()) and x.grad is not None
        return Check("NF4 4-bit", "OK" if ok else "FAIL", f"bitsandbytes {bnb.__version__}; QLoRA runs {where}",
                     _BNB_FIX)
    except Exception as exc:  # noqa: BLE001 - the doctor reports, never crashes
        return Check("NF4 4-bit", "FAIL", f"{type(exc).__name__}: {exc}"[:160], _BNB_FIX)


def check_models() -> list[Check]:
    """Network state, which course models work offline, and the course profile."""
    from labkit.models import INSTALL_EMBEDDED, available_models

    offline = env.is_offline()
    local = available_models(local_only=True)
    return [Check("network", "OK", "offline: the embedded model is used" if offline
                  else "online: hub models are available too"),
            Check("models", "OK" if local else "FAIL", ", ".join(local) if local else "no course model available offline",
                  INSTALL_EMBEDDED),
            Check("profile", "OK", env.course_profile().name)]


def doctor(print_report: bool = True) -> list[Check]:
    """Preflight checks for a workshop; prints one line per check and returns them."""
    env.library_defaults()
    checks = [*check_packages(), *check_device(), *check_memory(), check_nf4(), *check_models()]
    if print_report:
        for c in checks:
            print(c.line())
        n_fail = sum(c.status == "FAIL" for c in checks)
        n_warn = sum(c.status == "WARN" for c in checks)
        print(f"doctor: {n_fail} FAIL, {n_warn} WARN")
    return checks

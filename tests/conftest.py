import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_benchmark(name: str):
    """Import benchmarks/<name>.py (a script folder, not a package) as a module, for its pure parts."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny():
    """A randomly initialised 2-layer model with the course tokenizer (fast)."""
    from labkit.models import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def smol():
    """The real embedded SmolLM2-135M-Instruct in fp32 on any CPU (slow tests only): the reference precision."""
    import torch

    from labkit.models import load_model

    return load_model(dtype=torch.float32)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one, run by `make gpu-check`")


def pytest_collection_modifyitems(config, items):
    """CPU CI never runs GPU tests: without CUDA they are skipped with the command that runs them."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `make gpu-check` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

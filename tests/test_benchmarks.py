"""The benchmark scripts' pure parts: the roofline's FLOP count, padding shares, the profile's grouping."""

import pytest
from conftest import load_benchmark

profile_step = load_benchmark("profile_step")
train_throughput = load_benchmark("train_throughput")


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


def test_profile_shares_by_part_of_the_model_use_inclusive_time():
    times = {"MatMul4Bit": 3.0, "MatMul4BitBackward": 1.0, "ChunkedLogProbFunction": 1.0,
             "ChunkedLogProbFunctionBackward": 2.0, "aten::mm": 6.0}  # aten::mm is inside the others: not added
    shares = profile_step.share_by_part(times, total=10.0)
    assert shares["NF4 base projections (dequantise + matmul)"] == pytest.approx(0.4)
    assert shares["TRL's fused LM head + loss"] == pytest.approx(0.3)
    assert shares[profile_step.REST] == pytest.approx(0.3)


def test_padding_share_counts_pad_tokens_per_batch(tiny):
    _, tok = tiny
    from labkit.data import tokenize_with_labels

    records = [{"prompt": "Say a.", "completion": "a"}, {"prompt": "Say a much longer thing, please." * 4,
                                                         "completion": "b"}]
    lens = [len(tokenize_with_labels(r, tok)["input_ids"]) + 1 for r in records]
    share = train_throughput.padding_share(records, tok, batch=2)  # one batch of both: the short one is padded
    assert share["grouped"] == pytest.approx(1 - sum(lens) / (2 * max(lens)))
    assert train_throughput.padding_share(records, tok, batch=1) == {"grouped": 0.0, "random": 0.0}


def test_roofline_flop_count_for_the_course_model():
    """4 FLOP per backbone weight per token (forward + activation gradients), plus the head on answer
    tokens, attention, and 6 per LoRA weight: the issue's "~4 x backbone parameters"."""
    from transformers import LlamaConfig

    from labkit.shapes import COURSE_MODEL_SHAPE

    config = LlamaConfig(**COURSE_MODEL_SHAPE)
    backbone = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    assert train_throughput.train_flops_per_token(config, 0, 0.0, 0) == 4 * backbone == 424_673_280
    with_head = train_throughput.train_flops_per_token(config, 1000, 0.5, 100)
    assert with_head == 4 * backbone + 2 * 576 * 49152 + 8 * 100 * 576 * 30 + 6000


def test_model_shape_rate_times_every_projection():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=10)
    assert train_throughput.model_shape_gflops(cfg, tokens=8, dtype_name="float32", reps=2) > 0

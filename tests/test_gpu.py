"""Every device-dependent path on a real CUDA GPU, in native mode and in T4 mode (LABKIT_GPU=t4).

Marked `gpu`: skipped without CUDA, never run in CPU CI; `make gpu-check` runs them (see
benchmarks/gpu_check.py). They use a tiny self-contained model (`LABKIT_TINY_MODEL`, a folder
written by `labkit.models.save_tiny_model`, or built from the course tokenizer when that is
installed), so nothing is downloaded.
"""

import copy
import math
import os

import pytest
import torch

from labkit import env, models

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    given = os.environ.get("LABKIT_TINY_MODEL")
    return given if given else str(models.save_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(params=["native", "t4"])
def mode(request, monkeypatch):
    monkeypatch.setenv("LABKIT_GPU", request.param)
    return request.param


def _records(n: int) -> list[dict]:
    return [{"prompt": f"Q: what is {i} plus {i}?\nA:", "completion": f" {2 * i}"} for i in range(n)]


def test_load_in_the_modes_dtype_and_in_nf4(mode, tiny_dir):
    import bitsandbytes as bnb

    model, _ = models.load_model(tiny_dir)
    expected = torch.float16 if mode == "t4" or not env.cuda_supports_bf16() else torch.bfloat16
    assert model.device.type == "cuda" and model.dtype == expected == env.compute_dtype()
    fp32, _ = models.load_model(tiny_dir, dtype=torch.float32)
    assert fp32.dtype == torch.float32
    nf4, _ = models.load_model(tiny_dir, quantization="nf4")
    layers = [m for m in nf4.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" for m in layers)


@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_lora_and_qlora_train_and_the_loss_falls(mode, tiny_dir, quantization, tmp_path):
    from labkit.train import train_sft

    model, tok = models.load_model(tiny_dir, quantization=quantization)
    h = train_sft(model, tok, _records(16), lora={"r": 8, "targets": ("q_proj", "v_proj")}, epochs=3,
                  learning_rate=3e-3, batch_size=4, plot=False, progress=False, output_dir=tmp_path)
    assert all(math.isfinite(x) for x in h.train_loss)
    assert h.epoch_train_loss[-1] < h.epoch_train_loss[0]
    trainable = {p.dtype for p in h.model.parameters() if p.requires_grad}
    if mode == "t4" or quantization is None:
        assert trainable == {torch.float32}  # fp16 autocast (T4) needs fp32 weights to update
    else:
        assert trainable <= {torch.float32, torch.bfloat16}  # TRL's QLoRA recipe: bf16 adapters on bf16 GPUs


def test_full_fine_tuning_keeps_fp32_master_weights(mode, tiny_dir, tmp_path):
    from labkit.train import train_sft

    model, tok = models.load_model(tiny_dir)  # fp16 in T4 mode: the "unscale FP16 gradients" trap
    h = train_sft(model, tok, _records(16), epochs=2, learning_rate=1e-3, batch_size=4, plot=False,
                  progress=False, output_dir=tmp_path)
    assert all(p.dtype == torch.float32 for p in h.model.parameters())
    assert h.epoch_train_loss[-1] < h.epoch_train_loss[0]


def test_generation_scoring_and_the_probe_run_on_the_gpu(mode, tiny_dir):
    from labkit.alignment import completion_logprob, score_preferences
    from labkit.evaluate import answer_loss, evaluate_records, generate
    from labkit.lora import add_lora
    from labkit.probe import general_probe, load_probe, mean_kl

    model, tok = models.load_model(tiny_dir)
    recs = _records(4)
    assert len(generate(model, tok, [r["prompt"] for r in recs], max_new_tokens=4, progress=False)) == 4
    assert evaluate_records(model, tok, recs, max_new_tokens=4, progress=False).n == 4
    assert math.isfinite(answer_loss(model, tok, recs))
    assert math.isfinite(completion_logprob(model, tok, recs[0]["prompt"], recs[0]["completion"]))
    pair = {"prompt": recs[0]["prompt"], "chosen": " 0", "rejected": " 7"}
    assert len(score_preferences(model, tok, [pair])) == 1
    assert 0 <= general_probe(model, tok, load_probe()[:8]).score <= 1
    tuned = add_lora(copy.deepcopy(model), r=4)
    assert mean_kl(None, tuned, tok, ["The sky is blue."]) == pytest.approx(0, abs=1e-2)


def test_merge_and_verify_on_the_gpu(mode, tiny_dir):
    from labkit.lora import add_lora, merge_and_verify

    model, tok = models.load_model(tiny_dir, quantization="nf4")
    peft_model = add_lora(model, r=4)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    report = merge_and_verify(peft_model, models.load_model(tiny_dir, dtype=torch.float32)[0], tokenizer=tok)
    assert report.ok and report.source_quantized


def test_memory_estimate_matches_the_measured_footprint(mode, tiny_dir):
    from labkit.memory import estimate_training_memory, measure_footprint_mb

    model, _ = models.load_model(tiny_dir)
    bytes_per = torch.finfo(model.dtype).bits // 8
    est = estimate_training_memory(model.config, "full", dtype_bytes=bytes_per)
    assert est.weights_gb * 1000 == pytest.approx(measure_footprint_mb(model), rel=0.01)

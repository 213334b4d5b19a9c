import copy

import pytest
import torch
from conftest import tiny_tokenizer_dir
from torch import nn

from labkit.lora import (
    ALL_LINEAR_TARGETS,
    DEFAULT_TARGETS,
    LoRAError,
    LoRALinear,
    add_lora,
    count_lora_on_meta,
    count_parameters,
    estimate_lora_params,
    merge_and_verify,
    replace_linear_with_lora,
    save_adapter,
)


class OneLayer(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def test_lora_linear_starts_equal_to_base_and_only_A_B_train():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    lora = LoRALinear(copy.deepcopy(base), rank=4, alpha=8)
    x = torch.randn(3, 16)
    assert torch.equal(lora(x), base(x))  # B = 0 → no change at step 0
    assert torch.count_nonzero(lora.A) > 0 and torch.count_nonzero(lora.B) == 0
    assert lora.scale == 2.0
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable == ["A", "B"]
    assert lora.A.shape == (4, 16) and lora.B.shape == (8, 4)


def test_lora_linear_learns_a_low_rank_change():
    torch.manual_seed(0)
    base = nn.Linear(12, 12, bias=False)
    target = base.weight.detach() + torch.randn(12, 2) @ torch.randn(2, 12) * 0.5  # rank-2 change
    x = torch.randn(64, 12)
    y = x @ target.T
    lora = LoRALinear(base, rank=2, alpha=2)
    w_before = base.weight.detach().clone()
    opt = torch.optim.Adam([lora.A, lora.B], lr=0.05)
    losses = []
    for _ in range(150):
        loss = nn.functional.mse_loss(lora(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0]
    assert torch.equal(base.weight, w_before)  # W never moved
    assert torch.allclose(base.weight + lora.delta_weight(), target, atol=0.05)


def test_lora_linear_equals_peft_lora_with_same_A_B():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    linear = nn.Linear(10, 7)
    ours = LoRALinear(copy.deepcopy(linear), rank=3, alpha=6)
    nn.init.normal_(ours.B)  # a non-zero update, so the comparison means something
    peft_model = get_peft_model(OneLayer(copy.deepcopy(linear)),
                                LoraConfig(r=3, lora_alpha=6, lora_dropout=0.0, target_modules=["proj"]))
    layer = peft_model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.A)
        layer.lora_B["default"].weight.copy_(ours.B)
    x = torch.randn(4, 10)
    assert (peft_model(x) - ours(x)).abs().max() < 1e-6
    assert (ours(x) - linear(x)).abs().max() > 1e-2


def test_replace_linear_with_lora_freezes_everything_but_adapters():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    replace_linear_with_lora(model, rank=2, alpha=4)
    assert isinstance(model[0], LoRALinear) and isinstance(model[2][0], LoRALinear)
    assert count_parameters(model).trainable == 2 * (8 + 8) + 2 * (8 + 4)
    with pytest.raises(LoRAError, match="No nn.Linear named"):
        replace_linear_with_lora(nn.Sequential(nn.Linear(2, 2)), targets=["q_proj"])


def test_count_parameters_matches_peft_on_tiny(tiny):
    model, _ = tiny
    peft_model = add_lora(copy.deepcopy(model), r=8, alpha=16)
    trainable, total = peft_model.get_nb_trainable_parameters()
    ours = count_parameters(peft_model)
    assert (ours.trainable, ours.total) == (trainable, total)
    assert ours.trainable == estimate_lora_params(model.config, 8, DEFAULT_TARGETS)
    assert str(ours).startswith(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: ")


def test_add_lora_explains_unknown_targets(tiny):
    model, _ = tiny
    with pytest.raises(LoRAError, match="Linear layer names in this model"):
        add_lora(copy.deepcopy(model), targets=("c_attn",))


def _peft_count(config, r, targets, use_dora=False) -> int:
    return count_lora_on_meta(config, r, targets, use_dora=use_dora).trainable


def _small_configs():
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=320, vocab_size=500)
    return {
        "llama": LlamaConfig(**common),
        "llama-head_dim": LlamaConfig(**{**common, "head_dim": 32}),  # heads·head_dim ≠ hidden
        "mistral": MistralConfig(**common),
        "qwen2": Qwen2Config(**common),
        "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500, bos_token_id=0, eos_token_id=0),
    }


@pytest.mark.parametrize("family", ["llama", "llama-head_dim", "mistral", "qwen2", "gpt2"])
@pytest.mark.parametrize("r", [1, 8])
def test_estimate_equals_peft_count_on_meta_models(family, r):
    config = _small_configs()[family]
    if family == "gpt2":
        target_sets = [("c_attn",), ("c_attn", "c_proj"), ("c_attn", "c_proj", "c_fc")]
    else:
        target_sets = [("q_proj", "v_proj"), DEFAULT_TARGETS, ALL_LINEAR_TARGETS]
    for targets in target_sets:
        assert estimate_lora_params(config, r, targets) == _peft_count(config, r, targets), targets


def test_estimate_counts_dora_magnitudes():
    config = _small_configs()["qwen2"]
    assert estimate_lora_params(config, 4, DEFAULT_TARGETS, use_dora=True) == _peft_count(
        config, 4, DEFAULT_TARGETS, use_dora=True)


def test_estimate_full_size_llama_3b_on_meta():
    from labkit.memory import preset_config

    config = preset_config("llama-3.2-3b")  # hidden 3072, 28 layers, 24 heads, 8 KV heads
    n = estimate_lora_params(config, 16, DEFAULT_TARGETS)
    assert n == _peft_count(config, 16, DEFAULT_TARGETS) == 9_175_040
    assert n != 4_194_304  # the published figure this course corrects


def test_estimate_refuses_unknown_families_and_targets():
    from transformers import LlamaConfig, PretrainedConfig

    with pytest.raises(NotImplementedError, match="meta device"):
        estimate_lora_params(PretrainedConfig(model_type="phi3"), 16, DEFAULT_TARGETS)
    with pytest.raises(ValueError, match="Unknown target"):
        estimate_lora_params(LlamaConfig(), 16, ["c_attn"])


def test_save_adapter_and_merge_and_verify_on_tiny(tiny, tmp_path):
    model, tok = tiny
    clean_base = copy.deepcopy(model)
    peft_model = add_lora(copy.deepcopy(model), r=4, alpha=8, dropout=0.1)
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)  # pretend it trained
    mb = save_adapter(peft_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file() and 0 < mb < 1
    report = merge_and_verify(peft_model, clean_base, tokenizer=tok)
    assert report.ok and report.max_abs_diff < 1e-4 and report.source_diff < 1e-4
    assert not any("lora" in n for n, _ in report.merged_model.named_parameters())
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the merged model really carries the update: it differs from the base
        assert (report.merged_model(ids).logits - clean_base(ids).logits).abs().max() > 1e-3
    assert not any("lora" in n for n, _ in clean_base.named_parameters())  # base not mutated


def test_merge_and_verify_errors(tiny):
    from labkit.models import tiny_model

    model, tok = tiny
    peft_model = add_lora(copy.deepcopy(model), r=4, alpha=8)
    with pytest.raises(LoRAError, match="probably not the base"):
        merge_and_verify(peft_model, tiny_model(seed=1, tokenizer=tiny_tokenizer_dir())[0], tokenizer=tok)
    with pytest.raises(LoRAError, match="already contains LoRA layers"):
        merge_and_verify(peft_model, peft_model.get_base_model())
    with pytest.raises(LoRAError, match="needs a PeftModel"):
        merge_and_verify(model, model)


def test_merge_of_a_bf16_trained_model_reports_its_rounding_for_information(tiny):
    """labkit trains in bf16 on GPUs and on CPUs with native bf16: that base's rounding is not a wrong base."""
    model, tok = tiny
    peft_model = add_lora(copy.deepcopy(model).to(torch.bfloat16), r=4, alpha=8)
    report = merge_and_verify(peft_model, copy.deepcopy(model), tokenizer=tok)
    assert report.ok and report.source_16bit and not report.source_quantized
    assert report.source_diff > report.atol  # the rounding is real, and reported
    assert "bf16/fp16 base (rounding error, information only)" in str(report)


@pytest.mark.slow
def test_count_parameters_and_merge_on_real_nf4_model():
    from labkit.models import load_model

    model, tok = load_model(quantization="nf4")
    peft_model = add_lora(model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    ours = count_parameters(peft_model)
    assert (ours.trainable, ours.total) == (trainable, total)
    assert ours.trainable == estimate_lora_params(model.config, 16, DEFAULT_TARGETS) == 1_843_200
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.01)
    report = merge_and_verify(peft_model, "smollm2-135m", tokenizer=tok)
    assert report.ok and report.source_quantized
    assert report.max_abs_diff < 1e-3 < report.source_diff  # NF4 base ≠ fp32 base: information only


def test_merge_reports_a_misfit_adapter_but_passes_other_errors_through(tiny, monkeypatch):
    import peft

    model, tok = tiny
    peft_model = add_lora(copy.deepcopy(model), r=4)

    def raiser(exc):
        def load(*a, **k):
            raise exc
        return load

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", raiser(RuntimeError("size mismatch for lora_A")))
    with pytest.raises(LoRAError, match="does not fit the base model.*size mismatch"):
        merge_and_verify(peft_model, copy.deepcopy(model), tokenizer=tok)
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", raiser(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        merge_and_verify(peft_model, copy.deepcopy(model), tokenizer=tok)


def test_linear_like_layers_are_found_by_class_not_by_name():
    """isinstance against the real classes: a subclass counts, a look-alike with the same name does not."""
    import bitsandbytes as bnb
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from labkit.lora import _is_linear_like

    class MyLinear4bit(bnb.nn.Linear4bit):
        pass

    Linear4bit = type("Linear4bit", (nn.Module,), {})  # same name, not a linear layer
    assert _is_linear_like(MyLinear4bit(8, 8, quant_type="nf4")) and _is_linear_like(Conv1D(8, 8))
    assert _is_linear_like(bnb.nn.Linear8bitLt(8, 8, has_fp16_weights=False))
    assert not _is_linear_like(Linear4bit()) and not _is_linear_like(nn.LayerNorm(8))


def test_count_parameters_unpacks_4bit_weights_by_class():
    """A Params4bit stores two 4-bit numbers per byte: counted as its real element count."""
    import bitsandbytes as bnb
    from torch import nn

    net = nn.Sequential(bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4"))
    net = net.to("cpu")
    assert type(net[0].weight).__name__ == "Params4bit" and net[0].weight.numel() == 64 * 32 // 2
    assert count_parameters(net).total == 64 * 32


def test_merge_into_4bit_loses_a_small_update_and_leaves_the_model_alone(tmp_path):
    from labkit.lora import max_logit_diff, merge_into_4bit
    from labkit.models import load_model, save_tiny_model

    model, tok = load_model(str(save_tiny_model(tmp_path / "tiny")), quantization="nf4", dtype=torch.float32)
    model = add_lora(model, r=4, alpha=8, dropout=0.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)   # a small update, as after a short fine-tune
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    merged = merge_into_4bit(model)
    with model.disable_adapter():
        base_logits_gap = max_logit_diff(model, merged, tok)   # the 4-bit base alone vs the 4-bit merge
    kept = max_logit_diff(model, merged, tok)   # the unmerged adapter model vs the 4-bit merge
    assert kept > 0 and base_logits_gap < kept, "a small update rounds back to the base's NF4 levels"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_" in n)
    with pytest.raises(LoRAError, match="4-bit base"):
        merge_into_4bit(add_lora(load_model(str(tmp_path / "tiny"))[0], r=4))


def test_merge_into_dequantized_keeps_the_qlora_model_and_the_fp32_merge_does_not(tmp_path):
    """The adapter was trained against NF4 weights: merged into them dequantised it is the same model;
    merged into the original fp32 base it is off by the base's quantisation error; into NF4, re-rounded."""
    from labkit.lora import (
        is_quantized,
        max_logit_diff,
        merge_and_verify,
        merge_into_4bit,
        merge_into_dequantized,
    )
    from labkit.models import load_model, save_tiny_model

    folder = save_tiny_model(tmp_path / "tiny")
    model, tok = load_model(str(folder), quantization="nf4", dtype=torch.float32)
    model = add_lora(model, r=4, alpha=8, dropout=0.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    report = merge_into_dequantized(model, tokenizer=tok)
    merged = report.merged_model
    assert report.ok and report.dequantized and "dequantised NF4 base" in str(report)
    assert not is_quantized(merged) and not _has_lora(merged)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    faithful = max_logit_diff(model, merged, tok)
    fp32_base = merge_and_verify(model, load_model(str(folder), dtype=torch.float32)[0], tok).merged_model
    assert faithful < 1e-4 < max_logit_diff(model, fp32_base, tok)  # tiny NF4 computes in fp32 here
    assert report.source_diff == pytest.approx(faithful, abs=1e-6)
    assert faithful < max_logit_diff(model, merge_into_4bit(model), tok)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_" in n)
    with pytest.raises(LoRAError, match="4-bit base"):
        merge_into_dequantized(add_lora(load_model(str(folder))[0], r=4))


def test_merge_into_dequantized_copies_only_the_4bit_model(tmp_path, monkeypatch):
    """The fp32 merge is built in the dequantised copy itself: one copy of the 4-bit model, and no second
    full-precision copy of the base (the memory a laptop or a T4 is short of)."""
    import copy
    import types

    from labkit import lora
    from labkit.models import load_model, save_tiny_model

    # bf16 outside the 4-bit layers, as a bf16 CPU or a GPU run loads it; the merged model is all fp32
    model, tok = load_model(str(save_tiny_model(tmp_path / "tiny")), quantization="nf4", dtype=torch.bfloat16)
    model = add_lora(model, r=4, alpha=8, dropout=0.0)
    copied = []
    monkeypatch.setattr(lora, "copy", types.SimpleNamespace(deepcopy=lambda obj: copied.append(obj) or copy.deepcopy(obj)))
    report = lora.merge_into_dequantized(model, tokenizer=tok)
    assert report.ok and [id(obj) for obj in copied] == [id(model)]
    assert {p.dtype for p in report.merged_model.parameters()} == {torch.float32}


def _has_lora(model) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


# --------------------------------------------------------------------------------------------
# The PEFT family by name


@pytest.mark.parametrize("method, kind", [("lora", "LoraConfig"), ("dora", "LoraConfig"), ("ia3", "IA3Config"),
                                          ("prompt_tuning", "PromptTuningConfig"),
                                          ("prefix_tuning", "PrefixTuningConfig")])
def test_peft_config_by_name_attaches_and_trains_only_the_method(method, kind):
    from labkit.lora import attach_lora, peft_config
    from labkit.models import tiny_model

    config = peft_config(method, r=4, num_virtual_tokens=5)
    assert type(config).__name__ == kind and config.task_type == "CAUSAL_LM"
    model = attach_lora(tiny_model(seed=0)[0], config)
    trainable, _ = model.get_nb_trainable_parameters()
    assert 0 < trainable == count_parameters(model).trainable or method in ("prompt_tuning", "prefix_tuning")
    assert trainable > 0
    if method == "dora":
        assert config.use_dora and config.lora_alpha == 8  # alpha defaults to 2·r
    if method == "prompt_tuning":  # 5 virtual tokens of the hidden size (64), nothing else
        assert trainable == 5 * 64


def test_peft_config_ia3_targets_and_unknown_names():
    from labkit.lora import peft_config

    config = peft_config("ia3", targets=ALL_LINEAR_TARGETS)
    assert set(config.feedforward_modules) == {"gate_proj", "up_proj", "down_proj"}
    with pytest.raises(ValueError, match="Unknown PEFT method 'prompt'.*prompt_tuning"):
        peft_config("prompt")

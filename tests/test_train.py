"""labkit.train: config per device, clear errors, History, the gradient check, resume, the NF4 trap."""

import math

import pytest
import torch
from conftest import tiny_tokenizer_dir
from transformers import TrainerCallback

from labkit import env
from labkit import train as T
from labkit._compat import checkpointing_key, trl_fused_head_labelled_only
from labkit.train import History, find_overfitting_epoch, sft_config_kwargs, train_sft

GC = checkpointing_key()  # "activation_checkpointing" (transformers >= 5.2x) or "gradient_checkpointing"


def _records(n: int, offset: int = 0) -> list[dict]:
    from labkit.data import to_record

    return [to_record("Add the numbers.", f"{i + offset} plus one is {i + offset + 1}", input=f"{i + offset} + 1")
            for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Config per device (no trainer is built on CUDA: only the kwargs are checked)


def test_cpu_defaults_build_a_config(tmp_path, monkeypatch):
    from trl import SFTConfig

    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: True)
    native = SFTConfig(**sft_config_kwargs(str(tmp_path), device="cpu"))
    assert native.bf16 is True and not native.fp16 and getattr(native, GC) is False
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: False)
    kw = sft_config_kwargs(str(tmp_path), device="cpu")
    assert kw["use_cpu"] and not kw["bf16"] and not kw["fp16"] and not kw[GC]
    assert kw["completion_only_loss"] is True
    cfg = SFTConfig(**kw)
    assert cfg.bf16 is False and getattr(cfg, GC) is False  # TRL's own defaults are True


def test_cuda_bf16_defaults(monkeypatch):
    monkeypatch.setattr(env, "cuda_supports_bf16", lambda: True)
    kw = sft_config_kwargs("out", device="cuda")
    assert kw["bf16"] is True and kw["fp16"] is False
    assert kw[GC] is False and "use_cpu" not in kw


def test_t4_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert env.device() == "cuda" and not env.cuda_supports_bf16()
    kw = sft_config_kwargs("out")
    assert kw["fp16"] is True and kw["bf16"] is False
    assert kw[GC] is True and kw["optim"] == "paged_adamw_8bit"
    assert kw[f"{GC}_kwargs"] == {"use_reentrant": False}


def test_overrides_win():
    kw = sft_config_kwargs("out", device="cpu", gradient_checkpointing=True, optim="adafactor", bf16=True)
    assert kw[GC] is True and kw["optim"] == "adafactor" and kw["bf16"] is True


def test_early_stopping_sets_best_model_restore():
    kw = sft_config_kwargs("out", device="cpu", early_stopping_patience=2)
    assert kw["load_best_model_at_end"] and kw["metric_for_best_model"] == "eval_loss"
    assert kw["save_strategy"] == kw["eval_strategy"] == "epoch"
    with pytest.raises(ValueError, match="validation set"):
        sft_config_kwargs("out", device="cpu", has_val=False, early_stopping_patience=2)


# ------------------------------------------------------------------------------------------------
# Clear errors (raised before any trainer is built)


def test_empty_train_set(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="train set is empty"):
        train_sft(model, tok, [], plot=False)


def test_missing_field_names_record_and_field(tiny):
    model, tok = tiny
    bad = _records(4)
    del bad[2]["completion"]
    with pytest.raises(ValueError, match=r"train record 2 has no 'completion' field"):
        train_sft(model, tok, bad, plot=False)
    bad = _records(4)
    bad[1]["prompt"] = "  "
    with pytest.raises(ValueError, match=r"train record 1: field 'prompt' is empty"):
        train_sft(model, tok, bad, plot=False)


def test_val_larger_than_train(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"val set \(8 records\) is larger than the train set \(4\)"):
        train_sft(model, tok, _records(4), _records(8, 100), batch_size=2, plot=False)


def test_batch_larger_than_data(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="batch_size=16 is larger than the train set"):
        train_sft(model, tok, _records(4), batch_size=16, plot=False)


def test_no_trainable_parameters(tiny):
    model, tok = tiny
    frozen = model
    flags = [p.requires_grad for p in frozen.parameters()]
    try:
        for p in frozen.parameters():
            p.requires_grad_(False)
        with pytest.raises(ValueError, match="no trainable parameters"):
            train_sft(frozen, tok, _records(4), batch_size=2, plot=False)
    finally:
        for p, f in zip(frozen.parameters(), flags, strict=True):
            p.requires_grad_(f)


# ------------------------------------------------------------------------------------------------
# History and overfitting


def test_find_overfitting_epoch():
    overfit = History(epoch_train_loss=[1.0, 0.6, 0.3, 0.1], val_loss=[1.2, 0.9, 0.8, 0.95, 1.1])
    assert find_overfitting_epoch(overfit) == 2
    healthy = History(epoch_train_loss=[1.0, 0.6, 0.4], val_loss=[1.2, 0.9, 0.7, 0.6])
    assert find_overfitting_epoch(healthy) is None
    # val rises but train rises too: not the overfitting signature (e.g. LR too high)
    unstable = History(epoch_train_loss=[1.0, 1.2, 1.5], val_loss=[1.2, 1.0, 1.3, 1.6])
    assert find_overfitting_epoch(unstable) is None
    assert find_overfitting_epoch(History()) is None


def test_history_from_log():
    log = [{"loss": 2.0, "epoch": 0.5, "step": 1}, {"loss": 1.0, "epoch": 1.0, "step": 2},
           {"eval_loss": 1.5, "epoch": 1.0, "step": 2}, {"loss": 0.8, "epoch": 1.5, "step": 3},
           {"loss": 0.6, "epoch": 2.0, "step": 4}, {"eval_loss": 1.6, "epoch": 2.0, "step": 4},
           {"train_runtime": 1.0, "train_loss": 1.1, "epoch": 2.0, "step": 4}]
    h = T.history_from_log(log, val0=3.0)
    assert h.train_loss == [2.0, 1.0, 0.8, 0.6]
    assert h.epoch_train_loss == [1.5, 0.7]
    assert h.val_loss == [3.0, 1.5, 1.6]
    assert h.best_epoch == 1
    assert "<- best" in h.summary().splitlines()[2]


def test_plot_losses_draws_each_history():
    import matplotlib

    matplotlib.use("Agg")
    from labkit.plots import plot_losses

    h = History(train_loss=[2, 1.5, 1.0], train_epochs=[0.5, 1, 1.5], val_loss=[2.2, 1.4, 1.2], best_epoch=2)
    ax = plot_losses(h)
    assert len(ax.lines) == 3  # train, val, best-epoch star
    ax = plot_losses([h, h], labels=["a", "b"])
    assert len(ax.lines) == 6 and "a: validation" in [t.get_text() for t in ax.get_legend().get_texts()]
    with pytest.raises(ValueError, match="labels"):
        plot_losses([h, h], labels=["a"])


# ------------------------------------------------------------------------------------------------
# Tokenisation: completion-only labels, EOS learned


def test_prompt_masked_and_eos_is_last_label(tiny, tmp_path):
    from trl import SFTConfig, SFTTrainer

    _, tok = tiny
    model = _fresh_tiny()  # SFTTrainer patches the model it gets (TRL's fused LM head): not the shared one
    recs = _records(4)
    cfg = SFTConfig(**sft_config_kwargs(str(tmp_path), device="cpu", batch_size=2, has_val=False))
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=T.records_to_dataset(recs), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row, rec in zip(batch["labels"], recs[:2], strict=True):
        learned = row[row != -100].tolist()
        assert learned[-1] == tok.eos_token_id
        assert tok.decode(learned[:-1]).strip() == rec["completion"]
        n_prompt = len(tok(rec["prompt"])["input_ids"])
        assert (row[:n_prompt] == -100).all()


def _fused_head_run(model, batch, labels):
    """Loss, every parameter's gradient and the number of rows TRL's fused head projected."""
    import trl.trainer.utils as trl_utils

    rows = []
    real = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return real.apply(hidden, *args)

    trl_utils._ChunkedLogProbFunction = Spy
    try:
        model.zero_grad()
        out = model(**batch, labels=labels, fused_lm_head=True)
        out.loss.backward()
    finally:
        trl_utils._ChunkedLogProbFunction = real
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads, rows


def test_cpu_fused_head_scores_answer_tokens_only_with_same_loss_and_gradients():
    """train_sft's CPU speed-up: the fused LM head projects only labelled positions, same maths."""
    import trl.trainer.utils as trl_utils

    from labkit.data import tokenize_with_labels
    from labkit.models import tiny_model

    model, tok = tiny_model(seed=3, tokenizer=tiny_tokenizer_dir())
    model.train()
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    encoded = [tokenize_with_labels(r, tok) for r in _records(3)]  # prompt masked, as in training
    width = max(len(e["input_ids"]) for e in encoded)

    def right_padded(key: str, value: int) -> torch.Tensor:
        return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in encoded])

    batch = {"input_ids": right_padded("input_ids", tok.pad_token_id), "attention_mask": right_padded("attention_mask", 0)}
    labels = right_padded("labels", -100)
    n_labelled = int((labels[:, 1:] != -100).sum())
    n_positions = labels[:, 1:].numel()

    loss_all, grads_all, rows_all = _fused_head_run(model, batch, labels)
    original = trl_utils._use_triton
    with trl_fused_head_labelled_only("cpu"):
        loss_ans, grads_ans, rows_ans = _fused_head_run(model, batch, labels)
    assert trl_utils._use_triton is original, "the TRL hook was not restored"

    assert rows_all == [n_positions] and rows_ans == [n_labelled] and n_labelled < n_positions / 2
    torch.testing.assert_close(loss_ans, loss_all, rtol=1e-5, atol=1e-6)
    assert grads_ans.keys() == grads_all.keys() and grads_all
    for name, g in grads_all.items():
        torch.testing.assert_close(grads_ans[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_answer_token_scoring_leaves_other_devices_alone():
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    with trl_fused_head_labelled_only("cuda"):
        assert trl_utils._use_triton is original
    with trl_fused_head_labelled_only("cpu"):
        assert trl_utils._use_triton(torch.device("cpu")) is True
        assert trl_utils._use_triton(torch.device("meta")) is original(torch.device("meta"))
    assert trl_utils._use_triton is original


# ------------------------------------------------------------------------------------------------
# The gradient check fails loudly


def test_gradient_check_fires_on_detached_lora_layer(tiny, tmp_path):
    from labkit.lora import add_lora

    model, tok = tiny
    peft_model = add_lora(_fresh_tiny(), r=4)
    target = next(m for n, m in peft_model.named_modules() if n.endswith("layers.0.self_attn.q_proj.lora_B.default"))
    hook = target.register_forward_hook(lambda mod, inp, out: out.detach())  # cuts this adapter's gradient
    try:
        with pytest.raises(RuntimeError, match=r"layers\.0\.self_attn\.q_proj\.lora_B.*no gradient"):
            train_sft(peft_model, tok, _records(8), batch_size=4, epochs=1, plot=False, progress=False,
                      output_dir=tmp_path)
    finally:
        hook.remove()


def test_gradient_check_fires_on_packed_nf4_layer():
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    torch.manual_seed(0)
    net = torch.nn.Sequential(bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4"))
    net = net.to("cpu")
    x = torch.randn(3, 64)
    before = net(x).detach()
    layer = net[0]
    if not T.packed_nf4_layers(net):  # pack by hand when this CPU would not (no AVX512-BF16)
        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                     layer.weight.quant_state)
    assert T.packed_nf4_layers(net) == ["0"]
    with pytest.raises(RuntimeError, match="repacking trap"):
        T.check_first_step_gradients(net)
    assert T.unpack_nf4_for_training(net) == 1 and T.packed_nf4_layers(net) == []
    # packing rounds the block scales to bf16, so the unpacked layer is close, not bit-identical
    torch.testing.assert_close(net(x), before, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------------------
# A real (tiny) run, interrupted and resumed


def _fresh_tiny():
    from labkit.models import tiny_model

    return tiny_model(seed=0, tokenizer=tiny_tokenizer_dir())[0]


class _Crash(Exception):
    pass


class _CrashAfter(T.TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Crash(f"simulated crash after step {self.step}")


def _lora_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_interrupted_run_resumes_to_same_adapter(tiny, tmp_path):
    _, tok = tiny
    train, val = _records(8), _records(2, 100)
    kw = dict(lora={"r": 4, "alpha": 8}, epochs=2, batch_size=4, learning_rate=1e-3, max_length=64,
              plot=False, progress=False, seed=0)
    full = train_sft(_fresh_tiny(), tok, train, val, output_dir=tmp_path / "full", **kw)
    assert full.steps == 4 and len(full.val_loss) == 3 and full.tokens_per_sec > 0
    assert len(full.train_loss) == 4 and len(full.epoch_train_loss) == 2
    assert (tmp_path / "full" / "checkpoint-2").is_dir() and (tmp_path / "full" / "checkpoint-4").is_dir()

    with pytest.raises(_Crash):
        train_sft(_fresh_tiny(), tok, train, val, output_dir=tmp_path / "run", callbacks=[_CrashAfter(3)], **kw)
    resumed = train_sft(_fresh_tiny(), tok, train, val, output_dir=tmp_path / "run", resume=True, **kw)
    assert resumed.steps == 4
    a, b = _lora_state(full.model), _lora_state(resumed.model)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
    assert resumed.val_loss == pytest.approx(full.val_loss, abs=1e-4)
    assert resumed.train_loss == pytest.approx(full.train_loss, abs=1e-4)


def test_device_cpu_trains_with_the_cpu_recipe_on_a_gpu_machine(tiny, monkeypatch, tmp_path):
    """Lesson 05 compares train_sft with a plain CPU script on every machine: device="cpu" must win over the GPU."""
    _, tok = tiny
    monkeypatch.setattr(env, "device", lambda: "cuda")
    monkeypatch.setattr(env, "cuda_supports_bf16", lambda: False)  # the GPU recipe would be fp16: CUDA-only
    seen = []

    class Args(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.append(args)

    h = train_sft(_fresh_tiny(), tok, _records(4), lora={"r": 4}, batch_size=2, max_steps=1, plot=False,
                  progress=False, output_dir=tmp_path, device="cpu", callbacks=[Args()])
    assert h.steps == 1 and seen[0].use_cpu and not seen[0].fp16 and seen[0].optim == "adamw_torch"


def test_notebook_table_has_no_no_log_row_for_the_epoch_0_evaluation(tiny, tmp_path):
    """In a notebook transformers' progress table would show epoch 0 as a 'No log' row; labkit keeps the
    epoch-0 loss in History (and the plot) and the table sees only the evaluations after each epoch."""
    from transformers.utils.notebook import NotebookProgressCallback

    class Table(NotebookProgressCallback):  # records instead of drawing
        def __init__(self):
            super().__init__()
            self.evaluated_at: list[int] = []

        def on_train_begin(self, args, state, control, **kwargs):
            pass

        def on_step_end(self, args, state, control, **kwargs):
            pass

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.evaluated_at.append(state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            pass

    _, tok = tiny
    table = Table()
    h = train_sft(_fresh_tiny(), tok, _records(4), _records(2, 100), lora={"r": 4}, epochs=2, batch_size=2,
                  plot=False, progress=False, output_dir=tmp_path, callbacks=[table])
    assert len(h.val_loss) == 3  # epoch 0 measured all the same
    assert table.evaluated_at == [2, 4]  # the two evaluations after the epochs, none before training


def test_cuda_oom_is_explained(tiny, monkeypatch, tmp_path):
    from trl import SFTTrainer

    _, tok = tiny

    def boom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "train", boom)
    with pytest.raises(RuntimeError, match=r"batch_size \(now 2.*max_length.*gradient_checkpointing.*smaller model"):
        train_sft(_fresh_tiny(), tok, _records(4), lora={"r": 4}, batch_size=2, plot=False, progress=False,
                  output_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# Slow: the real NF4 model after generate() (the repacking trap) still learns


@pytest.mark.slow
def test_nf4_trap_guard_after_generate_every_adapter_learns(tmp_path):
    """generate() packs the NF4 weights (the trap armed), and train_sft's validation pass before step 1 is
    another no-grad eval forward that would pack them; inside the guard every lora_B still moves.

    The trap's symptom is exact: adapters whose gradient must pass a packed matmul (q, k, v, gate, up) get
    none, so their lora_B stays exactly zero (test_packed_nf4_blocks_lora_gradients). Lesson 05 takes the
    same path end to end (prompting the NF4 base, then QLoRA) and asserts what the run learned.
    """
    from labkit._compat import linear4bit_layers
    from labkit.data import course_dataset
    from labkit.evaluate import generate
    from labkit.models import load_model

    env.set_seed(0)
    model, tok = load_model(quantization="nf4")
    test = course_dataset("invoices", "test")[:2]
    generate(model, tok, [r["prompt"] for r in test], max_new_tokens=4, progress=False)
    packed_before = T.packed_nf4_layers(model)  # non-empty on AVX512-BF16 CPUs: the trap is armed
    flags_before = {n: m.support_avx512bf16_for_cpu for n, m in linear4bit_layers(model)}
    h = train_sft(model, tok, course_dataset("invoices", "train")[:8], course_dataset("invoices", "val")[:2],
                  lora={"r": 16, "alpha": 32}, epochs=1, batch_size=4, learning_rate=1e-3,
                  plot=False, progress=False, output_dir=tmp_path)
    assert h.steps == 2 and T.packed_nf4_layers(h.model) == []
    lora_b = {n: p for n, p in h.model.named_parameters() if "lora_B" in n}
    assert any(".q_proj." in n for n in lora_b) and [n for n, p in lora_b.items() if not p.any()] == []
    assert h.val_loss[-1] < h.val_loss[0], h.val_loss
    # repacking is switched off only while training: afterwards each layer has its own flag back
    flags_after = {n.removeprefix("base_model.model.").replace(".base_layer", ""): m.support_avx512bf16_for_cpu
                   for n, m in linear4bit_layers(h.model)}
    assert flags_before and flags_after == flags_before
    print(f"packed by generate(): {len(packed_before)} layers; val loss {h.val_loss}")


@pytest.mark.slow
def test_packed_nf4_blocks_lora_gradients():
    """Reproduces the trap: after generate(), lora_B below the packed layers gets no gradient."""
    from labkit.data import course_dataset
    from labkit.evaluate import generate
    from labkit.lora import add_lora
    from labkit.models import load_model

    model, tok = load_model(quantization="nf4")
    rec = course_dataset("invoices", "train")[0]
    generate(model, tok, [rec["prompt"]], max_new_tokens=2, progress=False)
    if not T.packed_nf4_layers(model):
        pytest.skip("this CPU does not repack NF4 weights (no AVX512-BF16)")
    peft_model = add_lora(model, r=4)
    peft_model.train()
    batch = tok([rec["prompt"] + rec["completion"]], return_tensors="pt")
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    blocked = [n for n, p in peft_model.named_parameters() if "lora_B" in n and (p.grad is None or not p.grad.any())]
    assert blocked, "with packed weights, the q/k/v adapters should get no gradient (the trap)"
    with pytest.raises(RuntimeError, match="repacking trap"):
        T.check_first_step_gradients(peft_model)
    T.unpack_nf4_for_training(peft_model)
    peft_model.zero_grad()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    T.check_first_step_gradients(peft_model)  # every lora_B has a gradient again


# ------------------------------------------------------------------------------------------------
# Precision: fp32 master weights, whatever dtype the model was loaded in


def test_full_fine_tuning_of_an_fp16_model_trains_fp32_master_weights(tiny, tmp_path):
    """A T4 loads the base in fp16; full fine-tuning must not train fp16 weights ("Attempting to
    unscale FP16 gradients"). train_sft keeps every trainable weight in fp32; here on the CPU."""
    _, tok = tiny
    model = _fresh_tiny().half()
    h = train_sft(model, tok, _records(8), batch_size=4, epochs=1, learning_rate=1e-3, plot=False,
                  progress=False, output_dir=tmp_path)
    assert all(p.dtype == torch.float32 for p in h.model.parameters() if p.requires_grad)
    assert h.steps == 2 and all(math.isfinite(x) for x in h.train_loss)


def test_lora_adapters_stay_fp32_on_an_fp16_base():
    from labkit.lora import add_lora

    peft_model = add_lora(_fresh_tiny().half(), r=4)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert T._fp32_master_weights(peft_model) == 0


def test_t4_mode_gives_the_t4_config_on_any_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert sft_config_kwargs("out")["bf16"] is True
    monkeypatch.setenv("LABKIT_GPU", "t4")
    kw = sft_config_kwargs("out")
    assert kw["fp16"] is True and kw["bf16"] is False and kw[GC] is True and kw["optim"] == "paged_adamw_8bit"


def test_warmup_ratio_must_be_a_fraction():
    assert sft_config_kwargs("out", device="cpu", warmup_ratio=0.25)["warmup_steps"] == 0.25
    with pytest.raises(ValueError, match=r"warmup_ratio=5 must be a fraction.*warmup_steps=N"):
        sft_config_kwargs("out", device="cpu", warmup_ratio=5)

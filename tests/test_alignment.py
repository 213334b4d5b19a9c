"""labkit.alignment: preference records, sequence log-likelihoods, DPO loss, GRPO advantages, tooling."""

import json
import math

import pytest
import torch
from conftest import tiny_tokenizer_dir
from transformers import TrainerCallback

from labkit.alignment import (
    DPO_LEARNING_RATE,
    DPOHistory,
    PreferenceScore,
    brevity_pairs,
    completion_logprob,
    concise_pairs,
    dpo_config_kwargs,
    dpo_history_from_log,
    dpo_loss,
    first_sentence,
    group_advantages,
    invoice_reward,
    score_preferences,
    to_preference_record,
    tooling_table,
    train_dpo,
    validate_preferences,
)
from labkit.data import RecordError

PROMPT = "### Instruction:\nExtract the invoice as JSON.\n\n### Input:\n2 x Pen @ $1.50\n\n### Response:\n"
GOOD = '{"items":[{"name":"Pen","qty":2,"price":1.5}],"currency":"USD","total":3.0}'


def test_preference_record_has_trl_columns_and_rejects_non_pairs():
    rec = to_preference_record(PROMPT, GOOD, "Two pens.")
    assert rec == {"prompt": PROMPT, "chosen": GOOD, "rejected": "Two pens."}
    with pytest.raises(ValueError, match="same answer"):
        to_preference_record(PROMPT, GOOD, GOOD + " ")
    with pytest.raises(ValueError, match="rejected must be a non-empty string"):
        to_preference_record(PROMPT, GOOD, "  ")


def test_completion_logprob_equals_the_models_own_loss(tiny):
    """Sum of answer-token log-probs == -(HF's mean cross-entropy over the learned labels) × their count."""
    from labkit.data import tokenize_with_labels

    model, tok = tiny
    logp = completion_logprob(model, tok, PROMPT, GOOD)
    enc = tokenize_with_labels({"prompt": PROMPT, "completion": GOOD}, tok)
    labels = torch.tensor([enc["labels"]])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([enc["input_ids"]]), labels=labels).loss
    n_learned = int((labels[:, 1:] != -100).sum())
    assert n_learned == sum(lab != -100 for lab in enc["labels"])
    assert logp == pytest.approx(-float(loss) * n_learned, rel=1e-5)
    assert math.isfinite(logp) and logp < 0


def test_completion_logprob_restores_training_mode(tiny):
    model, tok = tiny
    model.train()
    try:
        completion_logprob(model, tok, PROMPT, GOOD)
        assert model.training
    finally:
        model.eval()


def test_score_preferences_scores_every_pair_and_margin_is_the_difference(tiny):
    model, tok = tiny
    pairs = [to_preference_record(PROMPT, GOOD, "Two pens."), to_preference_record(PROMPT, GOOD, GOOD.replace("1.5", "2.5"))]
    scores = score_preferences(model, tok, pairs)
    assert len(scores) == 2 and scores[0].chosen_logp == scores[1].chosen_logp  # same answer, same number
    assert scores[0].rejected_logp == pytest.approx(completion_logprob(model, tok, PROMPT, "Two pens."))
    assert scores[1].margin == scores[1].chosen_logp - scores[1].rejected_logp
    with pytest.raises(ValueError, match="lacks"):
        score_preferences(model, tok, [{"prompt": PROMPT, "chosen": GOOD}])
    with pytest.raises(ValueError, match="empty"):
        score_preferences(model, tok, [])


def test_dpo_loss_matches_the_formula():
    assert dpo_loss(-10, -12, -10, -12) == pytest.approx(math.log(2))  # policy == reference
    for pc, pr, rc, rr, beta in [(-5, -9, -6, -8, 0.1), (-50, -20, -40, -30, 0.5), (0, -400, 0, 0, 1.0)]:
        z = torch.tensor(beta * ((pc - rc) - (pr - rr)))
        assert dpo_loss(pc, pr, rc, rr, beta) == pytest.approx(float(-torch.nn.functional.logsigmoid(z)), rel=1e-6)
    assert dpo_loss(0, 0, -1000, 0, beta=1.0) == pytest.approx(0.0, abs=1e-12)  # chosen far up: no loss
    assert dpo_loss(-1000, 0, 0, 0, beta=1.0) == pytest.approx(1000.0)  # no overflow
    assert dpo_loss(-9, -11, -10, -10) < math.log(2) < dpo_loss(-11, -9, -10, -10)


def test_group_advantages_are_group_normalised_like_trl():
    rewards = [1.0, 0.8, 0.8, 0.0]
    t = torch.tensor(rewards)
    expected = (t - t.mean()) / (t.std() + 1e-4)  # torch.std is the sample std (n - 1), as TRL's nanstd
    assert group_advantages(rewards) == pytest.approx(expected.tolist(), rel=1e-6)
    assert sum(group_advantages(rewards)) == pytest.approx(0.0, abs=1e-9)
    assert group_advantages([0.5, 0.5, 0.5]) == [0.0, 0.0, 0.0]  # nothing to learn from a tie
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages([1.0])


def test_invoice_reward_is_verifiable_field_f1():
    assert invoice_reward(GOOD, GOOD) == 1.0
    assert invoice_reward(json.dumps(json.loads(GOOD)), GOOD) == 1.0  # spacing/key order don't matter
    assert invoice_reward("The invoice lists two pens.", GOOD) == 0.0
    partial = invoice_reward(GOOD.replace('"USD"', '"EUR"'), GOOD)
    assert 0.0 < partial < 1.0


def test_tooling_table_names_the_outline_tools():
    rows = tooling_table()
    assert {r["tool"] for r in rows} == {"TRL", "Unsloth", "Axolotl", "LLaMA-Factory", "torchtune"}
    assert all(r["what"] and r["use when"] for r in rows)
    rows[0]["tool"] = "changed"
    assert tooling_table()[0]["tool"] == "TRL"  # a copy: editing it leaves the module's table alone


def test_preference_score_margin_sign():
    assert PreferenceScore(-3.0, -5.0).margin == 2.0
    assert PreferenceScore(-5.0, -3.0).margin == -2.0


# ------------------------------------------------------------------------------------------------
# train_dpo


def _pairs(n: int) -> list[dict]:
    return [to_preference_record(f"### Instruction:\nName item {i}.\n\n### Response:\n", f"Item {i}.",
                                 f"Well, it could be item {i}, or maybe not, who knows really.") for i in range(n)]


def test_concise_pairs_are_deterministic_held_out_and_differ_only_in_style():
    train, test = concise_pairs("train"), concise_pairs("test")
    assert (len(train), len(test)) == (48, 16) and concise_pairs("train") == train
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}  # held out: no shared prompt
    for r in train + test:
        assert r["rejected"].count(r["chosen"]) == 1  # the same facts, padded
        assert len(r["rejected"].split()) > 3 * len(r["chosen"].split())
    with pytest.raises(ValueError, match="split"):
        concise_pairs("val")


def test_first_sentence_cuts_at_the_first_sentence_end_or_line_break():
    assert first_sentence("  A tide is water. It rises twice a day.") == "A tide is water."
    assert first_sentence("Is it? Yes!") == "Is it?"
    assert first_sentence("Wow! Great.") == "Wow!"
    assert first_sentence("Pi is 3.14 roughly. More.") == "Pi is 3.14 roughly."  # a '.' inside a number is no end
    assert first_sentence('The answer is "snow"\n\n### Instruction:\nMore.') == 'The answer is "snow"'
    assert first_sentence("A sentence cut off by the token lim") == "A sentence cut off by the token lim"
    assert first_sentence("") == ""


def test_brevity_pairs_prefer_the_models_own_first_sentence_to_its_whole_answer():
    prompts = [f"### Instruction:\nWhat is {w}?\n\n### Response:\n" for w in ("a tide", "a desert", "snow", "fog")]
    answers = ["A tide is the rise and fall of the sea. It is caused by the moon, and it happens twice a day.",
               "A desert is a dry land.",                        # already brief: nothing to prefer
               'The answer is "snow"\n\n### Instruction:\nWhat is rain? Rain is water falling from clouds.',
               "Fog is a cloud near the ground. It forms when"]  # 2nd part too short: not clearly longer
    pairs = brevity_pairs(prompts, answers)
    assert pairs == [{"prompt": prompts[0], "chosen": "A tide is the rise and fall of the sea.", "rejected": answers[0]}]
    validate_preferences(pairs)
    assert len(brevity_pairs(prompts, answers, min_ratio=1.2)) == 2  # fog's 10 words >= 1.2 x 7
    with pytest.raises(ValueError, match="4 prompts but 3 answers"):
        brevity_pairs(prompts, answers[:3])
    with pytest.raises(ValueError, match="min_ratio must be > 1"):
        brevity_pairs(prompts, answers, min_ratio=1.0)


def test_validate_preferences_names_record_and_field():
    good = _pairs(3)
    validate_preferences(good)
    with pytest.raises(RecordError, match=r"train record 1 has no 'rejected' field"):
        validate_preferences([good[0], {"prompt": "p", "chosen": "c"}])
    with pytest.raises(RecordError, match=r"val record 2: 'chosen' and 'rejected' are the same answer"):
        validate_preferences([*good[:2], {"prompt": "p", "chosen": "Same.", "rejected": " Same."}], "val")


def test_train_dpo_rejects_bad_input_before_training(tiny):
    model, tok = tiny
    with pytest.raises(RecordError, match="same answer"):
        train_dpo(model, tok, [{"prompt": "p", "chosen": "x", "rejected": "x"}], plot=False)
    with pytest.raises(RecordError, match="no 'chosen' field"):
        train_dpo(model, tok, [{"prompt": "p", "completion": "x"}], plot=False)
    with pytest.raises(ValueError, match="batch_size=8 is larger than the train set"):
        train_dpo(model, tok, _pairs(4), batch_size=8, plot=False)
    with pytest.raises(TypeError, match="lora must be"):
        train_dpo(model, tok, _pairs(4), batch_size=2, lora="r16", plot=False)


def test_dpo_config_is_device_aware_and_overridable(monkeypatch):
    from trl import DPOConfig

    from labkit import env
    from labkit._compat import checkpointing_key

    gc = checkpointing_key()
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: True)
    assert dpo_config_kwargs("out", device="cpu")["bf16"]  # bf16 autocast where the CPU has native bf16
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: False)
    cpu = dpo_config_kwargs("out", device="cpu")
    assert cpu["use_cpu"] and not cpu["bf16"] and not cpu["fp16"] and cpu[gc] is False
    assert cpu["learning_rate"] == DPO_LEARNING_RATE > 1e-6  # not TRL's default: see DPO_LEARNING_RATE
    config = DPOConfig(**cpu)
    assert config.beta == 0.1 and not config.bf16 and not getattr(config, gc)
    monkeypatch.setattr(env, "cuda_supports_bf16", lambda: False)
    t4 = dpo_config_kwargs("out", device="cuda")
    assert t4["fp16"] and not t4["bf16"] and t4[gc] and t4["optim"] == "paged_adamw_8bit"
    monkeypatch.setattr(env, "cuda_supports_bf16", lambda: True)
    assert dpo_config_kwargs("out", device="cuda")["bf16"]
    assert dpo_config_kwargs("out", device="cpu", beta=0.5, logging_steps=5)["logging_steps"] == 5


def test_dpo_history_reads_trls_metric_names():
    log = [{"loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.0, "epoch": 0.5},
           {"loss": 0.5, "rewards/margins": 0.4, "rewards/accuracies": 1.0, "epoch": 1.0},
           {"eval_loss": 0.55, "eval_rewards/margins": 0.3, "eval_rewards/accuracies": 0.75, "epoch": 1.0},
           {"train_runtime": 3.0}]
    h = dpo_history_from_log(log)
    assert h.loss == [0.69, 0.5] and h.margins == [0.0, 0.4] and h.accuracies == [0.0, 1.0]
    assert h.evals == [{"loss": 0.55, "margin": 0.3, "accuracy": 0.75, "epoch": 1.0}]
    assert "val ep 1" in h.summary()


@pytest.fixture(scope="module")
def tiny_dpo():
    """One short DPO run of fresh LoRA adapters on the tiny model (a fresh copy: the session one stays clean)."""
    from labkit.models import tiny_model

    model, tok = tiny_model(seed=1, tokenizer=tiny_tokenizer_dir())
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    pairs = _pairs(16)
    h = train_dpo(model, tok, pairs[:12], pairs[12:], lora={"r": 4, "alpha": 8, "dropout": 0.0}, epochs=2,
                  batch_size=4, learning_rate=1e-2, plot=True, progress=False)
    return h, base, tok, pairs


def test_train_dpo_learns_the_preference(tiny_dpo):
    h, _, tok, pairs = tiny_dpo
    assert isinstance(h, DPOHistory) and h.steps == 6 and len(h.loss) == 6
    assert h.loss[0] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at the start
    assert h.margins[0] == pytest.approx(0.0, abs=1e-6)
    assert h.loss[-1] < 0.6 and h.margins[-1] > 0.1 and h.accuracies[-1] == 1.0
    assert [e["epoch"] for e in h.evals] == [1.0, 2.0] and h.evals[-1]["accuracy"] == 1.0
    assert h.evals[-1]["margin"] > h.evals[0]["margin"] > 0
    after = score_preferences(h.model, tok, pairs[12:])  # held-out pairs, scored independently of TRL
    assert sum(s.margin > 0 for s in after) >= 3


def test_train_dpo_reference_is_the_adapter_switched_off(tiny_dpo):
    """lora=... → one adapter, trained in fp32; the base weights untouched (they are the reference)."""
    h, base, _, _ = tiny_dpo
    assert list(h.model.peft_config) == ["default"]  # no "ref" copy: the reference is the adapter off
    trained = {n: p for n, p in h.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n and p.dtype == torch.float32 for n, p in trained.items())
    for name, p in h.model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name.replace(".base_layer", "")]), name
    assert any(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)


def test_train_dpo_plots_loss_margin_accuracy(tiny_dpo):
    from labkit.plots import plot_preference_training

    h = tiny_dpo[0]
    axes = plot_preference_training(h)
    assert [ax.get_title() for ax in axes] == ["loss", "reward margin", "preference accuracy"]
    assert [len(ax.lines[0].get_ydata()) for ax in axes] == [6, 6, 6]


def test_train_dpo_refuses_new_adapters_on_a_peft_model(tiny):
    from labkit.lora import add_lora
    from labkit.models import tiny_model

    model, tok = tiny_model(seed=2, tokenizer=tiny_tokenizer_dir())
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        train_dpo(add_lora(model, r=2), tok, _pairs(4), batch_size=2, lora={"r": 2}, plot=False)


class _Crash(Exception):
    pass


class _CrashAfter(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Crash(f"simulated crash after step {self.step}")


class _StepsRun(TrainerCallback):
    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_interrupted_dpo_run_resumes_to_the_same_adapter(tmp_path):
    """DPO runs on train_sft's TrainingRun: checkpoints per epoch, and resume=True continues from the last one."""
    from labkit.models import tiny_model

    pairs = _pairs(12)
    kw = dict(lora={"r": 4, "alpha": 8, "dropout": 0.0}, epochs=2, batch_size=4, learning_rate=1e-2,
              max_length=64, plot=False, progress=False, seed=0)
    tok = tiny_model(seed=3, tokenizer=tiny_tokenizer_dir())[1]
    full = train_dpo(tiny_model(seed=3, tokenizer=tiny_tokenizer_dir())[0], tok, pairs[:8], pairs[8:], output_dir=tmp_path / "full", **kw)
    assert full.steps == 4 and (tmp_path / "full" / "checkpoint-2").is_dir()
    with pytest.raises(_Crash):
        train_dpo(tiny_model(seed=3, tokenizer=tiny_tokenizer_dir())[0], tok, pairs[:8], pairs[8:], output_dir=tmp_path / "run",
                  callbacks=[_CrashAfter(3)], **kw)
    ran = _StepsRun()
    resumed = train_dpo(tiny_model(seed=3, tokenizer=tiny_tokenizer_dir())[0], tok, pairs[:8], pairs[8:], output_dir=tmp_path / "run",
                        resume=True, callbacks=[ran], **kw)
    assert resumed.steps == 4 and ran.steps == [3, 4]  # it continued from checkpoint-2, not from the start
    assert resumed.loss == pytest.approx(full.loss, abs=1e-4)  # the checkpoint carries steps 1-2's log
    assert resumed.evals[-1]["margin"] == pytest.approx(full.evals[-1]["margin"], abs=1e-4)
    a = {n: p for n, p in full.model.named_parameters() if "lora_" in n}
    b = {n: p for n, p in resumed.model.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)


def test_dpo_cuda_oom_is_explained(tiny, monkeypatch, tmp_path):
    from trl import DPOTrainer

    from labkit.models import tiny_model

    def boom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(DPOTrainer, "train", boom)
    with pytest.raises(RuntimeError, match=r"batch_size \(now 2.*max_length \(now 64.*gradient_checkpointing"):
        train_dpo(tiny_model(seed=4, tokenizer=tiny_tokenizer_dir())[0], tiny[1], _pairs(4), lora={"r": 2}, batch_size=2, max_length=64,
                  plot=False, progress=False, output_dir=tmp_path)


def test_dpo_takes_the_device_recipe_it_is_given(tiny, monkeypatch, tmp_path):
    """device="cpu" wins over a GPU machine's recipe, as for train_sft (one run path)."""
    from labkit import env
    from labkit.models import tiny_model

    monkeypatch.setattr(env, "device", lambda: "cuda")
    monkeypatch.setattr(env, "cuda_supports_bf16", lambda: False)
    seen = []

    class Args(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.append(args)

    h = train_dpo(tiny_model(seed=5, tokenizer=tiny_tokenizer_dir())[0], tiny[1], _pairs(4), lora={"r": 2}, batch_size=2, max_steps=1, plot=False,
                  progress=False, output_dir=tmp_path, device="cpu", callbacks=[Args()])
    assert h.steps == 1 and seen[0].use_cpu and not seen[0].fp16 and seen[0].optim == "adamw_torch"

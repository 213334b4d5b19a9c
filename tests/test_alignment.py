"""labkit.alignment: preference records, sequence log-likelihoods, DPO loss, GRPO advantages, tooling."""

import json
import math

import pytest
import torch

from labkit.alignment import (
    PreferenceScore,
    completion_logprob,
    dpo_loss,
    group_advantages,
    invoice_reward,
    score_preferences,
    to_preference_record,
    tooling_table,
)

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

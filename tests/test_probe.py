"""labkit.probe: the general-knowledge probe used to measure forgetting."""

import copy
import time
from collections import Counter

import pytest
import torch

from labkit import probe


def test_probe_file_is_well_formed_and_varied():
    items = probe.load_probe()
    assert len(items) >= 60
    cats = Counter(i["category"] for i in items)
    assert set(cats) == {"facts", "arithmetic", "common sense", "language"} and min(cats.values()) >= 15
    assert all(2 <= len(i["options"]) <= 4 and len(set(i["options"])) == len(i["options"]) for i in items)
    assert len({i["question"] for i in items}) == len(items)  # no duplicate questions
    # the right answer is not always in the same slot (a position bias would go unnoticed)
    assert len(Counter(i["answer"] for i in items)) >= 3


def test_load_probe_names_the_bad_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n{"question": "q", "options": ["a"], "answer": 0}\n')
    with pytest.raises(ValueError, match="line 2"):
        probe.load_probe(bad)


def _naive_logprob(model, tok, question, option):
    """log P(option | question) the slow, obvious way: one sequence per option."""
    q = tok(probe.QA_TEMPLATE.format(question=question))["input_ids"]
    o = tok(" " + option, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([q + o])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
    return sum(float(logp[len(q) + j - 1, t]) for j, t in enumerate(o))


def test_packed_scoring_equals_one_sequence_per_option(tiny):
    model, tok = tiny
    items = probe.load_probe()[:7]
    packed = probe.option_logprobs(model, tok, items, batch_size=3)  # batches with padding
    for item, scores in zip(items, packed, strict=True):
        for opt, (lp, k) in zip(item["options"], scores, strict=True):
            assert k == len(tok(" " + opt, add_special_tokens=False)["input_ids"])
            assert lp == pytest.approx(_naive_logprob(model, tok, item["question"], opt), abs=1e-3)


def test_general_probe_result(tiny):
    model, tok = tiny
    res = probe.general_probe(model, tok)
    assert res.n == len(probe.load_probe()) and 0.0 <= res.score <= 1.0
    assert 0.25 < res.chance < 0.5
    assert res.correct == round(res.score * res.n)
    assert set(res.by_category()) == {"facts", "arithmetic", "common sense", "language"}
    assert "general probe:" in str(res) and "chance" in str(res)
    assert not model.training


def test_mean_kl_is_zero_for_the_same_model_and_positive_after_a_change(tiny):
    model, tok = tiny
    prompts = probe.default_kl_prompts()[:6]
    assert probe.mean_kl(model, model, tok, prompts) == pytest.approx(0.0, abs=1e-6)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    assert probe.mean_kl(model, changed, tok, prompts) > 1e-4


def test_mean_kl_with_adapters_off_as_the_base(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    prompts = probe.default_kl_prompts()[:4]
    assert probe.mean_kl(None, peft_model, tok, prompts) == pytest.approx(0.0, abs=1e-6)  # B starts at 0
    with pytest.raises(ValueError, match="PEFT"):
        probe.mean_kl(None, model, tok, prompts)


@pytest.mark.slow
def test_real_model_is_well_above_chance_and_cheap(smol):
    model, tok = smol
    start = time.perf_counter()
    res = probe.general_probe(model, tok)
    seconds = time.perf_counter() - start
    # The cost check is relative, because this machine may be shared: the whole probe (~1,600
    # tokens with padding, each question run once) must cost no more than ~10 plain forward passes of
    # 16x24 tokens (scoring each option as its own sequence would cost ~14).
    ids = torch.randint(100, 1000, (16, 24))
    ref_start = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=ids)
    reference = time.perf_counter() - ref_start
    print(res, f"({seconds:.1f} s; one 16x24 forward {reference:.1f} s)")
    assert res.score >= res.chance + 0.3, res
    assert seconds < 10 * reference + 2


def test_evaluate_reexports_the_probe():
    from labkit import evaluate

    assert evaluate.general_probe is probe.general_probe and evaluate.ProbeResult is probe.ProbeResult


def test_a_bad_probe_line_is_named_by_number(tmp_path):
    path = tmp_path / "probe.jsonl"
    good = '{"question": "2+2?", "options": ["4", "5"], "answer": 0}'
    path.write_text(good + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"probe.jsonl, line 3: not valid JSON"):
        probe.load_probe(path)
    path.write_text(good + '\n["a list"]\n')
    with pytest.raises(ValueError, match=r"line 2: a probe item needs"):
        probe.load_probe(path)

"""labkit.evaluate: the metrics (pure functions) and batched greedy generation (tiny model)."""

import json

import pytest
import torch

from labkit import evaluate as ev

REF = json.dumps({"currency": "EUR", "items": [{"name": "tea", "price": 2.5}, {"name": "cake", "price": 4}]})


def test_exact_match_compares_parsed_json():
    reordered = '{"items": [{"price": 2.5, "name": "tea"}, {"name": "cake", "price": 4.0}], "currency": "EUR"}'
    wrong_price = REF.replace("2.5", "2.6")
    assert ev.exact_match([reordered, wrong_price], [REF, REF]) == 0.5


def test_exact_match_falls_back_to_stripped_strings():
    assert ev.exact_match(["  Paris\n", "paris", "{not json"], ["Paris", "Paris", "{not json"]) == pytest.approx(2 / 3)


def test_eval_result_lists_its_misses_as_exact_match_scores_them():
    reordered = '{"items": [{"price": 2.5, "name": "tea"}, {"name": "cake", "price": 4.0}], "currency": "EUR"}'
    preds, refs = [reordered, "Paris", "Lyon"], [REF, "Paris", "Paris"]
    result = ev.EvalResult(exact_match=ev.exact_match(preds, refs), json_valid=0.0, f1=0.0, n=3,
                           predictions=preds, references=refs)
    assert result.misses == [("Paris", "Lyon")]
    assert result.n_correct == result.n - len(result.misses) == 2


def test_metrics_refuse_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        ev.exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        ev.field_scores([], [])
    with pytest.raises(ValueError, match="empty"):
        ev.json_validity([])


def test_json_validity_wants_objects_or_arrays():
    assert ev.json_validity(['{"a": 1}', "[1, 2]", "42", "Sure! Here is", '{"a": ']) == pytest.approx(2 / 5)


def test_field_scores_give_partial_credit():
    # REF has 5 pairs: currency, 2 names, 2 prices. This prediction gets one price wrong and misses nothing.
    one_wrong = REF.replace("2.5", "2.6")
    s = ev.field_scores([one_wrong], [REF])
    assert s["precision"] == pytest.approx(4 / 5) and s["recall"] == pytest.approx(4 / 5)
    # drops one item (2 pairs): precision stays 1, recall 3/5
    dropped = json.dumps({"currency": "EUR", "items": [{"name": "tea", "price": 2.5}]})
    s = ev.field_scores([dropped], [REF])
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(3 / 5)
    assert s["f1"] == pytest.approx(2 * 1 * 0.6 / 1.6)
    # not JSON at all: nothing found
    assert ev.field_scores(["I cannot do that"], [REF]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # perfect, despite item order and 4 vs 4.0
    swapped = json.dumps({"items": [{"name": "cake", "price": 4.0}, {"name": "tea", "price": 2.5}], "currency": "EUR"})
    assert ev.field_scores([swapped], [REF])["f1"] == 1.0


PROMPTS = ["### Instruction:\nSay hi\n\n### Response:\n", "Hello", "A much longer prompt than the others, to force padding"]


def test_generate_is_greedy_ordered_and_batch_invariant(tiny):
    model, tok = tiny
    tok.padding_side = "right"
    a = ev.generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    b = ev.generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=1, progress=False)
    c = [ev.generate(model, tok, p, max_new_tokens=6, progress=False)[0] for p in PROMPTS]
    assert a == b == c  # left padding: a prompt's answer does not depend on its batch-mates
    assert all(isinstance(x, str) and x == x.strip() for x in a)
    assert tok.padding_side == "right"  # restored
    assert ev.generate(model, tok, [], progress=False) == []


def test_generate_stops_at_eos_and_drops_it(tiny):
    model, tok = tiny

    def force_eos(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., tok.eos_token_id] += 1e4
        return logits

    handle = model.lm_head.register_forward_hook(force_eos)
    try:
        model.train()  # generate must switch to eval and back
        out = ev.generate(model, tok, PROMPTS, max_new_tokens=20, progress=False)
        assert model.training
    finally:
        handle.remove()
        model.eval()
    assert out == ["", "", ""]


def _records():
    return [{"prompt": p, "completion": REF} for p in PROMPTS]


def test_evaluate_records_and_compare(tiny):
    model, tok = tiny
    res = ev.evaluate_records(model, tok, _records(), max_new_tokens=4, progress=False, name="tiny")
    assert res.n == 3 and len(res.predictions) == 3 and res.references == [REF] * 3
    assert res.exact_match == 0.0 and res.json_valid == 0.0  # a random model writes no JSON
    assert "tiny: exact match 0.0% (0/3)" in str(res)
    perfect = ev.EvalResult(1.0, 1.0, 1.0, 3, [REF] * 3, [REF] * 3, name="oracle")
    table = ev.compare(res, perfect)
    assert [r["metric"] for r in table.rows] == ["exact match", "JSON valid", "field F1"]
    assert table.rows[0]["change"] == 1.0
    text = str(table)
    assert "exact match" in text and "+100.0%" in text
    assert table._repr_html_().startswith("<table>")
    # models + records: evaluated inside compare
    t2 = ev.compare(model, model, _records(), tokenizer=tok, max_new_tokens=4, progress=False)
    assert t2.rows[0]["change"] == 0.0


def test_compare_needs_records_for_models_and_the_same_records(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="test_records"):
        ev.compare(model, model)
    a = ev.EvalResult(0.0, 0.0, 0.0, 1, ["x"], ["y"])
    b = ev.EvalResult(0.0, 0.0, 0.0, 1, ["x"], ["z"])
    with pytest.raises(ValueError, match="same test set"):
        ev.compare(a, b)


def test_evaluate_records_names_the_missing_field(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="evaluation record 0 has no 'completion'"):
        ev.evaluate_records(model, tok, [{"prompt": "x"}], progress=False)


def test_side_by_side_prints_marks(capsys):
    recs = _records()[:2]
    ev.side_by_side(recs, ["nope", "nope"], [REF, "nope"], n=2)
    out = capsys.readouterr().out
    assert out.count("✓") == 1 and out.count("✗") == 3 and "example 2" in out


def test_generate_refuses_tokenizer_without_pad(tiny):
    model, tok = tiny
    saved = tok.pad_token
    tok.pad_token = None
    try:
        with pytest.raises(ValueError, match="no pad token"):
            ev.generate(model, tok, ["a"], progress=False)
    finally:
        tok.pad_token = saved


def test_plot_forgetting_draws_two_bars_per_method():
    from labkit.plots import plot_forgetting

    ax = plot_forgetting({"full FT": {"task_gain": 0.5, "probe_drop": 0.2},
                          "LoRA": {"task_gain": 0.6, "probe_drop": 0.01}})
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [1.0, 20.0, 50.0, 60.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["full FT", "LoRA"]
    with pytest.raises(ValueError, match="probe_drop"):
        plot_forgetting([{"method": "x", "task_gain": 0.1}])


def test_answer_loss_matches_a_hand_computed_masked_loss(tiny):
    from labkit.data import tokenize_with_labels
    from labkit.evaluate import answer_loss

    model, tok = tiny
    recs = [{"prompt": "Q: 2+2?\nA:", "completion": " 4"}, {"prompt": "Q: capital of France?\nA:", "completion": " Paris"}]
    expected, sums, n_tokens = [], 0.0, 0
    for r in recs:
        enc = tokenize_with_labels(r, tok)
        logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits[0, :-1]
        labels = torch.tensor(enc["labels"][1:])
        keep = labels != -100
        expected.append(float(torch.nn.functional.cross_entropy(logits[keep], labels[keep])))
        sums += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
        n_tokens += int(keep.sum())
    assert n_tokens > len(recs)  # the two averages differ: answers are longer than one token
    assert answer_loss(model, tok, recs) == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert answer_loss(model, tok, recs, per="token") == pytest.approx(sums / n_tokens, rel=1e-5)
    with pytest.raises(ValueError, match="per must be"):
        answer_loss(model, tok, recs, per="batch")
    with pytest.raises(ValueError, match="answer_loss record 0 has no 'completion'"):
        answer_loss(model, tok, [{"prompt": "x"}])

"""labkit.prompting: prompt rewriting (pure) and the prompting table (tiny model)."""

import pytest

from labkit import prompting as P
from labkit.data import PROMPT_TEMPLATE, format_prompt, to_record
from labkit.evaluate import EvalResult

REC = to_record("Extract the invoice as JSON.", '{"total":1}', input="Total: 1 EUR")
TRAIN = [to_record("Extract the invoice as JSON.", f'{{"total":{i}}}', input=f"Total: {i} EUR") for i in range(2, 6)]


def test_split_prompt_inverts_format_prompt():
    assert P.split_prompt(format_prompt("Do it.", "the input")) == ("Do it.", "the input")
    assert P.split_prompt(format_prompt("Do it.")) == ("Do it.", None)
    assert P.split_prompt(PROMPT_TEMPLATE.format(instruction="x")) == ("x", None)
    with pytest.raises(ValueError, match="Not a course-format prompt"):
        P.split_prompt("Extract this: Total 1 EUR")


def test_as_chat_renders_system_examples_and_record_with_the_chat_template(tiny):
    _, tok = tiny
    (out,) = P.as_chat([REC], tok, system=" Reply with JSON only. ", examples=TRAIN[:2])
    want = [{"role": "system", "content": "Reply with JSON only."}]
    for e in TRAIN[:2]:
        want += [{"role": "user", "content": "Extract the invoice as JSON.\n\n" + P.split_prompt(e["prompt"])[1]},
                 {"role": "assistant", "content": e["completion"]}]
    want.append({"role": "user", "content": "Extract the invoice as JSON.\n\nTotal: 1 EUR"})
    assert out == {"prompt": tok.apply_chat_template(want, tokenize=False, add_generation_prompt=True),
                   "completion": REC["completion"]}
    (plain,) = P.as_chat([to_record("Say hi.", "hi")], tok)
    assert plain["prompt"] == tok.apply_chat_template([{"role": "user", "content": "Say hi."}], tokenize=False,
                                                      add_generation_prompt=True)
    with pytest.raises(ValueError, match="also records to score"):
        P.as_chat([REC, TRAIN[0]], tok, examples=TRAIN[:1])
    with pytest.raises(ValueError, match="prompting"):
        P.as_chat([{"prompt": "x"}], tok)


def test_measure_prompt_and_table_on_a_tiny_model(tiny):
    model, tok = tiny
    short = P.measure_prompt(model, tok, [REC], name="zero-shot", max_new_tokens=2, progress=False)
    long = P.measure_prompt(model, tok, P.as_chat([REC], tok, examples=TRAIN[:3]), name="3-shot", max_new_tokens=2,
                            progress=False)
    assert long.prompt_tokens > 3 * short.prompt_tokens > 0 and short.seconds_per_call > 0
    table = P.prompting_table([short, long])
    assert [r["approach"] for r in table.rows] == ["zero-shot", "3-shot"]
    assert table.rows[1]["prompt tokens"] == round(long.prompt_tokens) and table.rows[0]["exact match"] == 0.0
    other = P.PromptingRow("other", EvalResult(1.0, 1.0, 1.0, 1, ["x"], ["x"]), 10, 0.1)
    with pytest.raises(ValueError, match="different records"):
        P.prompting_table([short, other])
    with pytest.raises(ValueError, match="at least one"):
        P.prompting_table([])

"""labkit.decide: the course's worked cases, the 500-example edge, the table, and the exercise check."""

import pytest

from labkit.decide import (
    COMPARISON,
    FINE_TUNE_MIN_EXAMPLES,
    WHEN_FINE_TUNING_PAYS,
    break_even_queries,
    comparison_table,
    format_table,
    recommend,
)
from labkit.exercises import check_choose


@pytest.mark.parametrize(
    "facts, behaviour, n, approach",
    [
        (True, False, 0, "RAG"),  # course: private docs → RAG
        (False, True, 2000, "Fine-tune"),  # course: strict output format with 2,000 examples
        (False, True, 20, "Prompting"),  # course: tone tweak with 20 examples
        (False, False, 100_000, "Prompting"),  # data alone is no reason to fine-tune
        (True, False, 100_000, "RAG"),  # facts stay in retrieval however much data there is
        (True, True, 1000, "Fine-tune + RAG"),  # best practice: LoRA for behaviour + RAG for facts
        (True, True, 10, "RAG"),
    ],
)
def test_recommend_course_cases(facts, behaviour, n, approach):
    rec = recommend(facts, behaviour, n)
    assert rec.approach == approach
    assert rec.reason.count(". ") <= 1 and rec.reason.endswith(".")  # one or two plain sentences


def test_threshold_is_500_inclusive():
    assert FINE_TUNE_MIN_EXAMPLES == 500
    assert recommend(False, True, 499).approach == "Prompting"
    assert recommend(False, True, 500).approach == "Fine-tune"
    assert recommend(True, True, 499).approach == "RAG"
    assert recommend(True, True, 500).approach == "Fine-tune + RAG"


def test_too_few_examples_says_collect_more():
    reason = recommend(False, True, 20).reason
    assert "collect 480 more" in reason
    assert "collect" in recommend(True, True, 100).reason


def test_recommend_rejects_bad_counts():
    with pytest.raises(ValueError, match="negative"):
        recommend(False, True, -1)
    with pytest.raises(TypeError, match="whole number"):
        recommend(False, True, 12.5)


def test_comparison_table_rows_and_columns():
    rows = comparison_table()
    assert [r["approach"] for r in rows] == ["Prompting", "RAG", "LoRA/QLoRA", "Full fine-tune", "RLHF/DPO"]
    for row in rows:
        assert set(row) == {"approach", "changes weights?", "cost", "speed", "best for"}
        assert all(v.strip() for v in row.values())
    assert rows[0]["changes weights?"] == "no" and rows[3]["changes weights?"] == "all"
    rows[0]["cost"] = "edited"
    assert COMPARISON[0]["cost"] == "free"  # a copy: learners can't break the reference
    text = format_table()
    lines = text.splitlines()
    assert len(lines) == 2 + len(COMPARISON) and "Full fine-tune" in text
    assert len({line.index("|") for line in lines if "|" in line}) == 1  # columns line up


def test_when_fine_tuning_pays_and_break_even():
    joined = " ".join(WHEN_FINE_TUNING_PAYS).lower()
    assert "amortis" in joined and "smaller" in joined and "on-premises" in joined
    assert break_even_queries(1000, 0.010, 0.002) == 125_000
    with pytest.raises(ValueError, match="never pays back"):
        break_even_queries(1000, 0.002, 0.002)


def _reference(facts, behaviour, n):
    return recommend(facts, behaviour, n).approach


def test_check_choose_accepts_reference_and_rejects_wrong(capsys):
    assert check_choose(_reference)
    assert "all 9 checks passed" in capsys.readouterr().out

    def strict_threshold(facts, behaviour, n):  # '>' instead of '>=': the 500 edge
        return _reference(facts, behaviour, n) if n != 500 else "Prompting"

    def ignores_rag(facts, behaviour, n):
        return "Fine-tune" if behaviour and n >= 500 else "Prompting"

    def threshold_1000(facts, behaviour, n):
        return _reference(facts, behaviour, n if n >= 1000 else min(n, 499))

    def no_combination(facts, behaviour, n):
        return "RAG" if facts else _reference(facts, behaviour, n)

    for wrong in (strict_threshold, ignores_rag, threshold_1000, no_combination):
        assert not check_choose(wrong), wrong.__name__
        assert "❌" in capsys.readouterr().out


def test_check_choose_friendly_on_bad_returns(capsys):
    assert not check_choose(lambda f, b, n: None)
    assert "Return one of" in capsys.readouterr().out
    assert not check_choose(lambda f, b, n: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out
    with pytest.raises(NotImplementedError):  # an unfilled exercise stops with its own message
        check_choose(lambda f, b, n: (_ for _ in ()).throw(NotImplementedError("Your turn")))
    assert check_choose(lambda f, b, n: _reference(f, b, n).lower())  # case doesn't matter


def test_the_one_table_renderer_aligns_and_rules():
    from labkit.tables import format_table as render

    rows = [{"name": "a", "n": 1}, {"name": "long", "n": 100}]
    assert render(rows) == "name  n\na     1\nlong  100"
    assert render(rows, sep=" | ", rule="-+-") == "name | n\n-----+----\na    | 1\nlong | 100"
    assert render(rows, rule="  ", right_align=True, title="T") == "T\nname  n\n----  ---\na       1\nlong  100"
    assert render([]) == ""


def test_the_one_markdown_table_keeps_each_row_on_one_line():
    from labkit.tables import markdown_table

    rows = [{"name": "a", "n": 1}, {"name": "error\nfrom a | b", "n": None}]
    assert markdown_table(rows, right=["n"]) == ("| name | n |\n|---|---:|\n| a | 1 |\n"
                                                 "| error from a \\| b |  |")
    assert markdown_table(rows, ["n"], fmt=lambda col, v: f"<{v}>") == "| n |\n|---|\n| <1> |\n| <None> |"
    assert markdown_table([]) == ""

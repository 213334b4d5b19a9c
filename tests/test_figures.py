"""The lesson and exercise figures (labkit.plots): each returns a Figure that shows what it claims."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from labkit import plots  # noqa: E402


def test_nf4_levels_are_sixteen_and_span_minus_one_to_one():
    levels = plots.nf4_levels()
    assert len(levels) == 16 and levels[0] == -1.0 and levels[-1] == 1.0 and 0.0 in levels
    assert levels == sorted(levels)


def test_plot_nf4_levels_draws_the_histogram_and_sixteen_lines():
    torch.manual_seed(0)
    fig = plots.plot_nf4_levels(torch.randn(64, 64))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 16 and len(ax.patches) == 120
    with pytest.raises(ValueError, match="multiple of blocksize"):
        plots.plot_nf4_levels(torch.randn(10))


def test_plot_label_mask_colours_masked_and_learned_tokens():
    rows = [("###", -100, "masked"), ("Hi", -100, "masked"), ("Hello", 9906, "learned"), ("<|im_end|>", 2, "learned")]
    fig = plots.plot_label_mask(rows)
    ax = fig.axes[0]
    colours = [p.get_facecolor() for p in ax.patches]
    assert len(colours) == 4 and colours[0] == colours[1] != colours[2] == colours[3]
    assert [t.get_text() for t in ax.texts] == ["###", "Hi", "Hello", "<|im_end|>"]
    with pytest.raises(ValueError):
        plots.plot_label_mask([])


def test_plot_rank_sweep_two_panels_in_rank_order():
    rows = [{"r": 8, "trainable": 8e5, "exact_match": 0.5, "val_loss": 0.3},
            {"r": 2, "trainable": 2e5, "exact_match": 0.25, "val_loss": 0.5}]
    fig = plots.plot_rank_sweep(rows)
    left, right = fig.axes
    assert list(left.lines[0].get_xdata()) == [2, 8] and list(left.lines[0].get_ydata()) == [25.0, 50.0]
    assert list(right.lines[0].get_ydata()) == [0.5, 0.3]
    with pytest.raises(ValueError, match="missing"):
        plots.plot_rank_sweep([{"r": 2}])


def test_plot_fix_ablation_one_bar_per_row():
    rows = [{"fix": "none", "val loss": 1.2, "change": 0.0}, {"fix": "early stopping", "val loss": 0.8, "change": -0.4}]
    fig = plots.plot_fix_ablation(rows)
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) == 2


def test_plot_prompting_three_bars_per_approach_and_the_prompt_cost():
    rows = [{"approach": "zero-shot", "exact match": 0.0, "JSON valid": 0.0, "field F1": 0.0, "prompt tokens": 59},
            {"approach": "tuned", "exact match": 0.97, "JSON valid": 1.0, "field F1": 0.99, "prompt tokens": 59},
            {"approach": "3-shot", "exact match": 0.0, "JSON valid": 0.5, "field F1": 0.3, "prompt tokens": 480}]
    fig = plots.plot_prompting(rows)
    scores, cost = fig.axes
    assert isinstance(fig, Figure) and len(scores.patches) == 9 and len(cost.patches) == 3
    assert [t.get_text() for t in scores.get_yticklabels()] == ["zero-shot", "tuned", "3-shot"]
    assert sorted(p.get_width() for p in cost.patches) == [59, 59, 480]
    assert max(p.get_width() for p in scores.patches) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="missing"):
        plots.plot_prompting([{"approach": "x"}])


def test_plot_knowledge_one_bar_per_arm_and_one_per_edited_arm():
    rows = [{"arm": "base", "accuracy": 0.0, "after edit": None}, {"arm": "RAG", "accuracy": 0.6, "after edit": 1.0},
            {"arm": "fine-tuned", "accuracy": 0.3, "after edit": 0.0}]
    fig = plots.plot_knowledge(rows)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.patches) == 6
    assert [t.get_text() for t in ax.get_yticklabels()] == ["base", "RAG", "fine-tuned"]
    assert sorted(p.get_width() for p in ax.patches)[-2:] == [pytest.approx(60.0), pytest.approx(100.0)]
    assert "not measured" in [t.get_text() for t in ax.texts]
    assert len(plots.plot_knowledge([{"arm": "base", "accuracy": 0.5}]).axes[0].patches) == 1
    with pytest.raises(ValueError, match="missing"):
        plots.plot_knowledge([{"arm": "x"}])


def test_plot_peft_family_five_panels_one_bar_per_method():
    rows = [{"method": m, "trainable": t, "added_mb": 900, "s_per_step": 1.5, "val_loss": v, "exact_match": e}
            for m, t, v, e in (("LoRA", 1_800_000, 0.1, 0.5), ("IA3", 50_000, 0.4, 0.0), ("prefix", 230_400, 4.3, None))]
    fig = plots.plot_peft_family(rows)
    assert len(fig.axes) == 5 and all(len(ax.patches) == 3 for ax in fig.axes)
    assert fig.axes[0].get_xscale() == "log" and max(p.get_width() for p in fig.axes[4].patches) == 50
    assert [t.get_text().strip() for t in fig.axes[4].texts] == ["not measured"]  # prefix: no exact match, no zero bar
    with pytest.raises(ValueError, match="missing"):
        plots.plot_peft_family([{"method": "LoRA"}])

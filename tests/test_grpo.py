"""GRPO in labkit.alignment: rewards with partial credit, the hack and its fix, train_grpo over TRL's
GRPOTrainer (the run path train_sft and train_dpo share) and its learning-rate-0 control."""

import pytest
import torch
from conftest import tiny_tokenizer_dir

from labkit.alignment import (
    GRPOHistory,
    brevity_reward,
    concise_reward,
    grpo_config_kwargs,
    grpo_history_from_log,
    heldout_reward,
    substance_reward,
    train_grpo,
)

SHORT, LONG = "A tool that measures heat.", " ".join(["word"] * 42)


def test_brevity_gives_partial_credit_so_groups_differ():
    assert brevity_reward([SHORT, " ".join(["w"] * 12), " ".join(["w"] * 27), LONG]) == [1.0, 1.0, 0.5, 0.0]
    assert brevity_reward([""]) == [1.0]  # the hack: saying nothing is as short as it gets


Q = "### Instruction:\nWhat is a thermometer used for?\n\n### Response:\n"


def test_substance_needs_the_subject_then_three_more_content_words():
    answers = ["A thermometer measures temperature.", "Thermometers measure the temperature of the air.",
               "It measures heat in rooms.", "A thermometer.", "", "Thermometer thermometer the the the"]
    assert substance_reward(answers, [Q] * 6) == [pytest.approx(2 / 3), 1.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        substance_reward(["a", "b"], [Q])  # one prompt per completion, never silently cut


def test_concise_reward_is_the_fix_an_empty_answer_scores_zero():
    answers = ["", "A thermometer measures the temperature of air.", LONG + " thermometer measures air heat"]
    assert concise_reward(answers, prompts=[Q] * 3) == [0.0, 1.0, 0.0]  # brevity alone pays 1.0 for ""
    assert brevity_reward(answers)[0] == 1.0


def test_grpo_config_counts_the_batch_in_completions_and_keeps_the_device_recipe(monkeypatch):
    from trl import GRPOConfig

    from labkit import env

    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: False)
    kw = grpo_config_kwargs("out", device="cpu", num_generations=4, prompts_per_step=3, steps=10)
    assert kw["per_device_train_batch_size"] == 12 and kw["use_cpu"] and not kw["bf16"]
    config = GRPOConfig(**kw)
    assert config.num_generations == 4 and config.beta == 0.0 and config.max_steps == 10
    assert config.lr_scheduler_type == "constant"  # a short run is not mostly warm-up
    monkeypatch.setattr(env, "cuda_supports_bf16", lambda: False)
    t4 = grpo_config_kwargs("out", device="cuda")
    assert t4["fp16"] and not t4["bf16"]  # a T4: fp16, never TRL's bf16 default
    assert grpo_config_kwargs("out", device="cpu", temperature=0.7)["temperature"] == 0.7


def test_grpo_history_reads_trls_metric_names():
    log = [{"loss": 0.1, "reward": 0.5, "reward_std": 0.3, "frac_reward_zero_std": 0.0,
            "completions/mean_length": 39.5, "rewards/brevity_reward/mean": 0.5},
           {"loss": 0.0, "reward": 0.6, "reward_std": 0.2, "frac_reward_zero_std": 0.5,
            "completions/mean_length": 30.0, "rewards/brevity_reward/mean": 0.6},
           {"train_runtime": 3.0}]
    h = grpo_history_from_log(log)
    assert h.reward == [0.5, 0.6] and h.zero_std == [0.0, 0.5] and h.length == [39.5, 30.0]
    assert h.by_function == {"brevity_reward": [0.5, 0.6]}
    assert "last step" in h.summary() and "50%" in h.summary()


def _records(n):
    return [{"prompt": f"### Instruction:\nName thing {i}.\n\n### Response:\n", "chosen": f"Thing {i}."}
            for i in range(n)]


def letters_e(completions, **_):
    """A reward the random tiny model can move: the share of 'e' in its answer (varies within every group)."""
    return [c.count("e") / max(1, len(c)) for c in completions]


def _tiny_run(learning_rate):
    from labkit.models import tiny_model

    model, tok = tiny_model(seed=3, tokenizer=tiny_tokenizer_dir())
    return train_grpo(model, tok, _records(8), letters_e, lora={"r": 4, "alpha": 8, "dropout": 0.0}, steps=3,
                      learning_rate=learning_rate, max_completion_length=8, plot=True, progress=False, seed=0)


@pytest.fixture(scope="module")
def tiny_pair():
    """One GRPO run and its learning-rate-0 control on the tiny model, the same seed."""
    return _tiny_run(5e-2), _tiny_run(0.0)


@pytest.mark.slow  # two short GRPO runs (~25 s)
def test_train_grpo_logs_reward_and_spread_per_step(tiny_pair):
    h, _ = tiny_pair
    assert isinstance(h, GRPOHistory) and h.steps == 3 and len(h.reward) == 3
    assert all(0.0 <= z < 1.0 for z in h.zero_std)  # the reward differs within groups: GRPO has a signal
    assert set(h.by_function) == {"letters_e"} and h.by_function["letters_e"] == h.reward
    assert h.tokens_per_sec > 0 and h.wall_seconds > 0


@pytest.mark.slow  # two short GRPO runs (~25 s)
def test_the_control_samples_the_same_first_groups_and_learns_nothing(tiny_pair):
    trained, control = tiny_pair
    assert trained.reward[0] == pytest.approx(control.reward[0])  # same seed, same model: same first samples
    lora_b = {n: p for n, p in control.model.named_parameters() if "lora_B" in n}
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b.values())  # lr=0: B stays at its zero init
    moved = [p for n, p in trained.model.named_parameters() if "lora_B" in n]
    assert any(torch.count_nonzero(p) > 0 for p in moved)
    assert all(p.dtype == torch.float32 for n, p in trained.model.named_parameters() if p.requires_grad)


@pytest.mark.slow  # two short GRPO runs (~25 s)
def test_grpo_plot_draws_the_run_and_its_control(tiny_pair):
    from labkit.plots import plot_grpo_training

    axes = plot_grpo_training(*tiny_pair)
    assert [len(ax.lines) for ax in axes] == [2, 2]
    assert [len(line.get_ydata()) for line in axes[0].lines] == [3, 3]


@pytest.mark.slow  # two short GRPO runs (~25 s)
def test_heldout_reward_scores_greedy_answers_with_the_records_columns(tiny_pair):
    h, _ = tiny_pair
    from labkit.models import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir())
    seen = {}

    def reward(completions, chosen, **kw):
        seen.update(chosen=chosen, prompts=kw["prompts"])
        return [1.0] * len(completions)

    mean, answers = heldout_reward(h.model, tok, _records(3), reward, max_new_tokens=4)
    assert mean == 1.0 and len(answers) == 3 and seen["chosen"] == ["Thing 0.", "Thing 1.", "Thing 2."]
    assert heldout_reward(h.model, tok, _records(3), letters_e, max_new_tokens=4)[1] == answers  # greedy


def test_train_grpo_refuses_bad_input_before_training(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="prompts_per_step=4"):
        train_grpo(model, tok, _records(2), letters_e, prompts_per_step=4)
    from labkit.data import RecordError

    with pytest.raises(RecordError, match="prompt"):
        train_grpo(model, tok, [{"question": "x"}], letters_e)

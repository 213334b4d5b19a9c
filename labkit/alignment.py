"""After supervised fine-tuning: preference data (DPO), verifiable rewards (GRPO), and the toolbox.

SFT shows the model *what* a good answer looks like. Alignment methods then teach it which of two
answers is *better*: RLHF trains a reward model on human rankings and optimises against it with RL
(PPO); DPO skips the reward model and learns straight from (prompt, chosen, rejected) pairs; GRPO
scores a group of sampled answers with a reward (often a program that checks the answer) and
pushes each answer by how much better it did than its group. The functions here build the data and
compute the quantities these methods work on, small enough to read; TRL's trainers do the training.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labkit.data import (
    PROMPT_TEMPLATE,
    RecordError,
    read_jsonl,
    split_prompt,
    tokenize_with_labels,
    validate_records,
)
from labkit.evaluate import field_scores
from labkit.models import eval_mode
from labkit.train import RunStats, TrainingRun, device_training_kwargs

# ------------------------------------------------------------------------------------------------
# Preference records (DPO)


def to_preference_record(prompt: str, chosen: str, rejected: str) -> dict[str, str]:
    """A DPO training record: the same prompt with a preferred and a dispreferred answer.

    The keys are those TRL's `DPOTrainer` reads ("prompt", "chosen", "rejected"; it appends EOS to
    both answers itself). The prompt must be the SFT template, byte for byte, as in every record.
    """
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"to_preference_record: {name} must be a non-empty string, got {value!r}. "
                             "A preference pair needs a prompt and two real answers to compare.")
    if chosen.strip() == rejected.strip():
        raise ValueError("to_preference_record: chosen and rejected are the same answer, so there is no "
                         "preference to learn. Pair the good answer with a genuinely worse one.")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


CONCISE_PATH = Path(__file__).parent / "datasets" / "concise_answers.jsonl"
_OPENERS = ("Great question! ", "That's a really interesting question, and I'm happy to help. ",
            "Sure! Let me explain this in detail. ", "What a fascinating thing to ask about! ")
_PADDING = ("There is actually a lot more that could be said about this, and many people find it worth "
            "exploring further. ",
            "It is worth keeping in mind that this is a broad subject with many interesting details. ",
            "Of course, there are many different ways of looking at this, and every situation is different. ",
            "This is something that a lot of people wonder about, so you are definitely not alone in asking. ")
_CLOSERS = ("I hope this helps, and let me know if you have any other questions!",
            "Feel free to ask if you would like to know more!",
            "I hope that answers your question. Have a wonderful day!",
            "Let me know if there is anything else I can help you with!")


def ramble(answer: str, i: int = 0) -> str:
    """The rambling version of a concise answer: a flattering opener, the answer, filler, a closer.

    Deterministic (variant `i`): the facts are the same as the concise answer's, only the padding
    differs, so a preference for the concise one is a preference for style, not for content.
    """
    return (_OPENERS[i % 4] + answer + " " + _PADDING[(i // 4) % 4] + _PADDING[(i // 4 + 1) % 4]
            + _CLOSERS[(i + 1) % 4])


def concise_pairs(split: str = "train") -> list[dict[str, str]]:
    """DPO pairs for "answer briefly": chosen = the concise answer, rejected = `ramble(answer)`.

    64 everyday questions shipped with labkit; every 4th one is held out ("test": 16, "train": 48,
    "all": 64). Prompts use the course template (labkit.data.PROMPT_TEMPLATE), as every record does.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}.")
    rows = [row for _, row in read_jsonl(CONCISE_PATH)]
    keep = {"train": lambda i: i % 4 != 3, "test": lambda i: i % 4 == 3, "all": lambda i: True}[split]
    return [to_preference_record(PROMPT_TEMPLATE.format(instruction=r["question"]), r["answer"], ramble(r["answer"], i))
            for i, r in enumerate(rows) if keep(i)]


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def first_sentence(text: str) -> str:
    """The first sentence of `text`: up to its first '.', '!' or '?' followed by a space (or the end).

    A line break also ends it (SmolLM2 often follows its answer with a new "### ..." section). Text
    with neither is returned whole (stripped): a cut-off answer has no first sentence to keep.
    Used to build on-policy brevity pairs (`brevity_pairs`): the model's own first sentence is the
    short answer it could have given.
    """
    text = text.strip()
    line = text.split("\n", 1)[0].strip()
    m = _SENTENCE_END.search(line)
    return line[:m.end()] if m else line


def brevity_pairs(prompts: Sequence[str], answers: Sequence[str], min_ratio: float = 1.5) -> list[dict[str, str]]:
    """On-policy DPO pairs for "answer briefly", from the model's own answers to `prompts`.

    chosen = the first sentence of the model's answer (`first_sentence`), rejected = the whole
    answer. Why on-policy: pairs of hand-written texts the model would never produce (concise_pairs)
    let DPO separate chosen from rejected without changing what the model *writes*; here both
    answers are text the model does write, and they share their start, so DPO's push lands on the
    token where they part: stop (EOS) after the first sentence, or go on. Skipped: answers whose
    first line has no sentence end (e.g. 'The answer is "X"' then a new section: no complete
    sentence to prefer), and answers not clearly longer than their first sentence (fewer than
    `min_ratio` × its words): the model already answered briefly there.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"brevity_pairs: {len(prompts)} prompts but {len(answers)} answers; give one answer "
                         "per prompt (e.g. labkit.evaluate.generate(model, tok, prompts)).")
    if min_ratio <= 1:
        raise ValueError(f"min_ratio must be > 1 (the rejected answer must be longer), got {min_ratio}.")
    pairs = []
    for prompt, answer in zip(prompts, answers, strict=True):
        short = first_sentence(answer)
        complete = bool(_SENTENCE_END.search(short))
        if complete and len(answer.split()) >= min_ratio * len(short.split()):
            pairs.append(to_preference_record(prompt, short, answer.strip()))
    return pairs


def completion_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    """log p(completion + EOS | prompt) under `model`: the sum of the answer tokens' log-probabilities.

    This is the number DPO compares: it raises it for the chosen answer and lowers it for the
    rejected one (each relative to a frozen reference copy of the SFT model). Tokenised like an
    SFT record (`labkit.data.tokenize_with_labels`): prompt tokens are context, answer + EOS scored.
    """
    enc = tokenize_with_labels({"prompt": prompt, "completion": completion}, tokenizer)
    device = next(model.parameters()).device
    ids = torch.tensor([enc["input_ids"]], device=device)
    labels = torch.tensor([enc["labels"]], device=device)
    with eval_mode(model), torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
    target = labels[:, 1:]
    mask = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(picked[mask].sum())


@dataclass(frozen=True)
class PreferenceScore:
    """Log-likelihoods of one pair's answers; `margin` > 0 means the model already prefers `chosen`."""

    chosen_logp: float
    rejected_logp: float

    @property
    def margin(self) -> float:
        return self.chosen_logp - self.rejected_logp


def score_preferences(model, tokenizer, records: Sequence[dict]) -> list[PreferenceScore]:
    """`completion_logprob` of the chosen and the rejected answer of every preference record."""
    if not records:
        raise ValueError("score_preferences: no records to score (the list is empty).")
    cache: dict[tuple[str, str], float] = {}  # pairs often share a prompt and its chosen answer

    def logp(prompt: str, completion: str) -> float:
        if (prompt, completion) not in cache:
            cache[prompt, completion] = completion_logprob(model, tokenizer, prompt, completion)
        return cache[prompt, completion]

    out = []
    for i, rec in enumerate(records):
        missing = {"prompt", "chosen", "rejected"} - set(rec)
        if missing:
            raise ValueError(f"Record {i} lacks {sorted(missing)}: build it with to_preference_record().")
        out.append(PreferenceScore(logp(rec["prompt"], rec["chosen"]), logp(rec["prompt"], rec["rejected"])))
    return out


def dpo_loss(policy_chosen: float, policy_rejected: float, ref_chosen: float, ref_rejected: float,
             beta: float = 0.1) -> float:
    """DPO's loss for one pair: -log σ(β · [(π_c − ref_c) − (π_r − ref_r)]) (TRL's "sigmoid" loss).

    Arguments are sequence log-probabilities (`completion_logprob`) under the model being trained
    (policy) and the frozen SFT model (reference). At the start policy == reference, so the loss is
    log 2 ≈ 0.693 whatever the answers; it falls as the policy raises chosen relative to rejected,
    and β says how far from the reference it may move for that.
    """
    z = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return math.log1p(math.exp(-z)) if z > -30 else -z  # = -log(sigmoid(z)), stable for large |z|


# ------------------------------------------------------------------------------------------------
# Training with DPO

DPO_LEARNING_RATE = 1e-4
"""train_dpo's default learning rate, and why not TRL's 1e-6: TRL's default suits full fine-tuning
of a large model, where every weight moves and a few dozen steps are a tiny part of a long run. Here a
LoRA adapter (~1-3% of a 135M model's weights, B starting at zero) gets a few dozen steps on a CPU; at
1e-6 its implicit reward margins barely leave 0 and the loss stays near log 2. 1e-4 is the usual
LoRA order of magnitude (SFT uses 1e-4 to 3e-4); β and the reference keep the policy near its start."""


@dataclass
class DPOHistory(RunStats):
    """What a DPO run did, per logged step, as plain numbers (TRL's names in brackets).

    margins: mean implicit reward margin β·[(log π − log ref)(chosen) − (…)(rejected)] of the batch
    [rewards/margins]; accuracies: share of the batch's pairs whose margin is > 0 [rewards/accuracies];
    evals: one dict per evaluation (after each epoch) with loss, margin, accuracy, epoch.
    """

    loss: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        """First and last logged step, then each evaluation; one line each."""
        lines = [f"{'':>12} {'loss':>7} {'margin':>8} {'accuracy':>8}"]
        for name, i in (("first step", 0), ("last step", -1)):
            if self.loss:
                lines.append(f"{name:>12} {self.loss[i]:7.4f} {self.margins[i]:+8.3f} {self.accuracies[i]:8.0%}")
        for e in self.evals:
            lines.append(f"{'val ep ' + format(e['epoch'], '.0f'):>12} {e['loss']:7.4f} {e['margin']:+8.3f} "
                         f"{e['accuracy']:8.0%}")
        lines.append(self.stats_line())
        return "\n".join(lines)


def dpo_history_from_log(log_history: Sequence[dict], val0: float | None = None) -> DPOHistory:
    """Trainer's log_history → DPOHistory (numbers only; DPO takes no epoch-0 validation: val0 is unused)."""
    h = DPOHistory()
    for entry in log_history:
        if "loss" in entry and "rewards/margins" in entry:
            h.loss.append(float(entry["loss"]))
            h.margins.append(float(entry["rewards/margins"]))
            h.accuracies.append(float(entry["rewards/accuracies"]))
            h.epochs.append(float(entry.get("epoch", 0.0)))
        elif "eval_loss" in entry:
            h.evals.append({"loss": float(entry["eval_loss"]), "margin": float(entry["eval_rewards/margins"]),
                            "accuracy": float(entry["eval_rewards/accuracies"]),
                            "epoch": float(entry.get("epoch", 0.0))})
    return h


def validate_preferences(records: Sequence[dict], name: str = "train") -> None:
    """labkit.data.validate_records for pairs, plus: chosen must differ from rejected."""
    validate_records(records, name, fields=("prompt", "chosen", "rejected"))
    for i, rec in enumerate(records):
        if rec["chosen"].strip() == rec["rejected"].strip():
            raise RecordError(f"{name} record {i}: 'chosen' and 'rejected' are the same answer "
                              f"({rec['chosen'][:60]!r}), so there is no preference to learn and DPO's loss "
                              "cannot move. Pair each good answer with a genuinely worse one.")


def dpo_config_kwargs(output_dir: str, *, device: str | None = None, beta: float = 0.1, epochs: float = 1,
                      learning_rate: float = DPO_LEARNING_RATE, batch_size: int = 4, max_length: int = 256,
                      has_val: bool = True, seed: int = 0, progress: bool = True, **overrides) -> dict:
    """Every DPOConfig keyword labkit sets → a dict (`DPOConfig(**kwargs)`); `overrides` win.

    The device part (fp32 and no checkpointing on a CPU, bf16 or T4 fp16) is the one SFT uses:
    labkit.train.device_training_kwargs.
    """
    kw: dict[str, Any] = dict(
        output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=learning_rate, beta=beta,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size, max_length=max_length,
        warmup_steps=0.1, lr_scheduler_type="cosine", seed=seed, data_seed=seed,
        logging_strategy="steps", logging_steps=1, logging_first_step=True,
        save_strategy="epoch", save_total_limit=2,  # checkpoints per epoch, as SFT's: resume=True continues
        eval_strategy="epoch" if has_val else "no", report_to="none", disable_tqdm=not progress,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
        **device_training_kwargs(device),
    )
    kw.update(overrides)
    return kw


def train_dpo(model, tokenizer, train: Sequence[dict], val: Sequence[dict] | None = None, *, lora=None,
              beta: float = 0.1, epochs: float = 1, learning_rate: float = DPO_LEARNING_RATE,
              batch_size: int | None = None, max_length: int = 256, output_dir: str | os.PathLike | None = None,
              resume: bool = False, seed: int = 0, plot: bool = True, progress: bool = True, callbacks: Sequence = (),
              device: str | None = None, **overrides) -> DPOHistory:
    """Preference-tune `model` on prompt/chosen/rejected pairs with TRL's DPOTrainer → DPOHistory.

    lora: a dict of labkit.lora.add_lora keywords or a peft LoraConfig adds fresh adapters, and the
    reference model is the same network with the adapter switched off (no second copy in memory);
    None trains the model as given (an existing adapter, e.g. your SFT one: TRL keeps a frozen copy
    of it as the reference; a plain model: TRL copies the whole model). beta: how far the policy may
    move from the reference (higher = closer). Learning rate: see DPO_LEARNING_RATE. The run is
    train_sft's (`labkit.train.TrainingRun`): the same device recipe, guards, OOM message,
    checkpoints per epoch in output_dir and resume=True; any DPOConfig field can be overridden.
    """
    from trl import DPOConfig

    validate_preferences(train, "train")
    val = val if val else None
    if val is not None:
        validate_preferences(val, "val")
    run = TrainingRun(output_dir=output_dir, resume=resume, seed=seed, device=device, batch_size=batch_size,
                      max_length=max_length, plot=plot, progress=progress, callbacks=callbacks, kind="dpo")
    run.check_batch(len(train), "pairs")
    model, peft_config = run.model_for_trainer_adapters(model, lora)
    config = DPOConfig(**dpo_config_kwargs(
        str(run.out), device=run.device, beta=beta, epochs=epochs, learning_rate=learning_rate,
        batch_size=run.batch_size, max_length=max_length, has_val=val is not None, seed=seed, progress=progress,
        **overrides))

    def make_trainer(cbs):
        from trl import DPOTrainer

        return DPOTrainer(model=model, ref_model=None, args=config, train_dataset=_pairs_dataset(train),
                          eval_dataset=_pairs_dataset(val) if val is not None else None,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=cbs)

    from labkit.plots import LivePreferencePlot

    return run.train(config, model, make_trainer, dpo_history_from_log, live_plot=LivePreferencePlot,
                     measure_val0=False)


def _pairs_dataset(records: Sequence[dict]):
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])


# ------------------------------------------------------------------------------------------------
# Verifiable rewards and group-relative advantages (GRPO)


def invoice_reward(completion: str, reference: str) -> float:
    """A verifiable reward for the invoice task: field-level F1 of the JSON against the reference.

    1.0 for a fully correct answer, partial credit for some right fields, 0.0 for anything that is
    not JSON. No reward model is needed: a program checks the answer, so it can't be flattered.
    """
    return float(field_scores([completion], [reference])["f1"])


def group_advantages(rewards: Sequence[float], eps: float = 1e-4) -> list[float]:
    """GRPO's advantage of each answer in one group: (reward − group mean) / (group std + eps).

    Answers better than their siblings for the same prompt get pushed up, worse ones down; no value
    network is needed (the group is the baseline). Like TRL, std is the sample std (n − 1); a group
    whose rewards are all equal teaches nothing (every advantage is 0).
    """
    if len(rewards) < 2:
        raise ValueError(f"group_advantages needs a group of at least 2 answers to compare, got {len(rewards)}. "
                         "GRPO samples several completions per prompt (num_generations).")
    mean = statistics.fmean(rewards)
    std = statistics.stdev(rewards)
    return [(r - mean) / (std + eps) for r in rewards]


# ------------------------------------------------------------------------------------------------
# GRPO training: rewards with partial credit, train_grpo, and the held-out reward


def word_count(text: str) -> int:
    return len(text.split())


def brevity_reward(completions: Sequence[str], limit: int = 12, slack: int = 30, **_) -> list[float]:
    """1.0 for an answer of at most `limit` words, then linearly less, 0.0 from `limit + slack` words.

    Why partial credit: GRPO learns only from groups whose rewards differ (`frac_reward_zero_std` is
    the share that do not). An all-or-nothing "≤ 12 words" gives the 135M model's 40-word answers
    zeros across the group, and nothing to learn. Extra keywords (TRL passes the data set's other
    columns) are ignored. Alone it is hackable: an empty answer scores 1.0 (see concise_reward).
    """
    return [1.0 if (n := word_count(c)) <= limit else max(0.0, 1.0 - (n - limit) / slack) for c in completions]


_FUNCTION_WORDS = frozenset(
    "the and are was were its has have had can not you your but all one that this with from for into than then what "
    "which who does did done use used also such each very just like some more most any there their they them been "
    "about will would could should may might when where how why".split())


def _content_stems(text: str) -> set[str]:
    """Content words (3+ letters, not function words), cut to 5 letters: 'measures' and 'measure' match."""
    return {w[:5] for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in _FUNCTION_WORDS}


def _question(prompt: str) -> str:
    """The instruction of a course-format prompt (labkit.data.split_prompt), else the whole prompt."""
    try:
        return split_prompt(prompt)[0]
    except ValueError:
        return prompt


def substance_reward(completions: Sequence[str], prompts: Sequence[str], min_words: int = 3, **_) -> list[float]:
    """How much an answer says: 0.0 unless it names the question's subject ("thermometer" for "What is
    a thermometer?"), then the share of `min_words` further content words it uses, up to 1.0.

    A crude check (words, not meaning: it cannot tell a right definition from a wrong one), but a
    program computes it, and it is 0.0 for an answer that says nothing or only repeats the subject.
    TRL passes `prompts` to every reward function.
    """
    scores = []
    for completion, prompt in zip(completions, prompts, strict=True):
        subject = _content_stems(_question(prompt))
        said = _content_stems(completion)
        scores.append(min(1.0, len(said - subject) / min_words) if subject & said else 0.0)
    return scores


def concise_reward(completions: Sequence[str], prompts: Sequence[str], **_) -> list[float]:
    """brevity × substance: short *and* saying something. The fix for brevity's hack: a product, so an
    answer that drops the substance scores 0 however short it is (a sum would still pay for brevity alone)."""
    return [b * c for b, c in zip(brevity_reward(completions), substance_reward(completions, prompts), strict=True)]


@dataclass
class GRPOHistory(RunStats):
    """What a GRPO run did, per step, as plain numbers (TRL's log names in brackets).

    reward: mean reward of the step's sampled completions [reward]; reward_std: their spread within
    groups [reward_std]; zero_std: share of the step's prompts whose group all scored the same, so
    taught nothing [frac_reward_zero_std]; length: mean completion length in tokens
    [completions/mean_length]; by_function: each reward function's mean [rewards/<name>/mean].
    """

    reward: list[float] = field(default_factory=list)
    reward_std: list[float] = field(default_factory=list)
    zero_std: list[float] = field(default_factory=list)
    length: list[float] = field(default_factory=list)
    by_function: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> str:
        """First and last step's reward, spread and zero-spread share, then the run's cost."""
        lines = [f"{'':>10} {'reward':>7} {'std':>6} {'zero std':>8} {'length':>6}"]
        for name, i in (("first step", 0), ("last step", -1)):
            if self.reward:
                lines.append(f"{name:>10} {self.reward[i]:7.3f} {self.reward_std[i]:6.3f} {self.zero_std[i]:8.0%} "
                             f"{self.length[i]:6.1f}")
        lines.append(self.stats_line())
        return "\n".join(lines)


def grpo_history_from_log(log_history: Sequence[dict], val0: float | None = None) -> GRPOHistory:
    """Trainer's log_history → GRPOHistory (numbers only; GRPO has no validation loss: val0 is unused)."""
    h = GRPOHistory()
    for entry in log_history:
        if "reward" not in entry:
            continue
        h.reward.append(float(entry["reward"]))
        h.reward_std.append(float(entry.get("reward_std", 0.0)))
        h.zero_std.append(float(entry.get("frac_reward_zero_std", 0.0)))
        h.length.append(float(entry.get("completions/mean_length", 0.0)))
        for key, value in entry.items():
            if key.startswith("rewards/") and key.endswith("/mean"):
                h.by_function.setdefault(key[len("rewards/"):-len("/mean")], []).append(float(value))
    return h


def grpo_config_kwargs(output_dir: str, *, device: str | None = None, steps: int = 20, learning_rate: float = 2e-4,
                       num_generations: int = 4, prompts_per_step: int = 2, max_completion_length: int = 48,
                       temperature: float = 1.0, beta: float = 0.0, seed: int = 0, progress: bool = True,
                       **overrides) -> dict:
    """Every GRPOConfig keyword labkit sets → a dict (`GRPOConfig(**kwargs)`); `overrides` win.

    A step samples `num_generations` answers for each of `prompts_per_step` prompts (TRL counts the
    batch in completions: their product). beta=0 (TRL's default): no reference model, so no second
    forward pass. A constant learning rate, so that a short run is not mostly warm-up. The device
    part is SFT's (labkit.train.device_training_kwargs).
    """
    kw: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate, lr_scheduler_type="constant",
        num_generations=num_generations, per_device_train_batch_size=num_generations * prompts_per_step,
        max_completion_length=max_completion_length, temperature=temperature, beta=beta, seed=seed,
        data_seed=seed, logging_steps=1, save_strategy="steps", save_steps=max(1, steps // 2), save_total_limit=1,
        report_to="none", disable_tqdm=not progress, dataloader_num_workers=0,
        **device_training_kwargs(device),
    )
    kw.update(overrides)
    return kw


def train_grpo(model, tokenizer, records: Sequence[dict], reward_funcs, *, lora=None, steps: int = 20,
               learning_rate: float = 2e-4, num_generations: int = 4, prompts_per_step: int = 2,
               max_completion_length: int = 48, temperature: float = 1.0, beta: float = 0.0,
               output_dir: str | os.PathLike | None = None, resume: bool = False, seed: int = 0,
               plot: bool = True, progress: bool = True, callbacks: Sequence = (), device: str | None = None,
               **overrides) -> GRPOHistory:
    """Reinforce `model` with TRL's GRPOTrainer on `records` (each a "prompt" plus any columns the
    reward functions read, e.g. "chosen") → GRPOHistory.

    reward_funcs: one function or a list, called as TRL calls them, `f(completions=..., prompts=...,
    <column>=...)` → one float per completion (brevity_reward, concise_reward). lora: as train_dpo
    (fresh adapters via TRL's peft_config). learning_rate=0 is the control: the same seed samples the
    same first groups, and nothing is learned, so a reward that rises anyway is noise, not learning.
    The run is train_sft's (`labkit.train.TrainingRun`): device recipe, guards, OOM message, resume.
    """
    from trl import GRPOConfig

    validate_records(records, "train", fields=("prompt",))
    if prompts_per_step > len(records):
        raise ValueError(f"prompts_per_step={prompts_per_step} is more than the {len(records)} prompts given.")
    run = TrainingRun(output_dir=output_dir, resume=resume, seed=seed, device=device,
                      batch_size=num_generations * prompts_per_step, max_length=max_completion_length, plot=plot,
                      progress=progress, callbacks=callbacks, kind="grpo")
    model, peft_config = run.model_for_trainer_adapters(model, lora)
    config = GRPOConfig(**grpo_config_kwargs(
        str(run.out), device=run.device, steps=steps, learning_rate=learning_rate, num_generations=num_generations,
        prompts_per_step=prompts_per_step, max_completion_length=max_completion_length, temperature=temperature,
        beta=beta, seed=seed, progress=progress, **overrides))

    def make_trainer(cbs):
        from datasets import Dataset
        from trl import GRPOTrainer

        return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=Dataset.from_list(
            [dict(r) for r in records]), processing_class=tokenizer, peft_config=peft_config, callbacks=cbs)

    from labkit.plots import LiveRewardPlot

    return run.train(config, model, make_trainer, grpo_history_from_log, live_plot=LiveRewardPlot,
                     measure_val0=False)


def heldout_reward(model, tokenizer, records: Sequence[dict], reward_func, max_new_tokens: int = 48,
                   progress: bool = False) -> tuple[float, list[str]]:
    """Mean reward of the model's greedy answers to held-out `records` → (mean, the answers).

    Greedy, as every labkit evaluation: the same model always gets the same score, so base vs
    trained differ only by what training changed.
    """
    from labkit.evaluate import generate

    answers = generate(model, tokenizer, [r["prompt"] for r in records], max_new_tokens=max_new_tokens,
                       progress=progress)
    columns = {k: [r[k] for r in records] for k in records[0] if k != "prompt"}
    scores = reward_func(completions=answers, prompts=[r["prompt"] for r in records], **columns)
    return statistics.fmean(scores), answers


# ------------------------------------------------------------------------------------------------
# The tooling landscape

TOOLING: list[dict[str, str]] = [
    {"tool": "TRL", "what": "Hugging Face trainers: SFT, DPO, GRPO, reward models",
     "use when": "you want the reference implementations; this course runs on it"},
    {"tool": "Unsloth", "what": "fast, memory-lean LoRA/QLoRA kernels, one GPU",
     "use when": "fine-tuning on a single (free Colab) GPU as fast as possible"},
    {"tool": "Axolotl", "what": "YAML configs, multi-GPU, sample packing",
     "use when": "reproducible runs from a config file, scaling to several GPUs"},
    {"tool": "LLaMA-Factory", "what": "web UI (and CLI) over many models and methods",
     "use when": "trying methods by clicking rather than coding"},
    {"tool": "torchtune", "what": "PyTorch-native recipes, few dependencies",
     "use when": "you want plain PyTorch code you can read and change"},
]
"""Fine-tuning tools and when each fits (the course's own code uses transformers + peft + trl)."""


def tooling_table() -> list[dict[str, str]]:
    """The tooling rows (a copy, so a learner can edit it freely)."""
    return [dict(row) for row in TOOLING]

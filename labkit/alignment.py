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
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

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


def completion_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    """log p(completion + EOS | prompt) under `model`: the sum of the answer tokens' log-probabilities.

    This is the number DPO compares: it raises it for the chosen answer and lowers it for the
    rejected one (each relative to a frozen reference copy of the SFT model). Tokenised like an
    SFT record (`labkit.data.tokenize_with_labels`): prompt tokens are context, answer + EOS scored.
    """
    import torch

    from labkit.data import tokenize_with_labels
    from labkit.models import eval_mode

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
# Verifiable rewards and group-relative advantages (GRPO)


def invoice_reward(completion: str, reference: str) -> float:
    """A verifiable reward for the invoice task: field-level F1 of the JSON against the reference.

    1.0 for a fully correct answer, partial credit for some right fields, 0.0 for anything that is
    not JSON. No reward model is needed: a program checks the answer, so it can't be flattered.
    """
    from labkit.evaluate import field_scores

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

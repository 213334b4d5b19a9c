"""Course coverage: every topic of the course outline maps to rows of the claims register.

`OUTLINE` mirrors COURSE_OUTLINE.md bullet by bullet: (outline section, topic, claim ids of docs/claims.md).
A topic is covered by what its rows say: `measured` (an assert in the named notebook checks it, which
tests/test_claims.py verifies), `shown` (printed or plotted, not asserted) or `prose only` (taught in the
markdown, with the reason nothing checks it). Keywords in the notebooks count for nothing. A topic fails
when it maps to no row, to an id the register lacks, or only to `missing` rows; prose-only topics pass but
are counted and printed, so the number is visible.

Run `python tests/test_outline.py` for the full report: each topic, its best status and its rows.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_claims import STATUSES, Claim, load_claims  # noqa: E402  (the one register parser)

A, M, H, D, T, E, F, L, TL, Q = ("Choosing an approach", "Methods", "Hyperparameters", "Data",
                                 "Training and evaluation", "Evaluation", "Failure modes and learner errors",
                                 "Alignment", "Tooling landscape", "Interview questions")

OUTLINE: list[tuple[str, str, tuple[str, ...]]] = [
    # --- Choosing an approach
    (A, "prompting first (free, instant)", ("prompting-first",)),
    (A, "RAG for private or changing facts", ("rag-for-facts", "rag-beats-base-07", "edit-follows-07", "recall-07", "base-lacks-facts-07")),
    (A, "fine-tune for a new consistent behaviour (format, tone, niche skill)", ("finetune-behaviour",)),
    (A, "rule of thumb: >= 500 examples", ("rule-500",)),
    (A, "a good system prompt does most of the job", ("system-prompt-most", "prompt-baseline-05")),
    (A, "fine-tuning pays: many queries amortise the cost", ("pays-amortise",)),
    (A, "fine-tuning pays: a smaller tuned model replaces a larger one", ("pays-smaller",)),
    (A, "fine-tuning pays: data must stay on-premises", ("pays-onprem",)),
    (A, "best practice: LoRA for behaviour + RAG for facts", ("lora-plus-rag", "finetune-format-07", "finetune-facts-07", "hybrid-07", "ovadia-raft")),
    (A, "quick reference: approach / changes weights? / cost / speed / best for", ("quick-reference",)),
    # --- Methods
    (M, "full fine-tuning: all weights, best quality, highest memory and forgetting risk", ("full-ft-tradeoff", "full-ft-forgets-more")),
    (M, "LoRA: W + B·A with rank r", ("lora-w-ba",)),
    (M, "LoRA: B starts at zero", ("lora-b-zero",)),
    (M, "LoRA: scale alpha/r", ("lora-scale",)),
    (M, "QLoRA: frozen base in 4-bit NF4", ("qlora-nf4", "nf4-ratio-04")),
    (M, "QLoRA: double quantisation", ("double-quant",)),
    (M, "QLoRA: paged optimisers", ("paged-optim",)),
    (M, "QLoRA: adapters stay in 16-bit", ("adapters-16bit",)),
    (M, "DoRA (use_dora=True)", ("dora", "dora-e7")),
    (M, "adapters (bottleneck layers)", ("peft-adapters-bottleneck",)),
    (M, "prefix tuning", ("peft-family", "prefix-generate")),
    (M, "prompt tuning", ("peft-family",)),
    (M, "worked numbers: d=4096, r=16 -> 65,536 each, 131,072 vs 16,777,216 (0.78%)", ("worked-4096",)),
    (M, "worked numbers: 70B weights fp32 280 / fp16 140 / int8 70 / 4-bit 35 GB", ("weights-70b",)),
    (M, "QLoRA fits 65-70B on one 48 GB GPU", ("qlora-65b",)),
    (M, "7B full fine-tune ≈ 56-60 GB", ("full-7b",)),
    (M, "hardware table by size (1-3B, 7-8B, 13B, 70B) for full / LoRA / QLoRA", ("hardware-table",)),
    (M, "a free Colab T4 handles QLoRA of 1-3B", ("t4-qlora",)),
    (M, "merging: merge_and_unload() after training", ("merge", "lora-merge-03")),
    (M, "publish only the adapter (MBs) or a merged model", ("publish", "adapter-size")),
    (M, "licences of base models (Llama's terms vs Apache-2.0)", ("licences",)),
    # --- Alignment
    (L, "SFT / instruction tuning", ("sft", "qlora-beats-prompting")),
    (L, "RLHF: reward model from human rankings, then RL", ("rlhf",)),
    (L, "DPO: chosen vs rejected pairs, no reward model", ("dpo-pairs",)),
    (L, "GRPO for reasoning", ("grpo-reward", "grpo-run", "grpo-hack", "grpo-fix")),
    (L, "DPO trained for real, measured on held-out prompts", ("dpo-real", "general-probe")),
    (L, "DPO and verifiable rewards over-optimise too", ("overoptimise", "reward-hacking")),
    # --- Hyperparameters
    (H, "rank r 8-64, start at 16, higher is not better by default", ("rank-sweep", "hyperparams")),
    (H, "lora_alpha ≈ r to 2r", ("hyperparams", "alpha-e4")),
    (H, "dropout 0.05-0.1", ("hyperparams", "dropout-e4")),
    (H, "target modules q/k/v/o (+ gate/up/down)", ("hyperparams", "lora-fraction-05")),
    (H, "learning rate 1e-4 to 3e-4 for LoRA", ("hyperparams",)),
    (H, "full fine-tuning LR lower (1e-5 to 5e-6) to limit forgetting", ("remedies-forgetting", "hyperparams")),
    (H, "epochs 1-3 (rarely 5)", ("hyperparams",)),
    (H, "effective batch 8-32 with gradient accumulation", ("hyperparams", "accumulation-e7")),
    (H, "warmup", ("instability-warmup", "instability", "hyperparams")),
    (H, "cosine decay", ("instability-rails-alone", "hyperparams")),
    (H, "max sequence length 2k-8k", ("max-seq",)),
    (H, "8-bit / paged AdamW", ("hyperparams", "paged-optim")),
    # --- Data
    (D, "Alpaca format: instruction / input / output", ("alpaca",)),
    (D, "chat messages with roles", ("chat-messages",)),
    (D, "prompt/completion with a fixed template (### Instruction: ... ### Response:)", ("records",)),
    (D, "template identical byte-for-byte at train and inference", ("template-check", "template-check-02")),
    (D, "how much: ~100 for style/format, 1k-10k good, diminishing beyond ~50k; quality beats quantity", ("how-much-data",)),
    (D, "remove exact duplicates", ("exact-dups",)),
    (D, "remove near duplicates (MinHash / SimHash)", ("near-dups",)),
    (D, "filter by length (one-word and outlier-long answers)", ("length-filter",)),
    (D, "quality filtering (reward model or LLM rating)", ("quality-filter",)),
    (D, "balance task types", ("balance",)),
    (D, "diversity of wording and difficulty", ("diversity",)),
    (D, "hold out 5-10% for validation", ("hold-out",)),
    (D, "strict train/test separation", ("separation",)),
    # --- Training and evaluation
    (T, "the loop: predict, measure error, nudge against the gradient, repeat (one weight first)", ("gradient-loop",)),
    (T, "watch train and validation loss", ("train-val-loss",)),
    (T, "overfitting = train falls while validation rises", ("overfitting",)),
    (T, "stop early", ("early-stopping",)),
    # --- Evaluation
    (E, "exact match / F1 for extraction", ("em-f1", "qlora-beats-prompting")),
    (E, "format compliance", ("format-compliance", "prompt-baseline-05")),
    (E, "hallucination rate", ("hallucination",)),
    (E, "regression on a fixed general set (forgetting)", ("general-probe", "full-ft-forgets-more")),
    (E, "LLM-as-judge", ("llm-judge",)),
    (E, "benchmark suites MT-Bench, AlpacaEval", ("llm-judge",)),
    (E, "human review before deployment", ("human-review",)),
    (E, "compare against base", ("em-f1",)),
    # --- Failure modes and learner errors
    (F, "failure modes as symptom -> cause -> mitigation", ("failure-table",)),
    (F, "catastrophic forgetting", ("full-ft-forgets-more", "forgetting-error")),
    (F, "overfitting to format", ("overfit-format",)),
    (F, "data contamination", ("contamination",)),
    (F, "reward hacking", ("reward-hacking",)),
    (F, "training instability: loss spikes, NaN -> clipping, warmup, lower LR", ("instability", "instability-lr", "instability-rails-alone")),
    (F, "learner error: fine-tuning when a prompt would do", ("learner-prompt", "prompting-first")),
    (F, "learner error: too little or noisy data", ("learner-data",)),
    (F, "learner error: prompt-format mismatch", ("learner-mismatch",)),
    # --- Tooling landscape
    (TL, "Unsloth: fast single-GPU LoRA/QLoRA", ("tooling",)),
    (TL, "Axolotl: YAML configs, multi-GPU, sample packing", ("tooling",)),
    (TL, "TRL: SFT/DPO trainers", ("tooling",)),
    (TL, "LLaMA-Factory: web UI", ("tooling",)),
    (TL, "torchtune: PyTorch-native", ("tooling",)),
    # --- Interview questions
    (Q, "the interview quiz", ("quiz",)),
]

# What the quiz questions themselves must ask (COURSE_OUTLINE "Interview-style questions").
INTERVIEW_QUESTIONS: list[tuple[str, list[str]]] = [
    ("when to fine-tune vs RAG", [r"\bRAG\b", r"fine-tun"]),
    ("how LoRA reduces memory", [r"LoRA", r"memory"]),
    ("what QLoRA adds", [r"QLoRA", r"NF4"]),
    ("how to detect overfitting", [r"overfitting", r"validation"]),
    ("how to detect forgetting", [r"forgetting", r"general"]),
    ("why template mismatch hurts", [r"template"]),
]

_DASHES = re.compile("[\u2010-\u2015\u2212]")
_SPACES = re.compile("[\u00a0\u2009\u202f]")


def normalise(text: str) -> str:
    """Emphasis out, dashes and odd spaces unified, so the quiz regexes stay readable."""
    return _SPACES.sub(" ", _DASHES.sub("-", text.replace("*", "")))


def _matches(patterns: list[str], text: str) -> bool:
    return all(re.search(p, text, re.IGNORECASE | re.DOTALL) for p in patterns)


_RANK = {s: i for i, s in enumerate(STATUSES)}  # measured first, missing last


def topic_status(ids: tuple[str, ...], register: dict[str, Claim]) -> str:
    """The best status among a topic's rows ("missing" when none of them is in the register)."""
    found = [register[i].status for i in ids if i in register]
    return min(found, key=lambda s: _RANK.get(s, len(STATUSES))) if found else "missing"


def coverage(outline=OUTLINE, claims: list[Claim] | None = None) -> list[tuple[str, str, str, list[str]]]:
    """(section, topic, status, ids the register lacks) for every outline topic."""
    register = {c.id: c for c in (load_claims() if claims is None else claims)}
    return [(section, topic, topic_status(ids, register), [i for i in ids if i not in register])
            for section, topic, ids in outline]


def counts(rows) -> dict[str, int]:
    tally = Counter(status for _, _, status, _ in rows)
    return {s: tally.get(s, 0) for s in STATUSES}


def report(rows) -> str:
    c = counts(rows)
    return (f"{len(rows)} outline topics: {c['measured']} measured, {c['shown']} shown, "
            f"{c['prose only']} prose only, {c['missing']} missing")


# ------------------------------------------------------------------------------------------------


def test_outline_table_is_well_formed():
    topics = [topic for _, topic, _ in OUTLINE]
    assert len(topics) == len(set(topics)), "duplicate topic names in OUTLINE"
    sections = {section for section, _, _ in OUTLINE}
    assert sections == {A, M, H, D, T, E, F, L, TL, Q}, "every outline section needs topics"
    assert all(ids for _, _, ids in OUTLINE), "every topic needs at least one claims-register row"


def test_coverage_can_fail():
    """Unknown ids and missing rows fail a topic; the best of several rows counts."""
    claims = [Claim("m", "", "", ("x",), "measured", "", 1), Claim("p", "", "", (), "prose only", "why", 2),
              Claim("gap", "", "", (), "missing", "", 3)]
    outline = [("S", "both", ("p", "m")), ("S", "prose", ("p",)), ("S", "gap", ("gap",)), ("S", "typo", ("nope",))]
    rows = coverage(outline, claims)
    assert [(t, s, lacks) for _, t, s, lacks in rows] == [
        ("both", "measured", []), ("prose", "prose only", []), ("gap", "missing", []), ("typo", "missing", ["nope"])]
    assert counts(rows) == {"measured": 1, "shown": 0, "prose only": 1, "missing": 2}


def test_every_outline_topic_maps_to_the_claims_register():
    rows = coverage()
    print(report(rows))
    for _, topic, status, _ in rows:
        if status == "prose only":
            print(f"  prose only: {topic}")
    unknown = [f"{topic}: {lacks}" for _, topic, _, lacks in rows if lacks]
    missing = [topic for _, topic, status, _ in rows if status == "missing"]
    if unknown or missing:
        pytest.fail(f"{report(rows)}\nids not in docs/claims.md: {unknown}\ntopics with no row that teaches "
                    f"them: {missing}", pytrace=False)


def test_quiz_asks_the_interview_questions():
    from labkit.quiz import QUESTIONS

    texts = [normalise(" ".join([q.question, *q.options, q.explanation])) for q in QUESTIONS]
    missing = [name for name, patterns in INTERVIEW_QUESTIONS if not any(_matches(patterns, t) for t in texts)]
    assert not missing, f"labkit.quiz.QUESTIONS asks no question about: {missing}"


if __name__ == "__main__":  # python tests/test_outline.py: each topic's status and rows
    rows = coverage()
    for (section, topic, status, lacks), (_, _, ids) in zip(rows, OUTLINE, strict=True):
        print(f"{status:<10} [{section}] {topic}: {', '.join(ids)}{'  (not in the register: ' + ', '.join(lacks) + ')' if lacks else ''}")
    print("\n" + report(rows))
    sys.exit(1 if counts(rows)["missing"] else 0)

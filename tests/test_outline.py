"""Course coverage: every topic of the course outline is taught somewhere in lessons/ or solutions/.

`OUTLINE` mirrors COURSE_OUTLINE.md bullet by bullet: (outline section, topic, keyword regexes).
A topic counts as taught when ONE notebook matches ALL of its regexes (case-insensitive) in its
markdown, its code, or its committed outputs (the `# NBVAL_CHECK_OUTPUT` tables a learner reads,
which nbval keeps honest). Keywords spread over different notebooks do not count: a topic is taught
in one place. Text is normalised first: `*` (markdown emphasis) removed, en/em dashes → "-", non-breaking
spaces → " ".

Run `python tests/test_outline.py` for the full report: which notebooks teach each topic.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIRS = ("lessons", "solutions")

_FEW = r"(\w+\W+){0,3}"  # up to three words in between ("keeps on", "starts")
_FALL = r"(fall\w*|goes down|decreas\w*|drop\w*)"
_RISE = r"(rises|rising|goes up|increas\w*|climb\w*)"

A, M, H, D, T, E, F, L, TL, Q = ("Choosing an approach", "Methods", "Hyperparameters", "Data",
                                 "Training and evaluation", "Evaluation", "Failure modes and learner errors",
                                 "Alignment", "Tooling landscape", "Interview questions")

OUTLINE: list[tuple[str, str, list[str]]] = [
    # --- Choosing an approach
    (A, "prompting first (free, instant)", [r"prompting (comes )?first|prompt(ing)? first", r"free,? (and )?instant"]),
    (A, "RAG for private or changing facts", [r"\bRAG\b", r"(private|chang\w*) .{0,20}facts|facts .{0,40}(private|change)"]),
    (A, "fine-tune for a new consistent behaviour (format, tone, niche skill)",
     [r"(new|consistent) behaviour", r"format.{0,20}tone", r"niche skill"]),
    (A, "rule of thumb: >= 500 examples", [r"(≥|>=|at least) ?500\b"]),
    (A, "a good system prompt does most of the job", [r"system prompt.{0,80}most of the job"]),
    (A, "fine-tuning pays: many queries amortise the cost", [r"amorti[sz]"]),
    (A, "fine-tuning pays: a smaller tuned model replaces a larger one", [r"smaller .{0,40}replace .{0,30}larger"]),
    (A, "fine-tuning pays: data must stay on-premises", [r"on-?prem"]),
    (A, "best practice: LoRA for behaviour + RAG for facts", [r"LoRA for behaviou?r \W*(\+|and) RAG for facts"]),
    (A, "quick reference: approach / changes weights? / cost / speed / best for",
     [r"prompting", r"\bRAG\b", r"LoRA", r"full fine-tun", r"RLHF", r"DPO", r"changes weights", r"\bcost\b",
      r"\bspeed\b", r"best for"]),
    # --- Methods
    (M, "full fine-tuning: all weights, best quality, highest memory and forgetting risk",
     [r"full fine-tun", r"\ball (the )?weights|every weight", r"(best|maximum|highest) quality", r"forgetting"]),
    (M, "LoRA: W + B·A with rank r", [r"W ?\+ ?\(?B ?[·.*@]? ?A", r"\brank\b"]),
    (M, "LoRA: B starts at zero", [r"\bB\b.{0,25}(starts?|initiali[sz]ed|init\w*) (at |as |to )?(zero|0)\b"]),
    (M, "LoRA: scale alpha/r", [r"alpha ?/ ?r\b"]),
    (M, "QLoRA: frozen base in 4-bit NF4", [r"QLoRA", r"\bNF4\b", r"4-bit"]),
    (M, "QLoRA: double quantisation", [r"double quanti[sz]ation"]),
    (M, "QLoRA: paged optimisers", [r"paged optimi[sz]er"]),
    (M, "QLoRA: adapters stay in 16-bit", [r"adapters .{0,30}16-bit"]),
    (M, "DoRA (use_dora=True)", [r"\bDoRA\b", r"use_dora ?= ?True"]),
    (M, "adapters (bottleneck layers)", [r"\badapters\b.{0,80}(bottleneck|between|inserted)"]),
    (M, "prefix tuning", [r"prefix[- ]tuning"]),
    (M, "prompt tuning", [r"\bprompt[- ]tuning"]),
    (M, "worked numbers: d=4096, r=16 -> 65,536 each, 131,072 vs 16,777,216 (0.78%)",
     [r"4096", r"65,?536", r"131,?072", r"16,?777,?216", r"0\.78"]),
    (M, "worked numbers: 70B weights fp32 280 / fp16 140 / int8 70 / 4-bit 35 GB",
     [r"\b70 ?B\b|70e9", r"fp32", r"\b280\b", r"\b140\b", r"int8", r"\b35\b"]),
    (M, "QLoRA fits 65-70B on one 48 GB GPU", [r"QLoRA", r"\b65 ?B\b|65-70 ?B", r"48 ?GB"]),
    (M, "7B full fine-tune ≈ 56-60 GB", [r"\b7 ?B\b.{0,40}full|full.{0,40}\b7 ?B\b", r"\b56\b"]),
    (M, "hardware table by size (1-3B, 7-8B, 13B, 70B) for full / LoRA / QLoRA",
     [r"hardware table|hardware_table", r"1-3 ?B", r"7-8 ?B", r"\b13 ?B\b", r"\b70 ?B\b"]),
    (M, "a free Colab T4 handles QLoRA of 1-3B", [r"\bT4\b", r"QLoRA of 1-3 ?B|1-3 ?B .{0,40}QLoRA"]),
    (M, "merging: merge_and_unload() after training", [r"merge_and_unload"]),
    (M, "publish only the adapter (MBs) or a merged model",
     [r"adapter[- ]only|only the adapter|just the adapter", r"\bMBs?\b", r"merged model"]),
    (M, "licences of base models (Llama's terms vs Apache-2.0)", [r"licen[cs]e", r"Llama", r"Apache[- ]?2\.0"]),
    # --- Alignment
    (L, "SFT / instruction tuning", [r"\bSFT\b|supervised fine-tun", r"instruction[- ]tun"]),
    (L, "RLHF: reward model from human rankings, then RL",
     [r"\bRLHF\b", r"reward model", r"human (rankings|preferences)", r"\bPPO\b|reinforcement learning"]),
    (L, "DPO: chosen vs rejected pairs, no reward model",
     [r"\bDPO\b", r"\bchosen\b", r"\brejected\b", r"no (separate )?reward model|without a reward model"]),
    (L, "GRPO for reasoning", [r"\bGRPO\b", r"reasoning"]),
    (L, "DPO trained for real, measured on held-out prompts",
     [r"train_dpo\(", r"held-out", r"preference accuracy", r"general_probe\("]),
    (L, "DPO and verifiable rewards over-optimise too", [r"\bDPO\b", r"verifiable reward", r"over-optimise"]),
    # --- Hyperparameters
    (H, "rank r 8-64, start at 16, higher is not better by default",
     [r"\b8-64\b", r"start(ing)? (at |with )?(r ?= ?)?16", r"higher is not better"]),
    (H, "lora_alpha ≈ r to 2r", [r"alpha", r"\br to 2 ?[·*]? ?r\b"]),
    (H, "dropout 0.05-0.1", [r"dropout", r"0\.05-0\.1\b"]),
    (H, "target modules q/k/v/o (+ gate/up/down)", [r"target modules?", r"q_proj|\bq, k, v, o\b|q/k/v/o",
                                                     r"gate.{0,12}up.{0,12}down"]),
    (H, "learning rate 1e-4 to 3e-4 for LoRA", [r"1e-4 (to|-) ?3e-4"]),
    (H, "full fine-tuning LR lower (1e-5 to 5e-6) to limit forgetting", [r"1e-5 (to|-) ?5e-6"]),
    (H, "epochs 1-3 (rarely 5)", [r"epochs?", r"\b1-3\b", r"rarely 5"]),
    (H, "effective batch 8-32 with gradient accumulation", [r"effective batch", r"\b8-32\b", r"gradient accumulation"]),
    (H, "warmup", [r"warm-?up"]),
    (H, "cosine decay", [r"cosine"]),
    (H, "max sequence length 2k-8k", [r"max(imum)?[ _](seq|sequence|length)", r"2k-8k|2,?048-8,?192"]),
    (H, "8-bit / paged AdamW", [r"8-bit", r"paged[ _]adamw"]),
    # --- Data
    (D, "Alpaca format: instruction / input / output", [r"Alpaca", r"\binstruction\b", r"\binput\b", r"\boutput\b"]),
    (D, "chat messages with roles", [r"\bmessages\b", r"\brole"]),
    (D, "prompt/completion with a fixed template (### Instruction: ... ### Response:)",
     [r"prompt ?/ ?completion", r"### Instruction:", r"### Response:"]),
    (D, "template identical byte-for-byte at train and inference", [r"byte[- ]for[- ]byte", r"inference"]),
    (D, "how much: ~100 for style/format, 1k-10k good, diminishing beyond ~50k; quality beats quantity",
     [r"\b100 (perfect|good)? ?examples", r"1k-10k", r"50k", r"quality beats quantity"]),
    (D, "remove exact duplicates", [r"exact duplicates?"]),
    (D, "remove near duplicates (MinHash / SimHash)", [r"near[- ]duplicates?", r"MinHash", r"SimHash"]),
    (D, "filter by length (one-word and outlier-long answers)", [r"one-word", r"outlier-long|over-long|too long"]),
    (D, "quality filtering (reward model or LLM rating)", [r"quality filter", r"reward model", r"LLM rat"]),
    (D, "balance task types", [r"\bbalance"]),
    (D, "diversity of wording and difficulty", [r"diversity"]),
    (D, "hold out 5-10% for validation", [r"hold[- ]?out|held[- ]out", r"5-10 ?%"]),
    (D, "strict train/test separation", [r"strict(ly)?.{0,30}separat"]),
    # --- Training and evaluation
    (T, "the loop: predict, measure error, nudge against the gradient, repeat (one weight first)",
     [r"predict", r"measure (the )?error", r"gradient", r"(one|single) weight"]),
    (T, "watch train and validation loss", [r"train(ing)? loss", r"validation loss"]),
    (T, "overfitting = train falls while validation rises",
     [r"overfitting", rf"train\w*( loss)?\W+{_FEW}{_FALL}.{{0,80}}validation( loss)?\W+{_FEW}{_RISE}"
                      rf"|validation( loss)?\W+{_FEW}{_RISE}.{{0,80}}train\w*( loss)?\W+{_FEW}{_FALL}"]),
    (T, "stop early", [r"early[- ]stopping|stop(ping)? early|stop\w* when (the )?validation( loss)? "
                       r"(rises|starts rising|goes up)"]),
    (E, "exact match / F1 for extraction", [r"exact match", r"\bF1\b"]),
    (E, "format compliance", [r"format compliance"]),
    (E, "hallucination rate", [r"hallucination rate"]),
    (E, "regression on a fixed general set (forgetting)", [r"general(-knowledge)? (set|probe)", r"forgetting"]),
    (E, "LLM-as-judge", [r"LLM-as-(a-)?judge"]),
    (E, "benchmark suites MT-Bench, AlpacaEval", [r"MT-Bench", r"AlpacaEval"]),
    (E, "human review before deployment", [r"human review"]),
    (E, "compare against base", [r"(compare[sd]? (it |them )?(with|against|to)|against|vs\.?) (the )?base\b"]),
    # --- Production failure modes and learner errors
    (F, "failure modes as symptom -> cause -> mitigation", [r"symptom", r"\bcause", r"mitigation"]),
    (F, "catastrophic forgetting", [r"catastrophic forgetting"]),
    (F, "overfitting to format", [r"overfitting to (the )?format"]),
    (F, "data contamination", [r"contamination"]),
    (F, "reward hacking", [r"reward hacking"]),
    (F, "training instability: loss spikes, NaN -> clipping, warmup, lower LR",
     [r"instabilit", r"loss spikes?", r"\bNaN\b", r"clipping", r"warm-?up", r"lower (the )?(LR|learning rate)"]),
    (F, "learner error: fine-tuning when a prompt would do", [r"prompt would (have )?do(ne)?"]),
    (F, "learner error: too little or noisy data", [r"too (little|few)", r"noisy"]),
    (F, "learner error: prompt-format mismatch", [r"(prompt-)?format mismatch|template mismatch"]),
    # --- Tooling landscape
    (TL, "Unsloth: fast single-GPU LoRA/QLoRA", [r"Unsloth", r"single[- ]GPU|one GPU"]),
    (TL, "Axolotl: YAML configs, multi-GPU, sample packing", [r"Axolotl", r"YAML", r"multi-GPU", r"sample packing"]),
    (TL, "TRL: SFT/DPO trainers", [r"\bTRL\b", r"SFTTrainer|SFT trainer", r"DPOTrainer|DPO trainer"]),
    (TL, "LLaMA-Factory: web UI", [r"LLaMA-Factory", r"web UI"]),
    (TL, "torchtune: PyTorch-native", [r"torchtune", r"PyTorch-native"]),
    # --- Interview questions
    (Q, "the interview quiz", [r"quiz\("]),
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
    """Emphasis out, dashes and odd spaces unified, so the regexes stay readable."""
    return _SPACES.sub(" ", _DASHES.sub("-", text.replace("*", "")))


def notebook_text(path: Path) -> str:
    """Markdown, code and committed text outputs of one notebook, normalised."""
    nb = nbformat.read(str(path), as_version=4)
    parts = []
    for cell in nb.cells:
        parts.append(cell.source)
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return normalise("\n".join(parts))


def course_corpus(root: Path = ROOT, dirs: tuple[str, ...] = NOTEBOOK_DIRS) -> dict[str, str]:
    """{"lessons/01_decide.ipynb": text, ...} for every notebook in `dirs`."""
    return {f"{d}/{p.name}": notebook_text(p) for d in dirs for p in sorted((root / d).glob("*.ipynb"))}


def _matches(patterns: list[str], text: str) -> bool:
    return all(re.search(p, text, re.IGNORECASE | re.DOTALL) for p in patterns)


def teaching_notebooks(patterns: list[str], corpus: dict[str, str]) -> list[str]:
    """The notebooks that match every pattern of one topic."""
    return [name for name, text in corpus.items() if _matches(patterns, text)]


def missing_topics(corpus: dict[str, str], outline=OUTLINE) -> list[tuple[str, str, list[str]]]:
    """(section, topic, patterns not found in any single notebook... ) for each untaught topic.

    For an untaught topic, the third element lists the patterns no notebook matches at all (empty
    when each pattern matches somewhere but never all in the same notebook).
    """
    out = []
    for section, topic, patterns in outline:
        if not teaching_notebooks(patterns, corpus):
            nowhere = [p for p in patterns if not any(re.search(p, t, re.IGNORECASE | re.DOTALL)
                                                      for t in corpus.values())]
            out.append((section, topic, nowhere))
    return out


def format_missing(missing) -> str:
    lines, last = [], None
    for section, topic, nowhere in missing:
        if section != last:
            lines.append(f"[{section}]")
            last = section
        hint = f"   (no notebook has: {', '.join(nowhere)})" if nowhere else "   (keywords split over notebooks)"
        lines.append(f"  - {topic}{hint}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The table itself


def test_outline_table_is_well_formed():
    topics = [topic for _, topic, _ in OUTLINE]
    assert len(topics) == len(set(topics)), "duplicate topic names in OUTLINE"
    sections = {section for section, _, _ in OUTLINE}
    assert sections == {A, M, H, D, T, E, F, L, TL, Q}, "every outline section needs topics"
    for _section, topic, patterns in OUTLINE:
        assert patterns, f"{topic}: no keywords"
        for p in patterns:
            rx = re.compile(p, re.IGNORECASE)  # raises on a broken regex
            assert not rx.search(""), f"{topic}: {p!r} matches empty text, so it checks nothing"


def test_matcher_needs_all_keywords_in_one_notebook(tmp_path):
    """The matcher can fail: keywords split over notebooks, or absent, leave a topic missing."""
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    outline = [("S", "DPO", [r"\bDPO\b", r"\bchosen\b", r"\brejected\b"]),
               ("S", "GRPO", [r"\bGRPO\b", r"reasoning"]),
               ("S", "warmup", [r"warm-?up"])]
    nb1 = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("**DPO** learns from *chosen* pairs."),
                                          nbformat.v4.new_code_cell("print('GRPO for reasoning')")])
    code = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nshow()")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="... vs the rejected answer")]
    nb2 = nbformat.v4.new_notebook(cells=[code])
    nbformat.write(nb1, str(lessons / "a.ipynb"))
    nbformat.write(nb2, str(lessons / "b.ipynb"))
    corpus = course_corpus(tmp_path, ("lessons",))
    assert set(corpus) == {"lessons/a.ipynb", "lessons/b.ipynb"}
    assert "rejected" in corpus["lessons/b.ipynb"]  # committed outputs are read
    missing = missing_topics(corpus, outline)
    assert [(t, nowhere) for _, t, nowhere in missing] == [("DPO", []), ("warmup", [r"warm-?up"])]
    assert teaching_notebooks([r"\bGRPO\b", r"reasoning"], corpus) == ["lessons/a.ipynb"]
    assert "keywords split over notebooks" in format_missing(missing)
    assert normalise("1\u20133 epochs, **bold**") == "1-3 epochs, bold"


# ------------------------------------------------------------------------------------------------
# The course


def test_every_outline_topic_is_taught():
    corpus = course_corpus()
    assert corpus, f"no notebooks found under {ROOT} in {NOTEBOOK_DIRS}"
    missing = missing_topics(corpus)
    if missing:
        pytest.fail(f"{len(missing)} of {len(OUTLINE)} course-outline topics are not taught in any notebook of "
                    f"{', '.join(NOTEBOOK_DIRS)} ({len(corpus)} notebooks read):\n{format_missing(missing)}",
                    pytrace=False)


def test_quiz_asks_the_interview_questions():
    from labkit.quiz import QUESTIONS

    texts = [normalise(" ".join([q.question, *q.options, q.explanation])) for q in QUESTIONS]
    missing = [name for name, patterns in INTERVIEW_QUESTIONS if not any(_matches(patterns, t) for t in texts)]
    assert not missing, f"labkit.quiz.QUESTIONS asks no question about: {missing}"


if __name__ == "__main__":  # python tests/test_outline.py: where each topic is taught
    corpus = course_corpus()
    for section, topic, patterns in OUTLINE:
        where = teaching_notebooks(patterns, corpus)
        print(f"{'OK ' if where else 'MISSING'} [{section}] {topic}: {', '.join(where) or '-'}")
    missing = missing_topics(corpus)
    print(f"\n{len(OUTLINE) - len(missing)}/{len(OUTLINE)} topics taught\n{format_missing(missing)}")
    sys.exit(1 if missing else 0)

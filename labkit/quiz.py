"""Interview-style questions from the course, as plain data a widget (or a test) can use.

Each question has one right answer and an explanation that teaches, whichever option was picked.
Standard library only, so the quiz works wherever ipywidgets does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `answer_index` points into `options`."""

    question: str
    options: tuple[str, ...]
    answer_index: int
    explanation: str

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise ValueError(f"Question {self.question!r} needs at least two options, got {len(self.options)}.")
        if not 0 <= self.answer_index < len(self.options):
            raise ValueError(
                f"Question {self.question!r}: answer_index {self.answer_index} is not an option "
                f"(there are {len(self.options)}; indices start at 0)."
            )

    @property
    def answer(self) -> str:
        return self.options[self.answer_index]


QUESTIONS: list[Question] = [
    Question(
        "Your support bot already has a good system prompt, but it must also answer from internal policy "
        "documents that change every month. What should supply those facts?",
        ("A LoRA fine-tune on this month's policy documents",
         "RAG: retrieve the relevant policy pages into the prompt",
         "A full fine-tune on every policy document you have so far",
         "DPO on pairs of good and bad answers about policies"),
        1,
        "Prompting comes first, and here it already handles the behaviour. What is missing are private, "
        "changing facts, and those belong in a retrieval index: RAG stays current without retraining. "
        "Fine-tuning teaches behaviour (format, tone, skill), not facts that change.",
    ),
    Question(
        "When is fine-tuning (rather than prompting or RAG) the right call?",
        ("Whenever you have some labelled data, even a few dozen rows",
         "When the model lacks up-to-date facts about your products",
         "A tuned model always beats a prompt, so fine-tune as early as you can",
         "A new behaviour a prompt can't make reliable, and ~500+ examples"),
        3,
        "Try prompting first. Fine-tune for behaviour (format, tone, niche skill) once a good system prompt "
        "falls short, with enough examples (rule of thumb ≥ 500). It also pays when many similar queries "
        "amortise the cost, a smaller tuned model replaces a larger one, or data must stay on-premises.",
    ),
    Question(
        "How does LoRA reduce the memory needed for training?",
        ("W stays frozen; only B·A get gradients and optimizer state",
         "It removes half of the layers and trains the remaining ones",
         "It stores every weight in 4-bit NF4 and trains them directly",
         "It trains on shorter sequences, so activations take less room"),
        0,
        "With W frozen, only A (r×d) and B (d×r) are trained: for d = 4096, r = 16 that is 131,072 "
        "parameters instead of 16,777,216 (0.78%). Adam keeps two states per trainable parameter, so "
        "gradient and optimizer memory shrink by the same factor. (4-bit storage is what QLoRA adds.)",
    ),
    Question(
        "What does QLoRA add on top of LoRA?",
        ("A reward model trained from human rankings of answers",
         "More adapter layers, inserted between the existing frozen layers",
         "A 4-bit NF4 frozen base; the adapters still train in 16-bit",
         "Full fine-tuning of the attention layers, LoRA elsewhere"),
        2,
        "QLoRA quantises the frozen base weights to 4-bit NF4 (with double quantisation and paged "
        "optimisers), so a 70B model's weights take ~35 GB instead of 140 GB in fp16: a 65–70B model fits "
        "on one 48 GB GPU. The adapters are trained in 16-bit as in plain LoRA.",
    ),
    Question(
        "During training, train loss keeps falling while validation loss starts rising. What is happening?",
        ("Catastrophic forgetting: the model loses general knowledge",
         "The learning rate is too low, so training has not yet converged",
         "All is well: a lower training loss means a better model",
         "Overfitting: keep the checkpoint of the best validation epoch"),
        3,
        "Train down + validation up = overfitting: the model memorises the training set. Keep the checkpoint "
        "from the epoch with the lowest validation loss (early stopping), or use fewer epochs, a lower "
        "learning rate, dropout or more data.",
    ),
    Question(
        "How do you detect catastrophic forgetting after a fine-tune?",
        ("Compare base and tuned on a fixed general-knowledge set",
         "Watch whether the training loss rises in the last epochs",
         "Check that the trainable parameters are under one percent",
         "Check the held-out exact match on the fine-tuning task"),
        0,
        "Forgetting is a regression on what the model could do before: measure the same general set "
        "before and after. The task's own scores cannot show it. LoRA and a lower learning rate usually "
        "forget less than full fine-tuning.",
    ),
    Question(
        "You trained with '### Instruction: … ### Response:' but serve with the chat template. Why does "
        "quality drop?",
        ("The tokenizer changes its vocabulary with the template",
         "The model never saw that prompt format while training",
         "Chat templates make generation slower, so it times out",
         "It does not drop: models ignore the prompt's wrapping"),
        1,
        "A fine-tune learns the mapping from the exact prompt bytes it saw; a different template is out of "
        "distribution. The template must be identical byte for byte at training and inference, or the tuned "
        "behaviour may not show up at all (lesson 06 measures it).",
    ),
]
"""The course's interview-style questions (fine-tune vs RAG, LoRA, QLoRA, overfitting, forgetting, templates)."""


def check_answer(question: Question, choice: int | str | None) -> tuple[bool, str]:
    """Whether `choice` (an option index or its text) is right, and feedback that teaches either way."""
    if choice is None:
        return False, "Pick an answer first."
    if isinstance(choice, str):
        if choice not in question.options:
            raise ValueError(f"{choice!r} is not one of the options: {list(question.options)}")
        choice = question.options.index(choice)
    if choice == question.answer_index:
        return True, f"✅ Correct. {question.explanation}"
    return False, f"❌ Not quite: the answer is “{question.answer}”. {question.explanation}"

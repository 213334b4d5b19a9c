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
        "Your support bot must answer from internal policy documents that change every month. "
        "What do you try first?",
        ("Full fine-tune on the documents", "RAG: retrieve the relevant documents into the prompt",
         "LoRA fine-tune on the documents", "Train with DPO"),
        1,
        "Private, changing facts belong in a retrieval index: RAG stays current without retraining. "
        "Fine-tuning teaches behaviour (format, tone, skill), not facts that change.",
    ),
    Question(
        "When is fine-tuning (rather than prompting or RAG) the right call?",
        ("Whenever you have any labelled data",
         "When the model lacks up-to-date facts",
         "Always: a tuned model beats a prompt",
         "When the model needs a new consistent behaviour prompting can't make reliable, and you have ~500+ examples"),
        3,
        "Fine-tune for behaviour (format, tone, niche skill) once a good system prompt falls short, with "
        "enough examples (rule of thumb ≥ 500). It also pays when many similar queries amortise the cost, "
        "a smaller tuned model replaces a larger one, or data must stay on-premises.",
    ),
    Question(
        "How does LoRA reduce the memory needed for training?",
        ("It freezes W and trains two small matrices B·A (rank r), so gradients and optimizer state exist "
         "only for those",
         "It deletes half of the model's layers",
         "It stores the weights in 4-bit",
         "It trains on shorter sequences"),
        0,
        "With W frozen, only A (r×d) and B (d×r) are trained: for d = 4096, r = 16 that is 131,072 "
        "parameters instead of 16,777,216 (0.78%). Adam keeps two states per trainable parameter, so "
        "gradient and optimizer memory shrink by the same factor.",
    ),
    Question(
        "What does QLoRA add on top of LoRA?",
        ("A reward model",
         "More adapter layers",
         "The frozen base is stored in 4-bit NF4 (with double quantisation and paged optimisers); "
         "the adapters still train in 16-bit",
         "Full fine-tuning of the attention layers"),
        2,
        "QLoRA quantises the frozen base weights to 4-bit NF4, so a 70B model's weights take ~35 GB "
        "instead of 140 GB in fp16: a 65–70B model fits on one 48 GB GPU.",
    ),
    Question(
        "During training, train loss keeps falling while validation loss starts rising. What is happening?",
        ("Catastrophic forgetting", "Overfitting: stop early at the best validation epoch",
         "The learning rate is too low", "Everything is fine: lower train loss is better"),
        1,
        "Train down + validation up = overfitting: the model memorises the training set. Keep the checkpoint from the "
        "epoch with the lowest validation loss (early stopping), or use fewer epochs / more data.",
    ),
    Question(
        "How do you detect catastrophic forgetting after a fine-tune?",
        ("Look at the training loss",
         "Count the trainable parameters",
         "Check that the adapter file is small",
         "Score the base and the tuned model on a fixed general-knowledge set and compare"),
        3,
        "Forgetting is a regression on what the model could do before: measure the same general set "
        "before and after. LoRA and a lower learning rate usually forget less than full fine-tuning.",
    ),
    Question(
        "You trained with '### Instruction: … ### Response:' but serve with the chat template. Why does "
        "quality drop?",
        ("The tokenizer changes", "Chat templates are slower",
         "The model learned to answer after the exact training template; a "
         "different prompt is out of distribution for what it was tuned on",
         "It doesn't: templates don't matter"),
        2,
        "A fine-tune learns the mapping from the exact prompt bytes it saw. The template must be identical "
        "byte for byte at training and inference, or the tuned behaviour may not show up at all.",
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

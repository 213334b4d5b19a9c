"""Interactive front ends for the course: the decision helper, a LoRA calculator and a quiz.

Each function returns one ipywidgets box whose parts are attributes (`.checkbox_facts`, `.result`,
...), so a notebook displays it and a test drives it headless: set a child's `.value` (or call a
button's `.click()`) and the box's callback updates its result text.

Works with ipywidgets 7.7 (what Colab ships) and 8.x: only APIs common to both are used (no
`tooltip`/`description_tooltip`, no layout templates). Constants come from labkit.shapes
(torch-free, shared with labkit.lora and labkit.memory); the estimators, decide, quiz and
transformers are imported when a widget is built or updated, so importing this module stays light.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import ipywidgets as widgets

from labkit.shapes import ALL_LINEAR_TARGETS, COURSE_MODEL_SHAPE, DEFAULT_TARGETS, PRESETS

_WIDE = {"description_width": "initial"}


def _html(text: str) -> str:
    return html.escape(text, quote=False)


def _size(n: int) -> str:
    """135M, 6.7B: parameter counts the way model names write them."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


# ---------------------------------------------------------------- decision helper


class DecisionHelper(widgets.VBox):
    """Two questions and an example count in; the recommended approach and its reason out."""

    def __init__(self) -> None:
        self.checkbox_facts = widgets.Checkbox(
            value=False, description="Needs private or changing facts?", indent=False, style=_WIDE,
            layout=widgets.Layout(width="auto"))
        self.checkbox_behaviour = widgets.Checkbox(
            value=False, description="Needs a new consistent behaviour (format, tone, skill)?", indent=False,
            style=_WIDE, layout=widgets.Layout(width="auto"))
        self.examples = widgets.IntSlider(
            value=0, min=0, max=5000, step=10, description="Training examples available:", style=_WIDE,
            layout=widgets.Layout(width="520px"))
        self.result = widgets.HTML(value="")
        self.result.add_class("labkit-decision-result")
        self.recommendation = None
        super().__init__([widgets.HTML("<b>Make the call: prompting, RAG or fine-tuning?</b>"),
                          self.checkbox_facts, self.checkbox_behaviour, self.examples, self.result])
        self.add_class("labkit-decision")
        for child in (self.checkbox_facts, self.checkbox_behaviour, self.examples):
            child.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        """Recompute the recommendation from the current inputs (the observers call this)."""
        from labkit.decide import recommend

        self.recommendation = recommend(
            bool(self.checkbox_facts.value), bool(self.checkbox_behaviour.value), int(self.examples.value))
        self.result.value = (f"<p><b>Recommendation: {_html(self.recommendation.approach)}</b></p>"
                             f"<p>{_html(self.recommendation.reason)}</p>")


def decision_helper() -> DecisionHelper:
    """The prompt / RAG / fine-tune decision as a widget (see `labkit.decide.recommend`)."""
    return DecisionHelper()


# ---------------------------------------------------------------- LoRA calculator

TARGET_MODULES = ALL_LINEAR_TARGETS
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Llama-architecture shapes, from labkit.shapes: the course model's (tests compare it with the cached
# config.json) and Llama-2's published 7B and 70B. Built as transformers configs on demand, so
# nothing is downloaded.
MODEL_SHAPES: dict[str, dict] = {
    "SmolLM2-135M (course model)": COURSE_MODEL_SHAPE,
    "Llama-style 7B": PRESETS["llama-2-7b"],
    "Llama-style 70B": PRESETS["llama-2-70b"],
}


def model_config(name: str):
    """A transformers LlamaConfig for one of MODEL_SHAPES (no download, no weights)."""
    if name not in MODEL_SHAPES:
        raise KeyError(f"Unknown model {name!r}; choose one of {list(MODEL_SHAPES)}.")
    from transformers import LlamaConfig

    return LlamaConfig(**MODEL_SHAPES[name])


class LoraCalculator(widgets.VBox):
    """Rank, target modules and model in; trainable LoRA parameters and training memory out."""

    METHODS = ("full", "lora", "qlora")

    def __init__(self, config_for: Callable[[str], object] = model_config) -> None:
        self._config_for = config_for
        self.model = widgets.Dropdown(options=list(MODEL_SHAPES), value=next(iter(MODEL_SHAPES)),
                                      description="Model:", style=_WIDE)
        self.rank = widgets.SelectionSlider(options=list(RANKS), value=16, description="LoRA rank r:",
                                            style=_WIDE)
        self.targets = {
            m: widgets.Checkbox(value=m in DEFAULT_TARGETS, description=m.removesuffix("_proj"), indent=False,
                                style=_WIDE, layout=widgets.Layout(width="80px"))
            for m in TARGET_MODULES
        }
        self.result = widgets.HTML(value="")
        self.result.add_class("labkit-lora-result")
        self.lora_params: int | None = None
        self.memory_gb: dict[str, float] = {}
        super().__init__([widgets.HTML("<b>LoRA calculator</b>"), self.model, self.rank,
                          widgets.HTML("Target modules:"), widgets.HBox(list(self.targets.values())),
                          self.result])
        self.add_class("labkit-lora-calculator")
        for child in (self.model, self.rank, *self.targets.values()):
            child.observe(self.update, names="value")
        self.update()

    @property
    def target_modules(self) -> list[str]:
        return [m for m, cb in self.targets.items() if cb.value]

    def update(self, change=None) -> None:
        """Recompute parameters and memory for the current choices (the observers call this)."""
        targets = self.target_modules
        if not targets:
            self.lora_params, self.memory_gb = 0, {}
            self.result.value = "<p>Tick at least one target module: LoRA needs layers to adapt.</p>"
            return
        from labkit.lora import estimate_lora_params
        from labkit.memory import estimate_training_memory

        config = self._config_for(self.model.value)
        r = int(self.rank.value)
        self.lora_params = int(estimate_lora_params(config, r, targets))
        estimates = {m: estimate_training_memory(config, method=m, r=r, target_modules=targets)
                     for m in self.METHODS}
        self.memory_gb = {m: float(est.total_gb) for m, est in estimates.items()}
        n_params = int(estimates["full"].n_params)
        mem = ", ".join(f"{m}: {gb:,.1f} GB" for m, gb in self.memory_gb.items())
        self.result.value = (
            f"<p><b>Trainable LoRA parameters: {self.lora_params:,}</b> = "
            f"{100 * self.lora_params / n_params:.2f}% of {_size(n_params)} "
            f"(r = {r}, targets: {_html(', '.join(targets))})</p>"
            f"<p>Estimated training memory — {mem}<br>"
            "<small>(batch 1 × 512 tokens, 16-bit; details: labkit.memory.estimate_training_memory)</small></p>")


def lora_calculator() -> LoraCalculator:
    """A rank / target-module / model calculator over `labkit.lora` and `labkit.memory` estimates."""
    return LoraCalculator()


# ---------------------------------------------------------------- quiz


class QuizItem(widgets.VBox):
    """One question: options, a Check button and the feedback it writes."""

    def __init__(self, number: int, question) -> None:
        self.question = question
        self.choices = widgets.RadioButtons(options=list(question.options), index=None,
                                            layout=widgets.Layout(width="auto"))
        self.button = widgets.Button(description="Check")
        self.feedback = widgets.HTML(value="")
        self.correct: bool | None = None
        super().__init__([widgets.HTML(f"<p><b>{number}. {_html(question.question)}</b></p>"),
                          self.choices, self.button, self.feedback])
        self.button.on_click(self.check)

    def check(self, button=None) -> bool:
        """Mark the chosen option and explain (the Check button calls this)."""
        from labkit.quiz import check_answer

        ok, text = check_answer(self.question, self.choices.index)
        self.correct = ok if self.choices.index is not None else None
        self.feedback.value = f"<p>{_html(text)}</p>"
        return ok


class Quiz(widgets.VBox):
    """A list of QuizItems and a running score."""

    def __init__(self, questions: Sequence) -> None:
        self.items = [QuizItem(i, q) for i, q in enumerate(questions, 1)]
        self.score_label = widgets.HTML(value="")
        for item in self.items:
            item.button.on_click(self._update_score)
        super().__init__([*self.items, self.score_label])
        self.add_class("labkit-quiz")
        self._update_score()

    def score(self) -> int:
        return sum(item.correct is True for item in self.items)

    def _update_score(self, button=None) -> None:
        self.score_label.value = f"<p><b>Score: {self.score()} / {len(self.items)}</b></p>"


def quiz(questions: Sequence | None = None) -> Quiz:
    """The course's interview-style questions (labkit.quiz.QUESTIONS unless you pass your own)."""
    if questions is None:
        from labkit.quiz import QUESTIONS

        questions = QUESTIONS
    if not questions:
        raise ValueError("quiz() needs at least one question (see labkit.quiz.Question).")
    return Quiz(questions)

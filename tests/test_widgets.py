"""labkit.widgets driven headless: change a child's value or click a button, read the result."""

import json
import sys
import types

import pytest

from labkit import widgets
from labkit.decide import recommend
from labkit.quiz import QUESTIONS, Question, check_answer


def test_decision_helper_follows_inputs():
    w = widgets.decision_helper()
    assert w.recommendation.approach == "Prompting"
    w.checkbox_facts.value = True  # the observer fires on assignment, as on a click in the browser
    assert w.recommendation.approach == "RAG" and "Recommendation: RAG" in w.result.value
    w.checkbox_facts.value = False
    w.checkbox_behaviour.value = True
    w.examples.value = 20
    assert "Recommendation: Prompting" in w.result.value and "collect 480 more" in w.result.value
    w.examples.value = 2000
    assert "Recommendation: Fine-tune</b>" in w.result.value
    w.checkbox_facts.value = True
    assert "Recommendation: Fine-tune + RAG" in w.result.value
    assert recommend(True, True, 2000).reason in w.result.value


def _fake_estimators(monkeypatch, calls):
    """Stand-ins that record their arguments, so the wiring is tested without labkit.lora/memory."""
    lora = types.ModuleType("labkit.lora")
    memory = types.ModuleType("labkit.memory")

    def estimate_lora_params(config, r, target_modules):
        calls.append((config, r, list(target_modules)))
        return r * 1000 * len(target_modules)

    def estimate_training_memory(config, method="full", r=16, target_modules=("q_proj",)):
        return types.SimpleNamespace(total_gb={"full": 9.0, "lora": 3.0, "qlora": 1.5}[method], n_params=10**9)

    lora.estimate_lora_params = estimate_lora_params
    memory.estimate_training_memory = estimate_training_memory
    monkeypatch.setitem(sys.modules, "labkit.lora", lora)
    monkeypatch.setitem(sys.modules, "labkit.memory", memory)


def test_lora_calculator_wiring(monkeypatch):
    calls = []
    _fake_estimators(monkeypatch, calls)
    w = widgets.LoraCalculator(config_for=lambda name: f"cfg:{name}")
    assert w.lora_params == 16 * 1000 * 4 and calls[-1] == ("cfg:SmolLM2-135M (course model)", 16,
                                                            ["q_proj", "k_proj", "v_proj", "o_proj"])
    w.rank.value = 64
    assert w.lora_params == 64 * 4000 and "256,000</b> = 0.03% of 1.0B" in w.result.value
    w.targets["gate_proj"].value = True
    assert calls[-1][2][-1] == "gate_proj" and w.lora_params == 64 * 5000
    w.model.value = "Llama-style 70B"
    assert calls[-1][0] == "cfg:Llama-style 70B"
    assert w.memory_gb == {"full": 9.0, "lora": 3.0, "qlora": 1.5} and "qlora: 1.5 GB" in w.result.value
    for cb in w.targets.values():
        cb.value = False
    assert w.lora_params == 0 and "at least one target module" in w.result.value


def test_model_configs_match_known_shapes():
    cfg7 = widgets.model_config("Llama-style 7B")
    assert (cfg7.hidden_size, cfg7.num_hidden_layers) == (4096, 32)
    with pytest.raises(KeyError, match="choose one of"):
        widgets.model_config("GPT-5")


def test_smollm2_shape_matches_cached_config():
    from labkit.models import cache_dir

    path = cache_dir() / "smollm2-135m" / "config.json"
    if not path.exists():
        pytest.skip(f"no cached SmolLM2 config at {path} (run labkit.models.load_model() once)")
    real = json.loads(path.read_text())
    for key, value in widgets.MODEL_SHAPES["SmolLM2-135M (course model)"].items():
        assert real[key] == value, key


def test_lora_calculator_with_real_estimators():
    w = widgets.lora_calculator()
    w.model.value = "Llama-style 7B"
    for name, cb in w.targets.items():
        cb.value = name == "q_proj"
    # The course's worked number: d = 4096, r = 16 → A and B 65,536 each, per layer, 32 layers.
    assert w.lora_params == 131_072 * 32
    assert "4,194,304" in w.result.value
    mem = w.memory_gb
    assert mem["full"] > mem["lora"] > mem["qlora"] > 0
    small = w.lora_params
    w.rank.value = 32
    assert w.lora_params == 2 * small


def test_quiz_feedback_on_click():
    q = widgets.quiz()
    assert len(q.items) == len(QUESTIONS) >= 5
    first = q.items[0]
    first.button.click()
    assert "Pick an answer first" in first.feedback.value and q.score() == 0
    wrong = (first.question.answer_index + 1) % len(first.question.options)
    first.choices.index = wrong
    first.button.click()
    assert "Not quite" in first.feedback.value and first.correct is False
    first.choices.index = first.question.answer_index
    first.button.click()
    assert "Correct" in first.feedback.value and q.score() == 1
    assert "Score: 1 / " in q.score_label.value


def test_quiz_custom_questions_and_data_checks():
    custom = [Question("2 + 2?", ("3", "4"), 1, "Arithmetic.")]
    q = widgets.quiz(custom)
    q.items[0].choices.value = "4"
    assert q.items[0].check() and q.score() == 1
    assert check_answer(custom[0], "3") == (False, "❌ Not quite: the answer is “4”. Arithmetic.")
    with pytest.raises(ValueError, match="not an option"):
        Question("?", ("a", "b"), 2, "")
    with pytest.raises(ValueError, match="at least one question"):
        widgets.quiz([])
    topics = " ".join(x.question + x.explanation for x in QUESTIONS).lower()
    for word in ("rag", "lora", "qlora", "overfit", "forget", "template"):
        assert word in topics, word


def test_widget_modules_import_light():
    """Colab and the ipywidgets-7 test import these without torch: keep heavy imports lazy."""
    import subprocess

    code = ("import sys, labkit.widgets, labkit.decide, labkit.quiz; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"

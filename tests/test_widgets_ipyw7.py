"""labkit.widgets under ipywidgets 7.7.1, the version Colab ships, in a throwaway venv.

The project venv has ipywidgets 8, so a `--system-site-packages` venv would still see 8: this one
is isolated and holds only ipywidgets==7.7.1 (and its own dependencies). labkit is put on
PYTHONPATH from this checkout. torch/transformers/peft are deliberately absent, which also proves
that importing labkit.widgets, labkit.decide and labkit.quiz stays light. For that reason the LoRA
calculator is built here with its model config and its two estimators (labkit.lora, labkit.memory,
which need torch) stubbed: what this test checks is that the calculator's ipywidgets 7 wiring
works; the numbers themselves are checked in tests/test_widgets.py under ipywidgets 8.
The venv is cached in build/ipyw7-venv so re-runs take seconds.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "ipyw7-venv"
PIN = "ipywidgets==7.7.1"
MARKER = VENV / ".labkit-ipyw7-ready"

SCRIPT = textwrap.dedent("""
    import sys, types
    import ipywidgets
    assert ipywidgets.__version__ == "7.7.1", ipywidgets.__version__
    from labkit import widgets
    heavy = [m for m in ("torch", "transformers", "peft") if m in sys.modules]
    assert not heavy, f"labkit.widgets imported {heavy}"

    d = widgets.decision_helper()
    assert d.recommendation.approach == "Prompting", d.result.value
    d.checkbox_facts.value = True
    assert "Recommendation: RAG" in d.result.value, d.result.value
    d.checkbox_facts.value = False
    d.checkbox_behaviour.value = True
    d.examples.value = 2000
    assert "Recommendation: Fine-tune</b>" in d.result.value, d.result.value
    d.examples.value = 20
    assert "Recommendation: Prompting" in d.result.value and "collect 480 more" in d.result.value

    q = widgets.quiz()
    item = q.items[0]
    item.button.click()
    assert "Pick an answer first" in item.feedback.value
    item.choices.index = (item.question.answer_index + 1) % len(item.question.options)
    item.button.click()
    assert "Not quite" in item.feedback.value and q.score() == 0
    item.choices.index = item.question.answer_index
    item.button.click()
    assert "Correct" in item.feedback.value and q.score() == 1 and "Score: 1 /" in q.score_label.value

    # Stubs for the torch-backed estimators (see the module docstring of the test).
    lora, memory = types.ModuleType("labkit.lora"), types.ModuleType("labkit.memory")
    lora.estimate_lora_params = lambda config, r, target_modules: r * 100 * len(target_modules)
    memory.estimate_training_memory = lambda config, method="full", **kw: types.SimpleNamespace(
        total_gb={"full": 8.0, "lora": 2.0, "qlora": 1.0}[method], n_params=10**9)
    sys.modules["labkit.lora"], sys.modules["labkit.memory"] = lora, memory
    c = widgets.LoraCalculator(config_for=lambda name: name)
    assert c.lora_params == 16 * 400, c.result.value
    c.rank.value = 64
    c.targets["down_proj"].value = True
    assert c.lora_params == 64 * 500 and "32,000" in c.result.value, c.result.value
    c.model.value = "Llama-style 70B"
    assert "qlora: 1.0 GB" in c.result.value
    print("IPYW7-OK", ipywidgets.__version__)
""")


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _ensure_venv() -> Path:
    py = _venv_python()
    if MARKER.exists() and py.exists():
        return py
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", PIN],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"could not install {PIN} into {VENV} (needs PyPI):\n{proc.stderr[-2000:]}")
    MARKER.write_text(PIN + "\n")
    return py


@pytest.mark.slow
def test_widgets_work_with_ipywidgets_7_7_1(tmp_path):
    py = _ensure_venv()
    script = tmp_path / "drive_widgets.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONNOUSERSITE"] = "1"
    proc = subprocess.run([str(py), str(script)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert "IPYW7-OK 7.7.1" in proc.stdout

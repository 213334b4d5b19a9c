"""`labkit train` data-parallel on this CPU: 2 processes over gloo (torchrun), against 1 process.

What is tested here: CPU DDP with torchrun (ACCELERATE_USE_CPU=1: accelerate's `launch --cpu` starts only
one process). Multi-GPU DDP, FSDP2 and DeepSpeed are NOT tested here (no GPUs); docs/scaling.md says so.

The claim: 2 processes at per-device batch b take the same optimizer steps as 1 process at batch 2b.
They see the same records per step (accelerate shards each global batch of the seeded sampler), and the
loss is averaged over the answer tokens of BOTH ranks (`average_tokens_across_devices`, on by default:
each rank divides its token-loss sum by the global token count and multiplies by the world size; DDP then
averages the gradients), so the gradients are equal up to float rounding. Tolerance: 1e-4 on each logged
loss (they agree to ~1e-6; a run whose ranks do not sync gradients is off by ~1e-2 from step 2 on).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMEOUT_S = 420  # no run may hang: every launch is killed (with its process group) after this
LOSS_TOL = 1e-4

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="torchrun not installed")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random Llama with the course tokenizer, saved as a local model folder."""
    from labkit.models import tiny_model

    folder = tmp_path_factory.mktemp("tiny-model")
    model, tok = tiny_model(layers=2, hidden=64)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_config(folder: Path, model: Path, batch_size: int, name: str) -> Path:
    text = textwrap.dedent(f"""\
        model: {model}
        quantization: none
        data: {{course: invoices, n_train: 16, n_val: 4, n_test: 2, clean: false}}
        lora: {{r: 4, alpha: 8, dropout: 0.0, targets: all}}
        training: {{epochs: 1, learning_rate: 5.0e-3, batch_size: {batch_size}, warmup_ratio: 0.0,
                    group_by_length: false, timeout_s: 120}}
        evaluation: {{max_new_tokens: 2, probe: false, base: false}}
        output: {{dir: {folder / name}, plot: false}}
        """)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def launch(args: list[str], processes: int) -> subprocess.CompletedProcess:
    """Run `python -m labkit.cli ...` alone or under torchrun; kill the whole group on timeout."""
    # fp32: the claim is that gradient averaging over processes equals one process at double batch, to
    # float rounding; bf16 autocast (labkit's default on CPUs with native bf16) rounds a split batch differently
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1", "LABKIT_CPU_DTYPE": "fp32"}
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(processes), "--master_port", "29517", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {TIMEOUT_S} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def test_two_processes_match_one_process_at_double_batch(tmp_path, tiny_folder):
    one = launch(["-m", "labkit.cli", "train", str(write_config(tmp_path, tiny_folder, 4, "one")), "--quiet"], 1)
    assert one.returncode == 0, one.stdout[-3000:]
    two = launch(["-m", "labkit.cli", "train", str(write_config(tmp_path, tiny_folder, 2, "two")), "--quiet"], 2)
    assert two.returncode == 0, two.stdout[-3000:]

    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())["training"]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())["training"]
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert m1["effective_batch"] == m2["effective_batch"] == 4
    assert m1["steps"] == m2["steps"] == 4
    diffs = [abs(a - b) for a, b in zip(m1["train_loss"], m2["train_loss"], strict=True)]
    print(f"per-step |loss 1 proc - loss 2 procs|: max {max(diffs):.2e}; tokens/s "
          f"{m1['tokens_per_sec']:.0f} (1 proc) vs {m2['tokens_per_sec']:.0f} (2 procs together)")
    assert max(diffs) < LOSS_TOL, (m1["train_loss"], m2["train_loss"])
    assert all(abs(a - b) < LOSS_TOL for a, b in zip(m1["val_loss"], m2["val_loss"], strict=True))
    assert m1["train_loss"][-1] < m1["train_loss"][0] - 1e-3, "the runs must actually learn for this to mean much"

    a1 = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    a2 = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a1.keys() == a2.keys()
    assert max(float((a1[k] - a2[k]).abs().max()) for k in a1) < 1e-4, "the adapters must be the same"

    # Rank 0 evaluated and wrote the folder; rank 1 said it left that to rank 0.
    assert "rank 1 of 2 done; rank 0 evaluates and writes" in two.stdout
    assert two.stdout.count("wrote ") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "adapter", "checkpoints", "metrics.json", "report.md"]


def test_a_failing_rank_fails_the_run_with_its_error(tmp_path, tiny_folder):
    cfg = write_config(tmp_path, tiny_folder, 2, "fail")
    run = launch([str(ROOT / "tests" / "ddp_worker.py"), str(cfg), "1"], 2)
    assert run.returncode != 0
    assert "deliberate failure on rank 1" in run.stdout, run.stdout[-3000:]
    assert not (tmp_path / "fail" / "adapter").exists(), "a failed run must not leave an adapter behind"

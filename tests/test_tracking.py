"""report_to="tensorboard": a real (tiny) run writes event files in its own folder, read back as numbers."""

import pytest
from conftest import tiny_tokenizer_dir

pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")

from labkit.models import tiny_model  # noqa: E402
from labkit.tracking import plot_scalars, read_scalars  # noqa: E402
from labkit.train import train_sft  # noqa: E402


def _records(n: int) -> list[dict]:
    return [{"prompt": f"### Instruction:\nName item {i}.\n\n### Response:\n", "completion": f"Item {i}."}
            for i in range(n)]


def test_tensorboard_event_files_hold_the_runs_losses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # event files must not land in the working directory's ./runs
    model, tok = tiny_model(seed=0, tokenizer=tiny_tokenizer_dir())
    h = train_sft(model, tok, _records(6), _records(2), lora={"r": 4}, epochs=2, batch_size=2, plot=False,
                  progress=False, output_dir=tmp_path / "run", report_to="tensorboard")
    assert not (tmp_path / "runs").exists()
    scalars = read_scalars(tmp_path / "run" / "runs")
    losses = scalars["train/loss"]
    assert [step for step, _ in losses] == list(range(1, h.steps + 1))
    assert [v for _, v in losses] == pytest.approx(h.train_loss, rel=1e-5)
    evals = scalars["eval/loss"]
    assert len(evals) == len(h.val_loss) == 3 and evals[0][0] == 0  # epoch 0 (before training) and each epoch
    assert [v for _, v in evals] == pytest.approx(h.val_loss, rel=1e-5)
    ax = plot_scalars(scalars)
    assert [line.get_label() for line in ax.lines] == ["train/loss", "eval/loss"]
    with pytest.raises(KeyError, match="the event files hold"):
        plot_scalars(scalars, tags=("train/nothing",))


def test_no_event_files_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="report_to='tensorboard'"):
        read_scalars(tmp_path)


def test_reporting_stays_off_by_default(tmp_path):
    model, tok = tiny_model(seed=0, tokenizer=tiny_tokenizer_dir())
    h = train_sft(model, tok, _records(4), lora={"r": 4}, max_steps=1, batch_size=2, plot=False, progress=False,
                  output_dir=tmp_path / "run")
    assert h.steps == 1 and not (tmp_path / "run" / "runs").exists()

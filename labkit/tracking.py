"""Experiment tracking: a run's curves from its TensorBoard event files, offline.

`train_sft(..., report_to="tensorboard")` (or `training.report_to: tensorboard` in a run config)
makes the Trainer write event files to `<output_dir>/runs`. `tensorboard --logdir <output_dir>/runs`
shows them in a browser; `read_scalars` reads them back as plain numbers, so a notebook or a report
can plot or assert on them without a TensorBoard server. Needs the `tensorboard` package
(`pip install tensorboard`; Colab has it).
"""

from __future__ import annotations

from pathlib import Path


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under `log_dir` → {tag: [(step, value), ...]} in step order.

    Tags are the Trainer's: train/loss, eval/loss, train/learning_rate, train/grad_norm, ...
    """
    try:
        from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    except ImportError:
        raise ImportError("Reading TensorBoard event files needs the tensorboard package: pip install tensorboard") from None
    log_dir = Path(log_dir)
    if not any(log_dir.rglob("events.out.tfevents.*")):
        raise FileNotFoundError(f"No TensorBoard event files under {log_dir}. Train with report_to='tensorboard' "
                                "and pass the run's output_dir / 'runs' (History.output_dir tells where).")
    mux = EventMultiplexer().AddRunsFromDirectory(str(log_dir))
    mux.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for run, tags in mux.Runs().items():
        for tag in tags.get("scalars", []):
            out.setdefault(tag, []).extend((e.step, float(e.value)) for e in mux.Scalars(run, tag))
    return {tag: sorted(points) for tag, points in out.items()}


def plot_scalars(scalars: dict[str, list[tuple[int, float]]], tags: tuple[str, ...] = ("train/loss", "eval/loss"),
                 ax=None):
    """The chosen tags against the step on one axis (the curves TensorBoard would show) → the axis."""
    import matplotlib.pyplot as plt

    missing = [t for t in tags if t not in scalars]
    if missing:
        raise KeyError(f"No scalars named {missing}; the event files hold: {sorted(scalars)}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for tag in tags:
        steps, values = zip(*scalars[tag], strict=True)
        ax.plot(steps, values, marker="o" if tag.startswith("eval") else None, label=tag)
    ax.set_xlabel("step")
    ax.legend()
    return ax

"""Pictures where a picture beats numbers: loss curves, memory bars, forgetting bars.

Every function takes plain data (a History, dicts, lists), draws on a matplotlib Axes (a new figure
when none is given) and returns the Axes, so a notebook can add to it or a test can inspect it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: F401

# ------------------------------------------------------------------------------------------------
# Loss curves (engineer "train")


def plot_losses(history_or_histories, labels=None, ax=None):
    """Train loss per step and validation loss per epoch (best epoch marked) → the Axes.

    Accepts one labkit.train.History or a list of them (with `labels`) to compare runs. Why both
    curves on one picture: a falling train loss alone says nothing; the gap to validation says
    whether the model learned the task or memorised the records.
    """
    hs = history_or_histories if isinstance(history_or_histories, list | tuple) else [history_or_histories]
    labels = list(labels) if labels is not None else [None] * len(hs)
    if len(labels) != len(hs):
        raise ValueError(f"Got {len(hs)} histories but {len(labels)} labels.")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (h, label) in enumerate(zip(hs, labels, strict=True)):
        color = f"C{i}"
        prefix = f"{label}: " if label else ""
        if h.train_loss:
            ax.plot(h.train_epochs or range(len(h.train_loss)), h.train_loss, color=color, alpha=0.45, lw=1,
                    label=f"{prefix}train (per step)")
        if h.val_loss:
            ax.plot(range(len(h.val_loss)), h.val_loss, "o-", color=color, lw=2, label=f"{prefix}validation")
            if h.best_epoch is not None and h.best_epoch < len(h.val_loss):
                ax.plot([h.best_epoch], [h.val_loss[h.best_epoch]], "*", ms=14, color=color,
                        label=f"{prefix}best epoch {h.best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


class LiveLossPlot:
    """A loss plot that redraws in place in a notebook while training runs.

    In Jupyter it shows one figure through a display handle and updates it (at most every
    `min_interval` seconds, so drawing never slows training down much). Headless (tests, scripts)
    it draws nothing until `update(..., final=True)`, which leaves one static figure.
    """

    def __init__(self, min_interval: float = 2.0):
        self.min_interval = min_interval
        self._last = 0.0
        self._handle = None
        self.fig = None
        self.live = _in_notebook()

    def update(self, history, final: bool = False) -> None:
        import time

        now = time.monotonic()
        if not final and (not self.live or now - self._last < self.min_interval):
            return
        self._last = now
        if self.fig is None:
            self.fig, _ = plt.subplots(figsize=(6.5, 3.8))
            plt.close(self.fig)  # keep pyplot from showing it a second time at cell end
        ax = self.fig.axes[0]
        ax.clear()
        plot_losses(history, ax=ax)
        if self.live:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(self.fig, display_id=True)
            else:
                self._handle.update(self.fig)


def plot_preference_training(history, axes=None):
    """A DPO run (labkit.alignment.DPOHistory) on three panels: loss, reward margin, preference
    accuracy per step, validation after each epoch as dots → the axes.

    Why three: the loss starts at log 2 whatever the data; the margin says how far chosen and
    rejected moved apart, the accuracy on how many pairs the model now prefers the chosen answer.
    """
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = (("loss", history.loss, "loss"), ("reward margin", history.margins, "margin"),
              ("preference accuracy", history.accuracies, "accuracy"))
    for ax, (title, values, key) in zip(axes, panels, strict=True):
        ax.clear()
        x = history.epochs if len(history.epochs) == len(values) else range(len(values))
        ax.plot(x, values, color="C0", alpha=0.6, lw=1, label="train (per step)")
        if history.evals:
            ax.plot([e["epoch"] for e in history.evals], [e[key] for e in history.evals], "o", color="C1",
                     ms=7, label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].axhline(0.6931, color="gray", ls=":", lw=1)  # log 2: the loss when nothing is learned
    axes[2].set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=8)
    return axes


class LivePreferencePlot:
    """plot_preference_training redrawn in place while a DPO run trains (same rules as LiveLossPlot:
    at most every `min_interval` seconds in Jupyter, one static figure at `final=True` elsewhere)."""

    def __init__(self, min_interval: float = 2.0):
        self.min_interval = min_interval
        self._last = 0.0
        self._handle = None
        self.fig = None
        self.live = _in_notebook()

    def update(self, history, final: bool = False) -> None:
        import time

        now = time.monotonic()
        if not final and (not self.live or now - self._last < self.min_interval):
            return
        self._last = now
        if self.fig is None:
            self.fig, _ = plt.subplots(1, 3, figsize=(11, 3.2))
            plt.close(self.fig)
        plot_preference_training(history, axes=self.fig.axes)
        self.fig.tight_layout()
        if self.live:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(self.fig, display_id=True)
            else:
                self._handle.update(self.fig)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


# ------------------------------------------------------------------------------------------------
# Toy loss curve and memory bars (engineer "lora")


def plot_curve(values, xlabel: str = "step", ylabel: str = "loss", title: str | None = None, ax=None):
    """One curve of numbers (e.g. the loss per gradient step) → the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(range(len(values)), list(values), "o-", ms=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def plot_memory(estimates, measured=None, unit: str = "GB", ax=None):
    """Stacked bars of estimated training memory (weights, gradients, optimizer, activations) → Axes.

    `estimates`: {label: labkit.memory.MemoryEstimate}. `measured`: optional {label: GB} drawn as a
    black marker on the bar with the same label (e.g. the measured weight footprint), so estimate and
    reality sit side by side. unit "GB" or "MB".
    """
    scale = {"GB": 1.0, "MB": 1000.0}[unit]
    labels = list(estimates)
    parts = (("weights", "weights_gb"), ("gradients", "gradients_gb"), ("optimizer", "optimizer_gb"),
             ("activations (rough)", "activations_gb"))
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    bottom = [0.0] * len(labels)
    for i, (name, attr) in enumerate(parts):
        vals = [getattr(estimates[k], attr) * scale for k in labels]
        ax.bar(labels, vals, bottom=bottom, color=f"C{i}", label=name)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    fmt = ",.0f" if unit == "MB" else ",.2f"
    for x, total in enumerate(bottom):
        ax.annotate(f"{total:{fmt}}", (x, total), ha="center", va="bottom", fontsize=8)
    for label, gb in (measured or {}).items():
        if label not in labels:
            raise ValueError(f"measured has {label!r}, but the estimates are {labels}.")
        ax.plot([labels.index(label)], [gb * scale], "k_", ms=30, mew=3)
        ax.annotate(f"measured weights {gb * scale:{fmt}}", (labels.index(label), gb * scale),
                    xytext=(0, -12), textcoords="offset points", ha="center", fontsize=8)
    ax.set_ylabel(f"memory ({unit})")
    ax.set_title("Estimated training memory")
    ax.legend(fontsize=8)
    return ax


# ------------------------------------------------------------------------------------------------
# Forgetting bars (engineer "eval")


def plot_forgetting(results, ax=None, task_label: str = "task gain (exact match, points)",
                    general_label: str = "general-knowledge loss (probe drop, points)"):
    """Per fine-tuning method, two bars: what it gained on the task, what it lost in general → Axes.

    `results`: {method: {"task_gain": .., "probe_drop": ..}} or a list of dicts that also carry
    "method"; gains and drops are fractions (0.25 = 25 points). Why side by side: a fine-tune is
    only good if the first bar is tall AND the second short; either number alone hides the trade.
    """
    rows = ([{"method": m, **v} for m, v in results.items()] if isinstance(results, dict) else list(results))
    for r in rows:
        missing = [k for k in ("method", "task_gain", "probe_drop") if k not in r]
        if missing:
            raise ValueError(f"plot_forgetting: a row lacks {missing}; each needs method, task_gain, probe_drop "
                             f"(got {sorted(r)}).")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    x = list(range(len(rows)))
    w = 0.38
    for offset, key, label, color in ((-w / 2, "task_gain", task_label, "C2"),
                                      (w / 2, "probe_drop", general_label, "C3")):
        vals = [100 * r[key] for r in rows]
        bars = ax.bar([i + offset for i in x], vals, w, label=label, color=color)
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:+.1f}", (b.get_x() + b.get_width() / 2, v), ha="center",
                        va="bottom" if v >= 0 else "top", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [r["method"] for r in rows])
    ax.set_ylabel("percentage points")
    ax.set_title("What fine-tuning gained, and what it forgot")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax

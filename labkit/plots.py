"""Pictures where a picture beats numbers: loss curves, memory bars, forgetting bars.

Every function takes plain data (a History, dicts, lists), draws on a matplotlib Axes (a new figure
when none is given) and returns the Axes, so a notebook can add to it or a test can inspect it.
"""

from __future__ import annotations

import sys
import time

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


class _LiveFigure:
    """A figure that redraws in place in a notebook while training runs (the live plots' shared part).

    In Jupyter it shows one figure through a display handle and updates that same output (at most
    every `min_interval` seconds, so drawing never slows training down much); the final update
    leaves exactly one, current image, in JupyterLab and in executed copies (nbclient applies the
    updates to the stored output). The figure is detached from pyplot, so the inline backend does
    not show a second, stale copy at the end of the cell. Headless (tests, scripts) it draws
    nothing until `update(..., final=True)`, which leaves one static figure in `self.fig`.
    Subclasses say how to draw (`_draw`), the figure's layout and its alt text.
    """

    ALT = ""
    PANELS, SIZE = 1, (6.5, 3.8)

    def __init__(self, min_interval: float = 2.0):
        self.min_interval = min_interval
        self._last = 0.0
        self._handle = None
        self.fig = None
        self.live = _in_notebook()

    def _draw(self, history) -> None:
        raise NotImplementedError

    def update(self, history, final: bool = False) -> None:
        now = time.monotonic()
        if not final and (not self.live or now - self._last < self.min_interval):
            return
        self._last = now
        if self.fig is None:
            self.fig, _ = plt.subplots(1, self.PANELS, figsize=self.SIZE)
            plt.close(self.fig)  # keep pyplot from showing it a second time at cell end
        self._draw(history)
        if self.live:
            from IPython.display import display

            # The alt text names the picture for screen readers and for the site's tests.
            meta = {"image/png": {"alt": self.ALT}}
            if self._handle is None:
                self._handle = display(self.fig, display_id=True, metadata=meta)
            else:
                self._handle.update(self.fig, metadata=meta)


class LiveLossPlot(_LiveFigure):
    """Train/validation loss (plot_losses), redrawn in place while train_sft runs."""

    ALT = "Loss curve: training loss per step and validation loss per epoch"

    def _draw(self, history) -> None:
        ax = self.fig.axes[0]
        ax.clear()
        plot_losses(history, ax=ax)


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


class LivePreferencePlot(_LiveFigure):
    """plot_preference_training redrawn in place while a DPO run trains (same rules as LiveLossPlot)."""

    ALT = "Loss curve of a DPO run: loss, reward margin and preference accuracy per step"
    PANELS, SIZE = 3, (11, 3.2)

    def _draw(self, history) -> None:
        plot_preference_training(history, axes=self.fig.axes)
        self.fig.tight_layout()


def plot_grpo_training(history, control=None, axes=None):
    """A GRPO run (labkit.alignment.GRPOHistory) on two panels: mean reward per step (and the
    learning-rate-0 control's, dashed, when given), and the share of groups with no reward spread.

    Why the control: sampled rewards wander from step to step by chance; only the gap to a run that
    cannot learn is learning. Why the second panel: a group whose answers all score the same gives
    GRPO nothing to push on, so a share stuck at 1 means the reward cannot teach this model.
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    runs = [("trained", history, "-")] + ([("control (lr=0)", control, "--")] if control is not None else [])
    for ax in axes:
        ax.clear()
    for label, h, style in runs:
        axes[0].plot(range(1, len(h.reward) + 1), h.reward, style, marker="o", ms=3, label=label)
        axes[1].plot(range(1, len(h.zero_std) + 1), h.zero_std, style, marker="o", ms=3, label=label)
    for ax, title in zip(axes, ("mean reward of the sampled answers", "groups with zero reward spread"),
                         strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=8)
    return axes


class LiveRewardPlot(_LiveFigure):
    """plot_grpo_training redrawn in place while a GRPO run trains (same rules as LiveLossPlot)."""

    ALT = "A GRPO run: mean reward and the share of groups with zero reward spread, per step"
    PANELS, SIZE = 2, (10, 3.2)

    def _draw(self, history) -> None:
        plot_grpo_training(history, axes=self.fig.axes)
        self.fig.tight_layout()


def _in_notebook() -> bool:
    """True in a Jupyter kernel (JupyterLab, VS Code, Colab, nbclient), where one display updates in
    place; False in a terminal IPython, a script or a test.

    By class, never by name: Colab's shell is a subclass of ipykernel's ZMQInteractiveShell named
    `Shell`. A kernel imports ipykernel before any cell runs, so the class is looked up, not imported.
    """
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    if zmqshell is None:
        return False
    from IPython import get_ipython  # installed with ipykernel

    return isinstance(get_ipython(), zmqshell.ZMQInteractiveShell)


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
    scales = {"GB": 1.0, "MB": 1000.0}
    if unit not in scales:
        raise ValueError(f"unit={unit!r} is not supported: use one of {', '.join(scales)}.")
    scale = scales[unit]
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


# ------------------------------------------------------------------------------------------------
# Pictures for the lessons and exercises (engineer "learner"); each returns a Figure.


def nf4_levels() -> list[float]:
    """The 16 NF4 code values in [-1, 1], as bitsandbytes quantises with them."""
    from bitsandbytes.functional import get_4bit_type

    return get_4bit_type("nf4", device="cpu").tolist()


def plot_nf4_levels(weight, blocksize: int = 64, bins: int = 120, title: str = ""):
    """Histogram of a real weight matrix, scaled per block as NF4 does, under NF4's 16 code levels → Figure.

    NF4 divides each block of `blocksize` weights by the block's largest |weight| and rounds to the
    nearest of 16 levels. Why the picture: the levels crowd where the weights crowd (near 0), which
    is what makes 4 bits lose little on normally distributed weights.
    """
    import torch

    w = torch.as_tensor(weight).detach().float().flatten()
    if w.numel() % blocksize:
        raise ValueError(f"The weight has {w.numel()} numbers, not a multiple of blocksize={blocksize}.")
    blocks = w.reshape(-1, blocksize)
    scaled = (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)).flatten().numpy()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.hist(scaled, bins=bins, range=(-1, 1), color="C0", alpha=0.7, label="weights / block absmax")
    for i, level in enumerate(nf4_levels()):
        ax.axvline(level, color="C3", lw=1, label="NF4's 16 levels" if i == 0 else None)
    ax.set_xlabel(f"weight divided by its block's largest |weight| (blocks of {blocksize})")
    ax.set_ylabel("count")
    ax.set_title(title or "NF4 puts its levels where the weights are")
    ax.legend(fontsize=8, loc="upper right")
    plt.close(fig)
    return fig


def plot_label_mask(rows, per_line: int = 12):
    """A record's tokens as a coloured strip: grey = masked (label -100), green = learned → Figure.

    `rows`: (token, label, status) triples, as `labkit.data.label_table` returns them. Why: the
    boundary between prompt and answer, and the learned EOS at the end, are seen at a glance.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("plot_label_mask needs at least one (token, label, status) row.")
    n_lines = (len(rows) + per_line - 1) // per_line
    fig, ax = plt.subplots(figsize=(per_line * 1.05, 0.75 * n_lines + 0.6))
    for i, (token, label, _status) in enumerate(rows):
        x, y = i % per_line, -(i // per_line)
        learned = label != -100
        ax.add_patch(plt.Rectangle((x, y - 0.4), 0.95, 0.8, color="#8fd18f" if learned else "#d9d9d9"))
        ax.text(x + 0.475, y, repr(token)[1:-1], ha="center", va="center", fontsize=8, family="monospace")
    ax.set_xlim(-0.1, per_line)
    ax.set_ylim(-n_lines + 0.4, 0.6)
    ax.axis("off")
    ax.set_title("label mask: grey = prompt, masked (-100); green = answer and EOS, learned", fontsize=9)
    plt.close(fig)
    return fig


def plot_rank_sweep(rows):
    """Rank sweep: exact match and validation loss against r, trainable parameters on top → Figure.

    `rows`: dicts with "r", "trainable", "exact_match" (fraction) and "val_loss". Why two panels on a
    log-2 rank axis: returns that stop show as a flat line while the parameter count keeps doubling.
    """
    rows = sorted(rows, key=lambda row: row["r"])
    missing = [k for k in ("r", "trainable", "exact_match", "val_loss") if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"plot_rank_sweep needs rows with r, trainable, exact_match, val_loss (missing {missing}).")
    ranks = [row["r"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(ranks, [100 * row["exact_match"] for row in rows], "o-", color="C2")
    left.set_ylabel("held-out exact match (%)")
    right.plot(ranks, [row["val_loss"] for row in rows], "o-", color="C0")
    right.set_ylabel("validation loss")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [f"r={r}\n{row['trainable'] / 1e6:.2f} M" for r, row in zip(ranks, rows, strict=True)])
        ax.grid(alpha=0.3)
    fig.suptitle("LoRA rank vs quality (tick labels: rank and trainable parameters)", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_fix_ablation(rows):
    """E6's ablation: the validation loss each fix leaves you with, against the bad run's → Figure.

    `rows`: labkit.exercises.experiments.ablation_table output (dicts with "fix", "val loss", "change").
    """
    rows = list(rows)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.2))
    names = [row["fix"] for row in rows][::-1]
    losses = [row["val loss"] for row in rows][::-1]
    colors = ["C7" if row["change"] == 0 else ("C2" if row["change"] < 0 else "C3") for row in rows][::-1]
    ax.barh(names, losses, color=colors)
    for y, (loss, row) in enumerate(zip(losses, rows[::-1], strict=True)):
        ax.annotate(f"{loss:.3f} ({row['change']:+.3f})", (loss, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlabel("validation loss of the model you keep (lower is better)")
    ax.set_title("One fix at a time: green helped, red hurt", fontsize=10)
    ax.set_xlim(0, max(losses) * 1.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_prompting(rows):
    """Prompting vs fine-tuning side by side: exact match, JSON validity and field F1 per approach,
    with each call's prompt length on the right → Figure.

    `rows`: labkit.prompting.prompting_table(...).rows (dicts with "approach", "exact match", "JSON valid",
    "field F1", "prompt tokens"). Why bars with the prompt length next to them: a prompt that scores a
    little better but costs eight times the tokens on every call is a trade, not a free win.
    """
    rows = list(rows)
    keys = ("approach", "exact match", "JSON valid", "field F1", "prompt tokens")
    missing = [k for k in keys if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"plot_prompting needs rows with {', '.join(keys)} (missing {missing}).")
    fig, (ax, cost) = plt.subplots(1, 2, figsize=(9, 0.55 * len(rows) + 1.5), sharey=True,
                                   gridspec_kw={"width_ratios": [3, 1]})
    ys = range(len(rows))[::-1]
    for j, (metric, color) in enumerate((("exact match", "C2"), ("JSON valid", "C0"), ("field F1", "C7"))):
        ax.barh([y + 0.27 * (1 - j) for y in ys], [100 * row[metric] for row in rows], height=0.26,
                color=color, label=metric)
    ax.set_yticks(list(ys), [row["approach"] for row in rows])
    ax.set_xlim(0, 105)
    ax.set_xlabel("% of held-out records (field F1 x 100)")
    ax.legend(fontsize=8, loc="lower right")
    cost.barh(list(ys), [row["prompt tokens"] for row in rows], color="C1")
    for y, row in zip(ys, rows, strict=True):
        cost.annotate(f"{row['prompt tokens']}", (row["prompt tokens"], y), xytext=(3, 0), textcoords="offset points",
                      va="center", fontsize=8)
    cost.set_xlabel("prompt tokens per call")
    cost.set_xlim(0, max(row["prompt tokens"] for row in rows) * 1.35)
    fig.suptitle("Prompting first, then fine-tuning: same records, same greedy decoding", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_knowledge(rows):
    """Knowledge or behaviour: the share of held-out questions each arm answers with the right fact,
    and (where measured) the share of edited products it answers with the *new* price → Figure.

    `rows`: dicts with "arm" and "accuracy" (fractions); an optional "after edit" (fraction, or None for
    an arm not measured after the edit). Why one bar per arm on one axis: the arms answer the same
    questions with the same greedy decoding, so the bars are directly comparable.
    """
    rows = list(rows)
    missing = [k for k in ("arm", "accuracy") if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"plot_knowledge needs rows with arm and accuracy (missing {missing}).")
    edited = any(row.get("after edit") is not None for row in rows)
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    bars = [("accuracy", "held-out questions: right fact", "C0")]
    bars += [("after edit", "edited prices: new price", "C1")] if edited else []
    height = 0.8 / len(bars)
    for j, (key, label, color) in enumerate(bars):
        offset = height * ((len(bars) - 1) / 2 - j)
        values = [100 * (row.get(key) or 0) for row in rows]
        ax.barh([y + offset for y in ys], values, height=height, color=color, label=label)
        for y, value, row in zip(ys, values, rows, strict=True):
            text = "not measured" if row.get(key) is None else f"{value:.0f}%"
            ax.annotate(text, (value, y + offset), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(ys, [row["arm"] for row in rows])
    ax.set_xlim(0, 115)
    ax.set_xlabel("% of questions answered with the right fact")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Facts in the prompt (retrieval) vs in the weights (fine-tuning)", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


PEFT_FAMILY_PANELS = (("trainable", "trainable parameters (log)", "C1"),
                      ("added_mb", "memory training added (MB)", "C7"),
                      ("s_per_step", "seconds per step", "C4"), ("val_loss", "validation loss", "C0"),
                      ("exact_match", "held-out exact match (%)", "C2"))


def plot_peft_family(rows):
    """The PEFT family on one budget: one bar per method in each of five panels → Figure.

    `rows`: dicts with "method" and the keys of PEFT_FAMILY_PANELS (exact_match a fraction; None =
    not measured, written so rather than drawn as a zero bar). Why five panels side by side: a method
    is a trade (what it trains and costs against what it learns), and one row of bars per method
    shows the whole trade at a glance.
    """
    rows = list(rows)
    keys = ["method"] + [key for key, _, _ in PEFT_FAMILY_PANELS]
    missing = [k for k in keys if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"plot_peft_family needs rows with {', '.join(keys)} (missing {missing}).")
    fig, axes = plt.subplots(1, len(PEFT_FAMILY_PANELS), figsize=(13, 0.45 * len(rows) + 1.6), sharey=True)
    ys = list(range(len(rows)))[::-1]
    for ax, (key, label, color) in zip(axes, PEFT_FAMILY_PANELS, strict=True):
        values = [None if row[key] is None else row[key] * (100 if key == "exact_match" else 1) for row in rows]
        ax.barh(ys, [0 if v is None else v for v in values], color=color)
        for y, v in zip(ys, values, strict=True):
            if v is None:
                ax.text(0, y, " not measured", va="center", fontsize=8, color="0.4")
        if key == "trainable":
            ax.set_xscale("log")
        ax.set_xlabel(label, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [row["method"] for row in rows])
    fig.suptitle("The PEFT family on one budget: same data, same steps", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig

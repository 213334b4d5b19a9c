"""Reports: the run report a learner reads after `labkit train` (report.md, metrics.json,
loss_curve.png), and a lesson's one-line `headline` that the course report collects.

Plain files on purpose: a Markdown report opens anywhere (GitHub, an editor, a notebook), the JSON is
for scripts and comparisons between runs, the PNG is the picture lesson 05 draws live.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from labkit.config import RunConfig, config_to_dict
from labkit.tables import markdown_table

__all__ = ["write_run_report", "save_loss_curve", "report_markdown", "results_table", "headline"]

HEADLINE_PREFIX = "HEADLINE: "
METRIC_LABELS = {"exact_match": "exact match", "json_valid": "JSON valid", "f1": "field F1"}


def headline(text: str) -> None:
    """Print a lesson's one-line proven result; the course runner (`make course`) puts it in its report."""
    print(f"{HEADLINE_PREFIX}{text}")


def save_loss_curve(history, path: Path) -> Path:
    """labkit.plots.plot_losses drawn on a figure without a GUI backend, saved as PNG."""
    from matplotlib.figure import Figure

    from labkit.plots import plot_losses

    fig = Figure(figsize=(6.5, 3.8))
    plot_losses(history, ax=fig.add_subplot())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _fmt_mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def results_table(evaluation: dict) -> str:
    """The evaluated metrics as a Markdown table: base, tuned and the change where the base was scored."""
    runs = [name for name in ("base", "tuned") if name in evaluation]
    rows = [{"metric": label} | {name: evaluation[name][key] for name in runs}
            for key, label in METRIC_LABELS.items() if key in evaluation.get("tuned", {})]
    if "base" in runs:
        rows = [row | {"change": row["tuned"] - row["base"]} for row in rows]
    n = evaluation.get("tuned", {}).get("n")
    columns = ["metric", *runs, "change"] if "base" in runs else ["metric", *runs]
    table = markdown_table(rows, columns, right=columns[1:],
                           fmt=lambda col, v: v if col == "metric" else f"{v:+.1%}" if col == "change" else f"{v:.1%}")
    return f"{table}\n\nOn {n} held-out records." if table else ""


def _method_text(cfg: RunConfig) -> str:
    """The PEFT method in words: LoRA/DoRA with rank and targets, otherwise the method's name."""
    lora = cfg.lora
    if lora.effective_method in ("lora", "dora"):
        dora = " (DoRA)" if lora.effective_method == "dora" else ""
        return f"LoRA r={lora.r} alpha={lora.alpha:g} on {', '.join(cfg.lora_targets)}{dora}"
    extra = f", {lora.virtual_tokens} virtual tokens" if lora.method.endswith("_tuning") else ""
    return f"PEFT method {lora.method}{extra}"


def report_markdown(cfg: RunConfig, summary, history, metrics: dict, max_misses: int = 10) -> str:
    """The report as Markdown: config, data, losses, metrics, misses, time and throughput."""
    tr, ev = metrics["training"], metrics.get("evaluation", {})
    lines = [f"# Run report: {cfg.name or 'run'}", "",
             f"Model `{cfg.model}` ({cfg.quantization}), {_method_text(cfg)}; {tr['processes']} process(es), "
             f"effective batch {tr['effective_batch']}.", "",
             "## Results", "", results_table(ev) or "(not evaluated)", ""]
    if "probe" in ev:
        p = ev["probe"]
        base = f"base {p['base']:.1%} → " if "base" in p else ""
        lines += [f"General-knowledge probe ({p['n']} questions, chance {p['chance']:.1%}): {base}"
                  f"tuned {p['tuned']:.1%}. A drop is forgetting.", ""]
    misses = ev.get("misses", [])
    lines += [f"## Misses of the tuned model ({len(misses)})", ""]
    for m in misses[:max_misses]:
        lines += [f"- want `{m['reference']}`", f"  got  `{m['prediction']}`"]
    if len(misses) > max_misses:
        lines.append(f"- ... and {len(misses) - max_misses} more (metrics.json has them all)")
    lines += ["", "## Training", "", "```", history.summary(), "```", "", "![loss curve](loss_curve.png)", "",
              f"- training time: {tr['train_seconds'] / 60:.1f} min ({tr['steps']} steps); whole run "
              f"{metrics.get('wall_seconds', tr['load_and_train_seconds']) / 60:.1f} min",
              f"- throughput: {tr['tokens_per_sec']:.0f} tokens/s (answer and prompt tokens, padding excluded; "
              f"{tr['tokens_per_sec_per_process']:.0f} per process)",
              f"- peak memory (rank 0): {_fmt_mb(tr['peak_memory_mb'])}", "",
              "## Data", "", "```", str(summary), "```", "",
              "## Config", "", "```yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def write_run_report(out: Path, cfg: RunConfig, summary, history, metrics: dict) -> dict[str, Path]:
    """Write metrics.json, loss_curve.png (if output.plot) and report.md into `out` → their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md"}
    clean: dict[str, Any] = {k: v for k, v in metrics.items() if k != "evaluation"}
    if "evaluation" in metrics:
        clean["evaluation"] = {k: v for k, v in metrics["evaluation"].items() if k != "table"}
    clean["data"] = {"source": summary.source, "loaded": summary.loaded, "used": summary.used,
                     "drops": summary.drops, "overlap": summary.overlap}
    paths["metrics"].write_text(json.dumps(clean, indent=2), encoding="utf-8")
    if cfg.output.plot:
        paths["loss_curve"] = save_loss_curve(history, out / "loss_curve.png")
    paths["report"].write_text(report_markdown(cfg, summary, history, metrics), encoding="utf-8")
    return paths

"""GRPO on the course model against its learning-rate-0 control: does the reward rise by learning?

For each reward (brevity alone, then brevity × substance, the fix for brevity's hack) and each seed, it
trains LoRA adapters with labkit.alignment.train_grpo on the concise-answer prompts, and runs the
same seed with learning_rate=0 (the control: same samples at the start, nothing learned). Then it
scores greedy answers to the 16 held-out prompts: brevity, substance (names the question's subject and
says 3 more content words), words per answer, and how many answers say nothing (substance 0: the
hack). Prints one table and writes build/grpo/results.json and build/grpo/rewards.png.

    python benchmarks/grpo_control.py                       # 2 rewards x 2 seeds, trained + control
    python benchmarks/grpo_control.py --steps 4 --seeds 0   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def heldout(model, tok, test) -> dict:
    from labkit.alignment import brevity_reward, heldout_reward, substance_reward, word_count

    brevity, answers = heldout_reward(model, tok, test, brevity_reward)
    substance = substance_reward(answers, [r["prompt"] for r in test])
    return {"brevity": round(brevity, 3), "substance": round(statistics.fmean(substance), 3),
            "words": round(statistics.fmean(word_count(a) for a in answers), 1),
            "says_nothing": sum(c == 0 for c in substance), "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rewards", nargs="+", default=["brevity", "concise"], choices=["brevity", "concise"])
    parser.add_argument("--out", default="build/grpo")
    args = parser.parse_args()

    import torch

    from labkit.alignment import brevity_reward, concise_pairs, concise_reward, train_grpo
    from labkit.models import load_model
    from labkit.plots import plot_grpo_training

    train, test = concise_pairs("train"), concise_pairs("test")
    functions = {"brevity": brevity_reward, "concise": concise_reward}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(dtype=torch.float32)
    rows = [{"reward": "-", "seed": "-", "run": "base", **heldout(model, tok, test)}]
    histories = {}
    for reward in args.rewards:
        for seed in args.seeds:
            for run, lr in (("trained", args.lr), ("control", 0.0)):
                model, tok = load_model(dtype=torch.float32)
                start = time.perf_counter()
                h = train_grpo(model, tok, train, functions[reward], lora={"r": 16, "alpha": 32, "dropout": 0.0},
                               steps=args.steps, learning_rate=lr, seed=seed, plot=False, progress=False)
                half = h.reward[len(h.reward) // 2:]
                row = {"reward": reward, "seed": seed, "run": run, "train_reward_2nd_half": round(statistics.fmean(half), 3),
                       "zero_std": round(statistics.fmean(h.zero_std), 2), "seconds": round(time.perf_counter() - start),
                       "per_step": [round(r, 3) for r in h.reward]}
                row.update(heldout(h.model, tok, test) if run == "trained" else {})
                rows.append(row)
                histories[(reward, seed, run)] = h
                print({k: v for k, v in row.items() if k not in ("answers", "per_step")}, flush=True)
    from labkit.tables import markdown_table

    print(markdown_table([{k: v for k, v in r.items() if k not in ("answers", "per_step")} for r in rows]))
    for reward in args.rewards:
        gaps = [statistics.fmean(histories[(reward, s, "trained")].reward[args.steps // 2:])
                - statistics.fmean(histories[(reward, s, "control")].reward[args.steps // 2:]) for s in args.seeds]
        print(f"{reward}: trained minus control, mean reward over the second half of the steps: "
              + ", ".join(f"seed {s} {g:+.3f}" for s, g in zip(args.seeds, gaps, strict=True)))
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.rewards), 2, figsize=(10, 3.2 * len(args.rewards)), squeeze=False)
    for ax_row, reward in zip(axes, args.rewards, strict=True):
        seed = args.seeds[0]
        plot_grpo_training(histories[(reward, seed, "trained")], histories[(reward, seed, "control")], axes=ax_row)
        ax_row[0].set_title(f"{reward}, seed {seed}: mean reward")
    fig.tight_layout()
    fig.savefig(out / "rewards.png", dpi=100)
    print(f"wrote {out / 'results.json'} and {out / 'rewards.png'}")


if __name__ == "__main__":
    main()

"""Where a training step's time goes: torch.profiler over lesson 05's QLoRA steps, by kind of work.

Trains lesson 05's configuration (NF4 base, LoRA r 16 on all seven projections, dropout 0, batch 4,
labkit's CPU settings) for a few steps and profiles steps 3 and 4 (the first steps pay one-off
costs). It prints the share of the profiled time per kind of work (matrix multiplies, attention,
NF4 dequantisation, dtype copies, dropout, ...), per part of the model (the NF4 base projections,
TRL's fused LM head, the rest) and the top operators, so "what to speed up next" is read off a
table, not guessed (issue 15).

Usage: python benchmarks/profile_step.py [--dtype auto|fp32|bf16] [--dropout 0.0] [--rows 15]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Operator name fragments (lower case) → kind of work; the first match wins (order matters: attention
# before matmul, the LM head's fused function before its own matmuls).
KINDS = (
    ("attention", ("scaled_dot_product", "softmax")),
    ("NF4 dequantisation", ("bitsandbytes::dequantize", "dequantize_4bit", "dequantize_blockwise")),
    ("LM head + loss", ("logprob", "cross_entropy", "log_softmax", "aten::exp", "aten::sub")),
    ("matrix multiply", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("dropout", ("bernoulli", "dropout")),
    ("dtype copies", ("aten::copy_", "aten::to", "aten::_to_copy")),
    ("elementwise (norms, RoPE, SiLU, residuals)", ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt",
                                                    "aten::pow", "aten::mean", "aten::neg", "aten::cat",
                                                    "aten::div", "aten::sum")),
    ("optimizer", ("adam", "aten::lerp", "aten::addcdiv", "aten::sqrt", "_foreach")),
)


# Autograd functions that each wrap one part of the model, forward and backward. Their inclusive time
# (children included) is what that part costs as a whole, which the by-kind table splits up: the LM
# head's matmuls count there as "matrix multiply", its vocabulary-wide exp and sums as "LM head + loss".
PARTS = (
    ("NF4 base projections (dequantise + matmul)", ("MatMul4Bit", "MatMul4BitBackward")),
    ("TRL's fused LM head + loss", ("ChunkedLogProbFunction", "ChunkedLogProbFunctionBackward")),
)
REST = "everything else (LoRA adapters, norms, attention, RoPE, residuals, optimizer)"


def kind_of(op_name: str) -> str:
    """The kind of work an operator does ("other" when no fragment matches)."""
    name = op_name.lower()
    for kind, fragments in KINDS:
        if any(f in name for f in fragments):
            return kind
    return "other"


def share_by_kind(self_times: dict[str, float]) -> dict[str, float]:
    """Operator → self time (any unit) ⇒ kind → share of the total, largest first."""
    total = sum(self_times.values()) or 1.0
    shares: dict[str, float] = {}
    for name, t in self_times.items():
        shares[kind_of(name)] = shares.get(kind_of(name), 0.0) + t / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def share_by_part(total_times: dict[str, float], total: float) -> dict[str, float]:
    """Operator → inclusive time, and the whole profiled time ⇒ part of the model → share of it.

    Why: on a CPU in bf16 the LM head is ~30% of a step (measured), though by kind of work it hides in
    "matrix multiply" and "dtype copies"; this says which part of the model to speed up.
    """
    total = total or 1.0
    shares = {part: sum(total_times.get(n, 0.0) for n in names) / total for part, names in PARTS}
    shares[REST] = 1.0 - sum(shares.values())
    return shares


def profile(dropout: float, rows: int) -> None:
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from labkit import env
    from labkit._compat import no_repacking, trl_fused_head_labelled_only
    from labkit.data import course_dataset
    from labkit.lora import add_lora
    from labkit.models import load_model
    from labkit.train import records_to_dataset, sft_config_kwargs

    env.set_seed(0)
    model, tok = load_model(quantization="nf4", device="cpu")
    model = add_lora(model, r=16, alpha=32, dropout=dropout)
    first, last = 3, 4

    class Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == first - 1:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == last:
                self.prof.__exit__(None, None, None)

    callback = Profile()
    with tempfile.TemporaryDirectory() as out, no_repacking(model):
        kw = sft_config_kwargs(out, device="cpu", epochs=1, learning_rate=2e-4, batch_size=4, has_val=False,
                               progress=False, save_strategy="no", logging_steps=50, max_steps=last)
        trainer = SFTTrainer(model=model, args=SFTConfig(**kw), processing_class=tok, callbacks=[callback],
                             train_dataset=records_to_dataset(course_dataset("invoices", "train")[:24]))
        with trl_fused_head_labelled_only("cpu"):
            trainer.train()
    averages = callback.prof.key_averages()
    self_times = {e.key: e.self_cpu_time_total for e in averages}
    total_us = sum(self_times.values())
    print(f"steps {first}-{last}, compute dtype {env.compute_dtype('cpu')}, LoRA dropout {dropout}, "
          f"torch threads {torch.get_num_threads()}: {total_us / 1e6:.2f} s of operator time")
    for kind, share in share_by_kind(self_times).items():
        print(f"  {kind:<44} {share:6.1%}")
    print("by part of the model (inclusive time, forward + backward):")
    total_times = {e.key: e.cpu_time_total for e in averages}
    for part, share in share_by_part(total_times, total_us).items():
        print(f"  {part:<78} {share:6.1%}")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                    help="the CPU compute dtype (LABKIT_CPU_DTYPE); auto: labkit's choice for this CPU")
    ap.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (lesson 05: 0)")
    ap.add_argument("--rows", type=int, default=15, help="top operators to list")
    args = ap.parse_args()
    if args.dtype != "auto":
        os.environ["LABKIT_CPU_DTYPE"] = args.dtype
    profile(args.dropout, args.rows)


if __name__ == "__main__":
    main()

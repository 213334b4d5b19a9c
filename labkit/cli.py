"""The `labkit` command: doctor, cache, train / eval / chat / merge from a run config, and export.

The run logic lives in labkit.run (and labkit.config, labkit.report); this file only parses arguments.
Running the whole course headless is course tooling, in a checkout: `python -m labkit_dev.course`;
`labkit grade` hands its arguments to the checkout's `python -m labkit_dev.grade` (a subprocess).
`labkit train` runs unchanged under `torchrun --nproc_per_node N` or `accelerate launch`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

_TRAIN_EXAMPLES = """examples:
  labkit train examples/invoices.yaml --dry-run     check the config and data, show sizes; train nothing
  labkit train examples/invoices.yaml               train, evaluate, write runs/invoices/
  labkit train examples/invoices.yaml --resume      continue from the last checkpoint
  labkit train my.yaml --output runs/try2           another output folder
  torchrun --nproc_per_node 2 -m labkit.cli train my.yaml      the same run on 2 processes
  accelerate launch --config_file examples/accelerate/ddp.yaml -m labkit.cli train my.yaml
"""
_EVAL_EXAMPLES = """examples:
  labkit eval examples/invoices.yaml                the run's adapter (from output.dir) vs the base
  labkit eval runs/invoices/adapter                 the same, from the adapter folder
  labkit eval runs/invoices/adapter --config other.yaml    an adapter on another config's test set
"""
_CHAT_EXAMPLES = """examples:
  labkit chat runs/invoices/adapter                 type a request, get the tuned model's answer
  labkit chat runs/invoices/adapter --prompt "Invoice: 2 pens at 1.50 EUR each"    one answer, for scripts
  labkit chat runs/invoices/adapter --base --prompt "..."                           the base, adapters off
"""
_MERGE_EXAMPLES = """examples:
  labkit merge runs/invoices/adapter runs/invoices/merged
  python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('runs/invoices/merged')"
"""
_EXPORT_EXAMPLES = """examples:
  labkit export gguf runs/invoices/merged gguf/                  f16 + q8_0 files, a Modelfile, the round-trip check
  labkit export gguf runs/invoices/adapter gguf/ --type q8_0     an adapter: merged into its base first
  labkit export gguf smollm2-135m gguf/ --type f16               the course model itself
  cd gguf && ollama create invoices -f Modelfile && ollama run invoices
"""


def examples_home() -> str:
    """Where the examples/ folder of run configs lives for an installed labkit (which does not ship it):
    the course repository, from the wheel's metadata (pyproject's [project.urls] Repository)."""
    try:
        urls = importlib.metadata.metadata("labkit").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        urls = []
    repo = next((u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("repository,")), "")
    return f"the course repository, {repo}" if repo else "the course repository"


def _where_examples_are() -> str:
    return (f"examples/ (run configs to start from) is a folder of {examples_home()}: "
            "clone it and run these from its root.\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description="The fine-tuning course's lab kit.")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    sub.add_parser("doctor", help="preflight checks before a workshop (OK / WARN / FAIL per line)")
    sub.add_parser("cache", help="convert the embedded model to the fast cache now (before a workshop)")

    train = sub.add_parser("train", help="fine-tune from a YAML run config", formatter_class=fmt,
                           epilog=_where_examples_are() + _TRAIN_EXAMPLES,
                           description="Train LoRA/QLoRA from one YAML file; write the adapter, metrics.json, "
                                       "loss_curve.png and report.md to the output folder.")
    train.add_argument("config", help="the run config (YAML), e.g. examples/invoices.yaml")
    train.add_argument("--dry-run", action="store_true", help="validate and print sizes; train nothing")
    train.add_argument("--resume", action="store_true", help="continue from the output folder's last checkpoint")
    train.add_argument("--output", help="output folder (overrides output.dir)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = sub.add_parser("eval", help="base vs tuned on the test records", formatter_class=fmt,
                        epilog=_where_examples_are() + _EVAL_EXAMPLES,
                        description="Evaluate a trained adapter and its base model on the test records.")
    ev.add_argument("target", help="a run config (YAML) or an adapter folder written by labkit train")
    ev.add_argument("--config", help="take the test records from this config instead of the adapter's own")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")

    chat = sub.add_parser("chat", help="talk to a trained adapter", epilog=_CHAT_EXAMPLES, formatter_class=fmt,
                          description="Chat with a trained adapter through the template it was trained with.")
    chat.add_argument("adapter", help="an adapter folder written by labkit train (or its run folder)")
    chat.add_argument("--prompt", help="answer this one request and exit (for scripts)")
    chat.add_argument("--max-new-tokens", type=int, default=256, help="generation cap (default 256)")
    chat.add_argument("--base", action="store_true", help="answer with the base model (adapters off)")

    merge = sub.add_parser("merge", help="merge an adapter into a full-precision base", epilog=_MERGE_EXAMPLES,
                           formatter_class=fmt, description="Merge the adapter into a full-precision (fp32) "
                           "copy of its base, verify merged == adapter + base, save safetensors and tokenizer.")
    merge.add_argument("adapter", help="an adapter folder written by labkit train (or its run folder)")
    merge.add_argument("out", help="folder for the merged model")
    _export_parser(sub.add_parser("export", help="export a model for llama.cpp / Ollama (GGUF)",
                                  description="Export a model to other runtimes' formats."))
    # Parsed by labkit_dev.grade itself (main() hands it everything after "grade"): listed here for --help.
    sub.add_parser("grade", add_help=False, help="grade learners' exercise notebooks (in a course checkout; "
                   "labkit grade --help for more)")
    return parser


def _export_parser(export: argparse.ArgumentParser) -> None:
    formats = export.add_subparsers(dest="format", required=True)
    gguf = formats.add_parser("gguf", help="GGUF files + an Ollama Modelfile, checked by loading them back",
                              epilog=_EXPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Write a merged (or plain) Llama model to GGUF for llama.cpp and Ollama, "
                              "load each file back with transformers and compare its logits with the model's, "
                              "and write an Ollama Modelfile with the chat template and stop tokens.")
    gguf.add_argument("model", help="a merged model folder (labkit merge), an adapter folder (labkit train's; "
                      "merged into its base first) or a course model name")
    gguf.add_argument("out", help="folder for the .gguf files and the Modelfile")
    gguf.add_argument("--type", action="append", dest="types", metavar="TYPE",
                      help="f32, f16, bf16 or q8_0; repeat for several (default: f16 and q8_0). "
                           "The Modelfile runs the first")
    gguf.add_argument("--name", help="file name stem (default: the model folder's name)")
    gguf.add_argument("--template", choices=["chat", "course"], help="the prompt format the Modelfile uses, as the "
                      "model was trained (default: data.template of the labkit.yaml that labkit train / labkit "
                      "merge leave in the folder; chat when there is none)")
    gguf.add_argument("--pre-tokenizer", metavar="NAME", help="llama.cpp's name for the tokenizer's pre-tokenizer, "
                      "where labkit cannot name it (e.g. gpt2 for plain byte-level BPE; default: found by hashing)")
    gguf.add_argument("--no-verify", action="store_true", help="skip loading the files back (faster; unchecked)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["grade"]:
        return _grade(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from labkit.doctor import doctor

        checks = doctor()
        return 1 if any(c.status == "FAIL" for c in checks) else 0
    if args.command == "cache":
        from labkit.models import ensure_cached

        print(ensure_cached())
        return 0
    from labkit.config import ConfigError
    from labkit.data import RecordError
    from labkit.export import ExportError
    from labkit.models import ModelError

    commands = {"train": _train, "eval": _eval, "chat": _chat, "merge": _merge, "export": _export}
    try:
        return commands[args.command](args)
    except (ConfigError, RecordError, FileNotFoundError, ExportError, ModelError) as exc:
        print(f"labkit {args.command}: {exc}", file=sys.stderr)
        return 2


def _grade(argv: list[str]) -> int:
    """`labkit grade ...` runs `python -m labkit_dev.grade ...`: grading executes notebooks (nbclient,
    the [lab] extra), course tooling the kit never imports, so it runs as a process of its own,
    from the course checkout at or above the working directory."""
    here = Path.cwd().resolve()
    root = next((d for d in (here, *here.parents) if (d / "labkit_dev" / "grade.py").is_file()), None)
    if root is None and importlib.util.find_spec("labkit_dev") is None:
        print(f"labkit grade: grading is course tooling that comes with a checkout of {examples_home()}, "
              "not with an installed labkit: clone it, `pip install -e '.[lab]'` there, and run "
              "labkit grade from inside the clone.", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if root is not None:  # `python -m` from a console script does not look in the working directory
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "labkit_dev.grade", *argv], env=env).returncode


def _train(args) -> int:
    from labkit.config import load_config
    from labkit.run import dry_run, is_main_process, rank, train_from_config, world_size

    cfg = load_config(args.config)
    if args.quiet:
        _quiet()
    if args.output:
        cfg.output.dir = args.output
    if args.dry_run:
        dry_run(cfg)
        return 0
    result = train_from_config(cfg, resume=args.resume, progress=not args.quiet)
    if not is_main_process():
        print(f"labkit train: rank {rank()} of {world_size()} done; rank 0 evaluates and writes {result.output_dir}")
        return 0
    evaluation = result.metrics.get("evaluation")
    print(evaluation["table"] if evaluation else "not evaluated (evaluation.metrics is [] and probe is false)")
    plot = " loss_curve.png," if cfg.output.plot else ""
    print(f"wrote {result.output_dir}/: adapter/, metrics.json,{plot} report.md")
    return 0


def _quiet() -> None:
    """No progress bars from datasets (TRL's tokenising passes) or transformers (weight loading)."""
    import datasets
    import transformers

    datasets.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _eval(args) -> int:
    from labkit.config import load_config
    from labkit.run import ADAPTER_CONFIG, evaluate_adapter

    target = Path(args.target)
    if target.is_dir():
        adapter = target
        own = target / ADAPTER_CONFIG if (target / ADAPTER_CONFIG).is_file() else target / "adapter" / ADAPTER_CONFIG
        cfg = load_config(args.config) if args.config else load_config(own, check_files=True)
    else:
        cfg = load_config(args.config or target)
        adapter = cfg.output_dir / "adapter"
    if args.quiet:
        _quiet()
    result = evaluate_adapter(cfg, adapter, progress=not args.quiet)
    print(result["table"])
    for m in result["misses"][:10]:
        print(f"  want {m['reference']}\n  got  {m['prediction']}")
    if "probe" in result:
        print("general probe: " + ", ".join(f"{k} {v:.1%}" for k, v in result["probe"].items() if k != "n"))
    return 0


def _chat(args) -> int:
    from labkit.run import load_adapter, prompt_for

    model, tok, cfg = load_adapter(args.adapter)
    from labkit.evaluate import generate

    def answer(text: str) -> str:
        ctx = model.disable_adapter() if args.base else contextlib.nullcontext()
        with ctx:
            return generate(model, tok, [prompt_for(cfg, tok, text)], max_new_tokens=args.max_new_tokens,
                            progress=False)[0]

    if args.prompt is not None:
        print(answer(args.prompt))
        return 0
    print(f"Chatting with {args.adapter} ({cfg.model}, template {cfg.data.template!r}). Empty line or Ctrl-D quits.")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        print(f"model> {answer(text)}")
    return 0


def _merge(args) -> int:
    from labkit.run import merge_adapter

    report = merge_adapter(args.adapter, args.out)
    print(report)
    print(f"wrote the merged model (safetensors) and its tokenizer to {args.out}")
    return 0


def _export(args) -> int:
    """`labkit export gguf`: an adapter folder is merged into its base (labkit merge) in a temporary folder first."""
    import tempfile
    from pathlib import Path

    from labkit.export import export_gguf

    source = Path(args.model)
    adapter = source / "adapter" if (source / "adapter" / "adapter_config.json").is_file() else source
    options = dict(types=args.types or ["f16", "q8_0"], verify=not args.no_verify,
                   template=args.template or _trained_template(adapter), pre_tokenizer=args.pre_tokenizer)
    with tempfile.TemporaryDirectory(prefix="labkit-merged-") as tmp:
        if (adapter / "adapter_config.json").is_file():
            from labkit.run import merge_adapter

            print(merge_adapter(adapter, tmp))
            name = args.name or (adapter.resolve().parent.name if adapter.name == "adapter" else adapter.name)
            report = export_gguf(tmp, args.out, name=name, **options)
        else:
            report = export_gguf(args.model, args.out, name=args.name, **options)
    print(report)
    return 0


def _trained_template(folder) -> str:
    """data.template of the run config kept in an adapter or merged folder; "chat" without one."""
    from labkit.config import load_config
    from labkit.run import ADAPTER_CONFIG

    own = folder / ADAPTER_CONFIG
    return load_config(own, check_files=False).data.template if own.is_file() else "chat"


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())

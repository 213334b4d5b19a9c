import pytest

from labkit.memory import (
    PRESETS,
    count_params_from_config,
    count_params_on_meta,
    estimate_training_memory,
    format_rows,
    hardware_table,
    measure_footprint_mb,
    preset_config,
    recommend_gpu,
    weights_memory_table,
)


def test_weights_table_70b_matches_course_numbers():
    rows = {r["precision"]: r["gb"] for r in weights_memory_table(70e9)}
    assert rows == {"fp32": 280.0, "fp16/bf16": 140.0, "int8": 70.0, "4-bit": 35.0}
    assert "280.0" in format_rows(weights_memory_table(70e9))


def test_param_formula_equals_meta_model_count():
    from transformers import LlamaConfig

    config = preset_config("llama-3.2-1b")
    assert count_params_from_config(config) == count_params_on_meta(config)
    odd = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=100, attention_bias=True, mlp_bias=True,
                      tie_word_embeddings=False)
    assert count_params_from_config(odd) == count_params_on_meta(odd)


def test_full_finetune_7b_lands_in_course_range():
    est = estimate_training_memory(preset_config("llama-2-7b"), "full")
    # 8 bytes/param (bf16 weights, grads, AdamW moments) + rough activations
    assert est.weights_gb + est.gradients_gb + est.optimizer_gb == pytest.approx(6.738415616 * 8, rel=1e-6)
    assert 56 <= est.total_gb <= 60
    assert 56 <= estimate_training_memory(7e9, "full").total_gb <= 60
    mixed = estimate_training_memory(preset_config("llama-2-7b"), "full", optimizer="adamw_mixed")
    assert mixed.total_gb > 100  # fp32 master weights and moments: 16 bytes/param
    assert any("ROUGH" in a for a in est.assumptions)


def test_lora_and_qlora_shrink_memory_in_order():
    config = preset_config("llama-2-7b")
    full, lora, qlora = (estimate_training_memory(config, m) for m in ("full", "lora", "qlora"))
    assert full.total_gb > 2.5 * lora.total_gb > 3 * qlora.total_gb  # activations (with the adapters' input copies) weigh on LoRA
    assert lora.trainable_params == qlora.trainable_params == 16_777_216
    assert qlora.weights_gb < 0.3 * lora.weights_gb


def test_qlora_fits_65b_and_70b_on_48gb_and_3b_on_a_t4():
    assert estimate_training_memory(preset_config("llama-65b"), "qlora").total_gb < 48
    assert estimate_training_memory(preset_config("llama-2-70b"), "qlora").total_gb < 48
    assert estimate_training_memory(preset_config("llama-3.2-3b"), "qlora").total_gb < 15
    assert estimate_training_memory(preset_config("llama-2-70b"), "full").total_gb > 8 * 48


def test_hardware_table_and_gpu_choice():
    rows = hardware_table()
    assert len(rows) == 12 and {r["method"] for r in rows} == {"full", "lora", "qlora"}
    qlora_3b = next(r for r in rows if r["model"] == "llama-3.2-3b" and r["method"] == "qlora")
    assert qlora_3b["gpu"].startswith("T4")
    assert recommend_gpu(100).startswith("2×") and recommend_gpu(20).startswith("24")


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="method must be"):
        estimate_training_memory(1e9, "dora")
    with pytest.raises(ValueError, match="Unknown optimizer"):
        estimate_training_memory(1e9, "full", optimizer="adam9")
    with pytest.raises(KeyError, match="known"):
        preset_config("gpt-5")
    assert len(PRESETS) >= 4


def test_str_is_a_readable_table():
    text = str(estimate_training_memory(preset_config("llama-3.2-1b"), "lora", r=8))
    assert "weights" in text and "optimizer state" in text and "assumptions" in text


def test_qlora_estimate_matches_measured_nf4_footprint_on_tiny_shape(tiny):
    model, _ = tiny
    fp32 = estimate_training_memory(model.config, "full", dtype_bytes=4)
    assert fp32.weights_gb * 1000 == pytest.approx(measure_footprint_mb(model), rel=0.01)


@pytest.mark.slow
def test_qlora_estimate_matches_measured_nf4_footprint():
    from labkit.lora import estimate_lora_params
    from labkit.models import load_model

    model, _ = load_model(quantization="nf4")
    size = model.dtype.itemsize  # embeddings and norms: 4 bytes in fp32, 2 where labkit computes in bf16
    est = estimate_training_memory(model.config, "qlora", dtype_bytes=size)
    adapters_gb = estimate_lora_params(model.config) * size / 1e9
    # the footprint leaves out the 0.127 bits/param of quantisation constants: within 3%
    assert (est.weights_gb - adapters_gb) * 1000 == pytest.approx(measure_footprint_mb(model), rel=0.03)


def test_plot_memory_stacks_the_four_piles_and_marks_measured():
    import matplotlib

    matplotlib.use("Agg")
    from labkit.plots import plot_memory

    config = preset_config("llama-3.2-1b")
    est = {m: estimate_training_memory(config, m) for m in ("full", "qlora")}
    ax = plot_memory(est, measured={"qlora": 1.0})
    assert len(ax.patches) == 4 * 2  # weights, gradients, optimizer, activations per bar
    top = max(p.get_y() + p.get_height() for p in ax.patches)
    assert top == pytest.approx(est["full"].total_gb)
    with pytest.raises(ValueError, match="measured has"):
        plot_memory(est, measured={"lora": 1.0})


def test_plot_memory_names_a_bad_unit():
    from labkit.memory import estimate_training_memory, preset_config
    from labkit.plots import plot_memory

    est = {"full": estimate_training_memory(preset_config("llama-3.2-1b"), method="full")}
    with pytest.raises(ValueError, match="unit='TB' is not supported: use one of GB, MB"):
        plot_memory(est, unit="TB")


def test_peak_meter_says_when_the_peak_could_not_be_reset(monkeypatch):
    """Where the peak cannot be reset, the reading says it covers the whole process, not this work."""
    import torch

    from labkit import memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(memory, "reset_peak_rss", lambda: False)
    reading = memory.PeakMeter().read()
    assert reading.source == "rss" and reading.since_start is False and reading.mb > 0
    assert "could not be reset" in reading.note and "upper bound" in str(reading)
    monkeypatch.setattr(memory, "reset_peak_rss", lambda: True)
    assert memory.PeakMeter().read().since_start is True


def test_peak_meter_forgets_an_earlier_larger_peak():
    """On Linux the reset works: 300 MiB touched and freed before the meter starts are not its peak."""
    from labkit import memory

    if not memory.reset_peak_rss():
        pytest.skip("this platform cannot reset the peak RSS (the reading says so: test above)")
    big = bytearray(300 * 2**20)
    big[::4096] = b"x" * len(big[::4096])  # touch every page so it is resident
    del big
    stale = memory.peak_rss_mb()
    reading = memory.PeakMeter().read()
    assert reading.since_start and reading.mb < stale - 200, (reading, stale)


def test_peak_meter_reads_what_the_work_added_on_top_of_its_start():
    """`added_mb` = peak - the resident set when the meter started: 200 MiB touched inside the work
    show up as ~200 MiB added, whatever the process held before."""
    from labkit import memory

    if not memory.reset_peak_rss():
        pytest.skip("this platform cannot reset the peak RSS")
    meter = memory.PeakMeter()
    work = bytearray(200 * 2**20)
    work[::4096] = b"x" * len(work[::4096])
    reading = meter.read()
    del work
    assert reading.start_mb > 0 and 190 <= reading.added_mb <= 260, reading


def test_freed_memory_is_handed_back_so_a_later_run_reads_its_own_growth():
    """Without the trim glibc keeps freed small blocks for reuse and the next run's growth reads too low."""
    from labkit import memory

    if not memory.release_freed_memory():
        pytest.skip("no glibc malloc_trim here (the docstring says what that means)")
    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MiB in blocks under glibc's mmap threshold
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])
    held = memory.rss_mb()
    del blocks, b
    memory.release_freed_memory()
    assert memory.rss_mb() < held - 150


def test_lora_activations_count_the_adapters_input_copies_and_dropout():
    """The activation rule E7 measured against: adapters add their own input copies (more with dropout),
    full fine-tuning has none, and an fp32 base keeps no extra cast copy."""
    config = preset_config("llama-3.2-1b")
    act = {d: estimate_training_memory(config, "lora", lora_dropout=d).activations_gb for d in (0.0, 0.05)}
    full = estimate_training_memory(config, "full").activations_gb
    assert full < act[0.0] < act[0.05]
    fp32 = {d: estimate_training_memory(config, "lora", lora_dropout=d, dtype_bytes=4).activations_gb for d in (0.0, 0.05)}
    assert fp32[0.0] == estimate_training_memory(config, "full", dtype_bytes=4).activations_gb < fp32[0.05]
    assert any("adapters' copies" in a for a in estimate_training_memory(config, "lora").assumptions)

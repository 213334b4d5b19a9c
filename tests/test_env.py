"""labkit.env: dtype and profile choices on mocked hardware, seeding, the doctor."""

import random

import numpy as np
import torch

from labkit import env


def mock_cuda(monkeypatch, capability, name="Tesla T4", vram_gb=15.0):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)


def test_cpu_uses_fp32():
    assert env.compute_dtype("cpu") == torch.float32
    assert env.compute_dtype("mps") == torch.float32


def test_t4_uses_fp16_not_bf16(monkeypatch):
    mock_cuda(monkeypatch, (7, 5))
    assert env.device() == "cuda"
    assert not env.cuda_supports_bf16()
    assert env.compute_dtype() == torch.float16


def test_a100_uses_bf16(monkeypatch):
    mock_cuda(monkeypatch, (8, 0), name="NVIDIA A100")
    assert env.cuda_supports_bf16()
    assert env.compute_dtype() == torch.bfloat16


def test_profiles_follow_the_hardware(monkeypatch):
    cpu = env.course_profile("cpu")
    assert cpu.name == "cpu" and cpu.dtype == "float32" and not cpu.gradient_checkpointing
    mock_cuda(monkeypatch, (7, 5))
    t4 = env.course_profile()
    assert t4.name == "gpu-t4" and t4.dtype == "float16"
    assert t4.gradient_checkpointing and t4.optim == "paged_adamw_8bit"
    assert t4.n_train > cpu.n_train
    mock_cuda(monkeypatch, (9, 0), name="H100")
    big = env.course_profile()
    assert big.dtype == "bfloat16" and not big.gradient_checkpointing
    monkeypatch.setenv("LABKIT_PROFILE", "cpu")
    assert env.course_profile().name == "cpu"


def test_set_seed_repeats_every_generator():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    env.set_seed(123)
    first = draw()
    env.set_seed(123)
    assert draw() == first


def test_in_colab_false_here(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert env.in_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101")
    assert env.in_colab() is True


def test_offline_env_var_short_circuits_the_network(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("offline mode must not touch the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(env.socket, "getaddrinfo", boom)
    assert env.is_offline() is True


def test_doctor_reports_one_line_per_check(capsys):
    checks = env.doctor()
    out = capsys.readouterr().out
    names = {c.name for c in checks}
    assert {"python", "torch", "device", "NF4 4-bit", "models", "disk", "ram", "network"} <= names
    assert all(c.status in {"OK", "WARN", "FAIL"} for c in checks)
    assert out.count("\n") >= len(checks)
    assert not [c for c in checks if c.status == "FAIL"], out


def test_doctor_on_a_mocked_t4_says_fp16(monkeypatch, capsys):
    mock_cuda(monkeypatch, (7, 5))

    class Props:
        total_memory = 15 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *_: Props())
    monkeypatch.setattr(env, "_check_nf4", lambda: env.Check("NF4 4-bit", "OK", "mocked"))
    checks = {c.name: c for c in env.doctor()}
    assert "Tesla T4" in checks["device"].detail and "7.5" in checks["device"].detail
    assert checks["bf16"].status == "WARN" and "float16" in checks["bf16"].detail


def test_doctor_fail_line_names_the_fix():
    c = env.Check("gguf", "FAIL", "not installed", "make setup")
    assert c.line().startswith("[FAIL]") and "make setup" in c.line()


def test_hub_model_on_gpu_when_online_embedded_when_offline(monkeypatch, capsys):
    mock_cuda(monkeypatch, (7, 5))
    monkeypatch.setenv("LABKIT_MODEL", "smollm2-360m")
    monkeypatch.setattr(env, "is_offline", lambda: False)
    assert env.course_profile().model == "smollm2-360m"
    monkeypatch.setattr(env, "is_offline", lambda: True)
    assert env.course_profile().model == "smollm2-135m"
    assert "offline" in capsys.readouterr().out
    monkeypatch.delenv("LABKIT_MODEL")
    assert env.course_profile().model == "smollm2-135m"

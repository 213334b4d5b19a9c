"""labkit.env: dtype and profile choices on mocked hardware, seeding, the doctor."""

import os
import random
import socket

import numpy as np
import pytest
import torch

from labkit import env


@pytest.fixture(autouse=True)
def _fresh_hub_probe():
    """is_offline remembers the Hub probe for the process; each test asks afresh."""
    env._hub_reachable.cache_clear()
    yield
    env._hub_reachable.cache_clear()


def mock_cuda(monkeypatch, capability, name="Tesla T4", vram_gb=15.0):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)


def test_cpu_uses_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: False)
    assert env.compute_dtype("cpu") == torch.float32
    assert env.compute_dtype("mps") == torch.float32
    assert env.attention_implementation("cpu", torch.float32) == "sdpa"


def test_cpu_with_native_bf16_computes_in_bf16_with_eager_attention(monkeypatch):
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: True)
    assert env.compute_dtype("cpu") == torch.bfloat16
    assert env.compute_dtype("mps") == torch.float32  # a Mac's GPU is not the CPU
    assert env.attention_implementation("cpu", torch.bfloat16) == "eager"
    assert env.attention_implementation("cuda", torch.bfloat16) == "sdpa"
    assert env.course_profile("cpu").dtype == "bfloat16"


def test_cpu_dtype_switch_overrides_the_probe_and_rejects_typos(monkeypatch):
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("LABKIT_CPU_DTYPE", "fp32")
    assert env.compute_dtype("cpu") == torch.float32 and env.course_profile("cpu").dtype == "float32"
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv("LABKIT_CPU_DTYPE", "BF16")
    assert env.compute_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("LABKIT_CPU_DTYPE", "fp16")
    with pytest.raises(env.EnvError, match="LABKIT_CPU_DTYPE='fp16'.*fp32, bf16"):
        env.compute_dtype("cpu")


def test_native_bf16_probe_is_compat_s(monkeypatch):
    """env asks labkit._compat (where torch's private probes live; tests/test_drift.py checks them)."""
    from labkit import _compat

    for answer in (True, False):
        monkeypatch.setattr(_compat, "cpu_has_native_bf16", lambda a=answer: a)
        assert env.cpu_has_native_bf16() is answer


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
    assert cpu.name == "cpu" and cpu.dtype in ("float32", "bfloat16") and not cpu.gradient_checkpointing
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


def test_gpu_profile_takes_at_least_the_cpu_profiles_optimizer_steps(monkeypatch):
    """Fewer optimizer steps scored lower in the course's runs (batch 8: 25/32 vs batch 4: 29/32)."""
    cpu = env.course_profile("cpu")
    for capability in ((7, 5), (9, 0)):
        mock_cuda(monkeypatch, capability)
        gpu = env.course_profile()
        assert gpu.optimizer_steps >= cpu.optimizer_steps, (gpu, cpu)
    assert cpu.optimizer_steps == 80


def test_unknown_switch_values_are_errors_not_ignored(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "cpuu")
    with pytest.raises(env.EnvError, match="LABKIT_PROFILE='cpuu'.*cpu, gpu"):
        env.course_profile()
    monkeypatch.delenv("LABKIT_PROFILE")
    monkeypatch.setenv("LABKIT_GPU", "T5")
    with pytest.raises(env.EnvError, match="LABKIT_GPU='T5'.*native, t4"):
        env.t4_mode()


def test_t4_mode_makes_any_gpu_a_t4(monkeypatch):
    mock_cuda(monkeypatch, (9, 0), name="NVIDIA H100")
    assert env.compute_dtype() == torch.bfloat16 and not env.gradient_checkpointing()
    monkeypatch.setenv("LABKIT_GPU", "t4")
    assert env.t4_mode() and not env.cuda_supports_bf16()
    assert env.compute_dtype() == torch.float16 and env.gradient_checkpointing()
    p = env.course_profile()
    assert p.name == "gpu-t4" and p.optim == "paged_adamw_8bit" and p.gradient_checkpointing
    monkeypatch.setenv("LABKIT_GPU", "native")
    assert env.compute_dtype() == torch.bfloat16


def test_one_gradient_checkpointing_rule():
    """Only a CUDA GPU without bf16 checkpoints: a CPU, a Mac and a bf16 GPU would only lose time."""
    assert env.gradient_checkpointing("cpu") is False
    assert env.gradient_checkpointing("mps") is False


def test_mps_runs_nf4_on_the_cpu_and_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert env.device() == "mps"
    assert env.nf4_device() == "cpu"
    assert env.compute_dtype() == torch.float32
    p = env.course_profile()
    assert p.name == "mps" and p.n_train == env.course_profile("cpu").n_train


def test_course_profile_is_pure(monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("course_profile must not touch the network")

    monkeypatch.setattr(env.socket, "getaddrinfo", boom)
    monkeypatch.setenv("LABKIT_MODEL", "smollm2-360m")
    env.course_profile()
    assert capsys.readouterr().out == ""


def test_hub_probe_restores_the_previous_socket_timeout(monkeypatch):
    monkeypatch.setattr(env.socket, "getaddrinfo", lambda *a, **k: [])
    old = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(7.0)
        env._hub_reachable(timeout=0.5)
        assert socket.getdefaulttimeout() == 7.0
    finally:
        socket.setdefaulttimeout(old)


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




def test_hub_probe_is_bounded_even_when_the_resolver_hangs(monkeypatch):
    """socket.setdefaulttimeout does not bound getaddrinfo; a dead DNS server must not stall a lesson."""
    import time

    def hanging_resolver(*a, **k):
        time.sleep(5)
        return []

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(env.socket, "getaddrinfo", hanging_resolver)
    start = time.perf_counter()
    assert env._hub_reachable(timeout=0.3) is False
    assert time.perf_counter() - start < 2, "the probe waited for the resolver past its timeout"


def test_is_offline_probes_the_network_once_per_process(monkeypatch):
    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("LABKIT_OFFLINE", raising=False)
    monkeypatch.setattr(env.socket, "getaddrinfo", lambda *a, **k: calls.append(a) or [])
    assert [env.is_offline() for _ in range(3)] == [False, False, False]
    assert len(calls) == 1
    monkeypatch.setenv("LABKIT_OFFLINE", "1")  # the switches are read on every call, cache or not
    assert env.is_offline() is True and len(calls) == 1


def test_resolver_failure_means_offline(monkeypatch):
    def no_dns(*a, **k):
        raise socket.gaierror("no resolver")

    monkeypatch.setattr(env.socket, "getaddrinfo", no_dns)
    assert env._hub_reachable(timeout=1.0) is False


def test_importing_labkit_sets_no_environment_variable():
    """`import labkit` sets nothing a child process sees (only library_defaults() does) and is cheap;
    its one effect, the bitsandbytes log filter, is in place before `labkit.train` imports bitsandbytes."""
    import subprocess
    import sys

    code = ("import logging, os, sys\n"
            "import labkit\n"
            "assert 'torch' not in sys.modules, 'import labkit must stay cheap'\n"
            "import torch, transformers, trl, peft  # what they set themselves is not labkit's doing\n"
            "before = dict(os.environ)\n"
            "import labkit.env, labkit.models, labkit.config, labkit.data, labkit.lora, labkit.train\n"
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
            "assert 'TOKENIZERS_PARALLELISM' not in os.environ and 'HF_HUB_DISABLE_TELEMETRY' not in os.environ\n"
            "os.environ['HF_HUB_DISABLE_TELEMETRY'] = '0'\n"
            "labkit.env.library_defaults(); labkit.env.library_defaults()\n"
            "assert os.environ['TOKENIZERS_PARALLELISM'] == 'false'\n"
            "assert os.environ['HF_HUB_DISABLE_TELEMETRY'] == '0', 'the learner\\'s own value wins'\n"
            "assert len(logging.getLogger('bitsandbytes.backends.cpu.ops').filters) == 1\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("TOKENIZERS_PARALLELISM", "HF_HUB_DISABLE_TELEMETRY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=clean)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernels-community" not in done.stderr

"""labkit.doctor: one line per check, on this machine and on mocked hardware."""

import pytest
import torch
from test_env import mock_cuda

from labkit import doctor as D


def test_doctor_reports_one_line_per_check(capsys):
    checks = D.doctor()
    out = capsys.readouterr().out
    names = {c.name for c in checks}
    assert {"python", "torch", "device", "NF4 4-bit", "models", "disk", "ram", "network"} <= names
    assert all(c.status in {"OK", "WARN", "FAIL"} for c in checks)
    assert out.count("\n") >= len(checks)
    assert not [c for c in checks if c.status == "FAIL" and c.name != "models"], out


@pytest.mark.course_model  # without it the models line is a FAIL, as it should be
def test_doctor_has_no_fail_on_this_machine(capsys):
    checks = D.doctor()
    assert not [c for c in checks if c.status == "FAIL"], capsys.readouterr().out


def test_doctor_on_a_mocked_t4_says_fp16(monkeypatch, capsys):
    mock_cuda(monkeypatch, (7, 5))

    class Props:
        total_memory = 15 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *_: Props())
    monkeypatch.setattr(D, "check_nf4", lambda: D.Check("NF4 4-bit", "OK", "mocked"))
    checks = {c.name: c for c in D.doctor()}
    assert "Tesla T4" in checks["device"].detail and "7.5" in checks["device"].detail
    assert checks["bf16"].status == "WARN" and "float16" in checks["bf16"].detail


def test_doctor_says_which_dtype_a_cpu_trains_in_and_why(monkeypatch):
    from labkit import env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: True)
    assert "training dtype torch.bfloat16 (native bf16 on this CPU)" in D.check_device()[0].detail
    monkeypatch.setattr(env, "cpu_has_native_bf16", lambda: False)
    assert "training dtype torch.float32 (no native bf16 on this CPU)" in D.check_device()[0].detail
    monkeypatch.setenv("LABKIT_CPU_DTYPE", "fp32")
    assert "torch.float32 (LABKIT_CPU_DTYPE=fp32)" in D.check_device()[0].detail


def test_doctor_fail_line_names_the_fix():
    c = D.Check("gguf", "FAIL", "not installed", "make setup")
    assert c.line().startswith("[FAIL]") and "make setup" in c.line()




def test_doctor_says_when_t4_mode_is_on(monkeypatch):
    mock_cuda(monkeypatch, (9, 0), name="NVIDIA H100")

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *_: Props())
    monkeypatch.setattr(D, "check_nf4", lambda: D.Check("NF4 4-bit", "OK", "mocked"))
    assert "T4 mode" not in {c.name for c in D.doctor(print_report=False)}
    monkeypatch.setenv("LABKIT_GPU", "t4")
    checks = {c.name: c for c in D.doctor(print_report=False)}
    assert "H100" in checks["T4 mode"].detail and checks["bf16"].status == "WARN"


def test_doctor_on_a_mac_says_qlora_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    nf4 = D.check_nf4()  # the real tiny NF4 layer, placed where a Mac would place it: the CPU
    assert nf4.status == "OK", nf4.line()
    assert "QLoRA runs on the CPU" in nf4.detail and "MPS" in nf4.detail

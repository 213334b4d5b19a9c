"""benchmarks/gpu_check.py as far as a CPU allows: counting per mode, the report, the no-GPU exit."""

from conftest import load_benchmark

gpu_check = load_benchmark("gpu_check")


def test_counts_tests_per_mode_from_junit_xml(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text("""<testsuites><testsuite>
      <testcase name="test_load[native]"/><testcase name="test_train[t4-nf4]"><failure/></testcase>
      <testcase name="test_train[native-None]"><skipped/></testcase><testcase name="test_other"/>
    </testsuite></testsuites>""")
    counts = gpu_check.count_by_mode(xml)
    assert counts == {"native": {"passed": 1, "failed": 0, "skipped": 1}, "t4": {"passed": 0, "failed": 1, "skipped": 0}}


def test_report_lists_every_notebook_including_the_ones_not_run():
    rows = [{"notebook": "05_qlora_training", "ok": True, "seconds": 61.2, "peak_gpu_mb": 2100.0, "headline": "EM 31/32"},
            {"notebook": "06_pitfalls", "ok": None, "seconds": 0.0, "peak_gpu_mb": 0.0,
             "headline": "not run: over the time budget"}]
    text = gpu_check.report_markdown("NVIDIA H100", {"native": {"passed": 7, "failed": 0, "skipped": 0}},
                                     {"native": rows})
    assert "Device: NVIDIA H100" in text and "7 passed, 0 failed" in text
    assert "| 05_qlora_training | pass | 61 | 2100 | EM 31/32 |" in text
    assert "| 06_pitfalls | not run | 0 | 0 | not run: over the time budget |" in text


def test_without_cuda_it_says_so_and_fails(capsys):
    assert gpu_check.main([]) == 1
    assert "no CUDA GPU here" in capsys.readouterr().out

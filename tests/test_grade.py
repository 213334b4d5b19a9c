"""Instructor autograding: `labkit grade` / `python -m labkit_dev.grade`.

The fast tests cover what needs no kernel (the checks' recorded outcomes, matching them to the
exercise's checks, names, unreadable notebooks, the CLI outside a checkout). The slow ones execute
notebooks in real kernels (E1-E3 load no model: about 2-4 s a notebook here).
"""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import labkit.cli
from labkit.exercises import check_choose, feedback
from labkit_dev import grade

ROOT = Path(__file__).resolve().parent.parent
FIRST_THREE = ("e1_make_the_call", "e2_faq_records", "e3_clean_dataset")


def test_a_check_records_its_outcome_and_prints_the_same_feedback(capsys):
    before = len(feedback.RESULTS)
    assert check_choose(lambda facts, behaviour, n: "RAG") is False
    printed = capsys.readouterr().out
    (outcome,) = feedback.RESULTS[before:]
    assert outcome["check"] == "check_choose" and outcome["ok"] is False
    assert outcome["failure"] and outcome["failure"] in printed  # the row's detail is what the learner read
    assert printed.startswith("❌ make the call (choose): not yet")


@pytest.mark.parametrize("path, expected", [
    ("submissions/alice/e1_make_the_call.ipynb", ("alice", "e1")),
    ("submissions/bob_e2_faq_records.ipynb", ("bob", "e2")),
    ("inbox/carol-E3.ipynb", ("carol", "e3")),
    ("submissions/dan/e1_make_the_call (1).ipynb", ("dan", "e1")),
    ("submissions/erin/homework.ipynb", ("erin", "")),
])
def test_the_student_and_the_exercise_come_from_the_file_name_or_its_folder(path, expected):
    assert grade.identify(Path(path)) == expected


def test_each_expected_check_takes_the_recorded_outcomes_of_its_name_in_order():
    results = [{"check": "check_overfitting", "ok": True, "passed": 3, "failure": None},
               {"check": "check_choose", "ok": True, "passed": 9, "failure": None},
               {"check": "check_overfitting", "ok": False, "passed": 1, "failure": "case 'fixes':\n  expected: 1"}]
    rows = grade.match(["check_overfitting", "check_overfitting", "check_rank_choice"], results,
                       grade.Stop(9, "error in cell 9: ValueError: no"))
    assert rows == [("check_overfitting", "pass", "3 cases passed"),
                    ("check_overfitting", "fail", "case 'fixes': expected: 1"),
                    ("check_rank_choice", "fail", "error in cell 9: ValueError: no")]
    assert grade.match(["check_choose"], [], None) == [
        ("check_choose", "fail", "the notebook ran to its end without calling this check")]


def test_the_expected_checks_are_the_solution_s_calls_of_labkit_checks():
    nb = nbformat.read(str(ROOT / "solutions" / "e1_make_the_call.ipynb"), as_version=4)
    assert grade.expected_checks(nb) == ["check_choose"]  # the import line is no call
    nb.cells.append(nbformat.v4.new_code_cell("def check_mine(x): ...\ncheck_mine(1)  # check_choose(f)"))
    assert grade.expected_checks(nb) == ["check_choose"]  # neither a learner's own check nor a comment


def test_a_notebook_that_is_not_json_is_a_failed_row(tmp_path):
    bad = tmp_path / "submissions" / "alice" / "e1_make_the_call.ipynb"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"cells": [ oops')
    (row,) = grade.grade_notebook(bad, ROOT)
    assert (row.student, row.exercise, row.check, row.result) == ("alice", "e1_make_the_call", "check_choose", "fail")
    assert row.detail.startswith("cannot read the notebook:") and "JSON" in row.detail


def test_labkit_grade_outside_a_checkout_says_where_grading_lives(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert labkit.cli.main(["grade", "x.ipynb"]) == 2
    assert "course tooling that comes with a checkout" in capsys.readouterr().err


def _copy(tmp_path: Path, name: str, student: str = "alice", edit=None) -> Path:
    """A learner's copy of solutions/<name>.ipynb in submissions/<student>/, optionally edited."""
    dest = tmp_path / "submissions" / student / f"{name}.ipynb"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "solutions" / f"{name}.ipynb", dest)
    if edit:
        nb = nbformat.read(str(dest), as_version=4)
        edit(nb)
        nbformat.write(nb, str(dest))
    return dest


@pytest.mark.slow
def test_labkit_grade_passes_the_solutions_and_fails_the_unedited_exercises(tmp_path, capsys):
    notebooks = [ROOT / d / f"{n}.ipynb" for d in ("solutions", "exercises") for n in FIRST_THREE]
    out = tmp_path / "class.csv"
    rc = grade.main([*map(str, notebooks), "--csv", str(out), "--root", str(ROOT), "--timeout", "300"])
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert rc == 1  # some checks failed
    assert [(r["student"], r["exercise"], r["check"], r["result"]) for r in rows] == [
        ("solutions", "e1_make_the_call", "check_choose", "pass"),
        ("solutions", "e2_faq_records", "check_to_record", "pass"),
        ("solutions", "e3_clean_dataset", "check_clean", "pass"),
        ("exercises", "e1_make_the_call", "check_choose", "fail"),
        ("exercises", "e2_faq_records", "check_to_record", "fail"),
        ("exercises", "e3_clean_dataset", "check_clean", "fail"),
    ]
    for r in rows[3:]:  # each exercise stops at its first blank, which the row names
        assert r["detail"].startswith("not attempted: cell ") and "Your turn" in r["detail"], r
    assert all(0 < float(r["seconds"]) < 300 for r in rows)
    assert printed.startswith("network: OFF") and "3 of 6 checks passed in 6 notebooks" in printed
    assert "notebook" in printed and "check_clean" in printed  # the table


@pytest.mark.slow
def test_labkit_grade_command_grades_a_folder_of_submissions(tmp_path):
    _copy(tmp_path, "e1_make_the_call", "alice")
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "grade", "submissions/alice/e1_make_the_call.ipynb",
                           "--root", str(ROOT)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))  # as from a checkout's venv
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 1 checks passed" in done.stdout


def _wrong_answer(nb):
    (cell,) = [c for c in nb.cells if 'return "Fine-tune + RAG"' in c.source]
    cell.source = cell.source.replace('return "Fine-tune + RAG"', 'return "RAG"')


def _slow_cell(nb):
    nb.cells.insert(3, nbformat.v4.new_code_cell("import time\ntime.sleep(120)"))


@pytest.mark.slow
def test_a_wrong_answer_and_a_timeout_are_failed_rows_that_say_why(tmp_path):
    wrong = _copy(tmp_path, "e1_make_the_call", "bob", _wrong_answer)
    slow = _copy(tmp_path, "e1_make_the_call", "carol", _slow_cell)
    (row,) = grade.grade_notebook(wrong, ROOT, timeout=120)
    assert row.result == "fail" and row.student == "bob"
    assert "Fine-tune + RAG" in row.detail  # the check's own "expected" line
    (row,) = grade.grade_notebook(slow, ROOT, timeout=8)
    assert row.result == "fail" and row.detail == "timed out: the notebook took over 8 s (stopped in cell 4)"
    assert row.seconds < 60


NETWORK_CELL = ("ifaces = [line.split(':')[0].strip() for line in open('/proc/net/dev').read().splitlines()[2:]]\n"
                "assert ifaces == ['lo'], ifaces")


@pytest.mark.slow
@pytest.mark.skipif(grade.isolation_problem() != "", reason="no network namespaces here")
def test_a_learner_kernel_sees_no_network_unless_allowed(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NETWORK_CELL)])
    stop, _, _ = grade.run_notebook(nb, tmp_path, timeout=120, allow_network=False)
    assert stop is None  # only the loopback (down) inside the namespace
    host = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    if host != ["lo"]:  # the same cell fails where the kernel shares this machine's network
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NETWORK_CELL)])
        stop, _, _ = grade.run_notebook(nb, tmp_path, timeout=120, allow_network=True)
        assert stop is not None and "AssertionError" in stop.reason


def test_grading_refuses_to_run_with_the_network_on_unless_asked(monkeypatch, capsys):
    monkeypatch.setattr(grade, "isolation_problem", lambda: "network namespaces are Linux-only (this is darwin)")
    assert grade.main(["x.ipynb"]) == 2
    err = capsys.readouterr().err
    assert "cannot cut the network off" in err and "--allow-network" in err


def test_offline_switches_are_set_and_proxies_dropped_unless_network_is_allowed(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    env = grade.kernel_env(allow_network=False)
    assert env["HF_HUB_OFFLINE"] == "1" and "HTTPS_PROXY" not in env
    assert grade.kernel_env(allow_network=True)["HTTPS_PROXY"] == "http://proxy:3128"


def test_the_csv_has_one_row_per_check_with_the_student(tmp_path):
    rows = [grade.Row("alice", "submissions/alice/e1.ipynb", "e1_make_the_call", "check_choose", "pass", 2.25, "9 cases"),
            grade.Row("bob", "submissions/bob/e1.ipynb", "e1_make_the_call", "check_choose", "fail", 0.0, 'a "quote", a comma')]
    grade.write_csv(rows, tmp_path / "out" / "class.csv")
    got = list(csv.DictReader((tmp_path / "out" / "class.csv").open()))
    assert list(got[0]) == list(grade.COLUMNS)
    assert [(r["student"], r["result"], r["seconds"], r["detail"]) for r in got] == [
        ("alice", "pass", "2.25", "9 cases"), ("bob", "fail", "0.0", 'a "quote", a comma')]

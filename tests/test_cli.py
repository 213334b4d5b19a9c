"""The `labkit` command line."""

import pytest

from labkit import cli


def test_doctor_exits_zero_when_nothing_fails(capsys):
    assert cli.main(["doctor"]) == 0
    assert "doctor: 0 FAIL" in capsys.readouterr().out


def test_cache_prints_the_model_folder(capsys):
    assert cli.main(["cache"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit):
        cli.main(["fly"])


def test_course_report_table(tmp_path):
    from labkit.course import NotebookRun, report_markdown

    text = report_markdown([NotebookRun("00_setup", 12.0, True, 900.0, "ok"),
                            NotebookRun("05_qlora", 200.0, False, 2000.0, "", "AssertionError")])
    assert "| 00_setup | 0:12 | 4% | 900 | pass | ok |" in text
    assert "FAIL: AssertionError" in text and "1/2 notebooks passed" in text


@pytest.mark.slow
def test_course_runs_a_notebook_and_collects_its_headline(tmp_path):
    import nbformat

    from labkit.course import run_course

    lessons = tmp_path / "lessons"
    lessons.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from labkit.course import headline\nheadline('it works')")]
    nbformat.write(nb, str(lessons / "01_x.ipynb"))
    bad = nbformat.v4.new_notebook()
    bad.cells = [nbformat.v4.new_code_cell("assert 1 == 2, 'claim broken'")]
    nbformat.write(bad, str(lessons / "02_y.ipynb"))
    runs = run_course(lessons, tmp_path / "build" / "course")
    assert [r.ok for r in runs] == [True, False]
    assert runs[0].headline == "it works" and "claim broken" in runs[1].error
    assert (tmp_path / "build" / "course-report.md").exists()
    assert (tmp_path / "build" / "course" / "01_x.html").exists()

"""The committed form of the course notebooks, and the exercise system built from solutions."""

import re
from pathlib import Path

import nbformat
import pytest

from labkit_dev import course, invoices, site
from labkit_dev import exercises as exb
from labkit_dev import notebooks as nbs

ROOT = Path(__file__).resolve().parent.parent
ALL = nbs.notebooks(ROOT)
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


def test_every_lesson_of_the_course_map_exists():
    lessons = sorted(p.stem for p in (ROOT / "lessons").glob("*.ipynb"))
    assert lessons[0] == "00_setup"
    assert [name[:2] for name in lessons] == sorted({name[:2] for name in lessons}), "duplicate lesson numbers"


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_follows_the_committed_policy(path):
    assert nbs.problems(path, ROOT) == []


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_badge_points_at_this_notebook_in_the_configured_repo(path):
    rel = path.relative_to(ROOT).as_posix()
    first = nbs.read(path).cells[0].source
    settings = nbs.project_settings(ROOT)
    assert settings["repo"].removeprefix("https://github.com/") in first and first.splitlines()[0].endswith(f"/{rel})")


def test_policy_catches_what_it_claims(tmp_path):
    root = tmp_path
    (root / "lessons").mkdir()
    (root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("print('/root/x')")]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hf_" + "a" * 34)]
    nb.cells[1].execution_count = 3
    path = root / "lessons" / "t.ipynb"
    nbs.write(nb, path)
    found = "\n".join(nbs.problems(path, root=root))
    for expected in ("badge", "setup cell", "execution count", "stores outputs", "secret", "path of this machine"):
        assert expected in found
    nbs.stamp(nb, "lessons/t.ipynb", nbs.project_settings(root))
    nb.cells[2].source = "print(1)"
    nbs.clean(nb)
    nbs.write(nb, path)
    assert nbs.problems(path, root=root) == []


def _stamped_checked_notebook(tmp_path):
    """A stamped, clean lesson in a throwaway checkout whose cell 2 is a checked `print(1)`."""
    (tmp_path / "lessons").mkdir()
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell(f"{nbs.CHECK_MARKER}\nprint(1)")]
    nbs.stamp(nb, "lessons/t.ipynb", nbs.project_settings(tmp_path))
    nbs.clean(nb)
    return nb


def test_policy_catches_a_checked_cell_that_nbval_would_call_unrun(tmp_path):
    nb = _stamped_checked_notebook(tmp_path)
    checked = nb.cells[2]
    checked.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    checked.execution_count = None
    path = tmp_path / "lessons" / "t.ipynb"
    nbs.write(nb, path)
    assert any("unrun reference cell" in p for p in nbs.problems(path, root=tmp_path))
    nbs.clean(nb)
    nbs.write(nb, path)
    assert nbs.problems(path, root=tmp_path) == [] and nb.cells[2].outputs


def test_exercises_are_in_sync_with_solutions():
    assert exb.build(ROOT, check_only=True) == [], "run: python -m labkit_dev.exercises build"


def test_blanking_keeps_indentation_and_hint():
    src = "def f(x):\n    ### BEGIN SOLUTION: return twice x\n    return 2 * x\n    ### END SOLUTION\nprint(f(2))"
    out, n = exb.blank_out(src)
    assert n == 1
    assert out == "def f(x):\n    raise NotImplementedError('Your turn: return twice x')\nprint(f(2))"


@pytest.mark.parametrize("src", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_unbalanced_markers_are_errors(src):
    with pytest.raises(exb.MarkerError):
        exb.blank_out(src)


def test_every_solution_has_blanks_and_a_check():
    assert SOLUTIONS, "no solution notebooks"
    for sol in SOLUTIONS:
        text = "\n".join(c.source for c in nbs.read(sol).cells)
        assert "### BEGIN SOLUTION" in text, sol.name
        assert "check_" in text, f"{sol.name} does not end with a labkit.exercises check"


@pytest.mark.slow
@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_unfilled_exercise_stops_at_its_first_blank_with_a_friendly_message(path):
    from nbclient.exceptions import CellExecutionError

    nb = nbs.read(path)
    blank = re.compile(r"""NotImplementedError\(['"]Your turn""")  # repr() quotes a hint with ' in "..."
    first_blank = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and blank.search(c.source))
    for cell in nb.cells:  # checked cells are stored with a count: clear them so a count means "ran now"
        if cell.cell_type == "code":
            cell.execution_count, cell.outputs = None, []
    with pytest.raises(CellExecutionError) as err:
        nbs.execute(nb, path.parent, timeout=1200)
    assert err.value.ename == "NotImplementedError"
    assert "Your turn" in err.value.evalue
    # The message is the first blank's own (a blank in a function body fires where it is first called).
    assert err.value.evalue in nb.cells[first_blank].source, (err.value.evalue, first_blank)
    ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
    assert max(ran) >= first_blank, f"stopped at cell {max(ran)}, before the first blank (cell {first_blank})"


def test_repo_root_is_found_upwards_from_a_subfolder(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    deep = tmp_path / "lessons" / "sub"
    deep.mkdir(parents=True)
    assert nbs.find_root(deep) == tmp_path.resolve()
    assert nbs.project_settings(deep)["repo"].startswith("https://github.com/")


def test_outside_a_checkout_the_tools_say_so(tmp_path, monkeypatch, capsys):
    # A pyproject.toml of some other project does not count: only one with [tool.labkit].
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(nbs.RepoRootNotFound, match="--root"):
        nbs.find_root()
    assert nbs.main(["check"]) == 2
    assert exb.main(["check"]) == 2
    assert invoices.main([]) == 2  # and it writes nothing into the installed package either
    assert course.main([]) == 2 and site.main([]) == 2
    assert "No labkit course checkout" in capsys.readouterr().err
    # ...and --root points them at the checkout from anywhere.
    assert exb.main(["check", "--root", str(ROOT)]) == 0


def test_policy_catches_a_checked_cell_with_no_stored_output(tmp_path):
    """nbval compares a checked cell's output with the stored one: none stored fails the run."""
    nb = _stamped_checked_notebook(tmp_path)
    path = tmp_path / "lessons" / "t.ipynb"
    nbs.write(nb, path)
    assert any("stores no output" in p for p in nbs.problems(path, root=tmp_path))
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells[2].execution_count = 2
    nbs.write(nb, path)
    assert not any("stores no output" in p for p in nbs.problems(path, root=tmp_path))


def test_nbval_patience_gives_a_finished_cell_a_minute_for_its_output():
    """make test loads labkit_dev.nbval_patience: nbval's 5 s wait for a finished cell's output becomes 60 s."""
    import types

    from labkit_dev import nbval_patience

    cell, other = types.SimpleNamespace(output_timeout=5), types.SimpleNamespace()
    nbval_patience.pytest_collection_modifyitems([cell, other])
    assert cell.output_timeout == 60 and not hasattr(other, "output_timeout")
    assert "-p labkit_dev.nbval_patience" in (Path(__file__).resolve().parents[1] / "Makefile").read_text()

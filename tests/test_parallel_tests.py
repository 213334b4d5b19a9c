"""`make test`'s parallel run (labkit_dev.parallel_tests): its order names real files, and it reorders
without losing or duplicating a test."""
from pathlib import Path
from types import SimpleNamespace

from labkit_dev import parallel_tests

ROOT = Path(__file__).resolve().parent.parent


def test_every_file_in_the_slowest_first_order_exists():
    """A renamed notebook would silently drop out of the order: fail instead."""
    missing = [p for p in parallel_tests.SLOWEST_FIRST if not (ROOT / p).is_file()]
    assert not missing, f"labkit_dev/parallel_tests.py names files that are gone: {missing}"
    assert len(set(parallel_tests.SLOWEST_FIRST)) == len(parallel_tests.SLOWEST_FIRST)


def test_the_slowest_files_go_first_and_the_rest_keep_their_order():
    ids = ["tests/test_a.py::t1", "lessons/05_qlora_training.ipynb::Cell 0", "tests/test_b.py::t2",
           "solutions/e7_peft_family.ipynb::Cell 0", "tests/test_a.py::t3", "solutions/e7_peft_family.ipynb::Cell 1"]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    parallel_tests.pytest_collection_modifyitems(items)
    assert [i.nodeid for i in items] == [
        "solutions/e7_peft_family.ipynb::Cell 0", "solutions/e7_peft_family.ipynb::Cell 1",
        "lessons/05_qlora_training.ipynb::Cell 0", "tests/test_a.py::t1", "tests/test_b.py::t2", "tests/test_a.py::t3"]


def test_each_process_gets_its_share_of_the_cores_and_at_least_one():
    cores = parallel_tests.threads_per_worker(1)
    assert cores >= 1 and parallel_tests.threads_per_worker(0) == cores
    assert parallel_tests.threads_per_worker(2) == max(1, cores // 2)
    assert parallel_tests.threads_per_worker(1000) == 1

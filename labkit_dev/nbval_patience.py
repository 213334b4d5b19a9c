"""A pytest plugin for nbval: wait longer for a finished cell's output (`make test` loads it with -p).

nbval 0.11 waits 5 s (hard-coded `IPyNbCell.output_timeout`) for each output message after a cell
has finished, and fails the cell when one is late. On the 2-core course CPU a cell that trained for
minutes once had its output arrive later than that (E4, fp32, 2026-12-07: "Timeout of 5 seconds
exceeded waiting for output" after the cell had run to the end). A cell that really hangs is still
stopped by --nbval-cell-timeout; this only lets slow output arrive.
"""

OUTPUT_TIMEOUT_S = 60


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if hasattr(item, "output_timeout"):  # nbval's IPyNbCell
            item.output_timeout = OUTPUT_TIMEOUT_S

"""Pictures where a picture beats numbers: loss curves, memory bars, forgetting bars.

Every function takes plain data (a History, dicts, lists), draws on a matplotlib Axes (a new figure
when none is given) and returns the Axes, so a notebook can add to it or a test can inspect it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: F401

"""Settings for the whole suite, applied before any test module imports torch."""

from __future__ import annotations

import os

# The suite runs on small shared CPUs (CI: 2 cores) and starts engines in subprocesses, which
# inherit this: torch's default of one thread per core makes the processes fight over the cores
# (a 12-frame tiny nightmare took 18 s instead of 2.5 s under load). An explicit setting wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

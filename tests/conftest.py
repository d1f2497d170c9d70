"""Test-session setup: the SLURM cluster fixture, and one CPU thread per process.

The suite's models are tiny and its tests run several processes at once (sweeps, DDP) on two
cores; intra-op threads only oversubscribe them. Set before torch is imported, and inherited by
every subprocess a test starts.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests.slurm_cluster"]

"""How runs are started: the worker command for one run directory, and the launchers."""

from __future__ import annotations

import sys
from pathlib import Path


def worker_command(run_dir: Path, devices: int = 1) -> list[str]:
    """The command that trains ``run_dir`` with ``devices`` processes (torchrun when > 1)."""
    train = ["-m", "graftbench", "train", "--run-dir", str(run_dir)]
    if devices <= 1:
        return [sys.executable, *train]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={devices}",
        *train,
    ]

"""Where a result came from: code version, software, hardware (recorded in run.json; the
commit is also what `graftbench --version` prints, which is why torch is imported only by the
functions that ask it).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("graftbench", "torch", "torchvision", "numpy", "hydra-core", "omegaconf", "submitit")


def git() -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes (None outside a checkout:
    an installed package is not the commit of whatever repository happens to contain it)."""
    if not (REPO / ".git").exists():  # a folder, or a file in a git worktree
        return {"sha": None, "dirty": None}

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def versions() -> dict[str, Any]:
    import torch

    found: dict[str, Any] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["cuda"] = torch.version.cuda
    found["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return found


def hardware(world_size: int = 1) -> dict[str, Any]:
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "world_size": world_size,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record(world_size: int = 1) -> dict[str, Any]:
    """Everything above, plus the command line, for run.json."""
    return {
        "git": git(),
        "versions": versions(),
        "hardware": hardware(world_size),
        "command": sys.argv,
    }

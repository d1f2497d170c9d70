"""Running real training runs from tests: the CLI in a subprocess, and reading results."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from graftbench import config, rundir

REPO = Path(__file__).resolve().parent.parent
# A small, quick run of the demo workload (digits, ResNet-8 at width 8): 22 steps an epoch.
QUICK = [
    "trainer.epochs=1",
    "trainer.batch_size=64",
    "model.width=8",
    "trainer.log_every_steps=2",
    "trainer.layer_log_every_steps=5",
    "trainer.checkpoint_every_steps=4",
    "trainer.eval_every_epochs=1",
]


def merged(base: list[str], *overrides: str) -> list[str]:
    """``base`` with ``overrides`` replacing the entries for the same key (a command may give a
    key only once)."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [o for o in base if o.split("=", 1)[0].lstrip("+~") not in keys] + list(overrides)


def train_in_process(tmp_path: Path, *overrides: str) -> tuple[int, Path]:
    """Prepare and train (or resume) the QUICK run with ``overrides`` in this process; its exit
    code and run directory."""
    from graftbench.train import runner

    cfg = config.compose(merged(QUICK, f"results_dir={tmp_path}", *overrides))
    run_dir = runner.prepare_run(cfg)
    return runner.execute(run_dir, cfg), run_dir


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def graftbench(*args: str, cwd: Path, timeout: float = 600, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "graftbench", *args], cwd=cwd, env=env(), **popen
    )


def run(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graftbench", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_run_dir(results: Path) -> Path:
    dirs = [p for p in results.glob("*/*") if (p / rundir.RUN).exists()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers in the run's last checkpoint."""
    state = torch.load(run_dir / rundir.CKPT / "last.pt", weights_only=True)
    return state["model"]


def wait_for(condition, timeout: float = 600, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def checkpoint_step(run_dir: Path) -> int:
    """The step of the run's last checkpoint (0 before the first)."""
    try:
        return torch.load(run_dir / rundir.CKPT / "last.pt", weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0

"""How runs are started. Every launcher ends in the same worker command (``graftbench train
--run-dir DIR``), so a run behaves the same wherever it trains.

``LocalLauncher`` runs up to ``max_parallel`` runs at once on this machine, each its own
process (under torchrun when it has more than one device) writing ``train.log`` in its run
directory; on a GPU machine each run gets ``gpus_per_run`` devices through
``CUDA_VISIBLE_DEVICES``. A failing run does not stop the others. SIGINT/SIGTERM are passed on
to the runs, which checkpoint and stop; unstarted runs go back to pending.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from graftbench import rundir
from graftbench.sweep.plan import release
from graftbench.train.runner import load_config


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


class Monitor(Protocol):
    """What a launcher reports while it works (the CLI shows it)."""

    def started(self, run_dir: Path) -> None: ...

    def finished(self, run_dir: Path, exit_code: int) -> None: ...

    def tick(self, running: list[Path]) -> None: ...


@dataclass
class _Running:
    process: subprocess.Popen
    run_dir: Path
    gpus: list[int]


class LocalLauncher:
    def __init__(
        self,
        max_parallel: int = 1,
        gpus_per_run: int = 1,
        *,
        gpu_count: Callable[[], int] | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.max_parallel = max(1, max_parallel)
        self.gpus_per_run = max(1, gpus_per_run)
        self.gpu_count = gpu_count or _visible_gpus
        self.poll_s = poll_s

    def launch(self, run_dirs: list[Path], monitor: Monitor) -> dict[Path, int]:
        """Train every run; returns each run's exit code (runs never started are left out)."""
        queue = deque(run_dirs)
        gpus = self.gpu_count()
        free = list(range(gpus))
        slots = min(self.max_parallel, gpus // self.gpus_per_run) if gpus else self.max_parallel
        if gpus and slots == 0:
            slots, free = 1, list(range(gpus))  # fewer GPUs than a run wants: give it all
        running: list[_Running] = []
        codes: dict[Path, int] = {}
        stop = {"signal": None}

        def forward(signum, frame):
            stop["signal"] = signum
            for r in running:
                _signal_group(r.process, signal.SIGTERM)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while (queue and stop["signal"] is None) or running:
                while queue and stop["signal"] is None and len(running) < slots:
                    run_dir = queue.popleft()
                    take = free[: self.gpus_per_run] if gpus else []
                    free = free[len(take) :]
                    running.append(self._start(run_dir, take))
                    monitor.started(run_dir)
                for r in [r for r in running if r.process.poll() is not None]:
                    running.remove(r)
                    free.extend(r.gpus)
                    codes[r.run_dir] = r.process.returncode
                    monitor.finished(r.run_dir, r.process.returncode)
                monitor.tick([r.run_dir for r in running])
                time.sleep(self.poll_s)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        release(list(queue))
        return codes

    def _start(self, run_dir: Path, gpus: list[int]) -> _Running:
        devices = load_config(run_dir).trainer.devices
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        elif self.max_parallel > 1 and "OMP_NUM_THREADS" not in env:
            # runs sharing the CPU: split the cores rather than oversubscribe them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.max_parallel))
        log = (run_dir / "train.log").open("ab")
        process = subprocess.Popen(
            worker_command(run_dir, devices),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        rundir.update_json(
            run_dir / rundir.RUN,
            lambda r: {**r, "launcher": {**(r.get("launcher") or {}), "worker_pid": process.pid}},
        )
        return _Running(process, run_dir, gpus)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable CUDA: a CPU machine
        return 0

"""How runs are started. Every launcher ends in ``runner.execute(run_dir)`` (the local one
through the worker command ``graftbench train --run-dir DIR``), so a run behaves the same
wherever it trains.

``LocalLauncher`` runs up to ``max_parallel`` runs at once on this machine, each its own
process (under torchrun when it has more than one device) writing ``train.log`` in its run
directory; on a GPU machine each run gets ``gpus_per_run`` devices through
``CUDA_VISIBLE_DEVICES``. A failing run does not stop the others. SIGINT/SIGTERM are passed on
to the runs, which checkpoint and stop; unstarted runs go back to pending.

``SlurmLauncher`` submits one submitit job array per sweep (``array_parallelism`` tasks at a
time), one task per process of a run (multi-node DDP finds its rendezvous in the SLURM
environment), with ``--requeue``. A task stops at a step boundary on SIGTERM (preemption,
``scontrol requeue``) or SIGUSR2 (the time-limit warning), checkpointing first; after SIGUSR2
it requeues itself, at most ``max_num_timeout`` times. Either way it exits without a result, so
SLURM runs it again and it resumes from the checkpoint. Logs: ``<sweep>/slurm/<job>/``.
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


def slurm_job(run_dir: str, max_requeues: int) -> int:
    """What each task of a SLURM array runs (submitit pickles it by reference)."""
    from graftbench.train import runner

    path = Path(run_dir)
    code = runner.execute(path)
    if code != runner.EXIT_INTERRUPTED:
        return code
    if os.environ.get("SLURM_PROCID", "0") == "0":
        record = rundir.read_json(path / rundir.RUN)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if record.get("interrupted_by") == "SIGUSR2":  # the time limit is near: requeue
            if restarts < max_requeues:
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
            else:
                rundir.update_json(
                    path / rundir.RUN,
                    lambda r: {
                        **r,
                        "status": "failed",
                        "error": f"hit the time limit again after {restarts} requeues",
                    },
                )
    raise SystemExit(code)  # no result: SLURM runs the task again, which resumes


class SlurmLauncher:
    def __init__(self, options: dict, sweep_dir: Path) -> None:
        self.options = options
        self.folder = sweep_dir / "slurm" / "%j"

    def parameters(self, device: str) -> dict:
        """submitit's AutoExecutor parameters for the launcher config."""
        o = self.options
        params = {
            "name": f"graftbench-{self.folder.parent.parent.name}",
            "timeout_min": o["timeout_min"],
            "nodes": o["nodes"],
            "tasks_per_node": o["tasks_per_node"],
            "cpus_per_task": o["cpus_per_task"],
            "slurm_signal_delay_s": o["signal_delay_s"],
            "slurm_array_parallelism": o["array_parallelism"],
            "slurm_additional_parameters": {"requeue": True, **(o["additional_parameters"] or {})},
        }
        if device != "cpu" and o["gpus_per_node"]:
            params["gpus_per_node"] = o["gpus_per_node"]
        if o["mem_gb"]:
            params["mem_gb"] = o["mem_gb"]
        for key in ("partition", "account", "qos", "constraint"):
            if o[key]:
                params[f"slurm_{key}"] = o[key]
        return params

    def executor(self, device: str):
        import submitit

        executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
        executor.update_parameters(**self.parameters(device))  # rejects unknown names
        return executor

    def launch(self, run_dirs: list[Path], device: str) -> list[str]:
        """Submit the runs as one job array; returns the SLURM job id of each run's task."""
        if not run_dirs:
            return []
        executor = self.executor(device)
        jobs = executor.map_array(
            slurm_job, [str(d) for d in run_dirs], [self.options["max_num_timeout"]] * len(run_dirs)
        )
        for run_dir, job in zip(run_dirs, jobs, strict=True):
            rundir.update_json(
                run_dir / rundir.RUN,
                lambda r, j=job.job_id: {
                    **r,
                    "launcher": None,
                    "slurm": _slurm_ids(j),
                    "log": str(self.folder.parent / j / f"{j}_0_log.out"),
                },
            )
        return [job.job_id for job in jobs]


def _slurm_ids(job_id: str) -> dict[str, str]:
    """``"12_3"`` (array task) or ``"12"`` (submitit submits a one-run array as a plain job)."""
    array_id, _, task = job_id.partition("_")
    if not task:
        return {"job_id": job_id}
    return {"job_id": job_id, "array_job_id": array_id, "array_task_id": task}


ENDED = {"done": 0, "diverged": 3, "failed": 1}


def wait_until_finished(run_dirs: list[Path], monitor: Monitor, poll_s: float = 5.0) -> dict:
    """Follow runs trained elsewhere (SLURM) until each is done, diverged or failed, or has
    no live owner left (cancelled: pending again, resumable). Returns exit-code-like outcomes."""
    from graftbench.sweep.status import effective_status, owner_job, slurm_states

    waiting = list(run_dirs)
    codes: dict[Path, int] = {}
    for run_dir in waiting:
        monitor.started(run_dir)
    while waiting:
        records = {d: rundir.read_json(d / rundir.RUN) for d in waiting}
        slurm = slurm_states([j for r in records.values() if (j := owner_job(r))])
        for run_dir, record in records.items():
            status = str(effective_status(record, slurm))
            if status in ENDED or status == "pending":
                codes[run_dir] = ENDED.get(status, 75)
                waiting.remove(run_dir)
                monitor.finished(run_dir, codes[run_dir])
        monitor.tick(waiting)
        if waiting:
            time.sleep(poll_s)
    return codes

"""How claimed runs are started: one interface, two backends.

A :class:`Launcher` takes claimed runs (:class:`~graftbench.sweep.plan.Launch`: the run
directory, the claim's token, this command's execution settings) with ``submit`` and reports
how each ended with ``wait`` - the shape of submitit's executor. Every run ends in
``runner.execute`` with its config rebuilt from the stored identity and the execution settings
handed over, so a run behaves the same wherever it trains.

``LocalLauncher`` runs up to ``max_parallel`` runs at once on this machine, each its own
process (``graftbench train --run-dir DIR``, under torchrun when it has more than one device)
writing ``train.log`` in its run directory; on a GPU machine each run gets ``gpus_per_run``
devices through ``CUDA_VISIBLE_DEVICES``. Threads are the run's own (``trainer.threads``, part of
its identity), whatever ``max_parallel``. A failing run does not stop the others.
SIGINT/SIGTERM are passed on to the runs, which checkpoint and stop; unstarted runs go back to
pending.

``SlurmLauncher`` submits one submitit job array per sweep (``array_parallelism`` tasks at a
time), one task per process of a run (multi-node DDP finds its rendezvous in the SLURM
environment), with ``--requeue``. A task stops at a step boundary on SIGTERM (preemption,
``scontrol requeue``) or SIGUSR2 (the time-limit warning), checkpointing first; after SIGUSR2
it requeues itself, at most ``max_num_timeout`` times, and then fails with a recorded error.
Logs: ``<sweep>/slurm/<job>/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from graftbench.record import (
    CLAIM_ENV,
    Exit,
    RunRecord,
    effective_status,
    owner_job,
    slurm_states,
)
from graftbench.rundir import RunDirError, Status
from graftbench.sweep.plan import Launch, release


class Monitor(Protocol):
    """What a launcher reports while it works (the CLI shows it)."""

    def started(self, run_dir: Path) -> None: ...

    def finished(self, run_dir: Path, exit_code: Exit) -> None: ...

    def tick(self, running: list[Path]) -> None: ...


class Launcher(Protocol):
    """Start claimed runs (``submit``), then follow them until each ends (``wait``)."""

    def submit(self, launches: list[Launch]) -> str:
        """Start or queue the runs; returns a line saying what was done."""
        ...

    def wait(self, monitor: Monitor) -> dict[Path, Exit]:
        """Each submitted run's ending (runs never started are left out)."""
        ...

    @property
    def interrupted(self) -> bool:
        """Whether a signal stopped the launch before every run ended."""
        ...


def make_launcher(
    options: dict[str, Any], sweep_dir: Path, device: str, threads: int = 1
) -> Launcher:
    """The launcher a config's ``launcher`` section describes."""
    if options["name"] == "slurm":
        return SlurmLauncher(options, sweep_dir, device)
    return LocalLauncher(options["max_parallel"], options["gpus_per_run"], threads=threads)


def worker_command(run_dir: Path, execution: dict[str, Any] | None, devices: int = 1) -> list[str]:
    """The command that trains ``run_dir`` with ``devices`` processes (torchrun when > 1)."""
    train = ["-m", "graftbench", "train", "--run-dir", str(run_dir)]
    if execution is not None:
        train += ["--execution", json.dumps(execution, separators=(",", ":"))]
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


def worker_env(token: str | None, threads: int) -> dict[str, str]:
    """The environment of a run's processes: the claim's token, the run's thread count."""
    env = dict(os.environ)
    if token is not None:
        env[CLAIM_ENV] = token
    env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass
class _Running:
    process: subprocess.Popen
    launch: Launch
    gpus: list[int]


class LocalLauncher:
    def __init__(
        self,
        max_parallel: int | None = 1,
        gpus_per_run: int = 1,
        *,
        threads: int = 1,
        gpu_count: Callable[[], int] | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.max_parallel = max_parallel  # None: as many as the machine fits
        self.gpus_per_run = max(1, gpus_per_run)
        self.gpu_count = gpu_count or _visible_gpus
        self.poll_s = poll_s
        self.queue: deque[Launch] = deque()
        self.stop_signal: int | None = None

        self.threads = threads
        self.gpus = self.gpu_count()

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None

    @property
    def slots(self) -> int:
        """Runs at once: ``max_parallel``, at most what the GPUs hold; on a CPU machine by
        default the cores over the runs' threads."""
        if self.gpus:
            return max(1, min(self.max_parallel or self.gpus, self.gpus // self.gpus_per_run))
        if self.max_parallel is None:
            return max(1, (os.cpu_count() or 1) // self.threads)
        return max(1, self.max_parallel)

    def submit(self, launches: list[Launch]) -> str:
        self.queue.extend(launches)
        return f"launching {len(launches)} run(s), {self.slots} at a time"

    def wait(self, monitor: Monitor) -> dict[Path, Exit]:
        gpus = self.gpus
        free = list(range(gpus))
        slots = self.slots
        running: list[_Running] = []
        codes: dict[Path, Exit] = {}

        def forward(signum: int, frame: Any) -> None:
            self.stop_signal = signum
            for r in running:
                _signal_group(r.process, signal.SIGTERM)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while (self.queue and not self.interrupted) or running:
                while self.queue and not self.interrupted and len(running) < slots:
                    launch = self.queue.popleft()
                    take = free[: self.gpus_per_run] if gpus else []
                    free = free[len(take) :]
                    running.append(self._start(launch, take))
                    monitor.started(launch.run_dir)
                for r in [r for r in running if r.process.poll() is not None]:
                    running.remove(r)
                    free.extend(r.gpus)
                    codes[r.launch.run_dir] = Exit.of(r.process.returncode)
                    monitor.finished(r.launch.run_dir, codes[r.launch.run_dir])
                monitor.tick([r.launch.run_dir for r in running])
                time.sleep(self.poll_s)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        release(list(self.queue))
        self.queue.clear()
        return codes

    def _start(self, launch: Launch, gpus: list[int]) -> _Running:
        env = worker_env(launch.token, launch.threads)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        log = (launch.run_dir / "train.log").open("ab")
        process = subprocess.Popen(
            worker_command(launch.run_dir, launch.execution, launch.devices),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        RunRecord(launch.run_dir).launched(launch.token, worker_pid=process.pid)
        return _Running(process, launch, gpus)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable CUDA: a CPU machine
        return 0


def slurm_job(run_dir: str, token: str, execution: dict[str, Any], max_requeues: int) -> int:
    """What each task of a SLURM array runs (submitit pickles it by reference)."""
    from graftbench.train import runner

    path = Path(run_dir)
    cfg = runner.load(path, execution)
    os.environ["OMP_NUM_THREADS"] = str(cfg.trainer.threads)
    code = runner.execute(path, cfg, token)
    if code != Exit.INTERRUPTED:
        return int(code)
    record = RunRecord(path)
    if os.environ.get("SLURM_PROCID", "0") == "0":
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if record.read().get("interrupted_by") == "SIGUSR2":  # the time limit is near
            if restarts < max_requeues:
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
            else:
                record.fail(
                    f"hit the time limit again after {restarts} requeues "
                    f"(launcher.max_num_timeout={max_requeues})"
                )
                return int(Exit.FAILED)
    raise SystemExit(int(code))  # no result: SLURM runs the task again, which resumes


class SlurmLauncher:
    def __init__(self, options: dict[str, Any], sweep_dir: Path, device: str = "auto") -> None:
        self.options = options
        self.device = device
        self.folder = sweep_dir / "slurm" / "%j"
        self.submitted: list[Path] = []
        self.poll_s = 5.0

    @property
    def interrupted(self) -> bool:
        return False  # the jobs live on in SLURM whatever happens to this process

    def parameters(self) -> dict[str, Any]:
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
        if self.device != "cpu" and o["gpus_per_node"]:
            params["gpus_per_node"] = o["gpus_per_node"]
        if o["mem_gb"]:
            params["mem_gb"] = o["mem_gb"]
        for key in ("partition", "account", "qos", "constraint"):
            if o[key]:
                params[f"slurm_{key}"] = o[key]
        return params

    def executor(self) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
        executor.update_parameters(**self.parameters())  # rejects unknown names
        return executor

    def submit(self, launches: list[Launch]) -> str:
        """Submit the runs as one job array."""
        if not launches:
            return "nothing to submit"
        jobs = self.executor().map_array(
            slurm_job,
            [str(launch.run_dir) for launch in launches],
            [launch.token for launch in launches],
            [launch.execution for launch in launches],
            [self.options["max_num_timeout"]] * len(launches),
        )
        for launch, job in zip(launches, jobs, strict=True):
            RunRecord(launch.run_dir).launched(
                launch.token,
                slurm=_slurm_ids(job.job_id),
                log=str(self.folder.parent / job.job_id / f"{job.job_id}_0_log.out"),
            )
        self.submitted = [launch.run_dir for launch in launches]
        array = jobs[0].job_id.partition("_")[0]
        return f"submitted {len(jobs)} run(s) as SLURM array {array}"

    def wait(self, monitor: Monitor) -> dict[Path, Exit]:
        """Follow the runs until each is done, diverged or failed, or has no live owner left
        (cancelled: resumable by the next sweep)."""
        waiting = list(self.submitted)
        codes: dict[Path, Exit] = {}
        for run_dir in waiting:
            monitor.started(run_dir)
        while waiting:
            records = {}
            for run_dir in waiting:
                try:
                    records[run_dir] = RunRecord(run_dir).read()
                except RunDirError:
                    records[run_dir] = {"status": "failed"}
            slurm = slurm_states([j for r in records.values() if (j := owner_job(r))])
            for run_dir, record in records.items():
                status = effective_status(record, slurm)
                if status.ended or status in (Status.PENDING, Status.INTERRUPTED):
                    codes[run_dir] = Exit.for_status(status)
                    waiting.remove(run_dir)
                    monitor.finished(run_dir, codes[run_dir])
            monitor.tick(waiting)
            if waiting:
                time.sleep(self.poll_s)
        return codes


def _slurm_ids(job_id: str) -> dict[str, str]:
    """``"12_3"`` (array task) or ``"12"`` (submitit submits a one-run array as a plain job)."""
    array_id, _, task = job_id.partition("_")
    if not task:
        return {"job_id": job_id}
    return {"job_id": job_id, "array_job_id": array_id, "array_task_id": task}

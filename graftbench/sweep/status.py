"""Where every run of a sweep stands, read from the run directories alone.

A run's recorded status can be stale: a run killed with SIGKILL (or its whole node) still
says ``running``, a launcher that died leaves ``queued``. ``effective_status`` checks the owner
- a process on this host, or a SLURM job - and reports such runs as ``pending`` (their
checkpoint makes them resumable), so a new sweep picks them up.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tabulate import tabulate

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.rundir import RunDirError, Status

TAIL_BYTES = 16_384
SLURM_ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


UNKNOWN = "?"  # SLURM could not be asked: keep the recorded status rather than guess


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """The SLURM state of each job id asked about: "" for a job squeue no longer knows,
    ``UNKNOWN`` for all of them when squeue is missing or fails (a controller outage must not
    make running jobs look dead)."""
    if not job_ids:
        return {}
    cannot_tell = dict.fromkeys(job_ids, UNKNOWN)
    if shutil.which("squeue") is None:
        return cannot_tell
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted(set(job_ids)))],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return cannot_tell
    if out.returncode != 0:  # squeue fails outright when it knows none of the ids
        return dict.fromkeys(job_ids, "") if "Invalid job id" in out.stderr else cannot_tell
    states = dict.fromkeys(job_ids, "")
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        states[job] = state
    return states


def owner_job(record: dict[str, Any]) -> str | None:
    """The SLURM job that owns the run (its array task id form, as squeue prints it)."""
    slurm = record.get("slurm") or {}
    if slurm.get("array_job_id") and slurm.get("array_task_id") not in (None, ""):
        return f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    return slurm.get("job_id")


def effective_status(record: dict[str, Any], slurm: dict[str, str] | None = None) -> Status:
    """The recorded status, with dead owners of running/queued runs turned into pending."""
    status = Status(record["status"])
    if status not in (Status.RUNNING, Status.QUEUED):
        return status
    job = owner_job(record)
    if job is not None:
        states = slurm if slurm is not None and job in slurm else slurm_states([job])
        if states[job] == UNKNOWN:
            return status
        return status if states[job] in SLURM_ACTIVE else Status.PENDING
    owner = record.get("launcher") if status is Status.QUEUED else record
    if owner and owner.get("host") == socket.gethostname() and owner.get("pid"):
        return status if pid_alive(int(owner["pid"])) else Status.PENDING
    return status


@dataclass
class RunState:
    """One row of `graftbench status`."""

    run_id: str
    magnitude: str | None
    direction: str | None
    seed: int | None
    status: str
    step: int | None
    total_steps: int | None
    metric: str | None
    slurm_job: str | None
    elapsed_s: float | None
    problem: str | None = None


def _load(run_dir: Path) -> dict[str, Any] | RunDirError | None:
    if not (run_dir / rundir.RUN).exists():
        return None
    try:
        return rundir.read_json(run_dir / rundir.RUN)
    except RunDirError as err:
        return err


def _row(
    run_dir: Path, record: dict[str, Any] | RunDirError | None, slurm: dict[str, str]
) -> RunState:
    if record is None:
        return RunState(run_dir.name, None, None, None, "missing", None, None, None, None, None)
    if isinstance(record, RunDirError):
        return RunState(
            run_dir.name, None, None, None, "unreadable", None, None, None, None, None, str(record)
        )
    step, metric = latest(run_dir / rundir.METRICS)
    status = effective_status(record, slurm)
    return RunState(
        run_id=record.get("run_id", run_dir.name),
        magnitude=record.get("magnitude"),
        direction=record.get("direction"),
        seed=record.get("seed"),
        status=str(status),
        step=step if step is not None else record.get("step"),
        total_steps=record.get("total_steps"),
        metric=metric,
        slurm_job=owner_job(record),
        elapsed_s=_elapsed(record, status),
        problem=record.get("error"),
    )


def latest(path: Path) -> tuple[int | None, str | None]:
    """The last step and the newest metric, from the tail of metrics.jsonl."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None, None
    step, metric = None, None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if step is None and "step" in record:
            step = record["step"]
        if metric is None and record.get("kind") == "eval":
            metric = ", ".join(
                f"{k} {v:.2f}" for k, v in record.items() if k in ("top1", "top5", "bleu")
            )
        if metric is None and record.get("kind") == "train" and "loss" in record:
            metric = f"loss {record['loss']:.4f}"
        if step is not None and metric is not None:
            break
    return step, metric


def _elapsed(record: dict[str, Any], status: Status) -> float | None:
    start = record.get("started_at")
    if not start:
        return None
    end = record.get("ended_at") if status.finished or status is Status.FAILED else None
    finish = datetime.fromisoformat(end).timestamp() if end else time.time()
    return max(0.0, finish - datetime.fromisoformat(start).timestamp())


def sweep_runs(sweep_dir: Path) -> list[Path]:
    """The sweep's run directories: the manifest's order, then any others found."""
    listed: list[Path] = []
    try:
        manifest = rundir.read_json(sweep_dir / rundir.SWEEP)
        listed = [sweep_dir / r["run_id"] for r in manifest["runs"]]
    except RunDirError:
        pass
    seen = set(listed)
    extra = sorted(
        p for p in sweep_dir.iterdir() if p.is_dir() and p not in seen and (p / rundir.RUN).exists()
    )
    return listed + extra


def collect(sweep_dir: Path) -> list[RunState]:
    """Every run's state: files read in threads (it is I/O), SLURM asked once."""
    if not sweep_dir.is_dir():
        raise UserError(f"no sweep at {sweep_dir}")
    run_dirs = sweep_runs(sweep_dir)
    with ThreadPoolExecutor(max_workers=16) as pool:
        records = list(pool.map(_load, run_dirs))
    slurm = slurm_states([j for r in records if isinstance(r, dict) and (j := owner_job(r))])
    return [_row(d, r, slurm) for d, r in zip(run_dirs, records, strict=True)]


def counts(states: list[RunState]) -> Counter:
    return Counter(s.status for s in states)


COLUMNS = ("run id", "M", "D", "seed", "state", "progress", "latest", "SLURM job", "elapsed")


def render(states: list[RunState]) -> str:
    """The status table and a line counting the states (plain text: fast for big sweeps)."""
    rows = [
        (
            s.run_id,
            s.magnitude or "",
            s.direction or "",
            "" if s.seed is None else s.seed,
            s.status,
            "" if s.step is None else f"{s.step}/{s.total_steps or '?'}",
            s.problem if s.status in ("failed", "unreadable") and s.problem else s.metric or "",
            s.slurm_job or "",
            "" if s.elapsed_s is None else _duration(s.elapsed_s),
        )
        for s in states
    ]
    line = ", ".join(f"{n} {status}" for status, n in sorted(counts(states).items()))
    return f"{tabulate(rows, headers=COLUMNS, disable_numparse=True)}\n{line or 'no runs'}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

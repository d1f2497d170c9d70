"""Where every run of a sweep stands, read from the run directories alone.

A run's recorded status can be stale: a run killed with SIGKILL (or its whole node) still
says ``running``, a launcher that died leaves ``queued``. ``effective_status`` checks the owner
- a process on this host, or a SLURM job - and reports such runs as ``pending`` (their
checkpoint makes them resumable), so a new sweep picks them up.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tabulate import tabulate

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.record import effective_status, owner_job, slurm_states
from graftbench.rundir import RunDirError, Status

TAIL_BYTES = 16_384


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
    try:
        return rundir.read_any_json(run_dir / rundir.RUN)  # refuses a linked run.json
    except RunDirError as err:
        if run_dir.is_symlink():
            return RunDirError(f"{run_dir}: a symbolic link; not followed")
        missing = not os.path.lexists(run_dir / rundir.RUN)
        return None if missing else err


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
    """The last step and the newest metric, from the tail of metrics.jsonl (a few KB; more
    only when the tail holds no metric)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None, None
    with os.fdopen(fd, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail = TAIL_BYTES // 4
        while True:
            f.seek(max(0, size - tail))
            step, metric = _last_step_and_metric(f.read(tail).decode(errors="replace"))
            if metric is not None or tail >= min(size, TAIL_BYTES):
                return step, metric
            tail *= 4


def _last_step_and_metric(text: str) -> tuple[int | None, str | None]:
    step, metric = None, None
    for line in reversed(text.splitlines()):
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
    """The sweep's run directories: the manifest's order, then any others found. Names that
    are not run ids (``../x``, ``/etc``) are ignored: a manifest may come from anyone."""
    listed: list[Path] = []
    try:
        manifest = rundir.read_any_json(sweep_dir / rundir.SWEEP)
        ids = [r.get("run_id") for r in manifest.get("runs", []) if isinstance(r, dict)]
        listed = [sweep_dir / i for i in ids if isinstance(i, str) and rundir.is_run_id(i)]
    except RunDirError:
        pass
    seen = {p.name for p in listed}
    extra = sorted(
        entry.name
        for entry in os.scandir(sweep_dir)
        if entry.name not in seen and rundir.is_run_id(entry.name) and entry.is_dir()
    )
    return list(dict.fromkeys(listed)) + [sweep_dir / name for name in extra]


def collect(sweep_dir: Path) -> list[RunState]:
    """Every run's state, SLURM asked once. Sequential: the files are small and cached, JSON
    parsing holds the GIL, and a thread pool measured slower (scripts/bench_sweep.py)."""
    if not sweep_dir.is_dir():
        raise UserError(f"no sweep at {sweep_dir}")
    run_dirs = sweep_runs(sweep_dir)
    records = [_load(run_dir) for run_dir in run_dirs]
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

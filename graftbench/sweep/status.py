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
LATEST = COLUMNS.index("latest")
# the run id spells M, D and the seed: those columns go first when a terminal is narrow
IMPLIED_BY_RUN_ID = ("M", "D", "seed")
MIN_LATEST = 12  # narrower than this, the latest column is left out rather than cut
GAP = 2  # spaces between columns (tabulate's "simple" format)


def render(
    states: list[RunState],
    width: int | None = None,
    height: int | None = None,
    verbose: bool = False,
) -> str:
    """The status table and a line counting the states (plain text: fast for big sweeps).

    ``width``: no line is longer (the latest metric or a failed run's message is cut, with
    …, and on a narrow terminal the M, D and seed columns, which the run id repeats, go
    first). ``height``: at most this many lines (``--watch``: a redraw never scrolls).
    ``verbose``: the full message of every failed or unreadable run below the table.
    """
    rows = [
        [
            s.run_id,
            s.magnitude or "",
            s.direction or "",
            "" if s.seed is None else str(s.seed),
            s.status,
            "" if s.step is None else f"{s.step}/{s.total_steps or '?'}",
            _first_line(s.problem) if _shows_problem(s) else s.metric or "",
            s.slurm_job or "",
            "" if s.elapsed_s is None else _duration(s.elapsed_s),
        ]
        for s in states
    ]
    line = ", ".join(f"{n} {status}" for status, n in sorted(counts(states).items()))
    footer = [line or "no runs"]
    if verbose:
        footer += [f"{s.run_id}: {s.status}: {s.problem}" for s in states if _shows_problem(s)]
    if height is not None and len(rows) > height - 2 - len(footer):  # 2: the table's head
        shown = max(1, height - 3 - len(footer))
        footer.insert(0, f"… {len(rows) - shown} more (`graftbench status` without --watch)")
        rows = rows[:shown]
    columns = _fitted(rows, width)
    table = tabulate(
        [[row[i] for i in columns] for row in rows],
        headers=[COLUMNS[i] for i in columns],
        disable_numparse=True,
    )
    lines = table.splitlines() + footer[:1]
    if width is not None:
        lines = [_cut(text, width) for text in lines]
    return "\n".join(lines + footer[1:])


def _shows_problem(state: RunState) -> bool:
    return state.status in ("failed", "unreadable") and bool(state.problem)


def _fitted(rows: list[list[str]], width: int | None) -> list[int]:
    """The columns to show (empty ones left out), cutting the latest column's cells in place
    so the table fits ``width``."""
    columns = [
        i
        for i, name in enumerate(COLUMNS)
        if name in ("run id", "state") or any(row[i] for row in rows)
    ]
    if width is None or not rows:
        return columns

    def size(i: int) -> int:  # tabulate pads a header by 2
        return max(len(COLUMNS[i]) + 2, *(len(row[i]) for row in rows))

    def total(shown: list[int]) -> int:
        return sum(size(i) for i in shown) + GAP * (len(shown) - 1)

    if total(columns) > width:
        columns = [i for i in columns if COLUMNS[i] not in IMPLIED_BY_RUN_ID]
    if LATEST in columns and total(columns) > width:
        room = width - total([i for i in columns if i != LATEST]) - GAP
        if room < MIN_LATEST:
            columns.remove(LATEST)  # `--verbose` prints the messages in full
        else:
            for row in rows:
                row[LATEST] = _cut(row[LATEST], room)
    return columns


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] + (" …" if len(lines) > 1 else "") if lines else ""


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

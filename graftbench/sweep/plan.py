"""What running a sweep (again) does: record the grid, prepare run directories, and claim the
runs that need training.

The manifest (``sweep.json``) pins a sweep directory to one grid: a different grid under the
same name is refused unless ``extend`` adds its runs to the existing ones. Re-running a sweep
skips finished runs, resumes pending or interrupted ones (their checkpoints make that exact),
reruns failed ones only when asked, and leaves runs that a live process or SLURM job owns
alone. Claiming is a compare-and-set on ``run.json`` under its lock, so two sweeps started at
once never launch the same run.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.rundir import RunDirError, Status
from graftbench.sweep.grid import Grid
from graftbench.sweep.status import effective_status, owner_job, slurm_states
from graftbench.train import runner


@dataclass
class Plan:
    sweep_dir: Path
    launch: list[Path] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> run ids

    def skip(self, reason: str, run_id: str) -> None:
        self.skipped.setdefault(reason, []).append(run_id)


def sweep_dir(grid: Grid) -> Path:
    results = grid.runs[0].config["results_dir"] if grid.runs else "results"
    return Path(results) / grid.name


def grid_hash(run_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()[:12]


def write_manifest(grid: Grid, directory: Path, *, extend: bool = False) -> None:
    """Record the grid in ``sweep.json``; refuse a different grid unless ``extend``."""
    path = directory / rundir.SWEEP
    runs = [
        {
            "run_id": r.run_id,
            "overrides": list(r.overrides),
            "magnitude": r.magnitude,
            "direction": r.direction,
            "seed": r.seed,
        }
        for r in grid.runs
    ]
    axes = {k: list(v) for k, v in grid.axes.items()}
    if path.exists():
        try:
            old = rundir.read_json(path)
        except RunDirError as err:
            raise UserError(f"cannot read the sweep manifest: {err}") from None
        old_ids = [r["run_id"] for r in old["runs"]]
        new_ids = [r["run_id"] for r in runs]
        if set(new_ids) <= set(old_ids):
            return  # the same grid, or a part of it: nothing to record
        if not extend:
            common = len(set(old_ids) & set(new_ids))
            raise UserError(
                f"{directory} holds a different grid ({len(old_ids)} runs, {common} of this "
                f"grid's {len(new_ids)} among them); pick another sweep.name=..., or add "
                "--extend to add these runs to it"
            )
        runs = old["runs"] + [r for r in runs if r["run_id"] not in set(old_ids)]
        axes = {k: _union(old["grid"].get(k, []), v) for k, v in {**old["grid"], **axes}.items()}
    manifest = {
        "name": grid.name,
        "created_at": rundir.now(),
        "base_overrides": list(grid.base),
        "grid": axes,
        "config_hash": grid_hash([r["run_id"] for r in runs]),
        "runs": runs,
    }
    rundir.write_json(path, manifest)


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    return first + [v for v in second if v not in first]


def plan(grid: Grid, *, retry_failed: bool = False, extend: bool = False) -> Plan:
    """Prepare every run directory and claim the runs to launch now."""
    directory = sweep_dir(grid)
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(grid, directory, extend=extend)
    result = Plan(directory)
    launcher = {"host": socket.gethostname(), "pid": os.getpid()}
    slurm = slurm_states(_owner_jobs(directory, [spec.run_id for spec in grid.runs]))
    for spec in grid.runs:
        run_dir = runner.prepare(OmegaConf.create(spec.config), list(spec.overrides))
        outcome: dict[str, str] = {}

        def claim(record: dict[str, Any], outcome: dict[str, str] = outcome) -> dict | None:
            status = effective_status(record, slurm)
            if status.finished:
                outcome["skip"] = str(status)
            elif status is Status.FAILED and not retry_failed:
                outcome["skip"] = "failed (rerun with --retry-failed)"
            elif status in (Status.RUNNING, Status.QUEUED):
                outcome["skip"] = f"{status} elsewhere"
            else:
                return {
                    **record,
                    "status": Status.QUEUED,
                    "queued_at": rundir.now(),
                    "launcher": launcher,
                    "slurm": None,
                }
            return None

        rundir.update_json(run_dir / rundir.RUN, claim)
        if "skip" in outcome:
            result.skip(outcome["skip"], spec.run_id)
        else:
            result.launch.append(run_dir)
    return result


def _owner_jobs(directory: Path, run_ids: list[str]) -> list[str]:
    """The SLURM jobs that own existing runs: asked about once, not once per run."""
    jobs = []
    for run_id in run_ids:
        try:
            job = owner_job(rundir.read_json(directory / run_id / rundir.RUN))
        except RunDirError:
            continue
        if job is not None:
            jobs.append(job)
    return jobs


def release(run_dirs: list[Path]) -> None:
    """Put claimed runs that never started back to pending (the launch was abandoned)."""
    for run_dir in run_dirs:
        rundir.update_json(
            run_dir / rundir.RUN,
            lambda r: {**r, "status": Status.PENDING} if r.get("status") == Status.QUEUED else None,
        )

"""What running a sweep (again) does: record the grid, prepare run directories, and claim the
runs that need training.

The manifest (``sweep.json``) pins a sweep directory to one grid: a different grid under the
same name is refused unless ``extend`` adds its runs to the existing ones. Re-running a sweep
skips finished runs, resumes pending or interrupted ones (their checkpoints make that exact),
reruns failed ones only when asked, and leaves runs that a live process or SLURM job owns
alone. Claiming goes through each run's record (a compare-and-set under its lock), so two
sweeps started at once never launch the same run.

Speed: a new run costs two small files written without their own fsync; one ``os.sync`` at
the end makes the whole sweep durable.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.record import RunRecord, owner_job, records_lock, slurm_states
from graftbench.rundir import RunDirError
from graftbench.sweep.grid import Grid, RunSpec
from graftbench.train import runner


@dataclass(frozen=True)
class Launch:
    """A claimed run, ready to start: where it is, the claim's token, how to execute it."""

    run_dir: Path
    token: str
    execution: dict[str, Any]
    threads: int  # the run's own (identity); its processes get OMP_NUM_THREADS

    @property
    def devices(self) -> int:
        return int(self.execution["trainer"]["devices"])


@dataclass
class Plan:
    sweep_dir: Path
    launch: list[Launch] = field(default_factory=list)
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
    if path.exists() or path.is_symlink():
        try:
            old = rundir.read_any_json(path)
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


def prepare_sweep_dir(grid: Grid) -> Path:
    directory = sweep_dir(grid)
    for path in (directory, directory.parent):
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link; refusing to write through it")
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} exists and is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {directory}: {err.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in {directory} (permission denied)")
    return directory


def plan(grid: Grid, *, retry_failed: bool = False, extend: bool = False) -> Plan:
    """Prepare every run directory and claim the runs to launch now."""
    directory = prepare_sweep_dir(grid)
    write_manifest(grid, directory, extend=extend)
    result = Plan(directory)
    existing = {spec.run_id for spec in grid.runs if (directory / spec.run_id).exists()}
    slurm = slurm_states(_owner_jobs(directory, sorted(existing)))
    yaml_cache: dict[tuple[str, int], str] = {}  # the runs share most of their config
    with rundir.locked(records_lock(directory)):  # held once, not once per run
        _claim_all(grid, directory, existing, result, retry_failed, slurm, yaml_cache)
    os.sync()  # the files above were written without their own fsync
    return result


def _claim_all(
    grid: Grid,
    directory: Path,
    existing: set[str],
    result: Plan,
    retry_failed: bool,
    slurm: dict[str, str],
    yaml_cache: dict[tuple[str, int], str],
) -> None:
    for spec in grid.runs:
        token, skip = _claim(
            directory / spec.run_id, spec, spec.run_id in existing, retry_failed, slurm, yaml_cache
        )
        if token is None:
            result.skip(skip or "unknown", spec.run_id)
        else:
            result.launch.append(
                Launch(
                    directory / spec.run_id,
                    token,
                    spec.execution,
                    spec.config["trainer"]["threads"],
                )
            )


def _claim(
    run_dir: Path,
    spec: RunSpec,
    exists: bool,
    retry_failed: bool,
    slurm: dict[str, str],
    yaml_cache: dict[tuple[str, int], str],
) -> tuple[str | None, str | None]:
    transfer = runner.transfer_of(spec.config)
    fields = runner.record_fields(spec.config, spec.run_id, spec.overrides, transfer)
    record = runner.prepare(
        run_dir,
        spec.identity,
        fields,
        sync=False,
        create=exists,
        yaml_cache=yaml_cache,
        transfer=transfer,
    )
    if not exists:
        token = record.create_claimed(fields, sync=False)
        if token is not None:
            return token, None
    return record.claim(retry_failed=retry_failed, slurm=slurm, sync=False)


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


def release(launches: list[Launch]) -> None:
    """Put claimed runs that never started back to pending (the launch was abandoned)."""
    for launch in launches:
        RunRecord(launch.run_dir).release(launch.token)

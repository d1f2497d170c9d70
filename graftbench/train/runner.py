"""One run directory, from ``pending`` to a final status.

``prepare`` creates ``results/<sweep>/<run-id>/`` with ``config.yaml`` (the run's identity) and a
pending record; an existing directory is reused only if it holds the same identity. ``load``
rebuilds a run's config from that stored identity - data, checked against the schema, never
instantiated - and the execution settings of the current command. ``execute`` is what every
process of the run calls - in the foreground, under torchrun, or in a SLURM job: it starts the
run through its record (refusing a run another process is training), resumes from the
checkpoint when there is one, and records the ending. Exit codes: :class:`~graftbench.record.Exit`.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from graftbench import config, rundir, schema
from graftbench.errors import UserError
from graftbench.record import AlreadyFinished, Exit, RunRecord
from graftbench.rundir import RunDirError, Status

if TYPE_CHECKING:
    from graftbench.transfer import Transfer


def run_dir_for(cfg: DictConfig | dict[str, Any], run_id: str | None = None) -> Path:
    return Path(cfg["results_dir"]) / cfg["sweep"]["name"] / (run_id or config.run_id(cfg))


def prepare_run(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """The run directory of a composed config, prepared (what `graftbench train` does)."""
    run_dir = run_dir_for(cfg)
    transfer = transfer_of(cfg)
    fields = record_fields(cfg, run_dir.name, overrides, transfer)
    prepare(run_dir, config.identity(cfg), fields, transfer=transfer)
    return run_dir


def transfer_of(cfg: DictConfig | dict[str, Any]) -> Transfer | None:
    """A composed config's transfer (``schedule=transferred``), read from its source and
    checked against ``schedule.sha256``; None for any other schedule."""
    if cfg["schedule"]["name"] != schema.TRANSFERRED:
        return None
    from graftbench.transfer import transferred

    return transferred.resolve(cfg["schedule"])


def record_fields(
    cfg: DictConfig | dict[str, Any],
    run_id: str,
    overrides: Sequence[str] | None = None,
    transfer: Transfer | None = None,
) -> dict[str, Any]:
    """What run.json says about the run from the start: its id, what it trains, the overrides
    that made it (a sweep's grid point, or what `train` was given) and its transfer, if any."""
    fields = {
        "run_id": run_id,
        "overrides": list(overrides or []),
        "sweep": cfg["sweep"]["name"],
        "label": config.label(cfg),
        "magnitude": config.short_name(cfg["magnitude"]["name"]),
        "direction": config.short_name(cfg["direction"]["name"]),
        "seed": cfg["seed"],
        "task": cfg["data"]["task"],
    }
    if transfer is not None:
        from graftbench.transfer import transferred

        fields["transfer"] = transferred.record(transfer)
    return fields


def prepare(
    run_dir: Path,
    identity: dict[str, Any],
    fields: dict[str, Any],
    *,
    sync: bool = True,
    create: bool = True,
    yaml_cache: dict[tuple[str, int], str] | None = None,
    transfer: Transfer | None = None,
) -> RunRecord:
    """``run_dir`` with ``config.yaml`` (the identity) and a pending record (unless
    ``create`` is false: the caller creates it claimed); an existing directory must hold the
    same identity. ``transfer`` (:func:`transfer_of`): the run directory keeps its own copy."""
    path = run_dir / rundir.CONFIG
    try:
        run_dir.mkdir(parents=True)  # new, and ours: nothing in it to check
    except FileExistsError:
        refuse_links(run_dir)
    except OSError as err:
        raise UserError(f"cannot create {run_dir}: {err.strerror}") from None
    if path.exists():  # compared, not used: the stored identity must be this very one
        same_text = rundir.read_text(path) == rundir.yaml_text(identity, yaml_cache)
        if not same_text and (
            config.identity_hash(_stored_data(run_dir)) != config.identity_hash(identity)
        ):
            raise UserError(f"{path} holds another run than this command's; refusing to use it")
    else:
        try:
            rundir.write_yaml(path, identity, sync=sync, cache=yaml_cache)
        except (OSError, RunDirError) as err:
            raise UserError(
                f"cannot write {path}: {getattr(err, 'strerror', None) or err}"
            ) from None
    if transfer is not None:
        from graftbench.transfer import transferred

        transferred.keep(run_dir, transfer)
    record = RunRecord(run_dir)
    if create:
        record.create(fields, sync=sync)
    return record


def refuse_links(run_dir: Path) -> None:
    """A run directory, and every file graftbench reads or writes in it, must be itself: a
    symbolic link could lead out of the results (a results directory may come from anyone)."""
    names = (
        rundir.RUN,
        rundir.CONFIG,
        rundir.METRICS,
        rundir.SUMMARY,
        rundir.TRANSFER,
        rundir.CKPT,
    )
    for path in (run_dir, run_dir.parent, *(run_dir / name for name in names)):
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link; refusing to follow it")


def _stored_identity(run_dir: Path) -> dict[str, Any]:
    """The run's identity from its config.yaml, checked against the schema (as data)."""
    return config.check_identity(_stored_data(run_dir), str(run_dir / rundir.CONFIG))


def _stored_data(run_dir: Path) -> dict[str, Any]:
    path = run_dir / rundir.CONFIG
    try:
        data = rundir.read_yaml(path, versions=rundir.READABLE_VERSIONS)
    except RunDirError as err:
        raise UserError(f"not a run directory: {err}") from None
    if data.get("schema_version") != rundir.SCHEMA_VERSION:
        raise UserError(
            f"{path} was written by an older graftbench (schema_version "
            f"{data.get('schema_version')}): tables, plots and status read it, but it cannot "
            "be resumed; run it again under a new id"
        )
    return {k: v for k, v in data.items() if k != "schema_version"}


def load(
    run_dir: Path,
    execution: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> DictConfig:
    """The run's config: its stored identity with this command's execution settings
    (``execution`` as a sweep resolved them, or composed from ``overrides``)."""
    refuse_links(run_dir)
    identity = _stored_identity(run_dir)
    computed = config.run_id_of(identity)
    if computed != run_dir.name:
        raise UserError(
            f"{run_dir}: config.yaml does not match the run id (it hashes to {computed}); "
            "it was edited or copied from another run"
        )
    if execution is None:
        execution = config.execution_for(identity, overrides or [])
    return config.for_run(identity, execution)


def execute(run_dir: Path, cfg: DictConfig, token: str | None = None) -> Exit:
    """Train the run in ``run_dir`` as this process's part of it; returns the exit code."""
    from graftbench.train import distributed  # the heavy imports (torch) only when training
    from graftbench.train.engine import Engine

    record = RunRecord(run_dir)
    dist = distributed.setup(cfg.trainer.device)
    try:
        if dist.main:
            try:
                record.start(token, **_provenance(dist.world_size))
            except AlreadyFinished as done:
                print(f"{run_dir}: already {done}, nothing to do")
                return Exit.DONE
        try:
            engine = Engine(
                cfg, run_dir, run_dir.name, dist, measured=record.measured if dist.main else None
            )
            if dist.main:
                record.measured(**engine.describe())
            outcome = engine.fit()
        except UserError as err:
            if dist.main:
                record.fail(str(err))
                print(f"{run_dir}: failed: {err}", flush=True)
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: at once, from the last checkpoint
            if dist.main:
                record.interrupt(None, "SIGINT, twice")
            raise
        except Exception as err:
            traceback.print_exc()
            if dist.main:
                record.fail(f"{type(err).__name__}: {err}")
            return Exit.FAILED
    finally:
        distributed.teardown()
    if outcome.interrupted:
        if dist.main:
            record.interrupt(outcome.step, outcome.stop_signal)
            print(f"{run_dir}: interrupted at step {outcome.step}; run again to resume")
        return Exit.INTERRUPTED
    if not dist.main:
        return Exit.DONE
    status = Status.DIVERGED if outcome.diverged_step is not None else Status.DONE
    record.finish(
        status,
        {
            "step": outcome.step,
            "steps": outcome.step,
            "epochs": outcome.epochs,
            "wall_time_s": outcome.wall_time_s,
            "final": outcome.final,
            "best": outcome.best,
            "diverged_step": outcome.diverged_step,
            "replica_checksums": outcome.replica_checksums,
            "notes": outcome.notes,
        },
    )
    return Exit.for_status(status)


def _provenance(world_size: int) -> dict[str, Any]:
    from graftbench import provenance

    slurm = {
        key: os.environ[var]
        for key, var in (
            ("job_id", "SLURM_JOB_ID"),
            ("array_job_id", "SLURM_ARRAY_JOB_ID"),
            ("array_task_id", "SLURM_ARRAY_TASK_ID"),
            ("restart_count", "SLURM_RESTART_COUNT"),
        )
        if var in os.environ
    }
    return {**provenance.record(world_size), "slurm": slurm or None}

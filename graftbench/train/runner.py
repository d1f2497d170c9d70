"""One run directory, from ``pending`` to a final status.

``prepare(cfg)`` creates ``results/<sweep>/<run-id>/`` with ``config.yaml`` and a ``pending``
``run.json`` (an existing directory is reused only if it holds the same run). ``execute(dir)``
is what every process of the run calls - in the foreground, under torchrun, or in a SLURM job:
it skips finished runs, resumes from the checkpoint when there is one, and records the ending.

Exit codes: 0 done (or already done), 1 failed, 2 user error, 3 diverged, 75 interrupted by a
signal after checkpointing (EX_TEMPFAIL: run it again to resume).
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from graftbench import config, provenance, rundir
from graftbench.errors import UserError
from graftbench.rundir import Status
from graftbench.train import distributed

EXIT_DONE, EXIT_FAILED, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 3, 75


def run_dir_for(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / cfg.sweep.name / config.run_id(cfg)


def prepare(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """The run directory for ``cfg``, created with ``config.yaml`` and a pending ``run.json``."""
    run_dir = run_dir_for(cfg)
    config_path = run_dir / rundir.CONFIG
    if config_path.exists():
        existing = OmegaConf.create(_without_schema(rundir.read_yaml(config_path)))
        if config.config_hash(existing) != config.config_hash(cfg):
            raise UserError(f"{run_dir} holds a different run; refusing to overwrite it")
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_yaml(config_path, OmegaConf.to_container(cfg, resolve=True))
    rundir.update_json(
        run_dir / rundir.RUN,
        lambda current: (
            current
            or {
                **identity_fields(cfg),
                "overrides": overrides or [],
                "status": Status.PENDING,
                "created_at": rundir.now(),
            }
        ),
    )
    return run_dir


def identity_fields(cfg: DictConfig) -> dict[str, Any]:
    return {
        "run_id": config.run_id(cfg),
        "sweep": cfg.sweep.name,
        "label": config.label(cfg),
        "magnitude": config.short_name(cfg.magnitude.name),
        "direction": config.short_name(cfg.direction.name),
        "seed": cfg.seed,
        "task": cfg.data.task,
    }


def load_config(run_dir: Path) -> DictConfig:
    try:
        data = rundir.read_yaml(run_dir / rundir.CONFIG)
    except rundir.RunDirError as err:
        raise UserError(f"not a run directory: {err}") from None
    cfg = OmegaConf.create(_without_schema(data))
    OmegaConf.set_struct(cfg, True)
    return cfg


def _without_schema(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "schema_version"}


def execute(run_dir: Path) -> int:
    """Train the run in ``run_dir`` as this process's part of it; returns the exit code."""
    from graftbench.train.engine import Engine  # the heavy imports only when training

    cfg = load_config(run_dir)
    run_json = run_dir / rundir.RUN
    if rundir.status(run_dir).finished:
        print(f"{run_dir}: already {rundir.status(run_dir)}, nothing to do")
        return EXIT_DONE
    dist = distributed.setup(cfg.trainer.device)
    try:
        if dist.main:
            rundir.update_json(run_json, lambda r: _started(r, dist.world_size))
        try:
            engine = Engine(cfg, run_dir, config.run_id(cfg), dist)
            if dist.main:
                parameters = sum(p.numel() for p in engine.module.parameters())
                rundir.update_json(
                    run_json,
                    lambda r: {**r, "total_steps": engine.last_step, "parameters": parameters},
                )
            outcome = engine.fit()
        except UserError as err:
            if dist.main:
                _end(run_dir, Status.FAILED, error=str(err))
            raise
        except Exception as err:
            traceback.print_exc()
            if dist.main:
                _end(run_dir, Status.FAILED, error=f"{type(err).__name__}: {err}")
            return EXIT_FAILED
    finally:
        distributed.teardown()
    if not dist.main:
        return EXIT_INTERRUPTED if outcome.interrupted else EXIT_DONE
    if outcome.interrupted:
        rundir.update_json(
            run_json,
            lambda r: {
                **r,
                "status": Status.PENDING,
                "step": outcome.step,
                "interrupted_by": outcome.stop_signal or "a signal to another rank",
            },
        )
        print(f"{run_dir}: interrupted at step {outcome.step}; run again to resume")
        return EXIT_INTERRUPTED
    status = Status.DIVERGED if outcome.diverged_step is not None else Status.DONE
    summary = {
        "steps": outcome.step,
        "epochs": outcome.epochs,
        "wall_time_s": outcome.wall_time_s,
        "final": outcome.final,
        "best": outcome.best,
        "diverged_step": outcome.diverged_step,
        "replica_checksums": outcome.replica_checksums,
        "notes": outcome.notes,
    }
    _end(run_dir, status, summary=summary, step=outcome.step, diverged_step=outcome.diverged_step)
    return EXIT_DIVERGED if status is Status.DIVERGED else EXIT_DONE


def _started(record: dict[str, Any], world_size: int) -> dict[str, Any]:
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
    return {
        **record,
        **provenance.record(world_size),
        "status": Status.RUNNING,
        "started_at": record.get("started_at") or rundir.now(),
        "attempts": record.get("attempts", 0) + 1,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm": slurm or None,
        "error": None,
        "interrupted_by": None,
    }


def _end(
    run_dir: Path,
    status: Status,
    *,
    summary: dict | None = None,
    error: str | None = None,
    **fields: Any,
) -> None:
    record = rundir.update_json(
        run_dir / rundir.RUN,
        lambda r: {**r, **fields, "status": status, "ended_at": rundir.now(), "error": error},
    )
    keys = ("run_id", "label", "magnitude", "direction", "seed", "task")
    rundir.write_json(
        run_dir / rundir.SUMMARY,
        {**{k: record.get(k) for k in keys}, "status": status, "error": error, **(summary or {})},
    )
    if error:
        print(f"{run_dir}: {status}: {error}", file=sys.stderr)

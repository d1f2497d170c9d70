"""Distil a finished grafted run's per-layer records into a :class:`Transfer`.

Reads only the run directory: ``run.json`` (status, run id, steps per epoch), ``config.yaml``
(the optimizers, the schedule, the length of training) and the ``layers`` records of
``metrics.jsonl``. Every mistake a user can make (not a run directory, a run that is not done, a
plain M#M run, no layer records, a layer without one usable ratio) is a one-line
:class:`UserError` raised before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftbench import rundir, schema
from graftbench.errors import UserError
from graftbench.optim.schedules import make_schedule
from graftbench.transfer.fit import (
    DEFAULT_KNOTS,
    MIN_SCHEDULE_FACTOR,
    Corrections,
    corrections,
    fit_piecewise,
    fit_static,
)
from graftbench.transfer.schedule_file import KINDS, Transfer, read, write

__all__ = ["Source", "default_path", "distil", "from_run", "load", "read_source"]


METHODS = {
    "static": "median of c",
    "piecewise": "piecewise-linear least squares on the relative residual",
}


def default_path(run_dir: Path, kind: str) -> Path:
    """Where ``graftbench transfer RUN_DIR`` writes by default: inside the source run."""
    return Path(run_dir) / f"transfer-{kind}.json"


@dataclass(frozen=True)
class Source:
    """A finished grafted run's correction samples, and what a transfer file says about it."""

    run_dir: Path
    info: dict[str, Any]  # the transfer file's ``source`` block
    samples: Corrections


def read_source(run_dir: Path) -> Source:
    """The per-layer correction c = ratio / schedule recorded by the grafted run in ``run_dir``
    (also what a plot of the discovered schedules draws its points from)."""
    run_dir = Path(run_dir)
    try:
        record = rundir.read_json(run_dir / rundir.RUN)
        cfg = {k: v for k, v in rundir.read_yaml(run_dir / rundir.CONFIG).items()}
    except rundir.RunDirError as err:
        raise UserError(f"not a run directory: {err}") from None
    cfg.pop("schema_version", None)
    run_id = record.get("run_id", run_dir.name)
    if record.get("status") != rundir.Status.DONE:
        raise UserError(
            f"{run_dir}: the run is {record.get('status')}, not done; transfer reads a finished "
            "run's whole record"
        )
    magnitude, direction = cfg["magnitude"], cfg["direction"]
    if magnitude == direction:
        raise UserError(
            f"{run_dir}: {run_id} is the plain optimizer {magnitude['name']} (M#M), whose ratio "
            "is 1 by definition; transfer from a grafted run, e.g. magnitude=adagrad "
            "direction=sgd"
        )
    try:
        records = [r for r in rundir.read_jsonl(run_dir / rundir.METRICS) if r["kind"] == "layers"]
    except rundir.RunDirError as err:
        raise UserError(str(err)) from None
    if not records:
        every = cfg.get("trainer", {}).get("layer_log_every_steps")
        raise UserError(
            f"{run_dir}: no per-layer ratio records in metrics.jsonl "
            f"(trainer.layer_log_every_steps was {every}); rerun it with a smaller interval"
        )
    steps_per_epoch = _steps_per_epoch(run_dir, record, cfg)
    epochs = cfg["trainer"]["epochs"]
    total_steps = epochs * steps_per_epoch
    try:
        schedule = make_schedule(
            cfg["schedule"], steps_per_epoch=steps_per_epoch, total_steps=total_steps
        )
    except ValueError as err:
        raise UserError(f"{run_dir}: {err}") from None
    samples = corrections(records, schedule, total_steps)
    if not samples.steps:
        raise UserError(
            f"{run_dir}: every recorded step has a schedule factor below {MIN_SCHEDULE_FACTOR}"
        )
    info = {
        "run_id": run_id,
        "config_hash": schema.identity_hash(schema.split(cfg)[0]),
        "label": record.get("label", f"{magnitude['name']}#{direction['name']}"),
        "magnitude": magnitude,
        "direction": direction,
        "schedule": cfg["schedule"],
        "granularity": cfg.get("graft", {}).get("granularity", "layer"),
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
    }
    return Source(run_dir, info, samples)


def from_run(run_dir: Path, kind: str = "static", *, knots: int = DEFAULT_KNOTS) -> Transfer:
    """The ``kind`` of correction distilled from the grafted run in ``run_dir``."""
    if kind not in KINDS:
        raise UserError(f"unknown transfer kind {kind!r}; choose from: {', '.join(KINDS)}")
    if kind == "piecewise" and knots < 2:
        raise UserError(f"a piecewise fit needs at least 2 knots, not {knots}")
    source = read_source(run_dir)
    layers = {}
    for name, series in source.samples.layers.items():
        try:
            layers[name] = fit_static(series) if kind == "static" else fit_piecewise(series, knots)
        except UserError as err:
            raise UserError(f"{source.run_dir}: layer {name!r}: {err}") from None
    samples = source.samples
    fit = {
        "method": METHODS[kind],
        "knots": 1 if kind == "static" else knots,
        "min_schedule_factor": MIN_SCHEDULE_FACTOR,
        "steps": samples.steps,
        "dropped_steps": samples.dropped_steps,
        "dropped_ratios": sum(s.dropped for s in samples.layers.values()),
    }
    return Transfer(kind, layers, source.info, fit)


def distil(
    run_dir: Path, kind: str = "static", *, out: Path | None = None, knots: int = DEFAULT_KNOTS
) -> tuple[Transfer, Path]:
    """``graftbench transfer``: distil, then write (to ``out`` or next to the source run)."""
    transfer = from_run(run_dir, kind, knots=knots)
    path = Path(out) if out is not None else default_path(run_dir, kind)
    write(transfer, path)
    return transfer, path


def load(source: Path, kind: str = "static", *, knots: int = DEFAULT_KNOTS) -> Transfer:
    """``schedule.source``: a transfer file, or a run directory to distil on the spot."""
    source = Path(source)
    if source.is_dir():
        return from_run(source, kind, knots=knots)
    return read(source)


def _steps_per_epoch(run_dir: Path, record: dict[str, Any], cfg: dict[str, Any]) -> int:
    """From run.json, or from its ``total_steps`` when no ``trainer.max_steps`` cut the run."""
    if isinstance(record.get("steps_per_epoch"), int):
        return record["steps_per_epoch"]
    total, epochs = record.get("total_steps"), cfg["trainer"]["epochs"]
    if cfg["trainer"].get("max_steps") is None and isinstance(total, int) and total % epochs == 0:
        return total // epochs
    raise UserError(
        f"{run_dir}: run.json records no steps_per_epoch and trainer.max_steps cut the run "
        "short, so its schedule cannot be rebuilt"
    )

"""``schedule=transferred``: a run of D alone with a correction distilled from a grafted run.

    graftbench train magnitude=sgd schedule=transferred schedule.source=RUN_DIR_OR_FILE

Three moments, each in one function:

- composing (:func:`complete`, from ``config.finalize``): the source (a transfer file, or a
  finished grafted run directory distilled on the spot) is read and checked before anything is
  written: the run trains the source's D (``magnitude=<D>``, no ``direction``), its model has
  exactly the transfer's layers, and ``schedule.sha256``, the transfer's content hash, goes
  into the run's identity. Where the file lies (``schedule.source``) and how a run directory is
  distilled (``kind``, ``knots``) are execution settings: the same content read from two paths
  is the same run.
- preparing (:func:`keep`, from ``runner.prepare``): the run directory gets its own copy,
  ``transfer.json``; resumes, DDP ranks and SLURM jobs read that copy, never the source path,
  which may have changed or gone by then.
- training (:func:`read_kept`, from the engine): the copy, checked against the identity's hash.

D's learning rate: the source run's ``direction.lr`` unless ``magnitude.lr`` is *given*, i.e.
set to a value on the command line, in a sweep axis or in an experiment file. The schema's
default (``peak_lr.<name>``, torch's default) does not count as given: it is the workload's rate
for that optimizer run on its own schedule, not the rate the correction was measured against.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.optim.schedules import make_schedule
from graftbench.transfer.apply import check_direction, check_layers
from graftbench.transfer.fit import DEFAULT_KNOTS
from graftbench.transfer.schedule_file import Transfer, read, write
from graftbench.transfer.source import from_run

__all__ = ["complete", "keep", "layer_names", "read_kept", "record", "resolve"]

NAME = "transferred"


def complete(container: dict[str, Any], *, lr_given: bool) -> None:
    """Fill in a composed config with ``schedule=transferred`` (in place): D's learning rate
    unless given, and ``schedule.sha256``; raises :class:`UserError` on any mismatch."""
    if container.get("direction") is not None:
        raise UserError(
            "schedule=transferred trains one optimizer, D, alone: choose it with "
            "magnitude=<name> and leave direction out"
        )
    schedule = container["schedule"]
    transfer = resolve(schedule)
    magnitude = container["magnitude"]
    source_d = transfer.direction["name"]
    if magnitude["name"] != source_d:
        raise UserError(
            f"the transfer from {transfer.source['run_id']} is for {source_d}'s direction "
            f"({transfer.source['label']}); train it with magnitude={source_d}, not "
            f"magnitude={magnitude['name']}"
        )
    if not lr_given:
        magnitude["lr"] = transfer.direction_lr
    check_direction(transfer, magnitude)
    check_layers(layer_names(container["model"]), transfer)
    try:  # the source's schedule, which this run follows too
        make_schedule(transfer.source["schedule"], total_steps=1)
    except (ValueError, TypeError) as err:
        raise UserError(f"the transfer's source.schedule: {err}") from None
    schedule["sha256"] = transfer.content_hash


def resolve(schedule: Mapping[str, Any]) -> Transfer:
    """The transfer a composed ``schedule`` section reads from ``source``, checked against its
    ``kind`` and ``sha256`` when they are set. Cached while the source is unchanged (a sweep
    composes and prepares many runs from one source)."""
    source = Path(str(schedule["source"]))
    kind, knots = schedule.get("kind"), schedule.get("knots") or DEFAULT_KNOTS
    transfer = _load(source, kind, knots, _stamp(source))
    if kind is not None and transfer.kind != kind:
        raise UserError(
            f"{source} holds a {transfer.kind} transfer, but schedule.kind={kind}; leave "
            "schedule.kind out for a file"
        )
    pinned = schedule.get("sha256")
    if pinned is not None and pinned != transfer.content_hash:
        raise UserError(
            f"{source} hashes to {transfer.content_hash[:12]}..., not to schedule.sha256="
            f"{str(pinned)[:12]}...: its content changed since the run was composed"
        )
    return transfer


def keep(run_dir: Path, transfer: Transfer) -> None:
    """The run directory's own copy of ``transfer``; an existing copy must be the same."""
    path = run_dir / rundir.TRANSFER
    if path.exists() or path.is_symlink():
        kept = read(path)
        if kept.content_hash != transfer.content_hash:
            raise UserError(f"{path} holds another transfer; refusing to overwrite it")
        return
    write(transfer, path)


def read_kept(run_dir: Path, sha256: str) -> Transfer:
    """The run directory's copy, which must hash to the run's identity (``schedule.sha256``)."""
    path = run_dir / rundir.TRANSFER
    if not path.exists() and not path.is_symlink():
        raise UserError(
            f"{path} is missing: a run with schedule=transferred keeps its transfer there from "
            "the moment it is prepared"
        )
    transfer = read(path)
    if transfer.content_hash != sha256:
        raise UserError(
            f"{path} hashes to {transfer.content_hash[:12]}..., not to the run's "
            f"schedule.sha256 {sha256[:12]}...: it was edited or copied from another run"
        )
    return transfer


def record(transfer: Transfer) -> dict[str, Any]:
    """What run.json and summary.json say about a run's transfer."""
    return {
        "source_run_id": transfer.source["run_id"],
        "source_label": transfer.source["label"],
        "kind": transfer.kind,
        "sha256": transfer.content_hash,
    }


def _load(source: Path, kind: str | None, knots: int, stamp: tuple) -> Transfer:
    key = (str(source.absolute()), kind, knots, stamp)
    if key not in _CACHE:
        if source.is_dir():
            transfer = from_run(source, kind or "static", knots=knots)
        else:
            transfer = read(source)
        if len(_CACHE) >= _CACHED:
            _CACHE.clear()
        _CACHE[key] = transfer
    return _CACHE[key]


_CACHE: dict[tuple, Transfer] = {}
_CACHED = 16  # sources: a sweep's schedule.source axis


def _stamp(source: Path) -> tuple:
    """What changes when the source does: the files it is read from, by size and time."""
    paths = (
        [source / rundir.RUN, source / rundir.CONFIG, source / rundir.METRICS]
        if source.is_dir()
        else [source]
    )
    stamps = []
    for path in paths:
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stamps)


def layer_names(model: Mapping[str, Any]) -> list[str]:
    """The trainable tensors of the model a config builds (on the meta device: no memory)."""
    import torch

    from graftbench.models import build_model

    with torch.device("meta"):
        built = build_model(model)
    return [name for name, p in built.named_parameters() if p.requires_grad]

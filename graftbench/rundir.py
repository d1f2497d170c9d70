"""The run directory: the contract between training and everything after it.

    results/<sweep>/sweep.json          the sweep manifest (see ``SWEEP``)
    results/<sweep>/<run-id>/
        config.yaml     the resolved run config (plus ``schema_version``)
        run.json        identity, provenance and live status (see ``RUN_FIELDS``)
        metrics.jsonl   a header line, then one record per event (see ``METRIC_KINDS``)
        summary.json    final and best metrics, written when the run ends
        ckpt/           checkpoints (``last.pt``)

Every file carries ``schema_version``. JSON and YAML files are replaced atomically (temporary
file in the same directory, fsync, rename), so a reader sees the old or the new content, never
half of it. ``metrics.jsonl`` is appended one whole line per ``write``; readers ignore a torn
last line. Readers raise :class:`RunDirError` for a missing, half-written or future-schema file;
reporting code turns that into a marked cell, never a crash.

``run.json`` fields: ``run_id``, ``sweep``, ``magnitude``, ``direction``, ``seed``,
``overrides`` (the grid point), ``task``, ``status`` (a :class:`Status`), ``step``,
``total_steps``, ``epoch``, ``created_at``/``started_at``/``ended_at``/``heartbeat_at`` (ISO 8601
UTC), ``error``, ``diverged_step``, ``host``, ``pid``, ``slurm`` (job id, array task), ``git``
(sha, dirty), ``versions``, ``hardware``.

``sweep.json`` fields: ``name``, ``created_at``, ``base_overrides`` (applied to every run),
``grid`` (swept key -> list of values), ``config_hash`` (of the grid definition), and ``runs``: a
list of ``{run_id, overrides, magnitude, direction, seed}``, one per grid point, in grid order.
A run directory without a manifest around it (a single ``graftbench train``) is still complete.

``summary.json`` fields: ``run_id``, ``magnitude``, ``direction``, ``seed``, ``task``,
``status``, ``steps``, ``epochs``, ``wall_time_s``, ``final`` and ``best`` (metric name ->
value: ``loss``, ``top1``, ``top5``, ``bleu``, ...), ``diverged_step``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

SCHEMA_VERSION = 1

SWEEP = "sweep.json"
CONFIG = "config.yaml"
RUN = "run.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CKPT = "ckpt"

# ``kind`` of the records in metrics.jsonl:
#   train   step, epoch, loss, lr, samples_per_s, step_time_s, graft {ratio_mean, ...}
#   eval    step, epoch, and the task's metrics (loss, top1, top5 | bleu)
#   layers  step, ratio {tensor name: ||dM||/||dD||}
METRIC_KINDS = ("train", "eval", "layers")


class Status(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DIVERGED = "diverged"

    @property
    def finished(self) -> bool:
        """Done and diverged runs are results: never rerun or overwritten."""
        return self in (Status.DONE, Status.DIVERGED)


class RunDirError(Exception):
    """A run-directory file that cannot be read: missing, half-written or of another schema."""


def status(run_dir: Path) -> Status:
    """The status recorded in ``run_dir``'s run.json (raises ``RunDirError``)."""
    return Status(read_json(run_dir / RUN)["status"])


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- atomic files ---------------------------------------------------------------------------
def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` (with ``schema_version`` first) atomically."""
    payload = {"schema_version": SCHEMA_VERSION, **data}
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: unreadable ({err})") from None
    return _checked(path, data)


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    payload = {"schema_version": SCHEMA_VERSION, **data}
    write_text_atomic(path, yaml.safe_dump(payload, sort_keys=False))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    except yaml.YAMLError as err:
        raise RunDirError(f"{path}: unreadable ({err})") from None
    return _checked(path, data)


def _checked(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: not a mapping")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunDirError(
            f"{path}: schema_version {version!r} is not supported (this graftbench reads "
            f"{SCHEMA_VERSION})"
        )
    return data


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``path`` across processes (sweep and run)."""
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        yield


def update_json(path: Path, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict:
    """Atomically replace ``path`` with ``change(current)``; ``None`` from ``change`` leaves
    the file alone. Returns what the file holds afterwards."""
    with locked(path):
        current = read_json(path) if path.exists() else {}
        new = change(dict(current))
        if new is None:
            return current
        new.pop("schema_version", None)
        write_json(path, new)
        return {"schema_version": SCHEMA_VERSION, **new}


# -- metrics.jsonl --------------------------------------------------------------------------
def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one whole line (a header line first if the file is new)."""
    lines = ""
    if not path.exists():
        lines = json.dumps({"schema_version": SCHEMA_VERSION, "kind": "header"}) + "\n"
    lines += json.dumps(record, default=float) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records after the header; a torn last line (a writer was killed) is ignored."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1:  # torn last line, no newline yet
                break
            raise RunDirError(f"{path}:{number + 1}: unreadable line") from None
    if not records:
        raise RunDirError(f"{path}: empty")
    _checked(path, records[0])
    return records[1:]


def rewrite_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Atomically drop the records ``keep`` rejects (e.g. those past a resumed checkpoint)."""
    if not path.exists():
        return
    records = [r for r in read_jsonl(path) if keep(r)]
    header = {"schema_version": SCHEMA_VERSION, "kind": "header"}
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in [header, *records]))

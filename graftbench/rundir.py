"""The run directory: the contract between training and everything after it.

    results/<sweep>/sweep.json          the sweep manifest (see ``SWEEP``)
    results/<sweep>/.records.lock       serialises the run records of the folder
    results/<sweep>/<run-id>/
        config.yaml     the run's identity (graftbench/schema.py): what it computes
        run.json        the run record: ids, status, owner, provenance (graftbench/record.py)
        metrics.jsonl   a header line, then one record per event (see ``METRIC_KINDS``)
        summary.json    final and best metrics, written when the run ends
        transfer.json   a run of D with a transferred schedule: its own copy of the transfer
                        (graftbench.transfer's format, with its own ``schema_version``)
        ckpt/           checkpoints (``last.pt``)

Every file carries ``schema_version`` (2 since config.yaml holds the identity only; tables,
plots and status also read version 1). JSON and YAML files are replaced atomically (a temporary
file in the same folder, renamed), with the user's umask; ``metrics.jsonl`` is appended one whole
line per write and readers ignore a torn last line.

A results directory may come from anyone, so every reader is careful: no symbolic link is
followed (``O_NOFOLLOW``) or written through, files over a size limit are refused, YAML with
anchors or aliases is refused, run ids that are not plain names (``../x``) are ignored, and
nothing read is ever instantiated. Readers raise :class:`RunDirError`; reporting code turns it
into a marked cell, never a crash.

``run.json`` fields: ``run_id``, ``sweep``, ``label``, ``magnitude``, ``direction``, ``seed``,
``task``, ``overrides``, ``status`` (a :class:`Status`), ``owner`` (token, host, pid),
``slurm`` (job ids), ``created_at``/``queued_at``/``started_at``/``ended_at`` (ISO 8601 UTC),
``attempts``, ``step``, ``total_steps``, ``steps_per_epoch``, ``parameters``, ``threads``,
``cpu_capability``, ``optimizer_state_bytes`` (the tensors of the optimizer's state after the
first step), ``transfer`` (a run with a transferred schedule: ``source_run_id``,
``source_label``, ``kind``, ``sha256``; also in ``summary.json``), ``error``,
``interrupted_by``, ``diverged_step``, ``git`` (sha, dirty), ``versions``, ``hardware``,
``command``.

``sweep.json`` fields: ``name``, ``created_at``, ``base_overrides`` (applied to every run),
``grid`` (swept key -> list of values), ``config_hash`` (of the grid definition), and ``runs``: a
list of ``{run_id, overrides, magnitude, direction, seed}``, one per grid point, in grid order.
A run directory without a manifest around it (a single ``graftbench train``) is still complete.

``summary.json`` fields: ``run_id``, ``magnitude``, ``direction``, ``seed``, ``task``,
``status``, ``error``, ``steps``, ``epochs``, ``wall_time_s``, ``final`` and ``best`` (metric
name -> value: ``loss``, ``top1``, ``top5``, ``bleu``, ...), ``diverged_step``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

# 2: config.yaml holds the run's identity only; run.json has the ``interrupted`` status,
# ``threads``, ``cpu_capability``, ``steps_per_epoch``.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, SCHEMA_VERSION)  # what tables, plots and status read

SWEEP = "sweep.json"
CONFIG = "config.yaml"
RUN = "run.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TRANSFER = "transfer.json"
CKPT = "ckpt"

# Largest file a reader accepts: a results directory may come from anyone.
MAX_BYTES = {SWEEP: 512 << 20, CONFIG: 1 << 20, RUN: 4 << 20, SUMMARY: 4 << 20, TRANSFER: 64 << 20}
MAX_METRICS_BYTES = 4 << 30

# ``kind`` of the records in metrics.jsonl:
#   train   step, epoch, loss, lr, samples_per_s, step_time_s, graft {ratio_mean, ...}
#   eval    step, epoch, and the task's metrics (loss, top1, top5 | bleu)
#   layers  step, ratio {tensor name: ||dM||/||dD||}
METRIC_KINDS = ("train", "eval", "layers")

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")


class Status(StrEnum):
    PENDING = "pending"  # created, never claimed
    QUEUED = "queued"  # claimed by a sweep, not started yet
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # stopped at a checkpoint by a signal: resumable
    DONE = "done"
    FAILED = "failed"
    DIVERGED = "diverged"

    @property
    def finished(self) -> bool:
        """Done and diverged runs are results: never rerun or overwritten."""
        return self in (Status.DONE, Status.DIVERGED)

    @property
    def ended(self) -> bool:
        """No process is working on it and none will without being asked."""
        return self.finished or self is Status.FAILED

    @property
    def active(self) -> bool:
        """Someone (a sweep, a process, a SLURM job) owns it now, if that owner is alive."""
        return self in (Status.QUEUED, Status.RUNNING)


class RunDirError(Exception):
    """A run-directory file that cannot be read: missing, half-written, of another schema, a
    symbolic link, or too large."""


def is_run_id(name: str) -> bool:
    """A name a run directory may have: no path separators, no ``..``, no leading dot."""
    return bool(_RUN_ID.match(name)) and ".." not in name


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- atomic files, with the user's umask, never through a link -----------------------------
def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
FILE_MODE = 0o666 & ~_UMASK


def refuse_links(path: Path) -> None:
    """Refuse to write ``path`` when it or its folder is a symbolic link (it would lead out
    of the results directory)."""
    for candidate in (path, path.parent):
        if candidate.is_symlink():
            raise RunDirError(f"{candidate} is a symbolic link; refusing to write through it")


_TEMPORARY = itertools.count()


def write_text_atomic(path: Path, text: str, *, sync: bool = True) -> None:
    """Replace ``path`` with ``text``: a reader sees the old or the new file, never half.
    ``sync=False`` leaves flushing to the caller (one ``os.sync`` after many files)."""
    refuse_links(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_TEMPORARY)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o666)  # the kernel applies the user's umask
    except FileNotFoundError:  # a new folder
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any], *, sync: bool = True) -> None:
    """Write ``data`` (with ``schema_version`` first) atomically."""
    payload = {"schema_version": SCHEMA_VERSION, **data}
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    write_text_atomic(path, text, sync=sync)


def read_text(path: Path, limit: int | None = None) -> str:
    """A file's text, refusing symbolic links and files over ``limit`` bytes."""
    limit = limit if limit is not None else MAX_BYTES.get(path.name, 64 << 20)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    except OSError as err:
        if path.is_symlink():
            raise RunDirError(f"{path}: a symbolic link; refusing to follow it") from None
        raise RunDirError(f"{path}: unreadable ({err.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise RunDirError(f"{path}: {size:,} bytes, more than the {limit:,} allowed")
        data = f.read(limit + 1)
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise RunDirError(f"{path}: unreadable ({err})") from None


def read_json(path: Path, *, versions: tuple[int, ...] = (SCHEMA_VERSION,)) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path))
    except (json.JSONDecodeError, RecursionError) as err:
        raise RunDirError(f"{path}: unreadable ({err})") from None
    return _checked(path, data, versions)


def read_any_json(path: Path) -> dict[str, Any]:
    """A run-directory JSON file of any version this graftbench can report on."""
    return read_json(path, versions=READABLE_VERSIONS)


def write_yaml(
    path: Path,
    data: dict[str, Any],
    *,
    sync: bool = True,
    cache: dict[tuple[str, int], str] | None = None,
) -> None:
    write_text_atomic(path, yaml_text(data, cache), sync=sync)


def yaml_text(data: dict[str, Any], cache: dict[tuple[str, int], str] | None = None) -> str:
    """``data`` as YAML, ``schema_version`` first. ``cache`` keeps the text of top-level values
    by ``id``: a sweep's configs share most of their subtrees, so each is rendered once (the
    caller keeps those objects alive while the cache lives)."""
    parts = [f"schema_version: {SCHEMA_VERSION}\n"]
    for key, value in data.items():
        text = (
            cache.get((key, id(value))) if cache is not None and isinstance(value, dict) else None
        )
        if text is None:
            text = yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False)
            if cache is not None and isinstance(value, dict):
                cache[(key, id(value))] = text
        parts.append(text)
    return "".join(parts)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Never anchors and aliases (readers refuse them): a shared object is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _no_aliases(text: str) -> None:
    """Refuse anchors and aliases: a few lines of aliases can expand to gigabytes."""
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.YAMLError(f"aliases are not allowed (line {event.start_mark.line + 1})")


def read_yaml(path: Path, *, versions: tuple[int, ...] = (SCHEMA_VERSION,)) -> dict[str, Any]:
    try:
        text = read_text(path)
        _no_aliases(text)
        data = yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, RecursionError) as err:
        raise RunDirError(f"{path}: unreadable ({_first_line(err)})") from None
    return _checked(path, data, versions)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _checked(path: Path, data: Any, versions: tuple[int, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: not a mapping")
    version = data.get("schema_version")
    if version not in versions:
        raise RunDirError(
            f"{path}: schema_version {version!r} is not supported (this graftbench reads "
            f"{', '.join(map(str, versions))})"
        )
    return data


_LOCKS: dict[str, FileLock] = {}


@contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Serialise read-modify-write across processes while holding the file lock ``lock``;
    re-entrant within a process (a sweep holds its records' lock while it plans)."""
    refuse_links(lock)
    key = str(lock)
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(key, mode=FILE_MODE)
    with _LOCKS[key]:
        yield


def update_json(
    path: Path,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    *,
    sync: bool = True,
    lock: Path | None = None,
) -> dict:
    """Atomically replace ``path`` with ``change(current)`` under ``lock`` (default: a lock file
    beside ``path``); ``None`` from ``change`` leaves the file alone. Returns what the file
    holds afterwards."""
    with locked(lock or path.with_name(f".{path.name}.lock")):
        current = read_json(path) if path.exists() else {}
        new = change(dict(current))
        if new is None:
            return current
        new.pop("schema_version", None)
        write_json(path, new, sync=sync)
        return {"schema_version": SCHEMA_VERSION, **new}


# -- metrics.jsonl --------------------------------------------------------------------------
def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one whole line (a header line first if the file is new)."""
    lines = ""
    if not path.exists():
        lines = json.dumps({"schema_version": SCHEMA_VERSION, "kind": "header"}) + "\n"
    lines += json.dumps(record, default=float) + "\n"
    refuse_links(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    except OSError as err:
        raise RunDirError(f"{path}: cannot append ({err.strerror})") from None
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records after the header; a torn last line (a writer was killed) is ignored."""
    text = read_text(path, MAX_METRICS_BYTES)
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines) - 1:  # torn last line, no newline yet
                break
            raise RunDirError(f"{path}:{number + 1}: unreadable line") from None
    if not records:
        raise RunDirError(f"{path}: empty")
    _checked(path, records[0], READABLE_VERSIONS)
    return records[1:]


def rewrite_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Atomically drop the records ``keep`` rejects (e.g. those past a resumed checkpoint)."""
    if not path.exists():
        return
    records = [r for r in read_jsonl(path) if keep(r)]
    header = {"schema_version": SCHEMA_VERSION, "kind": "header"}
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in [header, *records]))

"""The run record: the one owner of a run's state, and the only writer of ``run.json`` and
``summary.json``.

A run moves through named transitions, each a compare-and-set on ``run.json`` under its lock:

    create     (nothing)                                  -> pending
    claim      pending | interrupted | failed*  | stale   -> queued      (a sweep, with a token)
    launched   queued                                      -> queued      (worker pid, SLURM ids)
    release    queued                                      -> pending     (launch abandoned)
    start      queued or running with our token | pending | interrupted | failed* | stale
                                                           -> running     (this process)
    measured   running                                     -> running     (sizes, threads, CPU,
                                                                          optimizer state bytes)
    interrupt  running                                     -> interrupted (checkpointed: resumable)
    finish     running                                     -> done | diverged   (+ summary.json)
    fail       anything not finished                       -> failed            (+ summary.json)

(* failed only when asked to retry; *stale*: queued or running, but the owner - a process on
this host or a SLURM job - is gone.) A sweep claims runs with a fresh token and passes it to
the processes it starts (``GRAFTBENCH_CLAIM``); ``graftbench train`` without a token claims the
run itself, so two processes never train one run at once.

Exit codes (:class:`Exit`) are shared by the runner, the launchers, the monitor and the CLI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from enum import IntEnum
from pathlib import Path
from typing import Any

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.rundir import RunDirError, Status

CLAIM_ENV = "GRAFTBENCH_CLAIM"


class Exit(IntEnum):
    """How a process that trained (or followed) a run ended."""

    DONE = 0
    FAILED = 1
    USAGE = 2  # a user's mistake: one line, nothing written
    DIVERGED = 3  # a result: the pair does not train
    INTERRUPTED = 75  # EX_TEMPFAIL: checkpointed; run it again to resume

    @classmethod
    def of(cls, code: int) -> Exit:
        """An exit code as an ``Exit`` (anything unknown, e.g. a crash, is FAILED)."""
        try:
            return cls(code)
        except ValueError:
            return cls.FAILED

    @property
    def meaning(self) -> str:
        return {0: "done", 1: "failed", 2: "refused", 3: "diverged", 75: "interrupted"}[self]

    @property
    def is_result(self) -> bool:
        """The run ended with a result (done or diverged)."""
        return self in (Exit.DONE, Exit.DIVERGED)

    @classmethod
    def for_status(cls, status: Status) -> Exit:
        return {
            Status.DONE: cls.DONE,
            Status.DIVERGED: cls.DIVERGED,
            Status.FAILED: cls.FAILED,
        }.get(status, cls.INTERRUPTED)


# -- who owns a run ----------------------------------------------------------------------------
SLURM_ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
}
UNKNOWN = "?"  # SLURM could not be asked: keep the recorded status rather than guess


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """The SLURM state of each job id asked about: "" for a job squeue no longer knows,
    ``UNKNOWN`` for all of them when squeue is missing or fails (a controller outage must not
    make running jobs look dead)."""
    if not job_ids:
        return {}
    cannot_tell = dict.fromkeys(job_ids, UNKNOWN)
    if shutil.which("squeue") is None:
        return cannot_tell
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted(set(job_ids)))],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return cannot_tell
    if out.returncode != 0:  # squeue fails outright when it knows none of the ids
        return dict.fromkeys(job_ids, "") if "Invalid job id" in out.stderr else cannot_tell
    states = dict.fromkeys(job_ids, "")
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        states[job] = state
    return states


def owner_job(record: dict[str, Any]) -> str | None:
    """The SLURM job that owns the run (its array task id form, as squeue prints it)."""
    slurm = record.get("slurm") or {}
    if slurm.get("array_job_id") and slurm.get("array_task_id") not in (None, ""):
        return f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    return slurm.get("job_id")


def effective_status(record: dict[str, Any], slurm: dict[str, str] | None = None) -> Status:
    """The recorded status, with dead owners of running/queued runs made resumable again
    (interrupted if the run had started, pending if not)."""
    try:
        status = Status(record.get("status"))
    except ValueError:
        return Status.FAILED
    if not status.active:
        return status
    stale = Status.INTERRUPTED if record.get("started_at") else Status.PENDING
    job = owner_job(record)
    if job is not None:
        states = slurm if slurm is not None and job in slurm else slurm_states([job])
        if states[job] == UNKNOWN:
            return status
        return status if states[job] in SLURM_ACTIVE else stale
    owner = record.get("owner") or {}
    if owner.get("host") == socket.gethostname() and owner.get("pid"):
        return status if pid_alive(int(owner["pid"])) else stale
    return status


# -- the record --------------------------------------------------------------------------------
class RunRecord:
    """``run.json`` and ``summary.json`` of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.path = run_dir / rundir.RUN
        # one lock for the records of a sweep folder: no lock file per run (creating a file in
        # each of 10,000 folders costs more than everything else a sweep prepares)
        self.lock = records_lock(run_dir.parent)

    def read(self) -> dict[str, Any]:
        return rundir.read_json(self.path)

    def status(self) -> Status:
        return Status(self.read()["status"])

    # -- transitions ---------------------------------------------------------------------------
    def create(self, fields: dict[str, Any], *, sync: bool = True) -> None:
        """A pending record, unless one exists."""
        rundir.update_json(
            self.path,
            lambda current: (
                None
                if current
                else {**fields, "status": Status.PENDING, "created_at": rundir.now()}
            ),
            sync=sync,
            lock=self.lock,
        )

    def create_claimed(self, fields: dict[str, Any], *, sync: bool = True) -> str | None:
        """A new record claimed at once by this sweep (one write instead of two); its token,
        or None when a record exists (claim it then)."""
        token = uuid.uuid4().hex
        created = rundir.update_json(
            self.path,
            lambda current: (
                None
                if current
                else {
                    **fields,
                    "status": Status.QUEUED,
                    "created_at": rundir.now(),
                    "queued_at": rundir.now(),
                    "owner": _owner(token),
                }
            ),
            sync=sync,
            lock=self.lock,
        )
        return token if (created.get("owner") or {}).get("token") == token else None

    def claim(
        self, *, retry_failed: bool, slurm: dict[str, str] | None = None, sync: bool = True
    ) -> tuple[str | None, str | None]:
        """(token, None) when this sweep now owns the run, or (None, why it was skipped)."""
        token = uuid.uuid4().hex
        outcome: dict[str, str] = {}

        def change(record: dict[str, Any]) -> dict[str, Any] | None:
            status = effective_status(record, slurm)
            if status.finished:
                outcome["skip"] = str(status)
            elif status is Status.FAILED and not retry_failed:
                outcome["skip"] = "failed (rerun with --retry-failed)"
            elif status.active:
                outcome["skip"] = f"{status} elsewhere"
            else:
                return {
                    **record,
                    "status": Status.QUEUED,
                    "queued_at": rundir.now(),
                    "owner": _owner(token),
                    "slurm": None,
                }
            return None

        rundir.update_json(self.path, change, sync=sync, lock=self.lock)
        return (None, outcome["skip"]) if "skip" in outcome else (token, None)

    def launched(self, token: str, **fields: Any) -> None:
        """Where the claimed run went: ``worker_pid``, ``slurm`` ids, ``log``."""
        self._change(
            lambda r: {**r, **fields} if _owned(r, token) else None,
        )

    def release(self, token: str) -> None:
        """A claimed run that never started goes back to pending."""
        self._change(
            lambda r: (
                {**r, "status": Status.PENDING, "owner": None}
                if r.get("status") == Status.QUEUED and _owned(r, token)
                else None
            )
        )

    def start(self, token: str | None, *, retry_failed: bool = True, **fields: Any) -> None:
        """This process starts (or resumes) the run; refuses a run someone else is training."""
        problem: dict[str, str] = {}
        me = _owner(token)

        def change(record: dict[str, Any]) -> dict[str, Any] | None:
            status = Status(record["status"])
            ours = token is not None and _owned(record, token)
            effective = effective_status(record)
            if effective.finished:
                problem["finished"] = str(effective)
            elif effective.active and not ours:
                owner = record.get("owner") or {}
                where = owner_job(record) or f"pid {owner.get('pid')} on {owner.get('host')}"
                problem["busy"] = f"{self.dir}: {status} ({where}); not starting it twice"
            elif effective is Status.FAILED and not retry_failed:
                problem["busy"] = f"{self.dir}: failed; rerun it with --retry-failed"
            else:
                return {
                    **record,
                    **fields,
                    "status": Status.RUNNING,
                    "started_at": record.get("started_at") or rundir.now(),
                    "attempts": record.get("attempts", 0) + 1,
                    "owner": me,
                    "error": None,
                    "interrupted_by": None,
                }
            return None

        self._change(change)
        if "busy" in problem:
            raise UserError(problem["busy"])
        if "finished" in problem:
            raise AlreadyFinished(problem["finished"])

    def measured(self, **fields: Any) -> None:
        """What only the started run knows: steps, parameters, threads, CPU capability."""
        self._change(lambda r: {**r, **fields})

    def interrupt(self, step: int | None, signal: str | None) -> None:
        """Stopped by a signal; resumable from its last checkpoint (``step``, if known)."""
        self._change(
            lambda r: {
                **r,
                "status": Status.INTERRUPTED,
                "step": step if step is not None else r.get("step"),
                "interrupted_by": signal or "a signal to another rank",
            }
        )

    def finish(self, status: Status, summary: dict[str, Any]) -> None:
        """Done or diverged, with the summary (final and best metrics)."""
        assert status.finished
        self._end(status, None, summary)

    def fail(self, error: str, summary: dict[str, Any] | None = None) -> None:
        """Failed, with the error; a finished run is never turned into a failed one."""
        self._end(Status.FAILED, error, summary or {})

    def _end(self, status: Status, error: str | None, summary: dict[str, Any]) -> None:
        ended: dict[str, Any] = {}

        def change(record: dict[str, Any]) -> dict[str, Any] | None:
            if Status(record.get("status", "pending")).finished:
                return None
            fields = {k: summary[k] for k in ("step", "diverged_step") if k in summary}
            ended.update(
                {
                    **record,
                    **fields,
                    "status": status,
                    "ended_at": rundir.now(),
                    "error": error,
                }
            )
            return ended

        self._change(change)
        if not ended:
            return
        keys = ("run_id", "label", "magnitude", "direction", "seed", "task")
        optional = {k: ended[k] for k in ("transfer", "optimizer_state_bytes") if k in ended}
        rundir.write_json(
            self.dir / rundir.SUMMARY,
            {
                **{k: ended.get(k) for k in keys},
                **optional,
                "status": status,
                "error": error,
                **summary,
            },
        )

    def _change(self, change: Any) -> dict[str, Any]:
        if not self.path.exists():
            raise RunDirError(f"{self.path}: missing")
        return rundir.update_json(self.path, change, lock=self.lock)


class AlreadyFinished(Exception):
    """The run is done or diverged: nothing to do."""


RECORDS_LOCK = ".records.lock"


def records_lock(folder: Path) -> Path:
    """The lock serialising every record transition of the runs in ``folder``."""
    return folder / RECORDS_LOCK


def _owner(token: str | None) -> dict[str, Any]:
    return {"token": token, "host": socket.gethostname(), "pid": os.getpid()}


def _owned(record: dict[str, Any], token: str) -> bool:
    return (record.get("owner") or {}).get("token") == token


def claim_token() -> str | None:
    """The token a launcher handed this process (None: not launched by a sweep)."""
    return os.environ.get(CLAIM_ENV) or None

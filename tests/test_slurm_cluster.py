"""What the SLURM launcher relies on, proven with submitit on the real single-node cluster.

Job arrays and their parallelism limit, where the logs go, and the checkpoint recipe that
survives requeue, preemption, the time-limit warning signal and cancellation. The findings
are summarized in tests/SLURM_NOTES.md.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import submitit

from tests.slurm_cluster import REPO_ROOT, SlurmCluster

pytestmark = pytest.mark.slurm

STEPS = 25
STEP_S = 0.2
SAVE_EVERY = 4
JOB_TIMEOUT_S = 90.0


def checksum(steps: int, start: int = 0, acc: int = 0) -> int:
    """Order-sensitive fold of the step numbers: a skipped or repeated step changes it."""
    for step in range(start, steps):
        acc = (acc * 1_000_003 + step + 1) % (2**61 - 1)
    return acc


class StopRequest:
    """Remembers the first SIGTERM or SIGUSR2 instead of acting inside the signal handler.

    A handler runs between two bytecodes of the interrupted code, where the state may be half
    updated (in training: halfway through an optimizer step), so it only sets this flag and
    the loop saves at its next step boundary. Installing it replaces submitit's own handlers,
    which ignore SIGTERM and, on SIGUSR2, call `checkpoint()` right inside the handler.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        for signum in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)


@dataclass(frozen=True)
class ResumableCount:
    """The checkpoint recipe, with a checksum over slow steps standing in for training.

    Progress lives in `workdir/checkpoint.json`, written atomically every `save_every` steps and
    when a stop is requested, and read back on start, so every restart resumes from the last
    save: a requeue, a preemption, or a resubmission after scancel. On a stop request it saves
    and exits without a result (a returned partial result would look like success to the
    submitter); after SIGUSR2 it first requeues itself, since SLURM only sends that as a warning.
    Each start and stop is appended to `workdir/events.jsonl` for the tests to inspect.
    """

    workdir: Path
    steps: int = STEPS
    step_s: float = STEP_S
    save_every: int = SAVE_EVERY

    def __call__(self) -> dict[str, int]:
        stop = StopRequest()
        step, acc = self._load()
        self._event("start", step=step, restarts=int(os.environ.get("SLURM_RESTART_COUNT", 0)))
        while step < self.steps:
            if stop.signal is not None:
                self._save(step, acc)
                self._event("stop", step=step, signal=stop.signal.name)
                if stop.signal is signal.SIGUSR2:
                    subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True)
                raise SystemExit(f"stopped by {stop.signal.name} at step {step}")
            acc = checksum(step + 1, start=step, acc=acc)
            step += 1
            if step % self.save_every == 0:
                self._save(step, acc)
            time.sleep(self.step_s)
        return {"steps": step, "checksum": acc}

    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / "checkpoint.json"

    def _load(self) -> tuple[int, int]:
        if not self.checkpoint_path.exists():
            return 0, 0
        saved = json.loads(self.checkpoint_path.read_text())
        return saved["step"], saved["acc"]

    def _save(self, step: int, acc: int) -> None:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "acc": acc}))
        tmp.replace(self.checkpoint_path)

    def _event(self, kind: str, **fields: Any) -> None:
        record = {"event": kind, "job": os.environ.get("SLURM_JOB_ID"), **fields}
        with (self.workdir / "events.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\n")


def events(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def saved_step(work: ResumableCount) -> int:
    return work._load()[0]


def wait_until(ready: Callable[[], bool], what: str, timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def result(job: submitit.Job[Any], cluster: SlurmCluster) -> Any:
    """`job.result()`, bounded in time.

    Without sacct, submitit learns that a job ended only from its result file, so `result()`
    would wait forever on a job that died without writing one.
    """
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not job.paths.result_pickle.exists():
        if time.monotonic() > deadline:
            stderr = job.paths.stderr.read_text() if job.paths.stderr.exists() else "(no stderr)"
            pytest.fail(
                f"job {job.job_id} produced no result in {JOB_TIMEOUT_S:.0f} s "
                f"(state {cluster.job_state(job.job_id) or 'gone'}):\n{stderr[-3000:]}\n"
                + cluster.log_tails()
            )
        time.sleep(0.2)
    return job.result()


@pytest.fixture
def executor(slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch) -> submitit.AutoExecutor:
    """A submitit executor on the test cluster, one log folder per job under tmp_path/slurm."""
    # Jobs unpickle functions from this module, so they must be able to import `tests`;
    # sbatch hands the submitting environment to the job.
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    ex = submitit.AutoExecutor(folder=tmp_path / "slurm" / "%j", cluster="slurm")
    # --requeue: the cluster, like many sites, has JobRequeue=0, under which `scontrol requeue`
    # is refused and a preempted job is cancelled instead of requeued.
    ex.update_parameters(
        timeout_min=5, cpus_per_task=1, slurm_additional_parameters={"requeue": True}
    )
    return ex


def array_task(index: int) -> dict[str, Any]:
    start = time.time()
    time.sleep(0.5)
    print(f"array task {index} says hello")
    return {
        "index": index,
        "task": int(os.environ["SLURM_ARRAY_TASK_ID"]),
        "start": start,
        "end": time.time(),
    }


def test_job_array_returns_results_and_respects_parallelism(executor, slurm_cluster):
    assert slurm_cluster.cpus >= 2, "with one CPU, parallelism 1 would hold without the limit"
    executor.update_parameters(slurm_array_parallelism=1)
    jobs = executor.map_array(array_task, range(4))
    outcomes = [result(job, slurm_cluster) for job in jobs]

    assert [o["index"] for o in outcomes] == [0, 1, 2, 3]
    assert [o["task"] for o in outcomes] == [0, 1, 2, 3]
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(4)]
    by_start = sorted(outcomes, key=lambda o: o["start"])
    for earlier, later in itertools.pairwise(by_start):
        assert later["start"] >= earlier["end"], "two array tasks ran at once"
    for index, job in enumerate(jobs):
        # %j in the folder becomes <array id>_<task index> for array tasks.
        assert job.paths.stdout == job.paths.folder / f"{job.job_id}_0_log.out"
        assert job.paths.folder.name == job.job_id
        assert f"array task {index} says hello" in job.paths.stdout.read_text()


def say(text: str) -> str:
    print(text)
    print(text, file=sys.stderr)
    return text


def test_logs_land_in_one_folder_per_job(executor, slurm_cluster, tmp_path):
    job = executor.submit(say, "hello from the job")
    assert result(job, slurm_cluster) == "hello from the job"

    folder = tmp_path / "slurm" / job.job_id
    assert job.paths.stdout == folder / f"{job.job_id}_0_log.out"
    assert job.paths.stderr == folder / f"{job.job_id}_0_log.err"
    stdout = job.paths.stdout.read_text()
    assert "hello from the job" in stdout
    assert "submitit INFO" in stdout  # submitit logs to stdout, and warnings also to stderr
    assert "hello from the job" in job.paths.stderr.read_text()
    script = (folder / f"{job.job_id}_submission.sh").read_text()
    assert f"--output={tmp_path}/slurm/%j/%j_0_log.out" in script
    assert "--open-mode=append" in script  # a requeued job appends to the same files


def submit_and_wait_for_progress(
    executor: submitit.AutoExecutor, work: ResumableCount
) -> submitit.Job[Any]:
    job = executor.submit(work)
    wait_until(lambda: saved_step(work) >= SAVE_EVERY, f"job {job.job_id} to save progress")
    return job


def assert_resumed_once(work: ResumableCount, outcome: dict[str, int], stopped_by: str) -> None:
    """The run stopped once, on `stopped_by`, and resumed from the step it saved then."""
    assert outcome == {"steps": STEPS, "checksum": checksum(STEPS)}  # as if never interrupted
    kinds = [(e["event"], e.get("signal")) for e in events(work.workdir)]
    assert kinds == [("start", None), ("stop", stopped_by), ("start", None)]
    first, stop, second = events(work.workdir)
    assert first["step"] == 0
    assert 0 < stop["step"] < STEPS
    assert second["step"] == stop["step"], "did not resume from the checkpoint saved on stop"


def test_requeue_sends_sigterm_and_the_job_resumes(executor, slurm_cluster, tmp_path):
    work = ResumableCount(tmp_path)
    job = submit_and_wait_for_progress(executor, work)
    slurm_cluster.run("scontrol", "requeue", job.job_id)
    outcome = result(job, slurm_cluster)

    assert_resumed_once(work, outcome, stopped_by="SIGTERM")
    first, _, second = events(work.workdir)
    assert first["job"] == second["job"] == job.job_id  # same job id, restarted
    assert (first["restarts"], second["restarts"]) == (0, 1)
    assert job.paths.stdout.read_text().count("Starting with JobEnvironment") == 2


def test_preemption_sends_sigterm_and_the_job_resumes(executor, slurm_cluster, tmp_path):
    executor.update_parameters(cpus_per_task=slurm_cluster.cpus)  # the whole node
    work = ResumableCount(tmp_path)
    job = submit_and_wait_for_progress(executor, work)
    urgent = slurm_cluster.run(
        "sbatch", "--parsable", f"--partition={slurm_cluster.urgent_partition}",
        f"--cpus-per-task={slurm_cluster.cpus}", f"--output={tmp_path}/urgent.out", "--wrap=true",
    ).strip()  # fmt: skip
    outcome = result(job, slurm_cluster)

    assert_resumed_once(work, outcome, stopped_by="SIGTERM")
    assert events(work.workdir)[-1]["restarts"] == 1
    assert slurm_cluster.job_state(urgent) == "COMPLETED"


def test_usr2_warning_checkpoints_and_requeues_itself(executor, slurm_cluster, tmp_path):
    # SLURM sends SIGUSR2 `slurm_signal_delay_s` seconds before the time limit (submitit asks
    # for --signal=USR2@90 by default); scancel --signal delivers it now.
    work = ResumableCount(tmp_path)
    job = submit_and_wait_for_progress(executor, work)
    slurm_cluster.run("scancel", "--signal=USR2", job.job_id)
    outcome = result(job, slurm_cluster)

    assert_resumed_once(work, outcome, stopped_by="SIGUSR2")
    assert events(work.workdir)[-1]["restarts"] == 1


def test_cancelled_job_resumes_when_resubmitted(executor, slurm_cluster, tmp_path):
    work = ResumableCount(tmp_path)
    job = submit_and_wait_for_progress(executor, work)
    slurm_cluster.run("scancel", job.job_id)
    wait_until(lambda: slurm_cluster.job_state(job.job_id) == "CANCELLED", "the cancellation")
    assert not job.paths.result_pickle.exists()

    again = executor.submit(work)
    outcome = result(again, slurm_cluster)

    assert_resumed_once(work, outcome, stopped_by="SIGTERM")
    first, _, second = events(work.workdir)
    assert (first["job"], second["job"]) == (job.job_id, again.job_id)
    assert second["restarts"] == 0  # a new job, not a restart of the old one

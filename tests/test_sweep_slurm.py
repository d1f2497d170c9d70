"""`graftbench sweep launcher=slurm` on the real single-node SLURM cluster of the fixture."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from graftbench import rundir
from tests.train_helpers import (
    QUICK,
    REPO,
    checkpoint_step,
    merged,
    only_run_dir,
    run,
    wait_for,
    weights,
)

pytestmark = pytest.mark.slurm

SLURM = [
    "launcher=slurm",
    "launcher.cpus_per_task=1",
    "launcher.timeout_min=15",
    "trainer.device=cpu",
    "launcher.signal_delay_s=60",
]


def sweep(cluster, tmp_path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**cluster.env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "graftbench", "sweep", *SLURM, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_2x2_grid_is_one_job_array_and_its_results_land(slurm_cluster, tmp_path):
    result = sweep(
        slurm_cluster,
        tmp_path,
        "magnitude=sgd,adam",
        "direction=sgd,adam",
        *QUICK,
        "trainer.max_steps=4",
        "sweep.name=array",
        f"results_dir={tmp_path}",
        "--wait",
    )
    assert result.returncode == 0, result.stdout + result.stderr + slurm_cluster.log_tails()
    assert "submitted 4 run(s) as SLURM array" in result.stdout
    records = [rundir.read_json(p) for p in (tmp_path / "array").glob("*/run.json")]
    assert len(records) == 4 and all(r["status"] == "done" for r in records)
    assert len({r["slurm"]["array_job_id"] for r in records}) == 1
    assert sorted(int(r["slurm"]["array_task_id"]) for r in records) == [0, 1, 2, 3]
    assert all((tmp_path / "array" / "slurm").glob("*/*_log.out"))
    assert all(
        rundir.read_json(p)["final"]["top1"] > 0
        for p in (tmp_path / "array").glob("*/summary.json")
    )


@pytest.mark.parametrize("interrupt", ["requeue", "cancel"])
def test_interrupted_job_resumes_to_the_weights_of_an_uninterrupted_run(
    slurm_cluster, tmp_path, interrupt
):
    args = merged(
        QUICK, "trainer.epochs=2", "magnitude=adam", "direction=adagrad", "sweep.name=one"
    )
    straight = run("train", *args, f"results_dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr

    results = tmp_path / "slurm"
    submitted = sweep(slurm_cluster, tmp_path, *args, f"results_dir={results}")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    wait_for(lambda: any(results.glob("one/*/ckpt/last.pt")), what="a first checkpoint")
    run_dir = only_run_dir(results)
    wait_for(lambda: checkpoint_step(run_dir) >= 8, what="step 8")
    job = rundir.read_json(run_dir / rundir.RUN)["slurm"]["job_id"]
    if interrupt == "requeue":  # what preemption does: SIGTERM now, run again later
        slurm_cluster.run("scontrol", "requeue", job)
        wait_for(
            lambda: rundir.read_json(run_dir / rundir.RUN)["status"] == "done",
            what="the requeued run to finish",
        )
    else:
        slurm_cluster.run("scancel", job)
        wait_for(lambda: job not in slurm_cluster.active_job_ids(), what="the cancellation")
        again = sweep(slurm_cluster, tmp_path, *args, f"results_dir={results}", "--wait")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "submitted 1 run(s)" in again.stdout
    record = rundir.read_json(run_dir / rundir.RUN)
    assert record["status"] == "done" and record["attempts"] == 2
    assert record["interrupted_by"] is None  # cleared by the attempt that finished
    reference = weights(only_run_dir(tmp_path / "straight"))
    for name, tensor in weights(run_dir).items():
        assert torch.equal(tensor, reference[name]), name

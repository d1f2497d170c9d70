"""A run with a transferred schedule on the real single-node SLURM cluster of the fixture:
preempted (`scontrol requeue`) after its source file is gone, it resumes from the run
directory's own copy to the weights of a run that was never interrupted."""

from __future__ import annotations

import shutil

import pytest
import torch

from graftbench import rundir
from tests.test_sweep_slurm import sweep
from tests.train_helpers import QUICK, checkpoint_step, merged, only_run_dir, run, wait_for, weights
from tests.transfer_helpers import transfer_file

pytestmark = pytest.mark.slurm


def test_requeued_transferred_run_resumes_from_its_own_copy(slurm_cluster, tmp_path):
    source = transfer_file(tmp_path / "t.json", QUICK, multiplier=1.5, kind="piecewise")
    args = merged(
        QUICK, "trainer.epochs=2", "magnitude=sgd", "schedule=transferred", "sweep.name=one"
    )
    straight = run(
        "train", *args, f"schedule.source={source}", f"results_dir={tmp_path / 'straight'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr

    moved = shutil.copy(source, tmp_path / "soon-gone.json")
    results = tmp_path / "slurm"
    submitted = sweep(
        slurm_cluster, tmp_path, *args, f"schedule.source={moved}", f"results_dir={results}"
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    wait_for(lambda: any(results.glob("one/*/ckpt/last.pt")), what="a first checkpoint")
    run_dir = only_run_dir(results)
    wait_for(lambda: checkpoint_step(run_dir) >= 8, what="step 8")
    (tmp_path / "soon-gone.json").unlink()
    job = rundir.read_json(run_dir / rundir.RUN)["slurm"]["job_id"]
    slurm_cluster.run("scontrol", "requeue", job)
    wait_for(
        lambda: rundir.read_json(run_dir / rundir.RUN)["status"] in ("done", "failed"),
        what="the requeued run to end",
    )
    record = rundir.read_json(run_dir / rundir.RUN)
    assert record["status"] == "done" and record["attempts"] == 2, record.get("error")
    assert record["transfer"]["kind"] == "piecewise"
    reference = weights(only_run_dir(tmp_path / "straight"))
    for name, tensor in weights(run_dir).items():
        assert torch.equal(tensor, reference[name]), name

"""`graftbench sweep` and `graftbench status` with the local launcher: real processes."""

from __future__ import annotations

import json

from graftbench import rundir
from tests.train_helpers import QUICK, graftbench, merged, run

TINY = merged(QUICK, "trainer.max_steps=4", "trainer.checkpoint_every_steps=2")


def run_records(sweep_dir):
    return {
        p.name: rundir.read_json(p / rundir.RUN)
        for p in sweep_dir.iterdir()
        if (p / rundir.RUN).exists()
    }


def test_sweep_runs_the_grid_and_a_rerun_skips_what_is_done(tmp_path):
    args = [
        "sweep",
        "magnitude=sgd,adam",
        "direction=sgd",
        "model.depth=8,10",
        *TINY,
        "sweep.name=grid",
        f"results_dir={tmp_path}",
    ]
    first = run(*args, cwd=tmp_path)
    # model.depth=10 is not a valid ResNet depth (6n+2): those runs fail, the others finish
    assert first.returncode == 1, first.stderr
    sweep_dir = tmp_path / "grid"
    manifest = rundir.read_json(sweep_dir / rundir.SWEEP)
    assert manifest["grid"] == {"magnitude": ["sgd", "adam"], "model.depth": [8, 10]}
    assert len(manifest["runs"]) == 4
    records = run_records(sweep_dir)
    assert sorted(r["status"] for r in records.values()) == ["done", "done", "failed", "failed"]
    assert all(
        "depth must be 6n+2" in r["error"] for r in records.values() if r["status"] == "failed"
    )
    # it ends with the M×D table and the figures
    assert "| M \\ D" in first.stdout and "changing M moves top1" in first.stdout
    assert (sweep_dir / "figures" / "curves.png").stat().st_size > 1000

    summaries = {p: p.read_text() for p in sweep_dir.glob("*/summary.json")}
    again = run(*args, cwd=tmp_path)
    assert "skipping 2 run(s): done" in again.stdout
    assert "skipping 2 run(s): failed (rerun with --retry-failed)" in again.stdout
    assert {p: p.read_text() for p in summaries} == summaries  # results untouched
    assert all(r["attempts"] == 1 for r in run_records(sweep_dir).values())

    retried = run(*args, "--retry-failed", cwd=tmp_path)
    assert "launching 2 run(s)" in retried.stdout
    assert {r["attempts"] for r in run_records(sweep_dir).values() if r["status"] == "failed"} == {
        2
    }

    status = run("status", str(sweep_dir), cwd=tmp_path)
    assert status.returncode == 0
    assert "2 done, 2 failed" in status.stdout and "depth must be" in status.stdout


def test_a_different_grid_under_the_same_name_is_refused(tmp_path):
    first = run(
        "sweep",
        "magnitude=sgd",
        "direction=sgd",
        *TINY,
        "sweep.name=mine",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "mine" / rundir.SWEEP).read_text()
    other = run(
        "sweep",
        "magnitude=adam",
        "direction=sgd",
        *TINY,
        "sweep.name=mine",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert other.returncode == 2
    assert other.stderr.count("\n") == 1 and "holds a different grid" in other.stderr
    assert (tmp_path / "mine" / rundir.SWEEP).read_text() == before
    extended = run(
        "sweep",
        "magnitude=adam",
        "direction=sgd",
        *TINY,
        "sweep.name=mine",
        f"results_dir={tmp_path}",
        "--extend",
        cwd=tmp_path,
    )
    assert extended.returncode == 0, extended.stderr
    manifest = json.loads((tmp_path / "mine" / rundir.SWEEP).read_text())
    assert [r["magnitude"] for r in manifest["runs"]] == ["sgd", "adam"]


def test_two_sweeps_at_once_train_each_run_once(tmp_path):
    args = [
        "sweep",
        "magnitude=sgd,adam",
        "direction=sgd,adam",
        *TINY,
        "sweep.name=race",
        f"results_dir={tmp_path}",
    ]
    first = graftbench(*args, cwd=tmp_path, stdout=-1, stderr=-1, text=True)
    second = graftbench(*args, cwd=tmp_path, stdout=-1, stderr=-1, text=True)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    records = run_records(tmp_path / "race")
    assert len(records) == 4
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in records.values())
    launched = sum(
        int(line.split()[1])
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("launching ")
    )
    assert launched == 4


def test_dry_run_lists_runs_and_device_hours_and_launches_nothing(tmp_path):
    result = run(
        "sweep",
        "--dry-run",
        "experiment=demo",
        "seed=0,1",
        "sweep.device_hours_per_run=0.5",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "18 runs" in result.stdout and "9.0 device-hours" in result.stdout
    assert "seed: 2 value(s): 0, 1" in result.stdout
    assert "adagrad+adam-s1-" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_bad_sweep_input_is_one_line_before_anything_is_launched(tmp_path):
    for bad in (["trainer.epoch=1,2"], ["sweep.grid.seed=[]"], ["magnitude=sgd,nope"]):
        result = run("sweep", *bad, f"results_dir={tmp_path}", cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (bad, result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_dead_owner_makes_a_run_resumable_but_an_unreachable_slurm_does_not():
    from graftbench import record

    host = record.socket.gethostname()
    running_here = {"status": "running", "started_at": "t", "owner": {"host": host, "pid": 2**22}}
    assert record.effective_status(running_here) == "interrupted"  # no such process
    queued_here = {"status": "queued", "owner": {"host": host, "pid": 2**22 + 7}}
    assert record.effective_status(queued_here) == "pending"  # never started
    on_slurm = {"status": "running", "started_at": "t", "slurm": {"job_id": "123"}}
    assert record.effective_status(on_slurm, {"123": "RUNNING"}) == "running"
    assert record.effective_status(on_slurm, {"123": ""}) == "interrupted"  # squeue forgot it
    assert record.effective_status(on_slurm, {"123": record.UNKNOWN}) == "running"


def test_a_grid_grafts_onto_muon_shampoo_and_soap(tmp_path):
    """The grid Shampoo's own users run (Adam/AdaGrad grafting), through the real CLI: the
    3×4 grid expands, and one M's row of it trains to the end."""
    grid = ["magnitude=sgd,adam,adagrad", "direction=adam,muon,shampoo,soap"]
    dry = run("sweep", "--dry-run", "--list", *grid, f"results_dir={tmp_path}", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "12 runs" in dry.stdout and "adagrad+soap-s0-" in dry.stdout
    args = ["sweep", "magnitude=adam", "direction=adam,muon,shampoo,soap", *TINY]
    result = run(*args, "sweep.name=library", f"results_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = run_records(tmp_path / "library")
    assert {name.split("-")[0] for name in records} == {
        "adam+adam",
        "adam+muon",
        "adam+shampoo",
        "adam+soap",
    }
    assert {r["status"] for r in records.values()} == {"done"}

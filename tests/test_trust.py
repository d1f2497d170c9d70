"""A results directory may come from someone else: reading or resuming one never executes code,
never follows a link out of it, and never lets its stored settings override what the command
says about where and how to run. And one run is never trained twice at once.

Every test goes through the real CLI (a subprocess) on real run directories.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

import pytest
import yaml

from graftbench import rundir
from graftbench.record import RunRecord
from tests.train_helpers import QUICK, graftbench, merged, run, wait_for, weights

TINY = merged(QUICK, "trainer.max_steps=4", "trainer.checkpoint_every_steps=2")


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("graftbench: error: "), result.stderr
    return lines[0]


@pytest.fixture
def finished_run(tmp_path):
    """A finished tiny run and its directory."""
    results = tmp_path / "results"
    done = run("train", *TINY, f"results_dir={results}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = [p for p in (results / "runs").iterdir() if p.is_dir()]
    return run_dir


def pending_copy(run_dir, name="copy"):
    """A copy of a run's config and record as a colleague would hand it over, not trained."""
    copy = run_dir.parent.parent / name / run_dir.name
    copy.mkdir(parents=True)
    (copy / rundir.CONFIG).write_text((run_dir / rundir.CONFIG).read_text())
    record = rundir.read_json(run_dir / rundir.RUN)
    record.update(status="pending", owner=None, started_at=None)
    rundir.write_json(copy / rundir.RUN, {k: v for k, v in record.items() if k != "schema_version"})
    return copy


# -- code in a config ----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["data", "launcher", "model"])
def test_a_target_in_a_stored_config_is_refused_and_never_runs(tmp_path, finished_run, where):
    copy = pending_copy(finished_run)
    marker = tmp_path / "pwned"
    stored = yaml.safe_load((copy / rundir.CONFIG).read_text())
    stored.setdefault(where, {})["evil"] = {
        "_target_": "builtins.open",
        "file": str(marker),
        "mode": "w",
    }
    (copy / rundir.CONFIG).write_text(yaml.safe_dump(stored))
    for args in (
        ["train", "--run-dir", str(copy)],
        ["train", *TINY, f"results_dir={copy.parent.parent}", "sweep.name=copy"],
        ["sweep", "magnitude=sgd", *TINY, f"results_dir={copy.parent.parent}", "sweep.name=copy"],
    ):
        result = run(*args, cwd=tmp_path)
        assert "config.yaml" in one_line_error(result)
        assert not marker.exists()
    for args in (["status", str(copy.parent)], ["table", str(copy.parent)]):
        assert run(*args, cwd=tmp_path).returncode in (0, 1)  # reads run.json only
        assert not marker.exists()


def test_an_interpolation_or_a_yaml_bomb_in_a_stored_config_is_refused(tmp_path, finished_run):
    copy = pending_copy(finished_run)
    text = (copy / rundir.CONFIG).read_text()
    (copy / rundir.CONFIG).write_text(text.replace("task: classification", "task: ${oc.env:HOME}"))
    assert "interpolation" in one_line_error(run("train", "--run-dir", str(copy), cwd=tmp_path))
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    (copy / rundir.CONFIG).write_text("schema_version: 2\n" + bomb)
    started = time.monotonic()
    assert "aliases are not allowed" in one_line_error(
        run("train", "--run-dir", str(copy), cwd=tmp_path)
    )
    assert time.monotonic() - started < 60


def test_an_edited_identity_does_not_pass_as_the_run(tmp_path, finished_run):
    copy = pending_copy(finished_run)
    text = (copy / rundir.CONFIG).read_text()
    (copy / rundir.CONFIG).write_text(text.replace("seed: 0", "seed: 5"))
    assert "does not match the run id" in one_line_error(
        run("train", "--run-dir", str(copy), cwd=tmp_path)
    )


# -- links ---------------------------------------------------------------------------------
def test_links_in_a_run_directory_are_not_followed(tmp_path, finished_run):
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    copy = pending_copy(finished_run, "links")
    (copy / rundir.METRICS).symlink_to(outside)
    result = run("train", "--run-dir", str(copy), cwd=tmp_path)
    assert result.returncode != 0
    assert outside.read_text() == "mine\n"  # nothing appended through the link
    assert "symbolic link" in result.stderr + result.stdout

    figures = tmp_path / "elsewhere"
    figures.mkdir()
    (finished_run.parent / "figures").symlink_to(figures)
    assert "symbolic link" in one_line_error(run("plot", str(finished_run.parent), cwd=tmp_path))
    assert list(figures.iterdir()) == []

    linked = finished_run.parent.parent / "linked"
    linked.mkdir()
    (linked / finished_run.name).symlink_to(finished_run)
    assert "symbolic link" in one_line_error(
        run("train", "--run-dir", str(linked / finished_run.name), cwd=tmp_path)
    )


def test_run_ids_outside_the_sweep_folder_are_ignored(tmp_path, finished_run):
    sweep = finished_run.parent
    secret = tmp_path / "secret"
    secret.mkdir()
    rundir.write_json(secret / rundir.RUN, {"run_id": "secret", "status": "done"})
    rundir.write_json(
        sweep / rundir.SWEEP,
        {
            "name": "runs",
            "grid": {},
            "runs": [
                {"run_id": "../../secret", "magnitude": "sgd", "direction": "sgd", "seed": 0},
                {"run_id": finished_run.name, "magnitude": "sgd", "direction": "sgd", "seed": 0},
            ],
        },
    )
    status = run("status", str(sweep), cwd=tmp_path)
    assert status.returncode == 0 and "secret" not in status.stdout
    table = run("table", str(sweep), cwd=tmp_path)
    assert table.returncode == 0 and "secret" not in table.stdout
    assert "ignored 1 run id(s) that are not names" in table.stderr


def test_files_are_written_with_the_users_umask(tmp_path, finished_run):
    for path in (
        finished_run / rundir.RUN,
        finished_run / rundir.SUMMARY,
        finished_run / rundir.CONFIG,
        finished_run / rundir.METRICS,
    ):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o666 & ~current_umask(), (path.name, oct(mode))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- settings: identity from the directory, execution from the command ----------------------
def test_execution_settings_come_from_the_command_and_identity_cannot_change(
    tmp_path, finished_run
):
    copy = pending_copy(finished_run, "colleague")
    refused = run("train", "--run-dir", str(copy), "trainer.epochs=3", cwd=tmp_path)
    assert "part of the run's identity" in one_line_error(refused)
    assert rundir.read_json(copy / rundir.RUN)["status"] == "pending"
    ran = run(
        "train",
        "--run-dir",
        str(copy),
        "trainer.log_every_steps=1",
        "logger=wandb",
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    records = rundir.read_jsonl(copy / rundir.METRICS)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert list(copy.glob("wandb/offline-run-*"))  # logger=wandb, given now, is honoured


def test_a_run_being_trained_is_not_trained_again(tmp_path, finished_run):
    copy = pending_copy(finished_run, "busy")
    record = rundir.read_json(copy / rundir.RUN)
    owner = {"token": None, "host": os.uname().nodename, "pid": os.getpid()}  # alive: this test
    record.update(status="running", started_at=rundir.now(), owner=owner)
    rundir.write_json(copy / rundir.RUN, {k: v for k, v in record.items() if k != "schema_version"})
    refused = run("train", "--run-dir", str(copy), cwd=tmp_path)
    assert "not starting it twice" in one_line_error(refused)
    again = run(
        "train", *TINY, f"results_dir={copy.parent.parent}", "sweep.name=busy", cwd=tmp_path
    )
    assert "not starting it twice" in one_line_error(again)
    assert not (copy / rundir.METRICS).exists()


def test_train_and_sweep_give_the_same_numbers_under_one_id(tmp_path, finished_run):
    swept = run(
        "sweep",
        "magnitude=sgd",
        "direction=sgd",
        "seed=0,1",
        *TINY,
        "launcher.max_parallel=2",
        f"results_dir={tmp_path / 'swept'}",
        cwd=tmp_path,
    )
    assert swept.returncode == 0, swept.stderr
    same = tmp_path / "swept" / "runs" / finished_run.name
    assert same.is_dir()  # one id whoever started it
    trained, by_sweep = weights(finished_run), weights(same)
    assert all((trained[k] == by_sweep[k]).all() for k in trained)
    assert rundir.read_json(same / rundir.RUN)["threads"] == 1


# -- endings and exit codes ----------------------------------------------------------------
def test_an_interrupted_sweep_exits_75_and_resumes(tmp_path):
    args = [
        "sweep",
        "magnitude=sgd",
        "direction=sgd",
        *merged(QUICK, "trainer.epochs=20"),
        f"results_dir={tmp_path}",
        "sweep.name=stop",
    ]
    process = graftbench(*args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sweep = tmp_path / "stop"

    def started() -> bool:
        runs = [p for p in sweep.glob("*/metrics.jsonl")]
        return bool(runs) and any('"kind": "train"' in p.read_text() for p in runs)

    wait_for(lambda: started() or process.poll() is not None, what="the run to train")
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=600)
    assert process.returncode == 75
    (run_dir,) = [p for p in sweep.iterdir() if (p / rundir.RUN).exists()]
    assert RunRecord(run_dir).status() == "interrupted"
    resumed = run(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert RunRecord(run_dir).status() == "done"


def test_a_sweep_whose_only_run_was_skipped_as_failed_exits_1(tmp_path):
    args = ["sweep", "magnitude=sgd", "model.depth=10", *TINY, f"results_dir={tmp_path}"]
    assert run(*args, cwd=tmp_path).returncode == 1
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 1 and "failed (rerun with --retry-failed)" in again.stdout


def test_a_results_path_that_is_a_file_is_one_line(tmp_path):
    results = tmp_path / "results"
    results.write_text("not a folder")
    for command in ("train", "sweep"):
        extra = ["magnitude=sgd", "direction=sgd,adam"] if command == "sweep" else []
        result = run(command, *extra, *TINY, f"results_dir={results}", cwd=tmp_path)
        one_line_error(result)
    assert results.read_text() == "not a folder"


def test_record_transitions_end_with_a_summary(tmp_path):
    record = RunRecord(tmp_path)
    record.create({"run_id": "x", "magnitude": "sgd", "direction": "sgd", "seed": 0})
    token, _ = record.claim(retry_failed=False)
    record.start(token)
    record.fail("hit the time limit again after 10 requeues")
    data = rundir.read_json(tmp_path / rundir.RUN)
    assert data["status"] == "failed" and data["ended_at"]
    summary = rundir.read_json(tmp_path / rundir.SUMMARY)
    assert summary["status"] == "failed" and "time limit" in summary["error"]
    assert record.claim(retry_failed=False) == (None, "failed (rerun with --retry-failed)")


def test_unknown_status_in_a_record_does_not_crash_status_or_table(tmp_path, finished_run):
    record = rundir.read_json(finished_run / rundir.RUN)
    record["status"] = "exploded"
    rundir.write_json(
        finished_run / rundir.RUN, {k: v for k, v in record.items() if k != "schema_version"}
    )
    for command in ("status", "table"):
        result = run(command, str(finished_run.parent), cwd=tmp_path)
        assert "Traceback" not in result.stderr, result.stderr


def test_results_of_the_previous_schema_still_read(tmp_path):
    """Schema 1 run directories (before config.yaml held the identity only): status, table and
    plot read them; resuming one is refused with one line."""
    sweep = tmp_path / "old"
    run_dir = sweep / "adam+sgd-s0-1a2b3c4d"
    run_dir.mkdir(parents=True)
    common = {"schema_version": 1, "run_id": run_dir.name, "magnitude": "adam", "direction": "sgd"}
    (run_dir / rundir.RUN).write_text(json.dumps({**common, "seed": 0, "status": "done"}))
    summary = {**common, "seed": 0, "status": "done", "final": {"top1": 91.5, "loss": 0.3}}
    (run_dir / rundir.SUMMARY).write_text(json.dumps(summary))
    lines = [{"schema_version": 1, "kind": "header"}]
    lines += [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 6)]
    (run_dir / rundir.METRICS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / rundir.CONFIG).write_text("schema_version: 1\nseed: 0\n")
    status = run("status", str(sweep), cwd=tmp_path)
    assert status.returncode == 0 and "1 done" in status.stdout, status.stderr
    table = run("table", str(sweep), "--metric", "top1", cwd=tmp_path)
    assert table.returncode == 0 and "91.5" in table.stdout, table.stderr
    plot = run("plot", str(sweep), cwd=tmp_path)
    assert plot.returncode == 0 and (sweep / "figures").is_dir(), plot.stderr
    refused = run("train", "--run-dir", str(run_dir), cwd=tmp_path)
    assert "older graftbench" in one_line_error(refused)

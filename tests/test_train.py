"""The single-run path on the real demo data: learning, the run directory, divergence, DDP,
preemption and kills. Real processes, real signals, the gloo backend."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.record import Exit
from tests.image_helpers import make_root
from tests.train_helpers import (
    QUICK,
    checkpoint_step,
    graftbench,
    merged,
    only_run_dir,
    run,
    train_in_process,
    wait_for,
    weights,
)


def test_a_run_learns_and_fills_its_run_directory(tmp_path):
    code, run_dir = train_in_process(tmp_path, "magnitude=adam", "direction=sgd")
    assert code == 0
    record = rundir.read_json(run_dir / rundir.RUN)
    assert record["status"] == "done" and record["label"] == "adam#sgd"
    assert record["git"]["sha"] and record["versions"]["torch"] and record["hardware"]["cpu"]
    assert record["total_steps"] == 22 and record["parameters"] > 10_000
    summary = rundir.read_json(run_dir / rundir.SUMMARY)
    assert summary["final"]["top1"] > 50  # 10 classes: chance is 10%
    assert summary["best"]["top1"] >= summary["final"]["top1"]
    records = rundir.read_jsonl(run_dir / rundir.METRICS)
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 11 and kinds.count("eval") == 1 and kinds.count("layers") == 4
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert 0 < train[0]["graft"]["ratio_min"] <= train[0]["graft"]["ratio_max"]
    layers = next(r for r in records if r["kind"] == "layers")
    assert "stages.0.0.conv1.weight" in layers["ratio"] or len(layers["ratio"]) > 10
    saved = rundir.read_yaml(run_dir / rundir.CONFIG)
    assert saved["magnitude"]["name"] == "adam" and saved["direction"]["name"] == "sgd"
    assert (run_dir / rundir.CKPT / "last.pt").exists()
    # a second run of the same command does nothing and keeps the results
    assert train_in_process(tmp_path, "magnitude=adam", "direction=sgd")[0] == Exit.DONE
    assert rundir.read_json(run_dir / rundir.SUMMARY) == summary


def test_divergence_is_a_status_with_its_step_and_its_own_exit_code(tmp_path):
    code, run_dir = train_in_process(tmp_path, "magnitude=sgd", "magnitude.lr=1e6")
    assert code == Exit.DIVERGED
    record = rundir.read_json(run_dir / rundir.RUN)
    assert record["status"] == "diverged"
    summary = rundir.read_json(run_dir / rundir.SUMMARY)
    assert 1 <= summary["diverged_step"] <= 22
    losses = [
        r["loss"] for r in rundir.read_jsonl(run_dir / rundir.METRICS) if r["kind"] == "train"
    ]
    assert all(loss == loss for loss in losses)  # nothing non-finite was logged as a loss


def test_batch_that_does_not_divide_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"trainer\.batch_size=64 is not a multiple"):
        train_in_process(tmp_path, "trainer.per_device_batch_size=48")


def test_two_gloo_processes_equal_one_process_with_accumulation(tmp_path):
    common = [
        *QUICK,
        "trainer.max_steps=6",
        "trainer.per_device_batch_size=32",
        "magnitude=adam",
        "direction=sgd",
    ]
    one = run("train", *common, f"results_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = run(
        "train",
        *common,
        "trainer.devices=2",
        "trainer.device=cpu",
        f"results_dir={tmp_path / 'two'}",
        cwd=tmp_path,
    )
    assert two.returncode == 0, two.stderr
    one_dir, two_dir = only_run_dir(tmp_path / "one"), only_run_dir(tmp_path / "two")
    assert one_dir.name == two_dir.name  # the device count is not part of the run's identity
    summary = rundir.read_json(two_dir / rundir.SUMMARY)
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # both ranks: same weights
    a, b = weights(one_dir), weights(two_dir)
    for name, tensor in a.items():
        if "running_" in name or "num_batches" in name:
            continue  # BN running statistics are rank 0's alone under DDP (buffers broadcast)
        torch.testing.assert_close(b[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, kill):
    args = merged(QUICK, "trainer.epochs=2", "magnitude=adagrad", "direction=adam")
    straight = run("train", *args, f"results_dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr

    results = tmp_path / "killed"
    process = graftbench("train", *args, f"results_dir={results}", cwd=tmp_path)
    wait_for(
        lambda: (
            any(results.glob("*/*/ckpt/last.pt")) and checkpoint_step(only_run_dir(results)) >= 8
        )
    )
    process.send_signal(kill)
    code = process.wait(timeout=120)
    run_dir = only_run_dir(results)
    if kill == signal.SIGTERM:  # preemption: checkpoint, then exit "run me again"
        assert code == Exit.INTERRUPTED
        assert rundir.read_json(run_dir / rundir.RUN)["status"] == "interrupted"
    interrupted_at = checkpoint_step(run_dir)
    assert 0 < interrupted_at < 44

    resumed = run("train", *args, f"results_dir={results}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert rundir.read_json(run_dir / rundir.RUN)["attempts"] == 2
    reference = weights(only_run_dir(tmp_path / "straight"))
    for name, tensor in weights(run_dir).items():
        assert torch.equal(tensor, reference[name]), name
    steps = [r["step"] for r in rundir.read_jsonl(run_dir / rundir.METRICS) if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # nothing logged twice by the interrupted attempt


def test_ctrl_c_checkpoints_at_the_next_step_and_exits_interrupted(tmp_path):
    # A terminal sends Ctrl-C to the whole foreground process group: the training process and
    # its loader workers (which must not die of it).
    results = tmp_path / "results"
    process = graftbench(
        "train",
        *merged(QUICK, "trainer.epochs=1000"),  # far more than the test waits for
        "data.workers=2",
        f"results_dir={results}",
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: any(results.glob("*/*/ckpt/last.pt")), what="the first checkpoint")
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == Exit.INTERRUPTED, err
    assert "Ctrl-C: stopping after this step with a checkpoint" in err
    assert "Traceback" not in err and "run again to resume" in out
    run_dir = only_run_dir(results)
    record = rundir.read_json(run_dir / rundir.RUN)
    assert record["interrupted_by"] == "SIGINT" and record["status"] != "running"
    assert checkpoint_step(run_dir) == record["step"] > 0


def test_an_undecodable_image_ends_the_run_with_one_line_naming_it(tmp_path):
    root = make_root(tmp_path / "images", per_split=(("train", 16), ("val", 4)), solid=True)
    bad = root / "train" / "n03" / "n03_7.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])
    result = run(
        "train",
        *merged(
            QUICK,
            "data=imagenet",
            f"data.root={root}",
            "data.num_classes=3",
            "data.crop_size=32",
            "data.resize_size=36",
            "data.workers=2",
            "trainer.batch_size=8",
            f"results_dir={tmp_path / 'results'}",
        ),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    message = f"train split: train/n03/n03_7.JPEG in the image root {root} cannot be decoded ("
    assert f"graftbench: error: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    record = rundir.read_json(only_run_dir(tmp_path / "results") / rundir.RUN)
    assert record["status"] == "failed" and record["error"].startswith(message)
    assert "\n" not in record["error"]


def test_trains_on_a_real_jpeg_image_folder(tmp_path):
    root = make_root(tmp_path / "images", per_split=(("train", 16), ("val", 4)), solid=True)
    code, run_dir = train_in_process(
        tmp_path,
        "data=imagenet",
        f"data.root={root}",
        "data.num_classes=3",
        "data.crop_size=32",
        "data.resize_size=36",
        "data.workers=0",
        "data.persistent_workers=false",
        "trainer.batch_size=8",
        "trainer.epochs=3",
        "magnitude=adam",
        "direction=sgd",
        "magnitude.lr=0.01",
    )
    assert code == 0
    summary = rundir.read_json(run_dir / rundir.SUMMARY)
    assert summary["steps"] == 3 * (48 // 8)
    assert summary["final"]["top1"] > 60  # one color per class; chance is 33%


def test_wandb_offline_sink_uses_the_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    code, run_dir = train_in_process(tmp_path, "logger=wandb", "trainer.max_steps=4")
    assert code == 0
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(run_dir.name)
    assert any(runs[0].glob("*.wandb"))
    # `graftbench sync` hands exactly these runs to `wandb sync`
    synced = run("sync", str(run_dir.parent), "--dry-run", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    assert " -m wandb sync " in synced.stdout and str(runs[0]) in synced.stdout
    empty = run("sync", str(tmp_path), "--dry-run", cwd=tmp_path)
    assert "no offline W&B runs" in empty.stdout

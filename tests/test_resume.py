"""Interrupting a run at every kind of step boundary, deterministically: the test's task sends
this process a real signal when the chosen step's batch is drawn (no timers, no sleeps), the
engine stops after that step with a checkpoint, and the resumed run must end exactly where an
uninterrupted one does: the same weights, averaging snapshots, metrics.jsonl records (less
timings), final and best metrics, bit for bit. Also: Ctrl-C, unusable checkpoints, settings
refused before training, the numerics a run reports."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from omegaconf import OmegaConf

from graftbench import config, rundir
from graftbench.batching import split_batch, validate
from graftbench.errors import UserError
from graftbench.record import Exit
from graftbench.train import checkpoint
from graftbench.train.distributed import Dist
from graftbench.train.engine import Engine, numerics
from graftbench.train.tasks import ClassificationTask
from tests.train_helpers import QUICK, checkpoint_step, merged, only_run_dir, train_in_process

# 2 epochs of 22 steps; train logs every 2 steps, layer logs every 5, checkpoints every 4 steps
# and at epoch ends; an evaluation after epoch 1; the final evaluation of the mean of the last
# 2 epochs' weights (averaging snapshots).
RUN = (
    "trainer.epochs=2",
    "magnitude=adagrad",
    "direction=adam",
    "trainer.average_last=2",
    "trainer.device=cpu",  # bit for bit: no nondeterministic GPU kernels
)
TIMINGS = ("samples_per_s", "step_time_s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    code, run_dir = train_in_process(tmp_path_factory.mktemp("reference"), *RUN)
    assert code == Exit.DONE
    return run_dir


def signal_at_step(monkeypatch, step: int, *signals: signal.Signals) -> None:
    """Send this process ``signals`` when the batch of ``step`` (1-based) is drawn."""
    original = ClassificationTask.batches

    def batches(self, epoch, start):
        for index, micro_batches in enumerate(original(self, epoch, start), start):
            if epoch * self.steps_per_epoch + index + 1 == step:
                for signum in signals:
                    os.kill(os.getpid(), signum)
            yield micro_batches

    monkeypatch.setattr(ClassificationTask, "batches", batches)


def signal_during_evaluation(monkeypatch, signum: signal.Signals) -> None:
    """Send ``signum`` during the evaluation at the end of epoch 1."""
    original = ClassificationTask.evaluate

    def evaluate(self, model, dist, final=False):
        if not final:
            os.kill(os.getpid(), signum)
        return original(self, model, dist, final)

    monkeypatch.setattr(ClassificationTask, "evaluate", evaluate)


def records(run_dir):
    return [
        {k: v for k, v in record.items() if k not in TIMINGS}
        for record in rundir.read_jsonl(run_dir / rundir.METRICS)
    ]


def files(run_dir, pattern: str) -> dict[str, dict]:
    return {
        path.name: torch.load(path, weights_only=True)["model"]
        for path in sorted((run_dir / rundir.CKPT).glob(pattern))
    }


def assert_same_run(run_dir, reference) -> None:
    for pattern in ("last.pt", "epoch_*.pt"):
        ours, theirs = files(run_dir, pattern), files(reference, pattern)
        assert ours.keys() == theirs.keys()
        for name, state in theirs.items():
            for key, tensor in state.items():
                assert torch.equal(ours[name][key], tensor), (name, key)
    assert records(run_dir) == records(reference)
    ours, theirs = (rundir.read_json(d / rundir.SUMMARY) for d in (run_dir, reference))
    assert ours["status"] == theirs["status"] == "done"
    for key in ("steps", "final", "best", "notes", "replica_checksums"):
        assert ours[key] == theirs[key], key


BOUNDARIES = {
    "the first step": (1, signal.SIGTERM),
    "mid-epoch, at a layer log between train logs": (15, signal.SIGUSR1),
    "an interval checkpoint": (20, signal.SIGUSR2),
    "an epoch's last step": (22, signal.SIGTERM),
    "an epoch's last step, Ctrl-C": (22, signal.SIGINT),
    "the step after an evaluation": (23, signal.SIGTERM),
    "the last step of training": (44, signal.SIGTERM),
}


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch, reference, boundary):
    step, signum = BOUNDARIES[boundary]
    with monkeypatch.context() as patch:
        signal_at_step(patch, step, signum)
        code, run_dir = train_in_process(tmp_path, *RUN)
    assert code == Exit.INTERRUPTED
    assert checkpoint_step(run_dir) == step
    assert rundir.read_json(run_dir / rundir.RUN)["interrupted_by"] == signum.name

    code, _ = train_in_process(tmp_path, *RUN)
    assert code == Exit.DONE
    assert rundir.read_json(run_dir / rundir.RUN)["attempts"] == 2
    assert_same_run(run_dir, reference)


def test_a_signal_during_an_evaluation_stops_after_the_next_step(tmp_path, monkeypatch, reference):
    with monkeypatch.context() as patch:
        signal_during_evaluation(patch, signal.SIGTERM)
        code, run_dir = train_in_process(tmp_path, *RUN)
    assert code == Exit.INTERRUPTED and checkpoint_step(run_dir) == 23
    assert train_in_process(tmp_path, *RUN)[0] == Exit.DONE
    assert_same_run(run_dir, reference)


def test_crash_after_a_resumed_epoch_end_evaluation_logs_it_once(tmp_path, monkeypatch, reference):
    # Stopped on epoch 1's last step, the checkpoint says "epoch ended, not closed"; the next
    # attempt evaluates (logging at step 22, after the checkpoint of step 22) and crashes before
    # its epoch-end checkpoint: the third attempt must drop that record, then log it again.
    with monkeypatch.context() as patch:
        signal_at_step(patch, 22, signal.SIGTERM)
        assert train_in_process(tmp_path, *RUN)[0] == Exit.INTERRUPTED
    run_dir = only_run_dir(tmp_path)

    def crash(self):
        raise RuntimeError("the node went away")

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_save_for_averaging", crash)  # right after the evaluation
        assert train_in_process(tmp_path, *RUN)[0] == Exit.FAILED
    assert [r["kind"] for r in records(run_dir)][-2:] == ["train", "eval"]
    assert train_in_process(tmp_path, *RUN)[0] == Exit.DONE
    assert_same_run(run_dir, reference)


def test_second_ctrl_c_aborts_at_once_keeping_the_last_checkpoint(
    tmp_path, monkeypatch, reference, capfd
):
    with monkeypatch.context() as patch:
        signal_at_step(patch, 11, signal.SIGINT, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            train_in_process(tmp_path, *RUN)
    assert "Ctrl-C: stopping after this step" in capfd.readouterr().err
    run_dir = only_run_dir(tmp_path)
    assert checkpoint_step(run_dir) == 8  # the interval checkpoint before step 11
    assert train_in_process(tmp_path, *RUN)[0] == Exit.DONE
    assert_same_run(run_dir, reference)


# -- checkpoints the run cannot continue from -----------------------------------------------
def truncated(path):
    path.write_bytes(path.read_bytes()[:1000])


def garbage(path):
    path.write_bytes(b"not a checkpoint\n" * 10)


def older_format(path):
    state = torch.load(path, weights_only=True)
    del state["format"]
    torch.save(state, path)


def moved_position(path):
    state = torch.load(path, weights_only=True)
    state["step_in_epoch"] += 1
    torch.save(state, path)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (truncated, "is unreadable"),
        (garbage, "is unreadable"),
        (older_format, "was written by another version of graftbench"),
        (moved_position, "does not fit this run"),
    ],
)
def test_unusable_checkpoint_is_one_line_naming_the_file_to_delete(
    tmp_path, monkeypatch, damage, problem
):
    with monkeypatch.context() as patch:
        signal_at_step(patch, 6, signal.SIGTERM)
        code, run_dir = train_in_process(tmp_path, *RUN, "trainer.max_steps=10")
    assert code == Exit.INTERRUPTED
    last = run_dir / rundir.CKPT / checkpoint.LAST
    damage(last)
    with pytest.raises(UserError) as raised:
        train_in_process(tmp_path, *RUN, "trainer.max_steps=10")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"ckpt/last.pt {problem} (")
    restart = f": delete {last} to restart the run from step 0 (nothing else is lost)"
    assert message.endswith(restart)
    record = rundir.read_json(run_dir / rundir.RUN)
    assert record["status"] == "failed" and record["error"] == message


def test_deleting_the_unreadable_checkpoint_restarts_from_step_0(tmp_path, monkeypatch, reference):
    with monkeypatch.context() as patch:
        signal_at_step(patch, 30, signal.SIGTERM)
        code, run_dir = train_in_process(tmp_path, *RUN)
    assert code == Exit.INTERRUPTED
    garbage(run_dir / rundir.CKPT / checkpoint.LAST)
    with pytest.raises(UserError):
        train_in_process(tmp_path, *RUN)
    (run_dir / rundir.CKPT / checkpoint.LAST).unlink()
    assert train_in_process(tmp_path, *RUN)[0] == Exit.DONE
    assert_same_run(run_dir, reference)  # the first attempt's records are gone, not doubled


def test_checkpoints_never_go_through_a_symlink_out_of_the_run_dir(tmp_path):
    run_dir, outside = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    outside.mkdir()
    state = {"step": torch.tensor(3)}

    (run_dir / "ckpt").symlink_to(outside)
    with pytest.raises(UserError, match=r"^ckpt leads to .*elsewhere, outside the run directory"):
        checkpoint.save(run_dir / "ckpt" / "last.pt", state, root=run_dir)
    assert not any(outside.iterdir())

    (run_dir / "ckpt").unlink()
    (run_dir / "ckpt").mkdir()
    (outside / "last.pt").write_bytes(b"someone else's file")
    (run_dir / "ckpt" / "last.pt").symlink_to(outside / "last.pt")
    for action, call in [
        ("read", lambda: checkpoint.load(run_dir / "ckpt" / "last.pt", root=run_dir)),
        ("write through", lambda: checkpoint.save(run_dir / "ckpt/last.pt", state, root=run_dir)),
    ]:
        with pytest.raises(UserError, match=f"^ckpt/last.pt leads to .*refusing to {action} it"):
            call()
    assert (outside / "last.pt").read_bytes() == b"someone else's file"
    with pytest.raises(UserError, match=r"^ckpt/last\.pt leads to .*refusing to read it"):
        checkpoint.average([run_dir / "ckpt" / "last.pt"], root=run_dir)

    # the run directory itself may be a link (e.g. to a scratch file system)
    (run_dir / "ckpt" / "last.pt").unlink()
    linked = tmp_path / "linked-run"
    linked.symlink_to(run_dir)
    checkpoint.save(linked / "ckpt" / "last.pt", state, root=linked)
    assert checkpoint.load(linked / "ckpt" / "last.pt", root=linked)["step"] == 3


def test_checkpoints_are_written_with_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        checkpoint.save(tmp_path / "ckpt" / "last.pt", {"step": 1}, root=tmp_path)
    finally:
        os.umask(previous)
    assert (tmp_path / "ckpt" / "last.pt").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.pt"]  # no temporary left


# -- settings refused before training ---------------------------------------------------------
def compose(*overrides: str):
    return config.compose(merged(QUICK, *overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=0", r"trainer\.epochs: 0 is below the minimum 1"),
        ("trainer.epochs=-1", r"trainer\.epochs: -1 is below the minimum 1"),
        ("trainer.max_steps=0", r"trainer\.max_steps: 0 is below the minimum 1"),
        ("trainer.log_every_steps=0", r"trainer\.log_every_steps: 0 is below"),
        ("trainer.threads=0", r"trainer\.threads: 0 is below"),
        ("trainer.per_device_batch_size=48", r"trainer\.batch_size=64 is not a multiple"),
    ],
)
def test_bad_trainer_settings_are_refused_before_anything_is_built(override, message):
    with pytest.raises(UserError, match=message):
        compose(override)


def test_batch_split_is_checked_for_the_run_world_size():
    cfg = compose()
    assert split_batch(cfg.trainer, 4) == (16, 1)
    validate(cfg, world_size=4)
    with pytest.raises(UserError, match=r"per-device batch 21 × 3 device\(s\)"):
        validate(cfg, world_size=3)


# -- numerics ---------------------------------------------------------------------------------
def test_engine_sets_the_run_threads_and_reports_the_numerics(tmp_path):
    cfg = compose("trainer.threads=2", "trainer.device=cpu")
    OmegaConf.set_struct(cfg, True)
    previous = torch.get_num_threads()
    try:
        engine = Engine(cfg, tmp_path, "run", Dist(0, 0, 1, torch.device("cpu")))
        assert torch.get_num_threads() == 2
        assert (
            engine.numerics
            == numerics()
            == {
                "threads": 2,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            }
        )
        engine.logger.close()
    finally:
        torch.set_num_threads(previous)

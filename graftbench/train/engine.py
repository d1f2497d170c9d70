"""The training loop for one run: a task, a Graft optimizer, a schedule, and the bookkeeping
that makes the run trustworthy (exact resume, divergence detection, preemption).

Each optimizer step consumes ``task.batches()``' micro-batches for this process; the task's
loss returns a *sum* over samples (or tokens) and a count. The engine all-reduces
``[loss sum, count, stop flag]`` once per step and scales the gradients by
``world_size / total count``, so the step follows the mean loss of the whole global batch
however it is split over devices and accumulation (1 process × 2 micro-batches equals 2
processes × 1 to round-off). The same all-reduce carries the stop flag set by a stop signal
(SIGTERM, SIGINT, SIGUSR1, SIGUSR2), so every process stops at the same step.

The host reads device values only at logging steps, epoch ends and checkpoint steps (every step
on CPU, where it costs nothing): that one synchronisation gives the logged loss, throughput,
the divergence check (a non-finite loss marks the run diverged at its first bad step) and the
stop decision.

Interruption and resume. The position after a step is always one the run can continue from: a
step that finishes an epoch moves the position to the start of the next epoch at once. The
epoch's end work (evaluation, the averaging snapshot, the epoch-end checkpoint) is done after
that, once, and the checkpoint records whether it was: a run stopped right after an epoch's last
step saves "epoch ended, not closed yet" and its next attempt closes the epoch first. A stop is
taken at a step boundary, after that step's logging and before any boundary work, and its
checkpoint also holds the logging window in progress and the number of records in
``metrics.jsonl``, so a resumed run writes the same records (less timings) and ends with the same
weights, bit for bit, as a run that was never interrupted. A first Ctrl-C stops like SIGTERM; a
second one aborts at once (KeyboardInterrupt), keeping the last checkpoint.

Numerics: ``trainer.threads`` (when set) is the number of intra-op CPU threads; it changes the
results in the last digits (kernels split their reductions by thread), as does the CPU's SIMD
capability. ``numerics()`` reports both, for the run record.
"""

from __future__ import annotations

import copy
import itertools
import os
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from graftbench import rundir
from graftbench.batching import validate
from graftbench.optim import Graft
from graftbench.optim.schedules import Schedule, make_schedule, make_scheduler
from graftbench.schema import TRANSFERRED
from graftbench.train import checkpoint
from graftbench.train.distributed import Dist, all_gather_objects, all_reduce_sum, barrier
from graftbench.train.logging import RunLogger
from graftbench.train.tasks import Task, make_task

# SIGTERM: preemption or `scontrol requeue`; SIGINT: Ctrl-C; SIGUSR1: a user's "checkpoint and
# stop"; SIGUSR2: SLURM's warning before the time limit (submitit's --signal)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
CTRL_C_MESSAGE = (
    b"graftbench: Ctrl-C: stopping after this step with a checkpoint; Ctrl-C again aborts\n"
)


@dataclass
class Outcome:
    """How a run's training ended.

    ``interrupted``: stopped by a signal after saving a checkpoint; ``stop_signal`` names the
    signal this process received (``"SIGTERM"``, ``"SIGINT"``, ...; ``None`` on a process that
    stopped because another one was signalled). ``numerics``: see ``numerics()``.
    """

    step: int
    epochs: float
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    diverged_step: int | None = None
    interrupted: bool = False
    wall_time_s: float = 0.0
    replica_checksums: list[float] = field(default_factory=list)
    stop_signal: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    numerics: dict[str, Any] = field(default_factory=dict)


def numerics() -> dict[str, Any]:
    """What besides the config decides this process's floating-point results on CPU: the
    intra-op thread count and the SIMD kernels torch dispatches to (e.g. AVX2, AVX512)."""
    return {
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


class Engine:
    """``measured``: called once on each attempt, after its first step, with what only a
    stepped optimizer knows (``optimizer_state_bytes``); the runner records it."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        run_id: str,
        dist: Dist,
        measured: Callable[..., None] | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.dist = cfg, run_dir, dist
        self.measured = measured
        trainer = cfg.trainer
        validate(cfg, dist.world_size)  # before anything is built or written
        torch.set_num_threads(trainer.threads)  # part of the identity: it changes the numbers
        self.numerics = numerics()
        _configure_backends(trainer, dist.device)
        checkpoint.seed_everything(cfg.seed)  # the same initial weights on every process
        self.task: Task = make_task(cfg, dist)
        model = self.task.model.to(dist.device)
        if trainer.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.module = model
        self.steps_per_epoch = self.task.steps_per_epoch
        self.total_steps = trainer.epochs * self.steps_per_epoch
        self.last_step = min(self.total_steps, trainer.max_steps or self.total_steps)
        self.optimizer, self.scheduler = self._optimizer(model)
        if dist.distributed:
            model = DistributedDataParallel(
                model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None
            )
        self.model = torch.compile(model) if trainer.compile else model
        self.autocast = (
            torch.autocast(dist.device.type, dtype=torch.bfloat16)
            if trainer.precision == "bf16"
            else nullcontext()
        )
        self.logger = RunLogger(cfg, run_dir, run_id, main=dist.main)
        self.ckpt_path = run_dir / rundir.CKPT / checkpoint.LAST
        # the position: steps done, epochs finished, steps done in the current epoch (always
        # < steps_per_epoch), and the epochs whose end work is done (epoch or epoch - 1)
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.epochs_closed = 0
        self.best: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.notes: dict[str, Any] = {}
        self.window = _Window(time.perf_counter())
        self.records = 0  # records in metrics.jsonl (main process)
        self.elapsed = 0.0
        self.stop_signal: int | None = None
        self.ctrl_c = False
        self.diverged_step: int | None = None
        self.started = time.perf_counter()
        checkpoint.seed_everything(cfg.seed + 1_000_003 * dist.rank)

    def _optimizer(self, model: torch.nn.Module) -> tuple[Graft, torch.optim.lr_scheduler.LambdaLR]:
        """Graft(M, D) under the run's schedule; with ``schedule=transferred``, D alone with one
        param group per layer, each driven by its own factor schedule(t) · c_layer(t) (the
        source run's schedule over this run's steps, and the run directory's transfer)."""
        cfg = self.cfg
        groups = _param_groups(model, cfg)
        transferred = cfg.schedule.name == TRANSFERRED
        if transferred:
            from graftbench import transfer as transfers
            from graftbench.transfer.transferred import read_kept

            kept = read_kept(self.run_dir, cfg.schedule.sha256)
            base = self._schedule(kept.source["schedule"])
            groups, factors = transfers.param_groups(
                groups, kept, base, self.total_steps, lr=cfg.magnitude.lr
            )
        optimizer = Graft(
            groups,
            OmegaConf.to_container(cfg.magnitude),
            OmegaConf.to_container(cfg.direction),
            granularity=cfg.graft.granularity,
            eps=cfg.graft.eps,
        )
        if transferred:
            return optimizer, transfers.make_scheduler(optimizer, factors)
        schedule = self._schedule(OmegaConf.to_container(cfg.schedule))
        return optimizer, make_scheduler(optimizer, schedule)

    def _schedule(self, spec: dict[str, Any]) -> Schedule:
        return make_schedule(
            spec, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps
        )

    def describe(self) -> dict[str, Any]:
        """What run.json records once the run is built: its size, and the numerics it runs
        with (threads and the CPU kernels torch picked change the last digits)."""
        return {
            "total_steps": self.last_step,
            "steps_per_epoch": self.steps_per_epoch,
            "parameters": sum(p.numel() for p in self.module.parameters()),
            **self.numerics,
        }

    # -- lifecycle -------------------------------------------------------------------------
    def fit(self) -> Outcome:
        previous = {s: signal.signal(s, self._request_stop) for s in STOP_SIGNALS}
        try:
            self._resume()
            self.logger.start(
                f"{self.optimizer.label} seed {self.cfg.seed}", self.last_step, self.step
            )
            return self._loop()
        finally:
            self.logger.close()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _request_stop(self, signum: int, frame: Any) -> None:
        """Stop at the next step boundary with a checkpoint; a second Ctrl-C aborts now."""
        if signum == signal.SIGINT:
            if self.ctrl_c:
                raise KeyboardInterrupt
            self.ctrl_c = True
            if self.dist.main:
                os.write(2, CTRL_C_MESSAGE)
        if self.stop_signal is None:
            self.stop_signal = signum

    def _loop(self) -> Outcome:
        while True:
            if self.epochs_closed < self.epoch:
                self._close_epoch()
            if self.step >= self.last_step:
                break
            for micro_batches in self.task.batches(self.epoch, self.step_in_epoch):
                verdict = self._step(micro_batches)
                if verdict is not None:
                    return self._finish(verdict)
                if self.step_in_epoch == 0 or self.step >= self.last_step:
                    break  # an epoch or the training ended: closed and saved above and below
                if self._due(self.cfg.trainer.checkpoint_every_steps):
                    self._save()
            else:
                raise RuntimeError(
                    f"the task's epoch {self.epoch} ended after {self.step_in_epoch} of "
                    f"{self.steps_per_epoch} steps"
                )
        self._evaluate(final=True)
        self._save()
        outcome = self._outcome()
        outcome.replica_checksums = self._replica_checksums()
        outcome.notes = self.notes
        return outcome

    def _close_epoch(self) -> None:
        """The end work of the epoch just finished: evaluation, averaging snapshot, checkpoint
        (the end of training evaluates and saves after the loop)."""
        self.epochs_closed = self.epoch
        training = self.step < self.last_step
        every = max(1, self.cfg.trainer.eval_every_epochs)
        if training and self.epoch % every == 0:
            self._evaluate()
        if self.cfg.trainer.average_last > 1:
            self._save_for_averaging()
        if training:
            self._save()

    def _due(self, every: int | None) -> bool:
        return bool(every) and self.step % every == 0

    # -- one step --------------------------------------------------------------------------
    def _step(self, micro_batches: list[Any]) -> str | None:
        """Train one step and do its logging; "diverged", "interrupted" or None (go on)."""
        trainer = self.cfg.trainer
        self.window.add(self._train_step(micro_batches))
        if self.measured is not None:
            self.measured(optimizer_state_bytes=state_bytes(self.optimizer))
            self.measured = None  # once an attempt: the state's size does not change
        self.step += 1
        self.step_in_epoch += 1
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
        at_log = self.step % trainer.log_every_steps == 0 or self.step == self.last_step
        boundary = self.step_in_epoch == 0 or self._due(trainer.checkpoint_every_steps)
        verdict = None
        if at_log or boundary or self.dist.device.type == "cpu":  # on CPU a sync costs nothing
            verdict = self._sync(log=at_log)
            if verdict == "diverged":
                return verdict
        if self._due(trainer.layer_log_every_steps):
            self._log_layers()
        return verdict

    def _train_step(self, micro_batches: list[Any]) -> torch.Tensor:
        self.model.train()
        loss_sum = torch.zeros((), device=self.dist.device)
        count = torch.zeros((), device=self.dist.device)
        last = len(micro_batches) - 1
        for index, batch in enumerate(micro_batches):
            batch = self.task.to_device(batch, self.dist.device, self.cfg.trainer.channels_last)
            sync = (
                self.model.no_sync()
                if self.dist.distributed and index < last and hasattr(self.model, "no_sync")
                else nullcontext()
            )
            with sync:
                with self.autocast:
                    batch_loss, batch_count = self.task.loss(self.model, batch)
                batch_loss.backward()
            loss_sum += batch_loss.detach().float()
            count += batch_count
        stop = torch.tensor(float(self.stop_signal is not None), device=count.device)
        stats = torch.stack([loss_sum, count, stop])
        all_reduce_sum(stats, self.dist)
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, self.dist.world_size / stats[1])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def _sync(self, *, log: bool) -> str | None:
        """Read the steps not looked at yet: divergence and the stop flag; at a logging step,
        log the window since the last log and start a new one."""
        window = self.window
        values = torch.stack(window.stats[window.checked :]).cpu()
        first_step = self.step - len(values) + 1
        window.checked = len(window.stats)
        bad = (~torch.isfinite(values[:, 0] / values[:, 1])).nonzero()
        if len(bad):
            self.diverged_step = first_step + int(bad[0])
            return "diverged"
        if log:
            now = time.perf_counter()
            totals = torch.stack(window.stats).sum(dim=0).tolist()
            seconds = now - window.start
            record = {
                "step": self.step,
                "epoch": self.step / self.steps_per_epoch,
                "loss": totals[0] / totals[1],  # the mean over every sample of the window
                "lr": self.optimizer.param_groups[0]["lr"],
                "samples_per_s": totals[1] / seconds,
                "step_time_s": seconds / len(window.stats),
                "graft": self.optimizer.correction_summary(),
            }
            self._log("train", record)
            self.logger.advance(self.step, f"loss {record['loss']:.4f}")
            window.reset(now)
        if float(values[-1, 2]) > 0:
            return "interrupted"
        return None

    def _log(self, kind: str, record: dict[str, Any]) -> None:
        self.logger.log(kind, record)
        self.records += 1

    def _log_layers(self) -> None:
        correction = self.optimizer.correction()
        if correction:
            ratios = {name: v["ratio"] for name, v in correction.items()}
            self._log("layers", {"step": self.step, "ratio": ratios})

    def _evaluate(self, final: bool = False) -> None:
        model, notes = self.model, {}
        if final and self.cfg.trainer.average_last > 1:
            model, notes["averaged_checkpoints"] = self._averaged_model()
        model.eval()
        with torch.no_grad(), self.autocast:
            metrics = self.task.evaluate(model, self.dist, final=final)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        notes.update({k: v for k, v in metrics.items() if k not in numbers})
        self.last_eval = {"step": self.step, **numbers}
        self.notes = notes
        epoch = self.step / self.steps_per_epoch
        self._log("eval", {"step": self.step, "epoch": epoch, "final": final, **metrics, **notes})
        for name, value in numbers.items():
            better = min if name in ("loss", "ppl") else max
            self.best[name] = better(self.best.get(name, value), value)

    def _epoch_checkpoints(self) -> list[Path]:
        return sorted((self.run_dir / rundir.CKPT).glob("epoch_*.pt"))

    def _save_for_averaging(self) -> None:
        """Keep the model of the last ``trainer.average_last`` epochs for the final average."""
        if not self.dist.main:
            return
        path = self.run_dir / rundir.CKPT / f"epoch_{self.epoch:05d}.pt"
        checkpoint.save(path, {"model": self.module.state_dict()}, root=self.run_dir)
        for old in self._epoch_checkpoints()[: -self.cfg.trainer.average_last]:
            old.unlink()

    def _averaged_model(self) -> tuple[torch.nn.Module, int]:
        """A copy of the model holding the mean of the last epochs' weights."""
        barrier(self.dist)
        paths = self._epoch_checkpoints()[-self.cfg.trainer.average_last :]
        if not paths:
            return self.model, 0
        averaged = copy.deepcopy(self.module)
        averaged.load_state_dict(checkpoint.average(paths, root=self.run_dir))
        return averaged, len(paths)

    # -- endings ---------------------------------------------------------------------------
    def _finish(self, verdict: str) -> Outcome:
        if verdict == "interrupted":
            self._save()
        outcome = self._outcome()
        outcome.interrupted = verdict == "interrupted"
        outcome.diverged_step = self.diverged_step
        if self.stop_signal is not None:
            outcome.stop_signal = signal.Signals(self.stop_signal).name
        return outcome

    def _outcome(self) -> Outcome:
        final = {k: v for k, v in self.last_eval.items() if k != "step"}
        return Outcome(
            step=self.step,
            epochs=self.step / self.steps_per_epoch,
            final=final,
            best=dict(self.best),
            wall_time_s=time.perf_counter() - self.started,
            numerics=dict(self.numerics),
        )

    # -- checkpoints -----------------------------------------------------------------------
    def _save(self) -> None:
        rng = all_gather_objects(checkpoint.rng_state(), self.dist)
        if not self.dist.main:
            return
        now = time.perf_counter()
        checkpoint.save(
            self.ckpt_path,
            {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
                "step": self.step,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "epochs_closed": self.epochs_closed,
                "best": self.best,
                "last_eval": self.last_eval,
                "window": self.window.state(now),
                "metrics_records": self.records,
                "elapsed": now - self.started,
            },
            root=self.run_dir,
        )

    def _resume(self) -> None:
        """Continue from the checkpoint if there is one, else start at step 0; either way
        ``metrics.jsonl`` keeps only the records the checkpoint had seen (what an attempt killed
        after its checkpoint, or before its first, logged is dropped)."""
        if os.path.lexists(self.ckpt_path):
            self._restore(checkpoint.load(self.ckpt_path, root=self.run_dir))
        if self.dist.main:
            rundir.rewrite_jsonl(self.run_dir / rundir.METRICS, _first(self.records))
        self.started = time.perf_counter() - self.elapsed

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            position = (state["step"], state["epoch"], state["step_in_epoch"])
            closed = state["epochs_closed"]
            self.best, self.last_eval = dict(state["best"]), dict(state["last_eval"])
            self.window.restore(state["window"], self.dist.device)
            self.records = state["metrics_records"]
            self.elapsed = state["elapsed"]
            rng = state["rng"]
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            raise checkpoint.unusable(
                self.ckpt_path, self.run_dir, "does not fit this run", reason
            ) from None
        step, epoch, step_in_epoch = position
        if not (
            step == epoch * self.steps_per_epoch + step_in_epoch
            and 0 <= step_in_epoch < self.steps_per_epoch
            and epoch - 1 <= closed <= epoch
            and step <= self.last_step
        ):
            raise checkpoint.unusable(
                self.ckpt_path,
                self.run_dir,
                "does not fit this run",
                f"step {step} = epoch {epoch} + {step_in_epoch} steps, but this run has "
                f"{self.steps_per_epoch} steps an epoch and {self.last_step} in all",
            )
        self.step, self.epoch, self.step_in_epoch, self.epochs_closed = (*position, closed)
        if len(rng) == self.dist.world_size:
            checkpoint.set_rng_state(rng[self.dist.rank])

    def _replica_checksums(self) -> list[float]:
        """Every process's checksum of its weights: DDP keeps replicas identical, so these are
        equal unless something went wrong, which is then an error, not a silent result."""
        with torch.no_grad():
            params = [p.detach().double() for p in self.module.parameters()]
            mine = float(sum(p.sum() + p.abs().sum() for p in params))
        checksums = [float(c) for c in all_gather_objects(mine, self.dist)]
        if len(set(checksums)) > 1:
            raise RuntimeError(
                f"the {len(checksums)} replicas ended with different weights: {checksums}"
            )
        return checksums


class _Window:
    """Per-step statistics ([loss sum, count, stop flag]) since the last log; the host has
    looked at the first ``checked`` of them. A checkpoint keeps them, so that the first log
    after a resume covers the same steps as without the interruption."""

    def __init__(self, start: float) -> None:
        self.stats: list[torch.Tensor] = []
        self.checked = 0
        self.start = start

    def add(self, stats: torch.Tensor) -> None:
        self.stats.append(stats)

    def reset(self, start: float) -> None:
        self.stats.clear()
        self.checked = 0
        self.start = start

    def state(self, now: float) -> dict[str, Any]:
        stats = torch.stack(self.stats).cpu() if self.stats else torch.zeros(0, 3)
        return {"stats": stats, "seconds": now - self.start}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        self.stats = list(state["stats"].to(device).unbind(0))
        self.checked = len(self.stats)
        self.start = time.perf_counter() - state["seconds"]


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimizer keeps as state (its state and, for children on the
    generic path, their state in the param groups), each storage counted once: the memory that
    D alone saves over M#D. Scratch space reused every step is not state."""
    seen: set[tuple[str, int]] = set()
    total = 0

    def walk(node: Any) -> None:
        nonlocal total
        if isinstance(node, torch.Tensor):
            storage = node.untyped_storage()
            key = (str(node.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value)

    walk(list(optimizer.state.values()))
    walk([group.get("child_state") for group in optimizer.param_groups])
    return total


def _first(count: int) -> Callable[[dict[str, Any]], bool]:
    """A ``rewrite_jsonl`` filter keeping the first ``count`` records (it asks in file order)."""
    seen = itertools.count()
    return lambda _record: next(seen) < count


def _param_groups(model: torch.nn.Module, cfg: DictConfig) -> list[dict[str, Any]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.decay_1d_params:
        return [{"params": named}]
    return [
        {"params": [(n, p) for n, p in named if p.dim() > 1]},
        {"params": [(n, p) for n, p in named if p.dim() <= 1], "weight_decay": 0.0},
    ]


def _configure_backends(trainer: DictConfig, device: torch.device) -> None:
    if trainer.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

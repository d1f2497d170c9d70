"""Where metrics go: ``metrics.jsonl`` always, W&B when configured, a progress bar on a terminal.

Only the main process logs. W&B is a sink, never a source: tables and plots read the run
directory. Its run id is graftbench's run id and it resumes with ``resume="allow"``, so a
requeued run continues the same W&B run; ``mode: offline`` writes under the run directory with
no network (``graftbench sync`` uploads later).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from graftbench import rundir


class RunLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str, *, main: bool) -> None:
        self.main = main
        self.path = run_dir / rundir.METRICS
        self.wandb = _start_wandb(cfg, run_dir, run_id) if main and cfg.logger.wandb else None
        show = cfg.trainer.progress == "always" or (
            cfg.trainer.progress == "auto" and sys.stdout.isatty()
        )
        self.progress = _progress_bar() if main and show else None
        self.task_id = None

    def start(self, description: str, total_steps: int, done_steps: int) -> None:
        if self.progress is not None:
            self.progress.start()
            self.task_id = self.progress.add_task(
                description, total=total_steps, completed=done_steps, status=""
            )

    def advance(self, step: int, status: str = "") -> None:
        if self.progress is not None and self.task_id is not None:
            self.progress.update(self.task_id, completed=step, status=status)

    def log(self, kind: str, record: dict[str, Any]) -> None:
        """One record of ``kind`` (see ``rundir.METRIC_KINDS``) to every sink."""
        if not self.main:
            return
        record = {"kind": kind, **record}
        rundir.append_jsonl(self.path, record)
        if self.wandb is not None:
            self.wandb.log(_flatten(record, prefix=kind), step=record["step"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            wandb.teardown()  # stop the service now, not in an exit hook of a later process


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )


def _start_wandb(cfg: DictConfig, run_dir: Path, run_id: str) -> Any:
    import wandb

    options = cfg.logger.wandb
    return wandb.init(
        project=options.project,
        entity=options.entity,
        group=options.group,
        tags=list(options.tags),
        id=run_id,
        name=run_id,
        resume="allow",
        mode=options.mode,
        dir=str(run_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def _flatten(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """``{"graft": {"ratio_mean": 2}}`` -> ``{"train/graft.ratio_mean": 2}`` (numbers only)."""
    flat: dict[str, float] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif _is_number(value) and math.isfinite(value):
            flat[f"{prefix}/{key}"] = value

    walk({k: v for k, v in record.items() if k not in ("kind", "step")}, "")
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

"""Showing a sweep while it runs: live progress bars on a terminal, one line per event in logs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graftbench import rundir
from graftbench.record import Exit
from graftbench.rundir import RunDirError
from graftbench.sweep.status import latest


def outcome(code: int) -> str:
    return Exit.of(code).meaning if Exit.of(code) is not Exit.FAILED else f"failed (exit {code})"


class LineMonitor:
    """A line when a run starts or ends (for logs and pipes)."""

    def __init__(self, total: int, out=None) -> None:
        self.total, self.done = total, 0
        self.out = out or sys.stdout
        self.starts: dict[Path, float] = {}

    def started(self, run_dir: Path) -> None:
        self.starts[run_dir] = time.monotonic()
        print(f"[{self.done}/{self.total}] started  {run_dir.name}", file=self.out, flush=True)

    def finished(self, run_dir: Path, exit_code: int) -> None:
        self.done += 1
        seconds = time.monotonic() - self.starts.pop(run_dir, time.monotonic())
        hint = f" - see {run_dir / 'train.log'}" if Exit.of(exit_code) is Exit.FAILED else ""
        print(
            f"[{self.done}/{self.total}] {outcome(exit_code):9s} {run_dir.name} "
            f"({seconds:.0f} s){hint}",
            file=self.out,
            flush=True,
        )

    def tick(self, running: list[Path]) -> None:
        pass

    def close(self) -> None:
        pass


class LiveMonitor:
    """Progress bars: the sweep overall, and each running run's steps."""

    def __init__(self, total: int) -> None:
        self.console = Console()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
        )
        self.overall = self.progress.add_task("sweep", total=total, status="")
        self.tasks: dict[Path, int] = {}
        self.progress.start()

    def started(self, run_dir: Path) -> None:
        self.tasks[run_dir] = self.progress.add_task(f"  {run_dir.name}", total=None, status="")

    def finished(self, run_dir: Path, exit_code: int) -> None:
        task = self.tasks.pop(run_dir, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.overall)
        self.console.print(f"{outcome(exit_code):9s} {run_dir.name}")

    def tick(self, running: list[Path]) -> None:
        for run_dir in running:
            task = self.tasks.get(run_dir)
            if task is None:
                continue
            step, metric = latest(run_dir / rundir.METRICS)
            try:
                total = rundir.read_json(run_dir / rundir.RUN).get("total_steps")
            except RunDirError:
                total = None
            self.progress.update(task, completed=step or 0, total=total, status=metric or "")

    def close(self) -> None:
        self.progress.stop()


def monitor_for(total: int) -> LineMonitor | LiveMonitor:
    return LiveMonitor(total) if sys.stdout.isatty() else LineMonitor(total)

"""The sweep workflow: expand the grid, prepare and claim its runs, launch them (locally, or
submit them to SLURM and optionally follow them), report, and say how it ended.

The CLI only parses the command line and prints what this module hands it through ``echo``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftbench import config
from graftbench.record import Exit
from graftbench.sweep import plan as planning
from graftbench.sweep.grid import Grid, expand
from graftbench.sweep.launchers import make_launcher

Echo = Callable[[str], None]

# A bare `graftbench sweep` runs the demo grid (and says so first).
DEMO = ["experiment=demo"]
SHOWN_ON_DRY_RUN = 20


@dataclass(frozen=True)
class Options:
    dry_run: bool = False
    list_runs: bool = False  # with dry_run: every run, not a summary
    retry_failed: bool = False
    extend: bool = False
    wait: bool = False  # SLURM: follow the runs instead of returning once submitted


def run(overrides: list[str], options: Options, echo: Echo) -> Exit:
    """Run the sweep the overrides describe; returns the exit code of the whole sweep.

    0: every run of the grid has a result (done or diverged), or the runs were submitted to
    SLURM without ``--wait``; 1: a run failed (or was skipped as failed); 75: interrupted by a
    signal, runs checkpointed (run the same command again to resume).
    """
    if _bare(overrides):
        echo("no grid given: running the demo (experiment=demo; `make demo` does the same)")
        overrides = [*DEMO, *overrides]
    grid = expand(overrides)
    if options.dry_run:
        echo(describe(grid, full=options.list_runs))
        return Exit.DONE
    plan = planning.plan(grid, retry_failed=options.retry_failed, extend=options.extend)
    for reason, run_ids in plan.skipped.items():
        echo(f"skipping {len(run_ids)} run(s): {reason}")
    first = grid.runs[0].config
    trainer = first["trainer"]
    launcher = make_launcher(
        first["launcher"], plan.sweep_dir, trainer["device"], threads=trainer["threads"]
    )
    codes: dict[Path, Exit] = {}
    if plan.launch:
        echo(f"{launcher.submit(plan.launch)} in {plan.sweep_dir}")
        if first["launcher"]["name"] == "slurm" and not options.wait:
            echo(f"follow them with: graftbench status {plan.sweep_dir} --watch")
            return Exit.DONE
        with _monitor(len(plan.launch)) as monitor:
            codes = launcher.wait(monitor)
    from graftbench.sweep.status import collect, render

    echo(render(collect(plan.sweep_dir)))
    if codes:
        report(plan.sweep_dir, echo, first["sweep"]["metrics"] or None)
    if launcher.interrupted or any(code is Exit.INTERRUPTED for code in codes.values()):
        echo(f"interrupted: run the same command again to resume ({plan.sweep_dir})")
        return Exit.INTERRUPTED
    failed = [d.name for d, code in codes.items() if code in (Exit.FAILED, Exit.USAGE)]
    failed += [
        i for reason, ids in plan.skipped.items() if reason.startswith("failed") for i in ids
    ]
    if failed:
        echo(f"{len(failed)} run(s) failed; their logs: <run dir>/train.log")
        return Exit.FAILED
    return Exit.DONE


def _bare(overrides: list[str]) -> bool:
    """No axis and no group chosen (an experiment, optimizer, model, ...): only values and
    where or how to run (``launcher=``, ``logger=``)."""
    parsed = config.parse(overrides)
    groups = [o.key_or_group for o in parsed if config.is_group(o.key_or_group)]
    sweeps = any(o.is_sweep_override() for o in parsed)
    return not sweeps and all(g in ("launcher", "logger") for g in groups)


def describe(grid: Grid, *, full: bool) -> str:
    """What a dry run prints: a summary (axes, counts, a few run ids), or every run."""
    lines = [f"sweep {grid.name}: {len(grid.runs):,} runs"]
    for key, values in grid.axes.items():
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        lines.append(f"  {key}: {len(values)} value(s): {shown}")
    keys = list(grid.axes)
    runs = grid.runs if full else grid.runs[:SHOWN_ON_DRY_RUN]
    lines.append("")
    for spec in runs:
        values = " ".join(f"{k}={spec.point.get(k)}" for k in keys)
        lines.append(f"{spec.run_id}  {values}".rstrip())
    if not full and len(grid.runs) > len(runs):
        lines.append(f"... {len(grid.runs) - len(runs):,} more (--list shows every run)")
    if grid.estimate_device_hours is not None:
        lines.append(f"estimated total: {grid.estimate_device_hours:,.1f} device-hours")
    return "\n".join(lines)


def report(sweep_dir: Path, echo: Echo, metrics: list[str] | None = None) -> None:
    """What a finished sweep prints: the tables of ``metrics`` (default: what the runs report;
    the schedule-transfer view too when runs of D have a transferred schedule), and where its
    figures are."""
    from graftbench.report.plots import plot_sweep
    from graftbench.report.sweep_tables import sweep_tables

    echo(sweep_tables(sweep_dir, metrics, transfer=None)[0])
    written, _ = plot_sweep(sweep_dir, sweep_dir / "figures")
    if written:
        echo(f"figures: {sweep_dir / 'figures'} ({len(written)} files)")


@contextmanager
def _monitor(total: int) -> Iterator[Any]:
    from graftbench.sweep.monitor import monitor_for

    monitor = monitor_for(total)
    try:
        yield monitor
    finally:
        monitor.close()

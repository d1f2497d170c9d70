"""What `graftbench table` prints and a finished sweep reports: a sweep folder's tables.

The grid's M×D tables (runs the sweep's manifest lists; other runs in the folder are listed
apart), or with ``transfer`` the schedule-transfer view; runs of D with a transferred schedule
are never M×D cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.report import collect, tables


def sweep_tables(
    sweep_dir: Path,
    metrics: Sequence[str] | None = None,
    *,
    fmt: str = "markdown",
    decimals: int | None = None,
    compare: Path | None = None,
    transfer: bool | None = False,
) -> tuple[str, list[str]]:
    """(the text, notes about what is left out or could not be read). ``transfer``: True, the
    schedule-transfer view only; None, the grid's tables and then that view if any run of the
    folder has a transferred schedule."""
    from graftbench.report import transfers

    runs, problems = collect.collect(sweep_dir)
    if runs.empty:
        raise UserError(no_runs(sweep_dir))

    def transfer_view() -> str:  # raises when no run has a transferred schedule
        return transfers.render(transfers.build(runs, metrics), fmt, decimals)

    if transfer:
        return transfer_view(), problems
    has_transfers = bool(collect.transferred(runs).any())
    if has_transfers and transfer is False:
        problems.append("runs with a transferred schedule are not M×D cells: see --transfer")
    runs, outside = collect.split_grid(runs)
    curves, _ = collect.load_curves(sweep_dir, kinds=("train",), runs=runs)
    built = tables.build_tables(runs, metrics, curves=curves)
    if compare is not None:
        reference = tables.load_reference(compare)
        text = "\n".join(
            tables.render_comparison(tables.compare(t, reference), fmt, decimals) for t in built
        )
    else:
        text = tables.render(built, fmt, decimals)
    if not outside.empty:
        listing = tables.render_outside(outside, fmt)
        if listing:
            text = f"{text.rstrip()}\n\n{listing}"
        else:  # csv and json hold the grid's cells only
            ids = ", ".join(outside["run_id"])
            problems.append(f"not part of the sweep's grid, so not in the {fmt}: {ids}")
    if has_transfers and transfer is None:
        text = f"{text.rstrip()}\n\n{transfer_view()}"
    return text, problems


def no_runs(folder: Path) -> str:
    """What to say about a folder without runs: which folders under it hold some."""

    def holds_runs(path: Path) -> bool:
        if path.is_symlink() or not path.is_dir():
            return False
        if (path / rundir.SWEEP).is_file():
            return True
        try:
            return any((child / rundir.RUN).is_file() for child in path.iterdir())
        except OSError:
            return False

    inside = sorted(p.name for p in folder.iterdir() if holds_runs(p))
    hint = f"; sweeps under it: {', '.join(inside)}" if inside else ""
    return f"no runs in {folder} (a sweep folder holds <run id>/{rundir.RUN}){hint}"

"""The figure of a schedule transfer: what was discovered, and what it does.

One figure per grafted pair M#D that runs of the sweep transferred from
(``transfer_<M>-<D>.png``/``.pdf``), three panels:

- the discovered per-layer correction c(t) = ratio(t) / schedule(t) over the fraction of
  training: the source run's recorded samples (dots, one color per layer, first to last), their
  median over layers at each recorded step (black), and the fitted transfers (lines: piecewise
  solid, static dashed) as the transferred runs' own copies hold them. A correction that grows
  linearly through training (the paper's finding for AdaGrad) shows as rising dots and lines;
- the training loss of the four roles of :mod:`graftbench.report.transfers` (D alone, M#D,
  D + transferred, M alone), geometric mean over seeds;
- the first eval metric (top-1, else BLEU, else the eval loss) of the same runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.report import transfers
from graftbench.report.collect import load_curves
from graftbench.report.figure_files import save

PANEL = (4.6, 3.4)
ROLE_COLORS = {
    transfers.D_ALONE: "C0",
    transfers.GRAFTED: "C3",
    transfers.TRANSFERRED: "C2",
    transfers.M_ALONE: "C7",
}
KIND_STYLES = {"piecewise": "-", "static": "--"}


def plot_transfers(
    sweep_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    runs: pd.DataFrame,
    formats: Sequence[str],
) -> tuple[list[Path], list[str]]:
    """Write the figure of every pair transferred from; the files and messages about what
    could not be drawn. ``runs``: the sweep's :func:`~graftbench.report.collect.collect`."""

    written: list[Path] = []
    messages: list[str] = []
    for table in transfers.build(runs):
        members = [run_id for row in table.rows for run_id in row.run_ids]
        curves, problems = load_curves(
            sweep_dir, kinds=("train", "eval"), runs=runs[runs["run_id"].isin(members)]
        )
        messages += problems
        figure = figure_transfer(table, runs, curves, messages)
        name = f"transfer_{table.magnitude}-{table.direction}"
        written += save(figure, out_dir, name, formats)
    return written, messages


def figure_transfer(
    table: transfers.TransferTable, runs: pd.DataFrame, curves: pd.DataFrame, messages: list[str]
) -> Figure:
    figure = Figure(figsize=(PANEL[0] * 3, PANEL[1] + 1.2), layout="constrained")
    correction, loss, metric = figure.subplots(1, 3)
    _draw_correction(correction, table, runs, messages)
    evals = curves[curves["kind"] == "eval"] if "kind" in curves else curves
    eval_metric = next(
        (m for m in ("top1", "bleu", "loss") if m in evals and evals[m].notna().any()), None
    )
    lines = _draw_curves(loss, table, curves, "train", "loss")
    if eval_metric is not None:
        _draw_curves(metric, table, curves, "eval", eval_metric)
    else:
        metric.text(
            0.5, 0.5, "no eval records", ha="center", va="center", transform=metric.transAxes
        )
    if lines:
        figure.legend(
            handles=lines, loc="outside lower center", ncols=min(len(lines), 3), fontsize="small"
        )
    figure.suptitle(f"{table.title} (from {', '.join(table.sources)})", fontsize="medium")
    return figure


def _draw_correction(
    ax: Axes, table: transfers.TransferTable, runs: pd.DataFrame, messages: list[str]
) -> None:
    from graftbench import transfer

    ax.set_xlabel("fraction of training")
    ax.set_ylabel("c(t) = ratio / schedule (log scale)")
    ax.set_yscale("log")
    ax.set_title("discovered per-layer correction", fontsize="medium")
    paths = dict(zip(runs["run_id"], runs["path"], strict=True))
    names: list[str] = []
    source = next((paths[s] for s in table.sources if isinstance(paths.get(s), str)), None)
    if source is None:
        messages.append(f"{table.title}: the source run is not in this sweep; no recorded samples")
    else:
        try:
            samples = transfer.read_source(Path(source)).samples
        except UserError as err:
            messages.append(f"{table.title}: no recorded samples ({err})")
        else:
            names = list(samples.layers)
            colors = _layer_colors(len(names))
            for color, series in zip(colors, samples.layers.values(), strict=True):
                ax.scatter(series.fractions, series.values, s=5, color=color, alpha=0.45, lw=0)
            _draw_median(ax, samples)
    fits = _transfers(table, runs)
    for kind, made in fits.items():
        if not names:
            names = list(made.layers)
        colors = dict(zip(names, _layer_colors(len(names)), strict=True))
        for name, fit in made.layers.items():
            x = np.array([0.0, *fit.knots, 1.0])
            y = np.array([fit.values[0], *fit.values, fit.values[-1]])
            ax.plot(x, y, color=colors.get(name, "0.5"), ls=KIND_STYLES.get(kind, "-"), lw=1)
    if not fits:
        messages.append(f"{table.title}: no transferred run kept a readable transfer.json")
    styles = ", ".join(f"{KIND_STYLES.get(k, '-')} {k}" for k in fits)
    ax.text(
        0.02, 0.02, f"dots: recorded; black: median over layers; lines: fits ({styles})",
        transform=ax.transAxes, fontsize="x-small", va="bottom",
    )  # fmt: skip
    if names:
        mappable = colormaps["viridis"]
        bar = ax.figure.colorbar(
            _scalar_mappable(mappable, len(names)), ax=ax, ticks=[0, len(names) - 1]
        )
        bar.ax.set_yticklabels(["first layer", "last layer"], fontsize="x-small")


def _draw_median(ax: Axes, samples) -> None:
    frame = pd.concat([pd.Series(s.values, index=s.fractions) for s in samples.layers.values()])
    median = np.exp(np.log(frame).groupby(level=0).median())
    ax.plot(median.index, median.to_numpy(), color="black", lw=1.8)


def _transfers(table: transfers.TransferTable, runs: pd.DataFrame) -> dict[str, object]:
    """kind -> the transfer a transferred run of the table kept (the first readable one)."""
    from graftbench import transfer

    paths = dict(zip(runs["run_id"], runs["path"], strict=True))
    out: dict[str, object] = {}
    for row in table.rows:
        if row.role != transfers.TRANSFERRED:
            continue
        for run_id in row.run_ids:
            try:
                made = transfer.read(Path(paths[run_id]) / rundir.TRANSFER)
            except UserError:
                continue
            out.setdefault(made.kind, made)
    return out


def _draw_curves(
    ax: Axes, table: transfers.TransferTable, curves: pd.DataFrame, kind: str, metric: str
) -> list:
    """Each row's mean over its seeds (geometric for a loss); returns the legend handles."""
    logarithmic = metric in ("loss", "ppl")
    ax.set_xlabel("step")
    prefix = "training" if kind == "train" else "eval"
    ax.set_ylabel(f"{prefix} {metric}" + (" (log scale)" if logarithmic else ""))
    ax.set_title(f"{prefix} {metric}", fontsize="medium")
    if logarithmic:
        ax.set_yscale("log")
    rows = curves[curves["kind"] == kind] if "kind" in curves else curves
    handles = []
    for row in table.rows:
        mine = rows[rows["run_id"].isin(row.run_ids)]
        if metric not in mine:
            continue
        values = pd.to_numeric(mine[metric], errors="coerce")
        values = values[np.isfinite(values) & ((values > 0) if logarithmic else True)]
        if values.empty:
            continue
        steps = mine.loc[values.index, "step"]
        center = np.log(values) if logarithmic else values
        mean = center.groupby(steps).mean()
        y = np.exp(mean) if logarithmic else mean
        kind = row.schedule.split()[1] if row.role == transfers.TRANSFERRED else None
        style = KIND_STYLES.get(kind, "-") if kind else "-"
        color = ROLE_COLORS[row.role]
        marker = "o" if kind == "eval" and len(mean) <= 30 else None
        (line,) = ax.plot(
            mean.index, y, color=color, ls=style, lw=1.4, marker=marker, ms=3,
            label=f"{row.role}: {row.optimizer}, lr {row.lr}, {row.schedule}",
        )  # fmt: skip
        handles.append(line)
    return handles


def _layer_colors(count: int) -> list:
    cmap = colormaps["viridis"]
    return [cmap(i / max(1, count - 1)) for i in range(count)]


def _scalar_mappable(cmap, count: int):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=Normalize(0, max(1, count - 1)), cmap=cmap)

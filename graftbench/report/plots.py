"""The paper's figures from a sweep's ``metrics.jsonl`` files.

- ``curves``: training loss and eval metrics of every M#D, colored by M and dashed by D, so
  clustering by M shows at a glance (the paper's Figure 1).
- ``by_magnitude``: small multiples, one column per M with its D curves.
- ``step_size_correction``: the implicit step-size correction ||dM||/||dD|| (mean over layers,
  ``graft.ratio_mean``) over training for every pair with M != D, on a log scale.
- ``layers_<M>-<D>``: the per-layer correction as a layer × step heatmap (log color scale).

Curves are the mean over seeds with the min-max band. Figures are built on
:class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no global backend is
switched, no window opens and nothing is kept alive after saving (PNG through Agg, PDF through
matplotlib's PDF backend).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from graftbench.report.collect import collect, load_curves
from graftbench.report.tables import PREFERRED_METRICS

FORMATS = ("png", "pdf")
RATIO = "graft.ratio_mean"
LAYER_PREFIX = "ratio."
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
PANEL = (4.2, 3.2)  # inches per panel
SPARSE = 30  # curves with this many points or fewer get a marker per point
_NOT_METRICS = {"run_id", "magnitude", "direction", "seed", "status", "kind", "step", "epoch"}


def plot_sweep(
    sweep_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    formats: Sequence[str] = FORMATS,
) -> tuple[list[Path], list[str]]:
    """Write every figure of the sweep into ``out_dir`` in each of ``formats``.

    ``metrics``: eval metrics to draw next to the training loss (default: top1 and top5, else
    bleu, else the eval loss). ``pairs``: (M, D) pairs that get a per-layer heatmap (default:
    every pair with M != D). Returns the files written and messages about what was skipped or
    could not be read; a sweep without any metrics yet gives no files and a message.
    """
    runs, messages = collect(sweep_dir)
    curves, problems = load_curves(sweep_dir, kinds=("train", "eval"), runs=runs)
    messages += problems
    if curves.empty:
        return [], [*messages, f"{sweep_dir}: no metrics recorded yet; nothing to plot"]
    names = eval_metrics(curves, metrics)
    missing = [m for m in metrics or () if m.split(".")[-1] not in names]
    messages += [f"no eval record reports {m!r}; not drawn" for m in missing]
    out = Path(out_dir)
    written = save(figure_curves(curves, names), out, "curves", formats)
    written += save(figure_by_magnitude(curves, names), out, "by_magnitude", formats)

    correction = figure_step_size_correction(curves)
    if correction is None:
        messages.append("no grafted pair recorded graft.ratio_mean; no step-size figure")
    else:
        written += save(correction, out, "step_size_correction", formats)

    wanted = set(pairs) if pairs is not None else None
    chosen = [
        (m, d) in wanted if wanted is not None else m != d
        for m, d in zip(runs["magnitude"], runs["direction"], strict=True)
    ]
    layers, _ = load_curves(sweep_dir, kinds=("layers",), runs=runs[chosen])
    grafted = _pairs(layers) if not layers.empty else []
    for m, d in pairs if pairs is not None else grafted:
        heatmap = figure_layer_ratios(layers, m, d) if (m, d) in grafted else None
        if heatmap is None:
            messages.append(f"no per-layer ratios recorded for {m}#{d}; no heatmap")
        else:
            written += save(heatmap, out, f"layers_{m}-{d}", formats)
    return written, messages


def save(
    figure: Figure, out_dir: str | os.PathLike[str], name: str, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """``out_dir/name.<format>`` for each format; returns the paths."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = [Path(out_dir) / f"{name}.{fmt}" for fmt in formats]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths


def eval_metrics(curves: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[str]:
    """The eval metrics to draw: those asked for that eval records report (``final.top1``
    and ``top1`` alike), else top1 and top5, else bleu, else the eval loss."""
    evals = curves[curves["kind"] == "eval"].dropna(axis=1, how="all")
    reported = [c for c in evals.columns if c not in _NOT_METRICS]
    if metrics:
        return [m.split(".")[-1] for m in metrics if m.split(".")[-1] in reported]
    for group in PREFERRED_METRICS:
        present = [m for m in group if m in reported]
        if present:
            return present
    return reported[:1]


# -- figures --------------------------------------------------------------------------------
def figure_curves(curves: pd.DataFrame, metrics: Sequence[str]) -> Figure:
    """Training loss and each eval metric over steps, every M#D on the same axes."""
    panels = [("train", "loss"), *(("eval", m) for m in metrics)]
    figure = Figure(figsize=(PANEL[0] * len(panels), PANEL[1] + 0.8), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False, sharex=True)[0]
    style = _Style(curves)
    for ax, (kind, metric) in zip(axes, panels, strict=True):
        _fit_y([ax], [_draw(ax, curves, kind, metric, style)])
        ax.set_title(f"{kind} {metric}", fontsize="medium")
    style.legend(figure)
    return figure


def figure_by_magnitude(curves: pd.DataFrame, metrics: Sequence[str]) -> Figure:
    """Small multiples: one column per M (its D curves), one row per quantity; steps shared,
    y shared along a row."""
    panels = [("train", "loss"), *(("eval", m) for m in metrics)]
    style = _Style(curves)
    figure = Figure(
        figsize=(PANEL[0] * len(style.magnitudes), PANEL[1] * len(panels) + 0.8),
        layout="constrained",
    )
    grid = figure.subplots(
        len(panels), len(style.magnitudes), squeeze=False, sharex=True, sharey="row"
    )
    for i, (kind, metric) in enumerate(panels):
        drawn = []
        for j, m in enumerate(style.magnitudes):
            drawn.append(_draw(grid[i, j], curves[curves["magnitude"] == m], kind, metric, style))
            grid[i, j].set_title(f"M = {m}: {kind} {metric}", fontsize="medium")
        _fit_y(list(grid[i]), drawn)
    style.legend(figure)
    return figure


def figure_step_size_correction(curves: pd.DataFrame) -> Figure | None:
    """||dM||/||dD|| (mean over layers) over steps for each pair with M != D; ``None`` when
    no such pair recorded it."""
    if RATIO not in curves:
        return None
    # magnitude and direction are categoricals over different name sets: compare the names
    crossed = curves["magnitude"].astype(str) != curves["direction"].astype(str)
    grafted = curves[crossed & (curves[RATIO] > 0)]
    if grafted.empty:
        return None
    figure = Figure(figsize=(PANEL[0] * 1.8, PANEL[1] * 1.4), layout="constrained")
    ax = figure.subplots()
    ax.set_yscale("log")
    style = _Style(grafted)
    _fit_y([ax], [_draw(ax, grafted, "train", RATIO, style)])
    ax.axhline(1.0, color="0.5", linewidth=0.8, zorder=0)
    ax.set_title("implicit step-size correction ||dM|| / ||dD|| (mean over layers)")
    style.legend(figure)
    return figure


def figure_layer_ratios(layers: pd.DataFrame, magnitude: str, direction: str) -> Figure | None:
    """Per-layer ||dM||/||dD|| of one pair as a layer × step heatmap (geometric mean over
    seeds, log colors); ``None`` when the pair has no ``layers`` records."""
    pair = layers[(layers["magnitude"] == magnitude) & (layers["direction"] == direction)]
    columns = [c for c in pair.columns if c.startswith(LAYER_PREFIX)]
    values = pair[["step", *columns]].set_index("step").astype(float)
    values = np.log(values.where(values > 0)).groupby(level="step").mean().dropna(how="all")
    values = np.exp(values).dropna(axis=1, how="all")
    if values.empty:
        return None
    names = [c.removeprefix(LAYER_PREFIX) for c in values.columns]
    height = min(2.0 + 0.18 * len(names), 24.0)
    figure = Figure(figsize=(PANEL[0] * 1.8, height), layout="constrained")
    ax = figure.subplots()
    finite = values.to_numpy()[np.isfinite(values.to_numpy())]
    mesh = ax.pcolormesh(
        values.index.to_numpy(),
        np.arange(len(names)),
        values.to_numpy().T,
        norm=LogNorm(vmin=finite.min(), vmax=max(finite.max(), finite.min() * (1 + 1e-9))),
        shading="nearest",
        cmap="viridis",
    )
    ax.set_yticks(np.arange(len(names)), names, fontsize=max(4, 9 - len(names) // 20))
    ax.invert_yaxis()
    ax.set_xlabel("step")
    ax.set_title(f"{magnitude}#{direction}: ||dM|| / ||dD|| per layer")
    figure.colorbar(mesh, ax=ax, label="||dM|| / ||dD||")
    return figure


# -- drawing --------------------------------------------------------------------------------
class _Style:
    """Color by magnitude, line style by direction, in grid order, with a legend for each."""

    def __init__(self, curves: pd.DataFrame) -> None:
        self.magnitudes = _present(curves["magnitude"])
        self.directions = _present(curves["direction"])
        palette = cycle(f"C{i}" for i in range(10))
        self.color = {m: next(palette) for m in self.magnitudes}
        dashes = cycle(LINESTYLES)
        self.linestyle = {d: next(dashes) for d in self.directions}

    def legend(self, figure: Figure) -> None:
        """Two legend rows under the figure: the magnitudes' colors, the directions' styles."""
        blank = Line2D([], [], linestyle="none", label=" ")
        by_m = [Line2D([], [], color=self.color[m], label=f"M = {m}") for m in self.magnitudes]
        by_d = [
            Line2D([], [], color="0.3", linestyle=self.linestyle[d], label=f"D = {d}")
            for d in self.directions
        ]
        width = max(len(by_m), len(by_d))
        by_m += [blank] * (width - len(by_m))
        by_d += [blank] * (width - len(by_d))
        handles = [h for pair in zip(by_m, by_d, strict=True) for h in pair]  # column-major
        figure.legend(handles=handles, loc="outside lower center", ncols=width, fontsize="small")


def _draw(
    ax: Axes, curves: pd.DataFrame, kind: str, metric: str, style: _Style
) -> tuple[pd.Series, bool]:
    """Each pair's mean over seeds (line) and min-max band, over the seeds that did not
    diverge; a diverged seed beside healthy ones is a thin line of its own. Returns the
    values of the runs that did not diverge and whether any did (for :func:`_fit_y`)."""
    ax.set_xlabel("step")
    rows = curves[curves["kind"] == kind]
    if metric not in rows or rows[metric].isna().all():
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        return pd.Series(dtype=float), False
    rows = rows.assign(value=rows[metric].astype(float).replace([np.inf, -np.inf], np.nan))
    for (m, d), pair in rows.groupby(["magnitude", "direction"], observed=True, sort=True):
        color, linestyle = style.color[m], style.linestyle[d]
        diverged = pair["status"] == "diverged"
        healthy = pair[~diverged] if (~diverged).any() else pair
        by_step = healthy.groupby("step")["value"].agg(["mean", "min", "max"])
        steps = by_step.index.to_numpy()
        marker = "o" if len(steps) <= SPARSE else None  # evals are few: one would not show
        ax.plot(steps, by_step["mean"], color=color, ls=linestyle, lw=1.4, marker=marker, ms=3)
        if healthy["seed"].nunique() > 1:
            ax.fill_between(steps, by_step["min"], by_step["max"], color=color, alpha=0.12)
        if len(healthy) < len(pair):
            for _, run in pair[diverged].groupby("run_id"):
                ax.plot(run["step"], run["value"], color=color, linestyle=linestyle, lw=0.6)
    healthy = rows["status"] != "diverged"
    return rows.loc[healthy, "value"].dropna(), not healthy.all()


def _fit_y(axes: Sequence[Axes], drawn: Sequence[tuple[pd.Series, bool]]) -> None:
    """If a diverged run was drawn, limit the y range to the other runs' values: a blown-up
    loss would squash every other curve into a flat line."""
    healthy = pd.concat([values for values, _ in drawn])
    if axes[0].get_yscale() == "log":
        healthy = healthy[healthy > 0]
    if healthy.empty or not any(diverged for _, diverged in drawn):
        return
    low, high = healthy.min(), healthy.max()
    if axes[0].get_yscale() == "log":
        limits = (low / 1.2, high * 1.2)
    else:
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
        limits = (low - pad, high + pad)
    for ax in axes:
        ax.set_ylim(*limits)


def _present(names: pd.Series) -> list[str]:
    present = set(names.dropna())
    return [name for name in names.cat.categories if name in present]


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = (
        frame[["magnitude", "direction"]].drop_duplicates().sort_values(["magnitude", "direction"])
    )
    return [(m, d) for m, d in pairs.itertuples(index=False, name=None)]

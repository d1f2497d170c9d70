"""The paper's figures from a sweep's ``metrics.jsonl`` files.

- ``curves``: training loss and eval metrics of every M#D, colored by M and dashed by D, so
  clustering by M shows at a glance (the paper's Figure 1).
- ``by_magnitude``: small multiples, one column per M with its D curves.
- ``clustering``: the paper's claim measured (:mod:`graftbench.report.clustering`): the
  distance between the log-loss curves of every two pairs, and how far changing M, changing D
  and changing the seed moves the curves, with intervals.
- ``step_size_correction``: the implicit step-size correction ||dM||/||dD|| (mean over layers,
  ``graft.ratio_mean``) over training for every pair with M != D, on a log scale.
- ``layers_<M>-<D>``: the per-layer correction as a layer × step heatmap (log color scale).
- ``transfer_<M>-<D>``: when runs of D have a schedule transferred from M#D, the discovered
  per-layer correction and the curves of D alone, M#D and D + transferred
  (:mod:`graftbench.report.transfer_plots`); those runs enter no other figure.

Losses and perplexities are drawn on a log axis (on a linear one, any clustering shows only
in the first steps), with the geometric mean over seeds; other metrics with the arithmetic
mean. The band is the min-max over seeds. Diverged and failed runs never enter a mean or the
y range: each is a thin line of its own ending in a marker (× diverged, ■ failed) at its last
finite value, pinned to the edge of the axes when that value is off the scale, so a blown-up
run is visible and does not squash the others. An eval metric that never varies (top-5 at
100% everywhere) gets no panel unless asked for. Every axis is labelled.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global backend is switched, no window opens and nothing is kept alive after saving (PNG through
Agg, PDF through matplotlib's PDF backend).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from graftbench.report.clustering import Clustering, cluster_curves
from graftbench.report.collect import collect, load_curves, transferred
from graftbench.report.figure_files import FORMATS, save
from graftbench.report.tables import PREFERRED_METRICS

RATIO = "graft.ratio_mean"
LAYER_PREFIX = "ratio."
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
PANEL = (4.2, 3.2)  # inches per panel
SPARSE = 30  # eval curves with this many points or fewer get a marker per point
UNHEALTHY = {"diverged": "x", "failed": "s"}  # status -> end marker
LOG_METRICS = ("loss", "nll", "ppl", "perplexity")
LABELS = {
    "loss": "loss",
    "top1": "top-1 accuracy (%)",
    "top5": "top-5 accuracy (%)",
    "bleu": "BLEU",
    "ppl": "perplexity",
    RATIO: "||dM|| / ||dD||",
}
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
    bleu, else the eval loss; those that never vary are left out). ``pairs``: (M, D) pairs
    that get a per-layer heatmap (default: every pair with M != D). Returns the files written
    and messages about what was skipped or could not be read; a sweep without any metrics yet
    gives no files and a message.
    """
    every_run, messages = collect(sweep_dir)
    runs = every_run[~transferred(every_run)]  # D with a transferred schedule is no M#D cell
    curves, problems = load_curves(sweep_dir, kinds=("train", "eval"), runs=runs)
    messages += problems
    if curves.empty:
        written, notes = _transfer_figures(sweep_dir, out_dir, every_run, formats)
        if not written:
            notes.append(f"{sweep_dir}: no metrics recorded yet; nothing to plot")
        return written, [*messages, *notes]
    names = eval_metrics(curves, metrics)
    missing = [m for m in metrics or () if m.split(".")[-1] not in names]
    messages += [f"no eval record reports {m!r}; not drawn" for m in missing]
    if not metrics:
        constant = [m for m in names if not varies(curves, m)]
        messages += [f"eval {m} is the same in every record; not drawn" for m in constant]
        names = [m for m in names if m not in constant]
    out = Path(out_dir)
    written = save(figure_curves(curves, names), out, "curves", formats)
    written += save(figure_by_magnitude(curves, names), out, "by_magnitude", formats)

    clustering = cluster_curves(curves)
    if clustering is None:
        messages.append("fewer than two pairs have training-loss curves; no clustering figure")
    else:
        written += save(figure_clustering(clustering), out, "clustering", formats)

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
    transfer_files, transfer_messages = _transfer_figures(sweep_dir, out, every_run, formats)
    return written + transfer_files, messages + transfer_messages


def _transfer_figures(
    sweep_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    runs: pd.DataFrame,
    formats: Sequence[str],
) -> tuple[list[Path], list[str]]:
    """The figures of the runs with a transferred schedule, if there are any."""
    if not transferred(runs).any():
        return [], []
    from graftbench.report.transfer_plots import plot_transfers

    return plot_transfers(sweep_dir, out_dir, runs, formats)


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


def varies(curves: pd.DataFrame, metric: str, kind: str = "eval") -> bool:
    """Whether the finite values of ``metric`` in the ``kind`` records of runs that did not
    diverge or fail differ anywhere (top-5 at 100% in every record does not)."""
    rows = curves[(curves["kind"] == kind) & ~curves["status"].isin(UNHEALTHY)]
    values = pd.to_numeric(rows.get(metric, pd.Series(dtype=float)), errors="coerce")
    values = values[np.isfinite(values)]
    return values.nunique() > 1


def label(kind: str, metric: str) -> str:
    """The y-axis label: ``training loss (log scale)``, ``eval top-1 accuracy (%)``."""
    name = LABELS.get(metric, metric)
    prefix = {"train": "training", "eval": "eval"}.get(kind, kind)
    return f"{prefix} {name}" + (" (log scale)" if log_scale(metric) else "")


def log_scale(metric: str) -> bool:
    """Losses, perplexities and the step-size ratio span decades: drawn on a log axis."""
    name = metric.lower()
    return metric == RATIO or any(name == m or name.endswith(f"_{m}") for m in LOG_METRICS)


# -- figures --------------------------------------------------------------------------------
def figure_curves(curves: pd.DataFrame, metrics: Sequence[str]) -> Figure:
    """Training loss and each eval metric over steps, every M#D on the same axes."""
    panels = [("train", "loss"), *(("eval", m) for m in metrics)]
    figure = Figure(figsize=(PANEL[0] * len(panels), PANEL[1] + 1.1), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False, sharex=True)[0]
    style = _Style(curves)
    for ax, (kind, metric) in zip(axes, panels, strict=True):
        _finish([ax], [_draw(ax, curves, kind, metric, style)])
        ax.set_title(f"{kind} {metric}", fontsize="medium")
    style.legend(figure)
    return figure


def figure_by_magnitude(curves: pd.DataFrame, metrics: Sequence[str]) -> Figure:
    """Small multiples: one column per M (its D curves), one row per quantity; steps shared,
    y shared along a row."""
    panels = [("train", "loss"), *(("eval", m) for m in metrics)]
    style = _Style(curves)
    figure = Figure(
        figsize=(PANEL[0] * len(style.magnitudes), PANEL[1] * len(panels) + 1.1),
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
            if j:
                grid[i, j].set_ylabel("")
        _finish(list(grid[i]), drawn)
    style.legend(figure)
    return figure


def figure_clustering(clustering: Clustering) -> Figure:
    """The clustering of the training curves: the distance between every two pairs (block
    structure by M when the curves cluster by M; the diagonal is seed to seed) and how far
    changing D, changing M and changing the seed moves the curves, with intervals."""
    figure = Figure(figsize=(PANEL[0] * 2.6, PANEL[1] * 1.7), layout="constrained")
    heat, bars = figure.subplots(1, 2, width_ratios=(1.25, 1))
    unit = f"mean |Δ log {clustering.metric}| per step"
    distances = clustering.distances.to_numpy()
    image = heat.imshow(np.ma.masked_invalid(distances), cmap="viridis")
    cells = clustering.cells
    heat.set_xticks(range(len(cells)), cells, rotation=60, ha="right", fontsize="small")
    heat.set_yticks(range(len(cells)), cells, fontsize="small")
    magnitudes = [cell.split("#", 1)[0] for cell in cells]
    for k in range(1, len(cells)):
        if magnitudes[k] != magnitudes[k - 1]:  # a line between the blocks of one M
            heat.axhline(k - 0.5, color="white", lw=1.5)
            heat.axvline(k - 0.5, color="white", lw=1.5)
    heat.set_xlabel("pair M#D")
    heat.set_ylabel("pair M#D")
    heat.set_title("distance between pairs (diagonal: seed to seed)", fontsize="medium")
    figure.colorbar(image, ax=heat, label=unit, shrink=0.85)

    rows = [
        ("changing D\n(same M)", clustering.same_magnitude, "C0"),
        ("changing M\n(same D)", clustering.same_direction, "C3"),
        ("seed to seed\n(noise floor)", clustering.noise_floor, "0.4"),
    ]
    for y, (_, interval, color) in enumerate(rows):
        error = (
            [[interval.estimate - interval.low], [interval.high - interval.estimate]]
            if interval.has_interval
            else None
        )
        bars.errorbar(interval.estimate, y, xerr=error, fmt="o", color=color, capsize=5, ms=7)
    bars.set_yticks(range(len(rows)), [name for name, _, _ in rows])
    bars.set_ylim(len(rows) - 0.5, -0.5)
    bars.set_xlim(left=0)
    bars.set_xlabel(f"{unit} ({clustering.seeds} seeds, {clustering.steps} steps)")
    bars.grid(axis="x", alpha=0.3)
    bars.set_title("how far the curves move (95% CI)", fontsize="medium")
    figure.suptitle(clustering.conclusion(), fontsize="medium", wrap=True)
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
    figure = Figure(figsize=(PANEL[0] * 1.8, PANEL[1] * 1.4 + 0.6), layout="constrained")
    ax = figure.subplots()
    style = _Style(grafted)
    _finish([ax], [_draw(ax, grafted, "train", RATIO, style)])
    ax.axhline(1.0, color="0.5", linewidth=0.8, zorder=0)
    ax.set_ylabel("||dM|| / ||dD|| (mean over layers, log scale)")
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
    ax.set_ylabel("parameter tensor")
    ax.set_title(f"{magnitude}#{direction}: ||dM|| / ||dD|| per layer")
    figure.colorbar(mesh, ax=ax, label="||dM|| / ||dD|| (log scale)")
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
        self.unhealthy = sorted(set(curves["status"]) & set(UNHEALTHY))

    def legend(self, figure: Figure) -> None:
        """Legend rows under the figure: the magnitudes' colors, the directions' styles, then
        what the band and the end markers mean."""
        blank = Line2D([], [], linestyle="none", label=" ")
        by_m = [Line2D([], [], color=self.color[m], label=f"M = {m}") for m in self.magnitudes]
        by_d = [
            Line2D([], [], color="0.3", linestyle=self.linestyle[d], label=f"D = {d}")
            for d in self.directions
        ]
        notes = [Patch(color="0.3", alpha=0.2, label="band: min–max over seeds")]
        notes += [
            Line2D([], [], color="0.3", lw=0.6, marker=UNHEALTHY[s], label=f"{s} run (last value)")
            for s in self.unhealthy
        ]
        width = max(len(by_m), len(by_d), len(notes))
        rows = [row + [blank] * (width - len(row)) for row in (by_m, by_d, notes)]
        handles = [h for column in zip(*rows, strict=True) for h in column]  # column-major
        figure.legend(handles=handles, loc="outside lower center", ncols=width, fontsize="small")


@dataclass(frozen=True)
class _Drawn:
    """What :func:`_draw` drew on one axes: the values that set the y range, and the end
    points of diverged and failed runs (step, last finite value or NaN, status, color)."""

    healthy: pd.Series
    ends: list[tuple[float, float, str, str]]


def _draw(ax: Axes, curves: pd.DataFrame, kind: str, metric: str, style: _Style) -> _Drawn:
    """Each pair's mean over the seeds that did not diverge or fail (geometric on a log axis)
    and their min-max band; each diverged or failed run as a thin line of its own."""
    ax.set_xlabel("step")
    ax.set_ylabel(label(kind, metric))
    rows = curves[curves["kind"] == kind]
    if metric not in rows or rows[metric].isna().all():
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        return _Drawn(pd.Series(dtype=float), [])
    logarithmic = log_scale(metric)
    value = pd.to_numeric(rows[metric], errors="coerce").astype(float)
    value = value.replace([np.inf, -np.inf], np.nan)
    if logarithmic:
        ax.set_yscale("log")
        value = value.where(value > 0)
    rows = rows.assign(value=value, center=np.log(value) if logarithmic else value)
    unhealthy = rows["status"].isin(UNHEALTHY)
    ends = []
    for (m, d), pair in rows.groupby(["magnitude", "direction"], observed=True, sort=True):
        color, linestyle = style.color[m], style.linestyle[d]
        bad = pair["status"].isin(UNHEALTHY)
        healthy = pair[~bad]
        if not healthy.empty:
            by_step = healthy.groupby("step").agg(
                center=("center", "mean"), low=("value", "min"), high=("value", "max")
            )
            steps = by_step.index.to_numpy()
            center = np.exp(by_step["center"]) if logarithmic else by_step["center"]
            sparse = kind == "eval" and len(steps) <= SPARSE  # a lone eval would not show
            marker = "o" if sparse else None
            ax.plot(steps, center, color=color, ls=linestyle, lw=1.4, marker=marker, ms=3)
            if healthy["seed"].nunique() > 1:
                ax.fill_between(steps, by_step["low"], by_step["high"], color=color, alpha=0.12)
        for _, run in pair[bad].groupby("run_id"):
            run = run.sort_values("step")
            ax.plot(run["step"], run["value"], color=color, linestyle=linestyle, lw=0.6)
            finite = run[run["value"].notna()]
            last = finite.iloc[-1] if len(finite) else run.iloc[-1]
            ends.append((last["step"], last["value"], run["status"].iloc[0], color))
    return _Drawn(rows.loc[~unhealthy, "value"].dropna(), ends)


def _finish(axes: Sequence[Axes], drawn: Sequence[_Drawn]) -> None:
    """Fit the y range of ``axes`` (sharing it) to the runs that did not diverge or fail when
    any did, so a blown-up loss does not squash every other curve into a flat line; then mark
    where each diverged or failed run ends, pinned to the edge when off the scale (the top
    edge when it has no finite value at all)."""
    healthy = pd.concat([d.healthy for d in drawn])
    if axes[0].get_yscale() == "log":
        healthy = healthy[healthy > 0]
    if not healthy.empty and any(d.ends for d in drawn):
        low, high = healthy.min(), healthy.max()
        if axes[0].get_yscale() == "log":
            limits = (low / 1.2, high * 1.2)
        else:
            pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
            limits = (low - pad, high + pad)
        for ax in axes:
            ax.set_ylim(*limits)
    for ax, d in zip(axes, drawn, strict=True):
        bottom, top = ax.get_ylim()
        for step, value, status, color in d.ends:
            y = top if np.isnan(value) else min(max(value, bottom), top)
            ax.plot(
                [step], [y], marker=UNHEALTHY[status], color=color, ms=7, mew=1.8,
                linestyle="none", clip_on=False, zorder=5,
            )  # fmt: skip


def _present(names: pd.Series) -> list[str]:
    present = set(names.dropna())
    return [name for name in names.cat.categories if name in present]


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = (
        frame[["magnitude", "direction"]].drop_duplicates().sort_values(["magnitude", "direction"])
    )
    return [(m, d) for m, d in pairs.itertuples(index=False, name=None)]

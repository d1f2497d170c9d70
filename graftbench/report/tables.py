"""The paper's M × D tables: magnitude in rows, direction in columns, mean ± std over seeds.

A cell averages the ``done`` runs that report the metric (sample std, ddof=1), gives the
confidence interval of that mean (:mod:`graftbench.report.statistics`) and names the seeds that
do not count, e.g. ``75.10 ± 0.30 [74.35, 75.85] (n=3)`` or ``75.1 (n=1, 2 diverged)``. A cell
without any value shows the status of its runs, most important first (:data:`PRECEDENCE`):
``diverged`` (a result: the pair does not train), then ``failed`` and ``unreadable`` (someone
must look), ``n/a`` (done, but the metric was not recorded), then the transient
``running``/``queued``/``pending`` and finally ``missing``. When the runs of a cell disagree the
cell shows counts, ``2 diverged, 1 failed``.

The best cell of each row (the best direction for a magnitude) is bold, the best of each column
(the best magnitude for a direction) italic in markdown and underlined in LaTeX, but only when
its interval overlaps no other cell's of that line; cells whose intervals overlap the best's are
tied, marked † (row) and ‡ (column). Only rows or columns with two or more values get a mark.

Under each table: how far changing M and D moves the metric with bootstrap intervals, the
two-way ANOVA over seeds (or why there is none), and, when the curves are given, whether the
training curves cluster by M (:mod:`graftbench.report.clustering`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from graftbench.errors import UserError
from graftbench.report import statistics
from graftbench.report.clustering import Clustering, cluster_curves
from graftbench.report.collect import (
    MISSING,
    OVERRIDE_PREFIX,
    UNREADABLE,
    grid_order,
    transferred,
)
from graftbench.rundir import Status

FORMATS = ("markdown", "latex", "csv", "json")
NO_VALUE = "n/a"  # a done run that did not record the metric
EMPTY = "—"  # no run at all for this pair (a grid that is not a full product)
PRECEDENCE = ("diverged", "failed", UNREADABLE, NO_VALUE, "running", "queued", "pending", MISSING)
LOWER_IS_BETTER = ("loss", "nll", "ppl", "perplexity", "error", "err")
PREFERRED_METRICS = (("top1", "top5"), ("bleu",), ("loss",))
SAMPLE_COLUMNS = ("magnitude", "direction", "seed", "value")
TIED_IN_ROW, TIED_IN_COLUMN = "†", "‡"
MAX_DECIMALS = 6


# -- naming metrics -------------------------------------------------------------------------
def metric_column(metric: str) -> str:
    """``top1`` -> ``final.top1``; ``best.top1`` and ``final.loss`` are kept as they are."""
    return metric if metric.startswith(("final.", "best.")) else f"final.{metric}"


def higher_is_better(metric: str) -> bool:
    """False for losses, perplexities and error rates; True for top1/top5/bleu and the rest."""
    name = metric_column(metric).split(".", 1)[1].lower()
    return not any(name == low or name.endswith(f"_{low}") for low in LOWER_IS_BETTER)


def default_metrics(runs: pd.DataFrame) -> list[str]:
    """top1 and top5 if the runs report them, else bleu, else loss, else every final metric."""
    reported = [c.split(".", 1)[1] for c in runs.columns if c.startswith("final.")]
    for group in PREFERRED_METRICS:
        present = [m for m in group if m in reported]
        if present:
            return present
    return reported or ["loss"]


# -- the pivot ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridTable:
    """One metric over the M × D grid. ``mean``/``std``/``n`` are M × D frames (rows in grid
    order); ``others[(m, d)]`` counts the runs of a cell without a value, by status;
    ``samples`` holds the values themselves (columns :data:`SAMPLE_COLUMNS`) and
    ``clustering`` the clustering of the same runs' training curves, if they were given."""

    metric: str
    higher_is_better: bool
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    others: dict[tuple[str, str], dict[str, int]]
    where: dict[str, Any] = field(default_factory=dict)
    samples: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SAMPLE_COLUMNS))
    clustering: Clustering | None = None

    @property
    def magnitudes(self) -> list[str]:
        return list(self.mean.index)

    @property
    def directions(self) -> list[str]:
        return list(self.mean.columns)

    @functools.cached_property
    def statistics(self) -> statistics.TableStatistics:
        """Intervals, ties, spread and ANOVA (computed once, on first use)."""
        return statistics.analyze(self.mean, self.std, self.n, self.samples, self.higher_is_better)

    def values(self, magnitude: str, direction: str) -> tuple[float, float, int]:
        """(mean, std, n) of a cell (positional: ``DataFrame.at`` is slow for many cells)."""
        i, j = self._position(magnitude, direction)
        return (
            float(self.mean.to_numpy()[i, j]),
            float(self.std.to_numpy()[i, j]),
            int(self.n.to_numpy()[i, j]),
        )

    def interval(self, magnitude: str, direction: str) -> tuple[float, float]:
        """The confidence interval of a cell's mean (NaN, NaN with fewer than two values)."""
        i, j = self._position(magnitude, direction)
        stats = self.statistics
        return float(stats.low.to_numpy()[i, j]), float(stats.high.to_numpy()[i, j])

    def status(self, magnitude: str, direction: str) -> str:
        """``ok`` if the cell has a value, else its most important status (or ``—``)."""
        if self.values(magnitude, direction)[2] > 0:
            return "ok"
        others = self.others.get((magnitude, direction), {})
        return _by_precedence(others)[0] if others else EMPTY

    def text(self, magnitude: str, direction: str, decimals: int) -> str:
        """``76.30 ± 0.20 [75.80, 76.80] (n=3)``, ``75.1 (n=1, 2 diverged)``, ``diverged`` or
        ``2 diverged, 1 failed``."""
        mean, std, n = self.values(magnitude, direction)
        others = self.others.get((magnitude, direction), {})
        flags = [f"{others[s]} {s}" for s in _by_precedence(others)]
        if n == 0:
            return next(iter(others)) if len(others) == 1 else ", ".join(flags) or EMPTY
        value = f"{mean:.{decimals}f}"
        if n > 1:
            low, high = self.interval(magnitude, direction)
            value += f" ± {std:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"
        return f"{value} ({', '.join([f'n={n}', *flags])})"

    @property
    def title(self) -> str:
        which, name = self.metric.split(".", 1)
        where = ", ".join(f"{k.removeprefix(OVERRIDE_PREFIX)}={v}" for k, v in self.where.items())
        better = "higher" if self.higher_is_better else "lower"
        return f"{name} ({which}, {better} is better{'; ' + where if where else ''})"

    @property
    def name(self) -> str:
        """The metric without ``final.``/``best.``: ``top1``."""
        return self.metric.split(".", 1)[1]

    def _position(self, magnitude: str, direction: str) -> tuple[int, int]:
        return self.mean.index.get_loc(magnitude), self.mean.columns.get_loc(direction)


def build_tables(
    runs: pd.DataFrame, metrics: Sequence[str] | None = None, curves: pd.DataFrame | None = None
) -> list[GridTable]:
    """One :class:`GridTable` per metric, and per value of any swept override that varies
    among the runs of one (magnitude, direction, seed), e.g. a learning-rate grid (in
    ascending order of those values). ``curves`` (from
    :func:`~graftbench.report.collect.load_curves`, with the train records) adds the
    clustering of the training curves of each table's runs."""
    metrics = list(metrics) if metrics else default_metrics(runs)
    reported = [c for c in runs.columns if c.startswith(("final.", "best."))]
    for metric in metrics:
        if reported and metric_column(metric) not in reported:
            names = ", ".join(c.removeprefix("final.") for c in reported)
            raise UserError(f"no run reports the metric {metric!r}; the runs report: {names}")
    placed = _placed(runs)
    if placed.empty:  # e.g. a sweep of transferred runs only
        return []
    split = _split_columns(placed)
    clusterings = _clusterings(placed, split, curves)
    return [table for metric in metrics for table in _pivot(placed, metric, split, clusterings)]


def build_table(runs: pd.DataFrame, metric: str, curves: pd.DataFrame | None = None) -> GridTable:
    """Pool all ``runs`` into one M × D table of ``metric``, whatever else they vary in."""
    placed = _placed(runs)
    return _pivot(placed, metric, [], _clusterings(placed, [], curves))[0]


def _placed(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that are cells of the M × D grid: a run of D with a transferred schedule is
    not D#D (``graftbench table --transfer`` shows it)."""
    return runs[runs["magnitude"].notna() & runs["direction"].notna() & ~transferred(runs)]


def _clusterings(
    runs: pd.DataFrame, split: list[str], curves: pd.DataFrame | None
) -> dict[tuple, Clustering | None]:
    """The clustering of the training curves of each group of ``split`` values."""
    if curves is None or curves.empty:
        return {}
    if not split:
        return {(): cluster_curves(curves[curves["run_id"].isin(runs["run_id"])])}
    points = zip(*(runs[c].astype(object) for c in split), strict=True)
    group_of = dict(zip(runs["run_id"], points, strict=True))
    keys = curves["run_id"].map(group_of)  # a run outside ``runs``: NaN, left out
    groups = curves[keys.notna()].groupby(keys[keys.notna()], sort=False)
    return {_key(key): cluster_curves(group) for key, group in groups}


def _pivot(
    runs: pd.DataFrame,
    metric: str,
    split: list[str],
    clusterings: Mapping[tuple, Clustering | None],
) -> list[GridTable]:
    """The tables of every group of ``split`` values at once (one groupby, not one per
    group: a 10,000-run learning-rate grid has hundreds of groups)."""
    column = metric_column(metric)
    values = (runs[column] if column in runs else pd.Series(np.nan, index=runs.index)).astype(float)
    has_value = (runs["status"] == Status.DONE) & np.isfinite(values)
    keys = [*(runs[c] for c in split), runs["magnitude"], runs["direction"]]
    keys = [k.astype(object) for k in keys]
    stats = values[has_value].groupby([k[has_value] for k in keys], dropna=False)
    stats = stats.agg(["mean", "std", "count"])
    labels = runs["status"].where(runs["status"] != Status.DONE, NO_VALUE)[~has_value]
    counts = labels.groupby([k[~has_value] for k in keys] + [labels], dropna=False).size()

    cells: dict[tuple, dict[tuple[str, str], tuple[float, float, int]]] = {}
    for key, mean, std, n in zip(stats.index, *(stats[c] for c in stats), strict=True):
        key = _key(key)
        cells.setdefault(key[:-2], {})[key[-2:]] = (mean, std, n)
    others: dict[tuple, dict[tuple[str, str], dict[str, int]]] = {}
    for key, n in counts.items():
        key = _key(key)
        others.setdefault(key[:-3], {}).setdefault(key[-3:-1], {})[key[-1]] = int(n)
    samples = _samples(runs[has_value], values[has_value], split)

    order = {
        name: list(runs[name].cat.categories) if hasattr(runs[name], "cat") else []
        for name in ("magnitude", "direction")
    }
    groups = runs[split].drop_duplicates().sort_values(split) if split else pd.DataFrame([()])
    tables = []
    for group in groups.itertuples(index=False, name=None):
        group = _key(group)
        group_cells, group_others = cells.get(group, {}), others.get(group, {})
        present = [*group_cells, *group_others]
        magnitudes = _ordered(order["magnitude"], {m for m, _ in present})
        directions = _ordered(order["direction"], {d for _, d in present})
        grids = [np.full((len(magnitudes), len(directions)), fill) for fill in (np.nan, np.nan, 0)]
        for (m, d), stat in group_cells.items():
            for grid, value in zip(grids, stat, strict=True):
                grid[magnitudes.index(m), directions.index(d)] = value
        mean, std, n = (pd.DataFrame(g, index=magnitudes, columns=directions) for g in grids)
        tables.append(
            GridTable(
                metric=column,
                higher_is_better=higher_is_better(column),
                mean=mean,
                std=std,
                n=n.astype(int),
                others=group_others,
                where=dict(zip(split, group, strict=True)),
                samples=samples.get(group, pd.DataFrame(columns=SAMPLE_COLUMNS)),
                clustering=clusterings.get(group),
            )
        )
    return tables


def _samples(runs: pd.DataFrame, values: pd.Series, split: list[str]) -> dict[tuple, pd.DataFrame]:
    """The values of each group of ``split`` values as :data:`SAMPLE_COLUMNS` frames."""
    frame = pd.DataFrame(
        {
            "magnitude": runs["magnitude"].astype(object),
            "direction": runs["direction"].astype(object),
            "seed": runs["seed"],
            "value": values,
        }
    )
    if not split:
        return {(): frame.reset_index(drop=True)}
    groups = frame.groupby([runs[c].astype(object) for c in split], dropna=False, sort=False)
    return {_key(key): group.reset_index(drop=True) for key, group in groups}


def _key(key: Any) -> tuple:
    """A group key as a tuple with ``None`` for NaN (NaN is not equal to itself)."""
    key = key if isinstance(key, tuple) else (key,)
    return tuple(None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in key)


def _ordered(order: list[str], present: set[str]) -> list[str]:
    return [name for name in grid_order(order, present) if name in present]


def _split_columns(runs: pd.DataFrame) -> list[str]:
    overrides = [c for c in runs.columns if c.startswith(OVERRIDE_PREFIX)]
    if not overrides or runs.empty:
        return []
    keys = [runs[k].astype(object) for k in ("magnitude", "direction", "seed")]
    distinct = runs.groupby(keys, dropna=False)[overrides].nunique()
    return [c for c in overrides if (distinct[c] > 1).any()]


def _by_precedence(counts: Mapping[str, int]) -> list[str]:
    rank = {status: i for i, status in enumerate(PRECEDENCE)}
    return sorted(counts, key=lambda s: (rank.get(s, len(rank)), s))


# -- rendering ------------------------------------------------------------------------------
def decimals_for(table: GridTable) -> int:
    """Three significant digits of the largest value (76.3, 2.35, 0.763), and more where the
    uncertainty is finer: two significant digits of the typical seed std (the median over
    cells) and one of the amounts by which changing M or D moves the metric, so 99.72 never
    shows as 100 next to "changing M moves top5 by 0.28"."""
    finite = np.abs(table.mean.to_numpy(dtype=float))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not finite.size:
        return 2
    decimals = [max(0, 2 - math.floor(math.log10(finite.max())))]
    std = table.std.to_numpy(dtype=float)
    std = std[np.isfinite(std) & (std > 0)]
    if std.size:
        decimals.append(statistics.two_significant(float(np.median(std))))
    spread = table.statistics.spread
    for amount in (spread.by_magnitude.estimate, spread.by_direction.estimate):
        if math.isfinite(amount) and amount > 0:
            decimals.append(statistics.two_significant(amount) - 1)
    return min(max(decimals), MAX_DECIMALS)


def render(tables: Sequence[GridTable], fmt: str = "markdown", decimals: int | None = None) -> str:
    """All ``tables`` in one text: ``markdown`` or ``latex`` (a table, its legend and the
    statistics per metric), ``csv`` (one tidy row per cell, full precision) or ``json`` (the
    cells and every statistic)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return pd.DataFrame([c for t in tables for c in _cells(t)]).to_csv(index=False)
    if fmt == "json":
        return _json([_table_json(t, decimals) for t in tables])
    draw = _markdown if fmt == "markdown" else _latex
    return "\n".join(draw(t, _decimals(t, decimals)) for t in tables)


def render_outside(runs: pd.DataFrame, fmt: str = "markdown") -> str:
    """The runs in a sweep's folder that its grid does not list (``collect.split_grid``), as a
    short listing apart from the tables: run id, M, D, seed, status. Markdown, or LaTeX
    comments; empty for no runs and for csv/json, whose readers expect the cells only."""
    if runs.empty or fmt not in ("markdown", "latex"):
        return ""
    rows = [
        [
            run.run_id,
            *("" if pd.isna(v) else str(v) for v in (run.magnitude, run.direction, run.seed)),
            run.status,
        ]
        for run in runs.itertuples(index=False)
    ]
    headers = ["run id", "M", "D", "seed", "status"]
    title = (
        f"{len(rows)} run(s) in this folder are not part of the sweep's grid "
        "(a `graftbench train` with other settings, say); they are not in the tables above"
    )
    if fmt == "latex":
        body = tabulate(rows, headers, disable_numparse=True)
        return "\n".join([f"% {title}", *(f"% {line}" for line in body.splitlines()), ""])
    body = tabulate(rows, headers, tablefmt="pipe", disable_numparse=True)
    return f"### Outside the grid\n\n{title}.\n\n{body}\n"


def notes(table: GridTable, decimals: int) -> list[str]:
    """The lines printed under a table: how far changing M and D moves the metric, the ANOVA
    (or why there is none) and, with curves, their clustering."""
    stats = table.statistics
    lines = [
        statistics.spread_sentence(stats.spread, table.name, decimals),
        statistics.anova_sentence(stats),
    ]
    if table.clustering is not None:
        lines.append(table.clustering.sentence())
    return lines


def _decimals(table: GridTable, decimals: int | None) -> int:
    return decimals if decimals is not None else decimals_for(table)


def _legend(table: GridTable, fmt: str) -> str:
    stats = table.statistics
    bold, italic = ("\\textbf", "\\underline") if fmt == "latex" else ("**bold**", "*italic*")
    row, column = (
        ("$^\\dagger$", "$^\\ddagger$") if fmt == "latex" else (TIED_IN_ROW, TIED_IN_COLUMN)
    )
    if not stats.replicated:
        return (
            f"{bold}: best D for this M (row); {italic}: best M for this D (column); {row} / "
            f"{column}: equal to that best. One value per cell, so no intervals: the marks "
            "rank single values."
        )
    level = f"{stats.confidence:.0%}"
    return (
        f"{bold}: best D for this M (row), {italic}: best M for this D (column), when its "
        f"{level} CI overlaps no other cell's in that line; {row} tied for the row's best, "
        f"{column} for the column's best (CIs overlap). [low, high]: {level} CI of the mean "
        "(Student t over the cell's seeds)."
    )


def _marked(table: GridTable, decimals: int, fmt: str) -> list[list[str]]:
    """Each row's magnitude and cell texts, with their best/tied marks."""
    marks = table.statistics.marks
    best_row, tied_row, best_column, tied_column = (
        f.to_numpy()
        for f in (marks.best_in_row, marks.tied_in_row, marks.best_in_column, marks.tied_in_column)
    )
    row_style, column_style = (
        (lambda t: f"\\textbf{{{t}}}", lambda t: f"\\underline{{{t}}}")
        if fmt == "latex"
        else (lambda t: f"**{t}**", lambda t: f"*{t}*")
    )
    escape = _tex if fmt == "latex" else str
    rows = []
    for i, m in enumerate(table.magnitudes):
        row = [escape(m)]
        for j, d in enumerate(table.directions):
            text = escape(table.text(m, d, decimals))
            text = column_style(text) if best_column[i, j] else text
            text = row_style(text) if best_row[i, j] else text
            ties = TIED_IN_ROW * bool(tied_row[i, j]) + TIED_IN_COLUMN * bool(tied_column[i, j])
            row.append(f"{text} {escape(ties)}" if ties else text)
        rows.append(row)
    return rows


def _markdown(table: GridTable, decimals: int) -> str:
    body = tabulate(
        _marked(table, decimals, "markdown"),
        ["M \\ D", *table.directions],
        tablefmt="pipe",
        disable_numparse=True,
    )
    lines = [_legend(table, "markdown"), *notes(table, decimals)]
    return f"### {table.title}\n\n{body}\n\n" + "\n".join(lines) + "\n"


def _latex(table: GridTable, decimals: int) -> str:
    lines = [
        f"% {_tex(table.title)}",
        f"% {_legend(table, 'latex')} Needs \\usepackage{{booktabs}}.",
        f"\\begin{{tabular}}{{l{'c' * len(table.directions)}}}",
        "\\toprule",
        f" & \\multicolumn{{{len(table.directions)}}}{{c}}{{direction $D$}} \\\\",
        f"\\cmidrule(lr){{2-{len(table.directions) + 1}}}",
        " & ".join(["magnitude $M$", *map(_tex, table.directions)]) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(row) + " \\\\" for row in _marked(table, decimals, "latex")]
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"% {_tex(line)}" for line in notes(table, decimals)]
    return "\n".join([*lines, ""])


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "—": "---",
    "–": "--",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "α": r"$\alpha$",
    "η": r"$\eta$",
    "²": r"$^2$",
    "Δ": r"$\Delta$",
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _cells(table: GridTable, decimals: int | None = None) -> list[dict[str, Any]]:
    """The tidy rows of a table: one per cell, numbers at full precision."""
    marks = table.statistics.marks
    flags = {
        name: getattr(marks, name).to_numpy()
        for name in ("best_in_row", "tied_in_row", "best_in_column", "tied_in_column")
    }
    decimals = _decimals(table, decimals)
    cells = []
    for i, m in enumerate(table.magnitudes):
        for j, d in enumerate(table.directions):
            mean, std, n = table.values(m, d)
            low, high = table.interval(m, d)
            others = table.others.get((m, d), {})
            cells.append(
                {
                    "metric": table.metric,
                    **table.where,
                    "magnitude": m,
                    "direction": d,
                    "mean": mean,
                    "std": std,
                    "n": n,
                    "ci_low": low,
                    "ci_high": high,
                    "status": table.status(m, d),
                    "others": ", ".join(f"{others[s]} {s}" for s in _by_precedence(others)),
                    **{name: bool(flag[i, j]) for name, flag in flags.items()},
                    "text": table.text(m, d, decimals),
                }
            )
    return cells


def _table_json(table: GridTable, decimals: int | None) -> dict[str, Any]:
    stats = table.statistics
    clustering = table.clustering
    return {
        "metric": table.metric,
        "higher_is_better": table.higher_is_better,
        "where": table.where,
        "magnitudes": table.magnitudes,
        "directions": table.directions,
        "cells": [
            {**c, "others": table.others.get((c["magnitude"], c["direction"]), {})}
            for c in _cells(table, decimals)
        ],
        "statistics": {
            "confidence": stats.confidence,
            "alpha": stats.alpha,
            "cell_interval": "Student t over the seeds of each cell",
            "spread": {
                **dataclasses.asdict(stats.spread),
                "interval": f"percentile bootstrap over seeds ({statistics.RESAMPLES} "
                f"resamples, generator seed {statistics.BOOTSTRAP_SEED})",
            },
            "anova": None if stats.anova is None else dataclasses.asdict(stats.anova),
            "no_test": stats.no_test,
            "clustering": None if clustering is None else clustering.as_dict(),
        },
        "notes": notes(table, _decimals(table, decimals)),
    }


def _json(data: Any) -> str:
    """Strict JSON: NaN as null, numpy scalars as Python numbers."""
    return json.dumps(_plain(data), indent=2, allow_nan=False) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- comparing with reference numbers -------------------------------------------------------
_LEADING_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def load_reference(path: str | os.PathLike[str], metric: str | None = None) -> pd.DataFrame:
    """Reference numbers as an M × D frame of text as typed (``76.1``, ``76.1 ± 0.2``,
    ``diverged``), names lower-cased. Reads the paper's layout (first column M names, header D
    names) or a ``--format csv`` output of this module (pick ``metric`` if it has several)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the reference table ({e})") from None
    if {"magnitude", "direction", "mean"} <= set(frame.columns):
        frame = _tidy_reference(frame, path, metric)
    elif frame.shape[1] < 2:
        raise UserError(f"{path}: expected a header of direction names after a first column")
    frame = frame.set_index(frame.columns[0])
    frame.index = [str(i).strip().lower() for i in frame.index]
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return frame


def _tidy_reference(frame: pd.DataFrame, path: Any, metric: str | None) -> pd.DataFrame:
    if "metric" in frame and metric is not None:
        frame = frame[frame["metric"] == metric_column(metric)]
    if "metric" in frame and frame["metric"].nunique() > 1:
        names = ", ".join(frame["metric"].unique())
        raise UserError(f"{path}: holds several metrics ({names}); choose one with --metric")
    value = frame["mean"].where(frame["mean"] != "", frame.get("status", ""))
    wide = frame.assign(value=value).pivot_table(
        index="magnitude", columns="direction", values="value", aggfunc="first", sort=False
    )
    return wide.reset_index()


def reference_value(text: Any) -> float:
    """The leading number of a reference cell (``76.1 ± 0.2`` -> 76.1), NaN if none."""
    match = _LEADING_NUMBER.match(str(text))
    return float(match.group(1)) if match else math.nan


@dataclass(frozen=True)
class Comparison:
    """A table beside reference numbers; ``difference`` is ours minus the reference."""

    table: GridTable
    reference: pd.DataFrame  # text, over magnitudes × directions
    difference: pd.DataFrame

    @property
    def magnitudes(self) -> list[str]:
        return list(self.difference.index)

    @property
    def directions(self) -> list[str]:
        return list(self.difference.columns)


def compare(table: GridTable, reference: pd.DataFrame) -> Comparison:
    """Align ``reference`` (from :func:`load_reference`) with ``table``: our rows and columns
    in grid order, then any the reference alone has."""
    ours = {name.lower(): name for name in (*table.magnitudes, *table.directions)}
    reference = reference.rename(index=ours, columns=ours)
    rows = table.magnitudes + [m for m in reference.index if m not in table.magnitudes]
    columns = table.directions + [d for d in reference.columns if d not in table.directions]
    reference = reference.reindex(index=rows, columns=columns).fillna("")
    values = reference.map(reference_value)
    difference = table.mean.reindex(index=rows, columns=columns) - values
    return Comparison(table, reference, difference)


def render_comparison(
    comparison: Comparison, fmt: str = "markdown", decimals: int | None = None
) -> str:
    """Ours, the reference and ours - reference per cell, side by side; in markdown and LaTeX
    also the claim for both and the mean absolute difference."""
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    table = comparison.table
    decimals = _decimals(table, decimals)
    cells = _comparison_cells(comparison, decimals)
    if fmt == "csv":
        return pd.DataFrame(cells).to_csv(index=False)
    if fmt == "json":
        return _json(cells)
    name = table.metric.split(".", 1)[1]
    gap = comparison.difference.abs().stack().dropna()
    summary = [
        "ours: " + statistics.spread_sentence(table.statistics.spread, name, decimals),
        "reference: "
        + statistics.spread_sentence(
            statistics.spread(comparison.reference.map(reference_value)), name, decimals
        ),
        f"mean |ours - reference| over {len(gap)} cells: "
        + (f"{gap.mean():.{decimals}f}" if len(gap) else "n/a"),
    ]
    grid = {(c["magnitude"], c["direction"]): c for c in cells}
    rows = [
        [m, *(grid[m, d][k] for d in comparison.directions for k in ("ours", "reference", "Δ"))]
        for m in comparison.magnitudes
    ]
    if fmt == "markdown":
        kinds = ("ours", "ref", "Δ")
        headers = ["M \\ D", *(f"{d} {k}" for d in comparison.directions for k in kinds)]
        body = tabulate(rows, headers, tablefmt="pipe", disable_numparse=True)
        return f"### {table.title}: ours vs reference\n\n{body}\n\n" + "\n".join(summary) + "\n"
    k = len(comparison.directions)
    lines = [
        f"% {_tex(table.title)}: ours vs reference",
        f"\\begin{{tabular}}{{l{'ccc' * k}}}",
        "\\toprule",
        " & ".join(["", *(f"\\multicolumn{{3}}{{c}}{{{_tex(d)}}}" for d in comparison.directions)])
        + " \\\\",
        " ".join(f"\\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(k)),
        " & ".join(["magnitude $M$", *(["ours", "ref.", "$\\Delta$"] * k)]) + " \\\\",
        "\\midrule",
        *(" & ".join(map(_tex, row)) + " \\\\" for row in rows),
        "\\bottomrule",
        "\\end{tabular}",
        *(f"% {_tex(note)}" for note in summary),
        "",
    ]
    return "\n".join(lines)


def _comparison_cells(comparison: Comparison, decimals: int) -> list[dict[str, Any]]:
    table = comparison.table
    cells = []
    for m in comparison.magnitudes:
        for d in comparison.directions:
            ours = m in table.magnitudes and d in table.directions
            difference = comparison.difference.at[m, d]
            cells.append(
                {
                    "metric": table.metric,
                    **table.where,
                    "magnitude": m,
                    "direction": d,
                    "mean": table.mean.at[m, d] if ours else math.nan,
                    "n": int(table.n.at[m, d]) if ours else 0,
                    "ours": table.text(m, d, decimals) if ours else EMPTY,
                    "reference": comparison.reference.at[m, d] or EMPTY,
                    "difference": difference,
                    "Δ": EMPTY if math.isnan(difference) else f"{difference:+.{decimals}f}",
                }
            )
    return cells

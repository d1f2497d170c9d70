"""The paper's M × D tables: magnitude in rows, direction in columns, mean ± std over seeds.

A cell averages the ``done`` runs that report the metric (sample std, ddof=1) and names the
seeds that do not, e.g. ``75.1 ± 0.3 (n=2, 1 diverged)``. A cell without any value shows the
status of its runs, most important first (:data:`PRECEDENCE`): ``diverged`` (a result: the
pair does not train), then ``failed`` and ``unreadable`` (someone must look), ``n/a`` (done,
but the metric was not recorded), then the transient ``running``/``queued``/``pending`` and
finally ``missing``. When the runs of a cell disagree the cell shows counts, ``2 diverged,
1 failed``.

The best cell of each row (the best direction for a magnitude) is bold; the best of each column
(the best magnitude for a direction) is italic in markdown and underlined in LaTeX. Only rows or
columns with two or more values get a highlight; ties are all highlighted.

Under each table, the paper's claim in numbers (:func:`spread`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from graftbench.errors import UserError
from graftbench.report.collect import MISSING, OVERRIDE_PREFIX, UNREADABLE, grid_order
from graftbench.rundir import Status

FORMATS = ("markdown", "latex", "csv", "json")
NO_VALUE = "n/a"  # a done run that did not record the metric
EMPTY = "—"  # no run at all for this pair (a grid that is not a full product)
PRECEDENCE = ("diverged", "failed", UNREADABLE, NO_VALUE, "running", "queued", "pending", MISSING)
LOWER_IS_BETTER = ("loss", "nll", "ppl", "perplexity", "error", "err")
PREFERRED_METRICS = (("top1", "top5"), ("bleu",), ("loss",))


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
    order); ``others[(m, d)]`` counts the runs of a cell without a value, by status."""

    metric: str
    higher_is_better: bool
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    others: dict[tuple[str, str], dict[str, int]]
    where: dict[str, Any] = field(default_factory=dict)

    @property
    def magnitudes(self) -> list[str]:
        return list(self.mean.index)

    @property
    def directions(self) -> list[str]:
        return list(self.mean.columns)

    def values(self, magnitude: str, direction: str) -> tuple[float, float, int]:
        """(mean, std, n) of a cell (positional: ``DataFrame.at`` is slow for many cells)."""
        i, j = self.mean.index.get_loc(magnitude), self.mean.columns.get_loc(direction)
        return (
            float(self.mean.to_numpy()[i, j]),
            float(self.std.to_numpy()[i, j]),
            int(self.n.to_numpy()[i, j]),
        )

    def status(self, magnitude: str, direction: str) -> str:
        """``ok`` if the cell has a value, else its most important status (or ``—``)."""
        if self.values(magnitude, direction)[2] > 0:
            return "ok"
        others = self.others.get((magnitude, direction), {})
        return _by_precedence(others)[0] if others else EMPTY

    def best(self, axis: str) -> pd.DataFrame:
        """Boolean M × D frame: the best cell(s) of each ``row`` or ``column`` that has at
        least two values."""
        x = self.mean.to_numpy(dtype=float)
        along = 1 if axis == "row" else 0
        enough = (np.isfinite(x).sum(axis=along, keepdims=True) >= 2) & np.isfinite(x)
        pick = np.fmax if self.higher_is_better else np.fmin
        best = pick.reduce(x, axis=along, keepdims=True) if x.size else x
        return pd.DataFrame(enough & (x == best), index=self.mean.index, columns=self.mean.columns)

    def text(self, magnitude: str, direction: str, decimals: int) -> str:
        """``76.3 ± 0.2 (n=3)``, ``75.1 (n=1, 2 diverged)``, ``diverged`` or ``2 diverged,
        1 failed``."""
        mean, std, n = self.values(magnitude, direction)
        others = self.others.get((magnitude, direction), {})
        flags = [f"{others[s]} {s}" for s in _by_precedence(others)]
        if n == 0:
            return next(iter(others)) if len(others) == 1 else ", ".join(flags) or EMPTY
        value = f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if n > 1 else "")
        return f"{value} ({', '.join([f'n={n}', *flags])})"

    @property
    def title(self) -> str:
        which, name = self.metric.split(".", 1)
        where = ", ".join(f"{k.removeprefix(OVERRIDE_PREFIX)}={v}" for k, v in self.where.items())
        better = "higher" if self.higher_is_better else "lower"
        return f"{name} ({which}, {better} is better{'; ' + where if where else ''})"


def build_tables(runs: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[GridTable]:
    """One :class:`GridTable` per metric, and per value of any swept override that varies
    among the runs of one (magnitude, direction, seed), e.g. a learning-rate grid (in
    ascending order of those values)."""
    metrics = list(metrics) if metrics else default_metrics(runs)
    reported = [c for c in runs.columns if c.startswith(("final.", "best."))]
    for metric in metrics:
        if reported and metric_column(metric) not in reported:
            names = ", ".join(c.removeprefix("final.") for c in reported)
            raise UserError(f"no run reports the metric {metric!r}; the runs report: {names}")
    placed = runs[runs["magnitude"].notna() & runs["direction"].notna()]
    split = _split_columns(placed)
    return [table for metric in metrics for table in _pivot(placed, metric, split)]


def build_table(runs: pd.DataFrame, metric: str) -> GridTable:
    """Pool all ``runs`` into one M × D table of ``metric``, whatever else they vary in."""
    return _pivot(runs[runs["magnitude"].notna() & runs["direction"].notna()], metric, [])[0]


def _pivot(runs: pd.DataFrame, metric: str, split: list[str]) -> list[GridTable]:
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
            )
        )
    return tables


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


# -- the claim in numbers -------------------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """How much the cell means move when M changes versus when D changes (the paper's claim:
    results cluster by M).

    ``by_magnitude``: the mean, over the directions with values for two magnitudes or more, of
    max - min over magnitudes; ``by_direction``: the mean, over magnitudes, of max - min over
    directions. ``share_*``: a two-way decomposition of the variance between cell means, on
    the largest block of cells that all have a value (``rows`` × ``columns``): with grand mean
    g, row effects r_m and column effects c_d, SS = sum (x - g)^2,
    share_magnitude = |D| sum r_m^2 / SS, share_direction = |M| sum c_d^2 / SS and
    share_interaction = the rest. ``None`` when that block is smaller than 2 × 2 or all its
    cells are equal.
    """

    by_magnitude: float
    by_direction: float
    share_magnitude: float | None
    share_direction: float | None
    share_interaction: float | None
    rows: list[str]
    columns: list[str]
    partial: bool  # the shares use only ``rows`` × ``columns``: other cells have no value

    def sentence(self, name: str, decimals: int) -> str:
        """e.g. ``changing M moves top1 by 4.1 on average, changing D by 0.6; M explains 93%
        of the variance between cells, D 4% (interaction 3%).``"""
        if math.isnan(self.by_magnitude) and math.isnan(self.by_direction):
            return f"too few values to compare the effect of M and D on {name}."

        def amount(x: float) -> str:  # at least two significant digits: 0.19, not 0
            if math.isnan(x):
                return "n/a"
            digits = decimals if x == 0 else max(decimals, 1 - math.floor(math.log10(abs(x))))
            return f"{x:.{digits}f}"

        def percent(x: float) -> str:
            return f"{round(x, 2) + 0.0:.0%}"  # + 0.0: a rounded -0.001 prints 0%, not -0%

        text = (
            f"changing M moves {name} by {amount(self.by_magnitude)} on average, "
            f"changing D by {amount(self.by_direction)}"
        )
        if self.share_magnitude is None:
            return text + "; too few complete cells to split the variance."
        text += (
            f"; M explains {percent(self.share_magnitude)} of the variance between cells, "
            f"D {percent(self.share_direction)} (interaction {percent(self.share_interaction)})"
        )
        if self.partial:
            text += (
                f" over the complete cells M in {_names(self.rows)} × D in {_names(self.columns)}"
            )
        return text + "."


def spread(means: pd.DataFrame) -> Spread:
    """The :class:`Spread` of an M × D matrix of cell means (NaN where a cell has no value)."""
    x = means.to_numpy(dtype=float)
    ranges = [_mean_range(x, axis) for axis in (0, 1)]
    rows, columns = _complete_block(~np.isnan(x))
    block = x[np.ix_(rows, columns)]
    shares: tuple[float | None, ...] = (None, None, None)
    if block.shape[0] >= 2 and block.shape[1] >= 2:
        grand = block.mean()
        total = ((block - grand) ** 2).sum()
        if total > 0:
            by_m = block.shape[1] * ((block.mean(axis=1) - grand) ** 2).sum() / total
            by_d = block.shape[0] * ((block.mean(axis=0) - grand) ** 2).sum() / total
            shares = (float(by_m), float(by_d), float(1 - by_m - by_d))
    return Spread(
        *ranges,
        *shares,
        rows=[means.index[i] for i in rows],
        columns=[means.columns[j] for j in columns],
        partial=block.shape != x.shape,
    )


def _mean_range(x: np.ndarray, axis: int) -> float:
    """Mean over the lines across ``axis`` with two values or more of their max - min."""
    lines = x.T if axis == 0 else x
    ranges = [np.nanmax(v) - np.nanmin(v) for v in lines if np.isfinite(v).sum() >= 2]
    return float(np.mean(ranges)) if ranges else math.nan


def _complete_block(present: np.ndarray) -> tuple[list[int], list[int]]:
    """The rows and columns of the largest block of cells that all have a value (ties: more
    rows, then rows earlier in grid order). Exact search over subsets of rows: a grid has a
    handful of them."""
    best: tuple[list[int], list[int]] = ([], [])
    for size in range(present.shape[0], 0, -1):
        for rows in combinations(range(present.shape[0]), size):
            columns = np.flatnonzero(present[list(rows)].all(axis=0)).tolist()
            if size * len(columns) > len(best[0]) * len(best[1]):
                best = (list(rows), columns)
    return best


def _names(names: Sequence[str]) -> str:
    return "{" + ", ".join(names) + "}"


# -- rendering ------------------------------------------------------------------------------
def decimals_for(values: pd.DataFrame | pd.Series) -> int:
    """Three significant digits for the largest value: 76.3, 2.35, 0.763."""
    finite = np.abs(values.to_numpy(dtype=float))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    return max(0, 2 - math.floor(math.log10(finite.max()))) if finite.size else 2


def render(tables: Sequence[GridTable], fmt: str = "markdown", decimals: int | None = None) -> str:
    """All ``tables`` in one text: ``markdown`` or ``latex`` (a table, its legend and the
    claim per metric), ``csv`` (one tidy row per cell, full precision) or ``json``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return pd.DataFrame([c for t in tables for c in _cells(t)]).to_csv(index=False)
    if fmt == "json":
        return _json([_table_json(t) for t in tables])
    draw = _markdown if fmt == "markdown" else _latex
    return "\n".join(draw(t, _decimals(t, decimals)) for t in tables)


def _decimals(table: GridTable, decimals: int | None) -> int:
    return decimals if decimals is not None else decimals_for(table.mean)


def _claim(table: GridTable, decimals: int) -> str:
    return spread(table.mean).sentence(table.metric.split(".", 1)[1], decimals)


def _markdown(table: GridTable, decimals: int) -> str:
    row_best, column_best = (table.best(axis).to_numpy() for axis in ("row", "column"))
    rows = []
    for i, m in enumerate(table.magnitudes):
        row = [m]
        for j, d in enumerate(table.directions):
            text = table.text(m, d, decimals)
            text = f"*{text}*" if column_best[i, j] else text
            row.append(f"**{text}**" if row_best[i, j] else text)
        rows.append(row)
    body = tabulate(rows, ["M \\ D", *table.directions], tablefmt="pipe", disable_numparse=True)
    legend = "bold: best D for this M (row); italic: best M for this D (column)."
    return f"### {table.title}\n\n{body}\n\n{legend}\n{_claim(table, decimals)}\n"


def _latex(table: GridTable, decimals: int) -> str:
    row_best, column_best = (table.best(axis).to_numpy() for axis in ("row", "column"))
    lines = [
        f"% {_tex(table.title)}",
        "% \\textbf: best direction for the magnitude (row); \\underline: best magnitude for "
        "the direction (column). Needs \\usepackage{booktabs}.",
        f"\\begin{{tabular}}{{l{'c' * len(table.directions)}}}",
        "\\toprule",
        f" & \\multicolumn{{{len(table.directions)}}}{{c}}{{direction $D$}} \\\\",
        f"\\cmidrule(lr){{2-{len(table.directions) + 1}}}",
        " & ".join(["magnitude $M$", *map(_tex, table.directions)]) + " \\\\",
        "\\midrule",
    ]
    for i, m in enumerate(table.magnitudes):
        cells = [_tex(m)]
        for j, d in enumerate(table.directions):
            text = _tex(table.text(m, d, decimals))
            text = f"\\underline{{{text}}}" if column_best[i, j] else text
            cells.append(f"\\textbf{{{text}}}" if row_best[i, j] else text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", f"% {_tex(_claim(table, decimals))}", ""]
    return "\n".join(lines)


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
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _cells(table: GridTable) -> list[dict[str, Any]]:
    """The tidy rows of a table: one per cell, numbers at full precision."""
    row_best, column_best = (table.best(axis).to_numpy() for axis in ("row", "column"))
    decimals = decimals_for(table.mean)
    cells = []
    for i, m in enumerate(table.magnitudes):
        for j, d in enumerate(table.directions):
            mean, std, n = table.values(m, d)
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
                    "status": table.status(m, d),
                    "others": ", ".join(f"{others[s]} {s}" for s in _by_precedence(others)),
                    "best_in_row": bool(row_best[i, j]),
                    "best_in_column": bool(column_best[i, j]),
                    "text": table.text(m, d, decimals),
                }
            )
    return cells


def _table_json(table: GridTable) -> dict[str, Any]:
    claim = spread(table.mean)
    return {
        "metric": table.metric,
        "higher_is_better": table.higher_is_better,
        "where": table.where,
        "magnitudes": table.magnitudes,
        "directions": table.directions,
        "cells": [
            {**c, "others": table.others.get((c["magnitude"], c["direction"]), {})}
            for c in _cells(table)
        ],
        "spread": dataclasses.asdict(claim),
        "claim": claim.sentence(table.metric.split(".", 1)[1], _decimals(table, None)),
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
    notes = [
        f"ours: {spread(table.mean).sentence(name, decimals)}",
        "reference: " + spread(comparison.reference.map(reference_value)).sentence(name, decimals),
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
        return f"### {table.title}: ours vs reference\n\n{body}\n\n" + "\n".join(notes) + "\n"
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
        *(f"% {_tex(note)}" for note in notes),
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

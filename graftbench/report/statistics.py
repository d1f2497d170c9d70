"""Inference for one M × D table, with the seeds of a cell as its replicates.

A table of cell means answers "which optimizer sets the result" only with its uncertainty.
Everything here is computed from the values of ``done`` runs; diverged, failed and unfinished
runs have no value and are counted separately by the table (a diverged cell is a result, but
not a number to average).

- **Cell means**: a Student-t interval, mean ± t(n-1) · s/√n (:func:`scipy.stats.t`), per cell
  and with that cell's own standard deviation. A bootstrap over 2-3 seeds is degenerate (its
  percentile interval lies between the smallest and the largest of 2-3 values and covers far
  less than it claims); the t-interval is exact for normal noise at any n >= 2 and honest about
  small n: with 2 seeds it is wide (t = 12.7), as it should be. A pooled variance would narrow
  it, but seed noise differs between optimizers (std 0.16 to 0.70 on the demo grid), so each
  cell keeps its own. A cell with one value has no interval.
- **Ties** (:func:`marks`): the best cell of a row (or column) is marked *best* only when its
  interval overlaps no other cell's of that line; otherwise every cell whose interval overlaps
  the best's is *tied*. Overlap is the conservative reading (two overlapping 95% intervals can
  still differ at p < 0.05), so it never claims a best that the seeds do not support. A cell
  without an interval counts as the single point of its value.
- **How far changing M / D moves the metric** (:func:`spread`): ``by_magnitude`` is the mean,
  over the directions with values for two magnitudes or more, of max - min over magnitudes;
  ``by_direction`` the same over directions. Its interval is a percentile bootstrap over seeds
  (:func:`bootstrap`, :func:`scipy.stats.bootstrap`), stratified by cell: each cell's seeds
  are resampled on their own, so every resample keeps every cell and its seed count (a joint
  resampling of seed labels would drop the cells that lack a drawn seed and change what the
  statistic averages). A cell with n seeds has only C(2n-1, n) distinct resamples (10 for 3
  seeds) and a percentile interval over few seeds is too narrow: read it as how much the
  number moves when the seeds are redrawn, and the ANOVA for whether an effect is there.
  A range is never negative, so even pure noise "moves" the metric: the ANOVA, not the range,
  says whether M or D matters.
- **Two-way ANOVA** (:func:`anova`): ``value ~ C(M) * C(D)`` by ordinary least squares
  (statsmodels) with type-II sums of squares, as ``statsmodels.stats.anova.anova_lm(typ=2)``
  gives them (unequal seed counts per cell are fine), the seeds of a cell as replicates;
  F, p and partial η² = SS_effect / (SS_effect + SS_residual) for M, D and M×D. It runs on
  the largest block of cells that all have a value (:func:`complete_block`) and needs more
  runs than cells: with one seed per cell there is no residual and the report says
  ``n=1: no test possible`` instead of splitting the variance of cell means, which cannot
  separate an effect from noise. Nor does it run when the seeds of most cells agree exactly
  (top-5 at 100%): at a ceiling the noise is far from normal and F overstates the evidence
  (measured once on a 12-epoch digits grid of 27 runs: F gave p = 0.026 for M where three
  lone drops below 100% landed in one row, which happens by chance with probability 0.086).

Everything is deterministic: the bootstrap draws from a generator seeded with
:data:`BOOTSTRAP_SEED` for every table, so a table reads the same on every machine.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import scipy.stats
from statsmodels.regression.linear_model import OLS

CONFIDENCE = 0.95
ALPHA = 0.05
RESAMPLES = 1000  # Efron & Tibshirani's floor for percentile intervals; seaborn's default
BOOTSTRAP_SEED = 0
NO_REPLICATES = "n=1: no test possible"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval (NaN bounds when there is none)."""

    estimate: float
    low: float = math.nan
    high: float = math.nan

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def text(self, digits: int) -> str:
        """``0.43 (95% CI 0.21-0.61)``, or the estimate alone."""
        value = f"{self.estimate:.{digits}f}" if math.isfinite(self.estimate) else "n/a"
        if not self.has_interval:
            return value
        return f"{value} ({CONFIDENCE:.0%} CI {self.low:.{digits}f}–{self.high:.{digits}f})"


def bootstrap(
    samples: Sequence[np.ndarray],
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    outputs: int,
) -> list[tuple[float, float]]:
    """Percentile intervals of ``statistic`` under a bootstrap stratified by group.

    ``samples[g]`` holds the replicates of group ``g`` (a cell's values over its seeds, or
    their indices); each group is resampled with replacement on its own
    (:func:`scipy.stats.bootstrap` with one sample per group), so every resample keeps each
    group and its size. ``statistic`` takes one array ``(..., len(samples[g]))`` per group
    (a group of one is its value in every resample) and returns ``(outputs, ...)``. Returns a
    (low, high) per output; NaN when no group has two replicates or the resampled statistic
    is not finite.
    """
    resampled = [g for g, sample in enumerate(samples) if len(sample) >= 2]
    if not resampled:
        return [(math.nan, math.nan)] * outputs

    def on_resamples(*drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = tuple(np.moveaxis(np.asarray(d), axis, -1) for d in drawn)
        batch = drawn[0].shape[:-1]
        groups = [np.broadcast_to(np.asarray(s), (*batch, len(s))) for s in samples]
        for g, values in zip(resampled, drawn, strict=True):
            groups[g] = values
        return statistic(groups)

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # a degenerate bootstrap distribution gives NaN bounds
        result = scipy.stats.bootstrap(
            tuple(np.asarray(samples[g]) for g in resampled),
            on_resamples,
            n_resamples=RESAMPLES,
            vectorized=True,
            method="percentile",
            confidence_level=CONFIDENCE,
            rng=np.random.default_rng(BOOTSTRAP_SEED),
        )
    low, high = (np.atleast_1d(b) for b in result.confidence_interval)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]


# -- cells ----------------------------------------------------------------------------------
def cell_intervals(
    mean: pd.DataFrame, std: pd.DataFrame, n: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Student-t interval of each cell mean (low, high); NaN for cells with n < 2, the
    mean itself where the seeds agree exactly (std 0)."""
    count, spread = n.to_numpy(dtype=float), std.to_numpy(dtype=float)
    center = mean.to_numpy(dtype=float)
    ok = count >= 2
    varies = ok & (spread > 0)
    low, high = scipy.stats.t.interval(
        CONFIDENCE,
        np.where(ok, count - 1, 1.0),
        loc=np.where(ok, center, 0.0),
        scale=np.where(varies, spread / np.sqrt(np.maximum(count, 1)), 1.0),
    )
    frames = (np.where(varies, bound, np.where(ok, center, np.nan)) for bound in (low, high))
    return tuple(pd.DataFrame(f, index=mean.index, columns=mean.columns) for f in frames)


@dataclass(frozen=True)
class Marks:
    """Boolean M × D frames: the clear best of a row/column, and the cells tied for it."""

    best_in_row: pd.DataFrame
    tied_in_row: pd.DataFrame
    best_in_column: pd.DataFrame
    tied_in_column: pd.DataFrame


def marks(
    mean: pd.DataFrame, low: pd.DataFrame, high: pd.DataFrame, higher_is_better: bool
) -> Marks:
    """Best and tied cells of every row and column with two values or more (see the module
    docstring: intervals that overlap the best's are ties)."""
    x = mean.to_numpy(dtype=float)
    lo = np.where(np.isfinite(low.to_numpy(dtype=float)), low.to_numpy(dtype=float), x)
    hi = np.where(np.isfinite(high.to_numpy(dtype=float)), high.to_numpy(dtype=float), x)
    out = []
    for transpose in (False, True):  # rows, then columns
        xs, los, his = (a.T if transpose else a for a in (x, lo, hi))
        best, tied = np.zeros_like(xs, dtype=bool), np.zeros_like(xs, dtype=bool)
        for i, line in enumerate(xs):
            finite = np.isfinite(line)
            if finite.sum() < 2:
                continue
            b = int(np.nanargmax(line) if higher_is_better else np.nanargmin(line))
            top = finite & (los[i] <= his[i, b]) & (los[i, b] <= his[i])
            (best if top.sum() == 1 else tied)[i] = top
        out += [best.T, tied.T] if transpose else [best, tied]
    frames = (pd.DataFrame(a, index=mean.index, columns=mean.columns) for a in out)
    return Marks(*frames)


# -- how far changing M / D moves the metric -------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """How far the cell means move when M changes (``by_magnitude``) and when D changes
    (``by_direction``), with bootstrap intervals over ``seeds`` seeds."""

    by_magnitude: Interval
    by_direction: Interval
    seeds: int


def mean_ranges(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(by magnitude, by direction) of cell means ``x`` shaped ``(..., M, D)``: the mean over
    the lines with two values or more of their max - min; NaN where no line has two."""

    def along(axis: int) -> np.ndarray:
        # element-wise over the few slices: numpy reductions over a tiny axis of a bootstrap
        # batch are several times slower
        slices = [np.take(x, i, axis=axis) for i in range(x.shape[axis])]
        ranges = functools.reduce(np.fmax, slices) - functools.reduce(np.fmin, slices)
        lines = sum(np.isfinite(s).astype(int) for s in slices) >= 2
        count = lines.sum(axis=-1)
        total = np.where(lines, ranges, 0.0).sum(axis=-1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    return along(-2), along(-1)


def spread(mean: pd.DataFrame, samples: pd.DataFrame | None = None) -> Spread:
    """The :class:`Spread` of an M × D frame of cell means; with ``samples`` (columns
    magnitude, direction, seed, value) also its bootstrap intervals over seeds."""
    if samples is None or samples.empty:
        by_m, by_d = (float(v) for v in mean_ranges(mean.to_numpy(dtype=float)))
        return Spread(Interval(by_m), Interval(by_d), 0)
    return _spread(mean, *_cells(samples, mean), int(samples["seed"].nunique()))


def _spread(mean: pd.DataFrame, cell: np.ndarray, values: np.ndarray, seeds: int) -> Spread:
    by_m, by_d = (float(v) for v in mean_ranges(mean.to_numpy(dtype=float)))
    cells = np.unique(cell)
    groups = [values[cell == c] for c in cells]

    def statistic(resampled: list[np.ndarray]) -> np.ndarray:
        means = np.full((*resampled[0].shape[:-1], mean.size), np.nan)
        means[..., cells] = np.stack([r.mean(axis=-1) for r in resampled], axis=-1)
        return np.stack(mean_ranges(means.reshape(*means.shape[:-1], *mean.shape)))

    (m_low, m_high), (d_low, d_high) = bootstrap(groups, statistic, 2)
    return Spread(Interval(by_m, m_low, m_high), Interval(by_d, d_low, d_high), seeds)


def _cells(samples: pd.DataFrame, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(flat cell index in ``frame``'s M × D order, value) of each sample inside it."""
    rows = frame.index.get_indexer(samples["magnitude"])
    columns = frame.columns.get_indexer(samples["direction"])
    inside = (rows >= 0) & (columns >= 0)
    cell = rows * frame.shape[1] + columns
    return cell[inside], samples["value"].to_numpy(dtype=float)[inside]


# -- two-way ANOVA --------------------------------------------------------------------------
@dataclass(frozen=True)
class Effect:
    """One row of the ANOVA table."""

    term: str  # M, D or M×D
    sum_sq: float
    df: float
    f_value: float
    p: float
    partial_eta_sq: float


@dataclass(frozen=True)
class Anova:
    """The two-way ANOVA of a table over ``rows`` × ``columns`` (``partial``: the block left
    out cells without a value)."""

    effects: list[Effect]
    df_resid: float
    sum_sq_resid: float
    runs: int
    rows: list[str]
    columns: list[str]
    partial: bool

    def significant(self, alpha: float = ALPHA) -> list[str]:
        return [e.term for e in self.effects if e.p < alpha]


def complete_block(present: np.ndarray) -> tuple[list[int], list[int]]:
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


def anova(samples: pd.DataFrame, n: pd.DataFrame) -> tuple[Anova | None, str | None]:
    """The two-way ANOVA of ``samples`` (columns magnitude, direction, value) over the largest
    complete block of the M × D counts ``n``, or None and why no test is possible.

    Type-II sums of squares are the drop in residual sum of squares when a term enters after
    every term that does not contain it (M after D, D after M, M×D after both), each model an
    ordinary least squares fit by statsmodels' :class:`~statsmodels.regression.linear_model.OLS`;
    F divides by the full model's residual mean square and p is :func:`scipy.stats.f`'s tail.
    These are the numbers of ``anova_lm(ols("value ~ C(M) * C(D)", data).fit(), typ=2)``
    (the tests compare them), reached without the formula machinery, which costs ~15 ms a
    table: too slow for a sweep with hundreds of tables.
    """
    return _anova(n, *_cells(samples, n))


def _anova(
    n: pd.DataFrame, cell: np.ndarray, values: np.ndarray
) -> tuple[Anova | None, str | None]:
    rows, columns = complete_block(n.to_numpy() > 0)
    if len(rows) < 2 or len(columns) < 2:
        return None, "fewer than 2 × 2 cells with a value: no test possible"
    shape = (len(rows), len(columns))
    # the samples inside the block, with their row and column in it
    row_in = np.full(n.shape[0], -1)
    row_in[rows] = np.arange(shape[0])
    column_in = np.full(n.shape[1], -1)
    column_in[columns] = np.arange(shape[1])
    m, d = row_in[cell // n.shape[1]], column_in[cell % n.shape[1]]
    inside = (m >= 0) & (d >= 0)
    m, d, y = m[inside], d[inside], values[inside]
    if len(y) <= shape[0] * shape[1]:
        return None, NO_REPLICATES
    if np.ptp(y) == 0:
        return None, "every value is the same: nothing to test"
    cell_in = m * shape[1] + d
    high, low = np.full(shape[0] * shape[1], -np.inf), np.full(shape[0] * shape[1], np.inf)
    np.maximum.at(high, cell_in, y)
    np.minimum.at(low, cell_in, y)
    replicated = np.bincount(cell_in, minlength=high.size) >= 2
    if 2 * (replicated & (high == low)).sum() > replicated.sum():
        return None, (
            "the seeds of most cells gave identical values (a ceiling, or a metric that moves "
            "in coarse steps): the ANOVA's normal noise does not hold, so no test"
        )
    intercept = np.ones((len(y), 1))
    by_m = (m[:, None] == np.arange(1, shape[0])).astype(float)  # treatment coding
    by_d = (d[:, None] == np.arange(1, shape[1])).astype(float)
    by_cell = cell_in[:, None] == np.arange(shape[0] * shape[1])
    ssr = {
        name: float(OLS(y, np.hstack(design)).fit().ssr)
        for name, design in {
            "M": [intercept, by_m],
            "D": [intercept, by_d],
            "M+D": [intercept, by_m, by_d],
            "M*D": [by_cell.astype(float)],
        }.items()
    }
    resid = ssr["M*D"]
    df_resid = float(len(y) - shape[0] * shape[1])
    terms = {
        "M": (ssr["D"] - ssr["M+D"], shape[0] - 1),
        "D": (ssr["M"] - ssr["M+D"], shape[1] - 1),
        "M×D": (ssr["M+D"] - resid, (shape[0] - 1) * (shape[1] - 1)),
    }
    effects = []
    for term, (sum_sq, df) in terms.items():
        sum_sq = max(sum_sq, 0.0)  # a round-off below zero
        f_value = sum_sq / df / (resid / df_resid)
        effects.append(
            Effect(
                term=term,
                sum_sq=sum_sq,
                df=float(df),
                f_value=f_value,
                p=float(scipy.stats.f.sf(f_value, df, df_resid)),
                partial_eta_sq=sum_sq / (sum_sq + resid),
            )
        )
    result = Anova(
        effects=effects,
        df_resid=df_resid,
        sum_sq_resid=resid,
        runs=len(y),
        rows=[n.index[i] for i in rows],
        columns=[n.columns[j] for j in columns],
        partial=shape != n.shape,
    )
    return result, None


# -- all of it for one table ----------------------------------------------------------------
@dataclass(frozen=True)
class TableStatistics:
    """What :func:`analyze` finds for one table; ``no_test`` says why ``anova`` is None."""

    low: pd.DataFrame  # Student-t interval of each cell mean
    high: pd.DataFrame
    marks: Marks
    spread: Spread
    anova: Anova | None
    no_test: str | None
    confidence: float = CONFIDENCE
    alpha: float = ALPHA

    @property
    def replicated(self) -> bool:
        """Whether any cell has two values or more (else nothing can be told from noise)."""
        return bool(np.isfinite(self.low.to_numpy(dtype=float)).any())


def analyze(
    mean: pd.DataFrame,
    std: pd.DataFrame,
    n: pd.DataFrame,
    samples: pd.DataFrame,
    higher_is_better: bool,
) -> TableStatistics:
    """Intervals, ties, spread and ANOVA of one M × D table: ``mean``/``std``/``n`` are its
    cell frames, ``samples`` its values (columns magnitude, direction, seed, value)."""
    low, high = cell_intervals(mean, std, n)
    cell, values = _cells(samples, mean)
    result, no_test = _anova(n, cell, values)
    return TableStatistics(
        low=low,
        high=high,
        marks=marks(mean, low, high, higher_is_better),
        spread=_spread(mean, cell, values, int(samples["seed"].nunique())),
        anova=result,
        no_test=no_test,
    )


# -- in words -------------------------------------------------------------------------------
def two_significant(x: float) -> int:
    """The decimals that show two significant digits of ``x`` (0.19, 1.9, 19); 0 for 0 or
    NaN."""
    return 0 if not math.isfinite(x) or x == 0 else max(0, 1 - math.floor(math.log10(abs(x))))


def amount(x: float, decimals: int = 0) -> str:
    """At least two significant digits and ``decimals`` decimals: 0.19, not 0; n/a for NaN."""
    return f"{x:.{max(decimals, two_significant(x))}f}" if math.isfinite(x) else "n/a"


def p_value(p: float) -> str:
    if not math.isfinite(p):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def spread_sentence(spread: Spread, name: str, decimals: int) -> str:
    """``changing M moves top1 by 0.43 (95% CI 0.21-0.61) on average, changing D by ...``"""
    by_m, by_d = spread.by_magnitude, spread.by_direction
    if not (math.isfinite(by_m.estimate) or math.isfinite(by_d.estimate)):
        return f"too few values to compare the effect of M and D on {name}."

    def text(x: Interval) -> str:
        return x.text(max(decimals, two_significant(x.estimate)))

    bootstrapped = by_m.has_interval or by_d.has_interval
    how = "; intervals: percentile bootstrap over each cell's seeds" if bootstrapped else ""
    return f"changing M moves {name} by {text(by_m)} on average, changing D by {text(by_d)}{how}."


def anova_sentence(stats: TableStatistics) -> str:
    """The ANOVA in one line and what it allows to say, or why there is none."""
    result = stats.anova
    if result is None:
        reason = stats.no_test or "no test possible"
        if reason == NO_REPLICATES:
            return (
                f"{NO_REPLICATES}: one seed per cell, so no difference between cells can be "
                "told from seed noise (run seeds, e.g. seed=0,1,2)."
            )
        return f"{reason}."
    parts = [
        f"{e.term} F({e.df:.0f}, {result.df_resid:.0f}) = {e.f_value:.2f}, {p_value(e.p)}, "
        f"partial η² = {e.partial_eta_sq:.2f}"
        for e in result.effects
    ]
    where = (
        f" over M in {_names(result.rows)} × D in {_names(result.columns)}"
        if result.partial
        else ""
    )
    found = result.significant(stats.alpha)
    if not found:
        verdict = "no effect stands out from seed noise"
    else:
        rest = [e.term for e in result.effects if e.term not in found]
        verdict = f"{' and '.join(found)} {'differs' if len(found) == 1 else 'differ'} beyond "
        verdict += "seed noise" + (f"; {' and '.join(rest)} not" if rest else "")
    return (
        f"two-way ANOVA ({result.runs} runs, seeds as replicates{where}): {'; '.join(parts)}. "
        f"At α = {stats.alpha:g}: {verdict}."
    )


def _names(names: Sequence[str]) -> str:
    return "{" + ", ".join(names) + "}"

"""The paper's Figure-1 claim, measured: do training curves cluster by M?

Definitions (:func:`cluster_curves`):

- A run's curve is its log training loss, log L(t), at the logged steps every included run
  has (steps where any of them is missing, zero or not finite are left out). Only ``done``
  runs count: a diverged run's curve stops or blows up and would dominate every distance, and
  a failed or running run is unfinished; they are counted in ``left_out``. Runs of one
  (M, D, seed) are averaged into one curve.
- The distance between two runs r and r' is the mean over those steps of
  |log L_r(t) - log L_r'(t)|: the typical factor between their losses, in log units (0.1 is
  about 10%), weighting late training as much as the first steps, unlike a linear axis.
- The distance between two cells (M, D pairs) a and b is the mean over their run pairs (every
  seed of a with every seed of b); ``noise_floor`` is the mean over cells with two seeds or
  more of the distance between two different seeds of the same cell, so the three numbers
  compare single runs with single runs. Pairs of cells with the same seed share an
  initialization and data order, so the distance between cells under no effect at all is at
  most the floor: a distance above the floor is an effect.
- ``same_magnitude``: the mean distance over pairs of cells that share M (so differ in D): how
  far changing D moves the curves. ``same_direction``: over pairs that share D (differ in M):
  how far changing M moves them. ``ratio = same_direction / same_magnitude``: above 1 the
  curves cluster by M.
- Intervals: percentile bootstrap over seeds (:func:`graftbench.report.statistics.bootstrap`;
  the seeds resampled together for every cell, pairs of the same seed left out of the floor),
  with its limits for few seeds.

Verdict (:meth:`Clustering.verdict`): the curves cluster by M when the ratio's interval lies
above 1 and the distance for changing M lies above the noise floor's interval; by D the other
way round; with one seed per pair there is no floor and no claim.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from graftbench.report.statistics import Interval, amount, bootstrap, two_significant

DONE = "done"


@dataclass(frozen=True)
class Clustering:
    """The clustering of the curves of one grid (see the module docstring)."""

    metric: str
    same_magnitude: Interval  # changing D
    same_direction: Interval  # changing M
    noise_floor: Interval
    ratio: Interval
    distances: pd.DataFrame = field(compare=False)  # cell × cell ("M#D"); diagonal: seeds
    seeds: int
    steps: int
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def cells(self) -> list[str]:
        return list(self.distances.index)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the intervals, the verdict, the cells and their distances."""
        return {
            "metric": self.metric,
            **{
                name: dataclasses.asdict(getattr(self, name))
                for name in ("same_magnitude", "same_direction", "noise_floor", "ratio")
            },
            "verdict": self.verdict(),
            "seeds": self.seeds,
            "steps": self.steps,
            "left_out": self.left_out,
            "cells": self.cells,
            "distances": self.distances.to_numpy().tolist(),
        }

    def verdict(self) -> str:
        """``by M`` or ``by D`` (the ratio's interval excludes 1 and that factor moves the
        curves beyond the noise floor's interval), ``noise`` (neither moves them beyond it),
        ``mixed`` (one or both do, but neither clearly more) or ``no claim`` (no noise floor,
        or no interval)."""
        by_m, by_d, floor, ratio = (
            self.same_direction,
            self.same_magnitude,
            self.noise_floor,
            self.ratio,
        )
        if not (floor.has_interval and ratio.has_interval):
            return "no claim"
        m_moves, d_moves = by_m.low > floor.high, by_d.low > floor.high
        if ratio.low > 1 and m_moves:
            return "by M"
        if ratio.high < 1 and d_moves:
            return "by D"
        return "mixed" if m_moves or d_moves else "noise"

    def conclusion(self) -> str:
        """The verdict in words: ``the curves cluster by M (3.1× farther apart when M changes
        than when D changes)``."""
        verdict = self.verdict()
        if verdict == "no claim":
            floor = math.isfinite(self.noise_floor.estimate)
            why = "no interval" if floor else "one seed per pair: no noise floor"
            return f"{why}, so no claim about clustering"
        return {
            "by M": f"the curves cluster by M ({amount(self.ratio.estimate)}× farther apart "
            "when M changes than when D changes)",
            "by D": f"the curves cluster by D ({amount(1 / self.ratio.estimate)}× farther "
            "apart when D changes than when M changes)",
            "mixed": "the curves move beyond the seed-to-seed noise, but neither by M nor by D "
            "clearly more",
            "noise": "no clustering beyond the seed-to-seed noise",
        }[verdict]

    def sentence(self) -> str:
        """The numbers and the verdict in one line, for under a table."""

        def text(x: Interval) -> str:
            return x.text(max(2, two_significant(x.estimate)))

        head = (
            f"training {self.metric} curves (mean |Δ log {self.metric}| over {self.steps} "
            f"logged steps, {self.seeds} seed{'s' if self.seeds != 1 else ''}): changing M "
            f"moves them by {text(self.same_direction)}, changing D by "
            f"{text(self.same_magnitude)}"
        )
        if math.isfinite(self.noise_floor.estimate):
            head += f", seed to seed {text(self.noise_floor)}"
        verdict = self.conclusion()
        left = ", ".join(f"{n} {status}" for status, n in self.left_out.items())
        return f"{head}: {verdict}" + (f" ({left} runs left out)" if left else "") + "."


def cluster_curves(
    curves: pd.DataFrame, metric: str = "loss", kind: str = "train"
) -> Clustering | None:
    """The :class:`Clustering` of the ``kind`` records' ``metric`` in ``curves`` (the long
    frame of :func:`graftbench.report.collect.load_curves`); None when fewer than two cells
    have a usable curve or they share no logged step."""
    records = curves[curves["kind"] == kind] if "kind" in curves else curves.iloc[:0]
    if metric not in records:
        return None
    statuses = records.drop_duplicates("run_id").set_index("run_id")["status"]
    left_out = statuses[statuses != DONE].value_counts()
    rows = records[records["status"] == DONE]
    value = pd.to_numeric(rows[metric], errors="coerce").astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log(value.where(value > 0))
    seed = rows["seed"].astype(object)
    seed = seed.where(seed.notna(), rows["run_id"]).astype(str)  # no seed: a replicate alone
    rows = rows.assign(log=log.replace([np.inf, -np.inf], np.nan), seed=seed)
    wide = rows.groupby(["magnitude", "direction", "seed", "step"], observed=True)["log"].mean()
    wide = wide.unstack("step").dropna(axis=1)  # the steps every curve has; sorted by cell
    if wide.shape[1] == 0:
        return None
    keys = list(wide.index)
    cells = list(dict.fromkeys((m, d) for m, d, _ in keys))
    if len(cells) < 2:
        return None
    log_curves = wide.to_numpy()
    # curve × curve distances, one curve at a time (curve × curve × step can be large)
    between = np.stack([np.abs(log_curves - row).mean(axis=1) for row in log_curves])
    cell_of = np.array([cells.index((m, d)) for m, d, _ in keys])
    sizes = np.bincount(cell_of, minlength=len(cells))
    statistic = _Statistic(between, cell_of, cells)
    ones = [np.ones(size) for size in sizes]
    point = statistic.measures(ones)
    bounds = bootstrap([np.arange(size) for size in sizes], statistic, 4)
    names = [f"{m}#{d}" for m, d in cells]
    return Clustering(
        metric=metric,
        same_magnitude=Interval(float(point[0]), *bounds[0]),
        same_direction=Interval(float(point[1]), *bounds[1]),
        noise_floor=Interval(float(point[2]), *bounds[2]),
        ratio=Interval(float(point[3]), *bounds[3]),
        distances=pd.DataFrame(statistic.distances(ones), index=names, columns=names),
        seeds=int(wide.index.get_level_values("seed").nunique()),
        steps=wide.shape[1],
        left_out={str(k): int(v) for k, v in left_out.items()},
    )


class _Statistic:
    """(same M, same D, noise floor, ratio) of weighted curves: a pair of curves counts with
    the product of their weights (how often the bootstrap drew each)."""

    def __init__(self, between: np.ndarray, cell_of: np.ndarray, cells: list) -> None:
        # curve × curve distances as cell × slot × cell × slot, zero-padded to the largest
        # cell (a padded slot has weight 0), so a resample is two small matrix products
        sizes = np.bincount(cell_of, minlength=len(cells))
        slot = np.arange(len(cell_of)) - np.concatenate([[0], np.cumsum(sizes)[:-1]])[cell_of]
        self.sizes, self.width = sizes, int(sizes.max())
        self.blocks = np.zeros((len(cells), self.width, len(cells), self.width))
        self.blocks[cell_of[:, None], slot[:, None], cell_of[None, :], slot[None, :]] = between
        pairs = [(a, b) for a in range(len(cells)) for b in range(a + 1, len(cells))]
        self.same_m, self.same_d = (
            np.array(chosen, dtype=int).reshape(-1, 2).T
            for chosen in (
                [(a, b) for a, b in pairs if cells[a][0] == cells[b][0]],
                [(a, b) for a, b in pairs if cells[a][1] == cells[b][1]],
            )
        )

    def distances(self, weights: list[np.ndarray]) -> np.ndarray:
        """Cell × cell mean distances ``(..., cells, cells)`` for one weight array per cell:
        over every pair of curves of the two cells, and on the diagonal over pairs of
        different curves of the cell."""
        batch = weights[0].shape[:-1]
        w = np.zeros((*batch, len(weights), self.width))  # (..., cell, slot)
        for c, weight in enumerate(weights):
            w[..., c, : weight.shape[-1]] = weight
        cells, width, flat = len(weights), self.width, int(np.prod(batch, dtype=int))
        # Σ_s w[c, s] Δ[c, s, d, t] for every c (a matrix product per cell), then the sum
        # over t of that times w[d, t]
        by_cell = np.moveaxis(w.reshape(flat, cells, width), 1, 0)  # (cell, batch, slot)
        half = (by_cell @ self.blocks.reshape(cells, width, cells * width)).reshape(
            cells, flat, cells, width
        )
        total = np.moveaxis((half * by_cell.swapaxes(0, 1)[None]).sum(axis=-1), 0, 1)
        total = total.reshape(*batch, cells, cells)
        per_cell = w.sum(axis=-1)
        pairs = per_cell[..., :, None] * per_cell[..., None, :]
        diagonal = np.arange(cells)
        pairs[..., diagonal, diagonal] -= (w**2).sum(axis=-1)  # a curve is no pair with itself
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, total / pairs, np.nan)

    def __call__(self, drawn: list[np.ndarray]) -> np.ndarray:
        """The measures of resampled curve indices, one array ``(..., curves)`` per cell."""
        return self.measures([_counts(np.asarray(d, dtype=int)) for d in drawn])

    def measures(self, weights: list[np.ndarray]) -> np.ndarray:
        """(same M, same D, noise floor, ratio) ``(4, ...)`` for curve weights."""
        d = self.distances(weights)
        cells = np.arange(d.shape[-1])
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore")  # all-NaN means: no such pair
            same_m = np.nanmean(d[..., self.same_m[0], self.same_m[1]], axis=-1)
            same_d = np.nanmean(d[..., self.same_d[0], self.same_d[1]], axis=-1)
            floor = np.nanmean(d[..., cells, cells], axis=-1)
            return np.stack([same_m, same_d, floor, same_d / same_m])


def _counts(drawn: np.ndarray) -> np.ndarray:
    """How often each index in ``0..n-1`` was drawn, per resample: ``(..., n)`` -> same."""
    n = drawn.shape[-1]
    rows = drawn.reshape(-1, n)
    flat = (rows + n * np.arange(len(rows))[:, None]).ravel()
    return np.bincount(flat, minlength=rows.size).reshape(drawn.shape).astype(float)

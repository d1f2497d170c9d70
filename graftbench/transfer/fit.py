"""The step-size correction of a grafted run, and the two fits that turn it into a schedule.

In a grafted run M#D the step of layer l at step t (0-based) is ratio_l(t) · dD with
dD = lr_D · u_D and ratio_l(t) = ||dM|| / ||dD||; D's learning rate is constant (the run's
schedule drives M's), so D's effective learning rate is lr_D · ratio_l(t). The correction is that
ratio with the source run's schedule divided out,

    c_l(t) = ratio_l(t) / schedule(t),

and a run of D alone reproduces the grafted steps with lr_l(t) = lr_D · schedule(t) · c_l(t).
The engine's ``layers`` record of step k (k steps taken) holds the ratio of the step with index
k - 1, so that record's correction is ratio / schedule(k - 1), at the fraction of training
(k - 1) / total_steps.

Steps whose schedule factor is below ``MIN_SCHEDULE_FACTOR`` do not enter the fit: there the
quotient is 0/0 or nearly so, and such a step barely moves the weights in either run. Shipped
schedules peak at 1 and their smallest real factors (a long linear warmup's 1/warmup_steps,
``piecewise_step``'s 1e-3 after three decays) stay well above it. A ratio that is not finite or
not positive (||dD|| = 0 gives 0) says nothing about the correction and is dropped too.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import lsq_linear

from graftbench.errors import UserError

__all__ = [
    "DEFAULT_KNOTS",
    "MIN_SCHEDULE_FACTOR",
    "Corrections",
    "Fit",
    "Series",
    "corrections",
    "fit_piecewise",
    "fit_static",
    "interpolate",
]

MIN_SCHEDULE_FACTOR = 1e-6
DEFAULT_KNOTS = 4


@dataclass(frozen=True)
class Series:
    """One layer's correction samples: c at fractions of training, in step order."""

    fractions: np.ndarray
    values: np.ndarray
    dropped: int = 0  # this layer's ratios that were not finite or not positive


@dataclass(frozen=True)
class Corrections:
    """Every layer's correction, in the order the records first name them."""

    layers: dict[str, Series]
    steps: int  # recorded steps that entered the fit
    dropped_steps: int  # recorded steps whose schedule factor was below the threshold


@dataclass(frozen=True)
class Fit:
    """A correction as a function of the fraction of training: ``interpolate(knots, values)``.

    One knot is a static multiplier. ``quality``: ``rel_rmse``, the root mean square of the
    relative residual ĉ/c - 1 over the fitted samples (to first order the RMSE of log ĉ - log c,
    so it reads the same for every layer whatever its scale: 0.05 is a typical 5% miss); for a
    piecewise fit also ``r2``, the share of the relative variance around the best constant that
    the fit explains (null when c does not vary).
    """

    knots: tuple[float, ...]
    values: tuple[float, ...]
    points: int
    quality: dict[str, float | None] = field(default_factory=dict)


def corrections(
    records: Iterable[Mapping[str, Any]],
    schedule: Callable[[int], float],
    total_steps: int,
    *,
    min_factor: float = MIN_SCHEDULE_FACTOR,
) -> Corrections:
    """c = ratio / schedule(k - 1) for every ``layers`` record ``{"step": k, "ratio": {...}}``.

    ``schedule`` is the source run's (index of the step about to be taken -> factor) and
    ``total_steps`` its length, the denominator of the fraction of training. A step recorded
    twice keeps its last record (records are equal after an exact resume).
    """
    by_step = {int(r["step"]): r["ratio"] for r in records}
    samples: dict[str, tuple[list[float], list[float], list[int]]] = {}
    steps = dropped_steps = 0
    for step in sorted(by_step):
        factor = schedule(step - 1)
        if not factor >= min_factor:
            dropped_steps += 1
            continue
        steps += 1
        fraction = (step - 1) / total_steps
        for name, ratio in by_step[step].items():
            fractions, values, dropped = samples.setdefault(name, ([], [], [0]))
            c = ratio / factor if isinstance(ratio, int | float) else math.nan
            if math.isfinite(c) and c > 0:
                fractions.append(fraction)
                values.append(c)
            else:
                dropped[0] += 1
    layers = {
        name: Series(np.asarray(f, dtype=np.float64), np.asarray(v, dtype=np.float64), d[0])
        for name, (f, v, d) in samples.items()
    }
    return Corrections(layers, steps, dropped_steps)


def fit_static(series: Series) -> Fit:
    """One multiplier: the median of c over the recorded steps.

    The median, because the correction is multiplicative and heavy-tailed in time: the first
    steps of AdaGrad or Adam (empty accumulators) can put the ratio orders of magnitude off,
    which moves an arithmetic or even a geometric mean as far as it likes but not the median.
    The median of c is also the median of log c (the log-space centre). Records are evenly
    spaced in steps, so this is the median over training time.
    """
    values = _usable(series)
    multiplier = float(np.median(values))
    return Fit((0.0,), (multiplier,), len(values), {"rel_rmse": _rel_rmse(multiplier, values)})


def fit_piecewise(series: Series, knots: int = DEFAULT_KNOTS) -> Fit:
    """c as a piecewise-linear function of the fraction of training, ``knots`` knots evenly
    spaced over the fractions the records cover (constant beyond them).

    Linear in c, so a linearly growing correction (the paper's AdaGrad finding) is represented
    exactly. Least squares on the relative residual ĉ/c - 1 (weights 1/c: every phase of
    training counts by its relative error, as in log space), with the knot values bounded below
    by 0 so the fit never flips D's direction: ``scipy.optimize.lsq_linear``.
    """
    if knots < 2:
        raise UserError(f"a piecewise fit needs at least 2 knots, not {knots}")
    values = _usable(series)
    fractions = series.fractions
    if len(np.unique(fractions)) < knots:
        raise UserError(
            f"{len(np.unique(fractions))} steps with a usable ratio cannot place {knots} knots; "
            "use fewer knots or record more often (trainer.layer_log_every_steps)"
        )
    positions = np.linspace(fractions.min(), fractions.max(), knots)
    basis = np.stack([np.interp(fractions, positions, np.eye(knots)[j]) for j in range(knots)], 1)
    if not basis.any(axis=0).all():
        raise UserError(f"the recorded steps leave a knot of {knots} without data; use fewer knots")
    solution = lsq_linear(basis / values[:, None], np.ones_like(values), bounds=(0, np.inf))
    fitted = basis @ solution.x
    residual = fitted / values - 1
    constant = np.sum(1 / values) / np.sum(1 / values**2)  # the best constant, same weights
    total = float(np.sum((constant / values - 1) ** 2))
    r2 = None if total <= len(values) * 1e-24 else 1 - float(np.sum(residual**2)) / total
    return Fit(
        tuple(float(p) for p in positions),
        tuple(float(v) for v in solution.x),
        len(values),
        {"rel_rmse": float(np.sqrt(np.mean(residual**2))), "r2": r2},
    )


def interpolate(knots: tuple[float, ...], values: tuple[float, ...], x: float) -> float:
    """The piecewise-linear function through ``(knots, values)`` at ``x``, constant beyond the
    ends: ``numpy.interp`` in plain Python floats, for the learning-rate lambdas."""
    if x <= knots[0]:
        return values[0]
    if x >= knots[-1]:
        return values[-1]
    hi = bisect.bisect_right(knots, x)  # knots[hi - 1] <= x < knots[hi]
    x0, x1, y0, y1 = knots[hi - 1], knots[hi], values[hi - 1], values[hi]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _usable(series: Series) -> np.ndarray:
    if not len(series.values):
        raise UserError(f"no usable ratio ({series.dropped} were NaN, infinite or zero)")
    return series.values


def _rel_rmse(fitted: float, values: np.ndarray) -> float:
    return float(np.sqrt(np.mean((fitted / values - 1) ** 2)))

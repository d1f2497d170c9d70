"""Learning-rate schedules as multipliers of the base learning rate, defined in steps.

Each schedule is a small frozen dataclass mapping the 0-based index of the step about to be
taken to a factor; ``torch.optim.lr_scheduler.LambdaLR`` applies it to every param group (for
``Graft``, M's learning rate). Being plain dataclasses, they survive ``LambdaLR.state_dict()``
and ``torch.load(weights_only=True)``.

Linear warmup is ``(s + 1) / warmup_steps`` for ``s < warmup_steps``: the first step already
moves, and the factor reaches 1 at the last warmup step. Configs may speak in epochs
(``warmup_epochs``, ``decay_epochs``, ``milestone_epochs``, ...); ``make_schedule`` converts
them with the number of optimizer steps per epoch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from graftbench.lazy import torch

__all__ = ["SCHEDULES", "Schedule", "make_schedule", "make_scheduler"]

SCHEDULES: dict[str, type[Schedule]] = {}


@dataclass(frozen=True)
class Schedule:
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SCHEDULES[cls.name] = cls

    def __call__(self, step: int) -> float:
        raise NotImplementedError


def _warmup(step: int, warmup_steps: int) -> float | None:
    """The warmup factor, or None once warmup is over."""
    return (step + 1) / warmup_steps if step < warmup_steps else None


@dataclass(frozen=True)
class Constant(Schedule):
    """Factor 1, after an optional linear warmup."""

    name = "constant"
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        return _warmup(step, self.warmup_steps) or 1.0


@dataclass(frozen=True)
class WarmupExponentialDecay(Schedule):
    """Linear warmup, then ``decay_rate ** ((s - warmup) / decay_steps)``; with ``staircase``
    the exponent is floored, so the rate drops every ``decay_steps`` (the paper's ResNet-50
    recipe: linear warmup, then stepwise exponential decay)."""

    name = "warmup_exp_decay"
    warmup_steps: int = 0
    decay_rate: float = 0.97
    decay_steps: int = 1
    staircase: bool = True

    def __call__(self, step: int) -> float:
        warm = _warmup(step, self.warmup_steps)
        if warm is not None:
            return warm
        exponent = (step - self.warmup_steps) / self.decay_steps
        return self.decay_rate ** (math.floor(exponent) if self.staircase else exponent)


@dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Linear warmup, then cosine from 1 down to ``min_factor`` at ``total_steps``."""

    name = "warmup_cosine"
    total_steps: int
    warmup_steps: int = 0
    min_factor: float = 0.0

    def __call__(self, step: int) -> float:
        warm = _warmup(step, self.warmup_steps)
        if warm is not None:
            return warm
        progress = min(
            1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        )
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class WarmupInverseSqrt(Schedule):
    """The Transformer schedule normalised to peak 1: ``min(n / w, sqrt(w / n))``, n = s + 1."""

    name = "warmup_rsqrt"
    warmup_steps: int = 4000

    def __call__(self, step: int) -> float:
        n = step + 1
        return min(n / self.warmup_steps, math.sqrt(self.warmup_steps / n))


@dataclass(frozen=True)
class PiecewiseStep(Schedule):
    """Multiply by ``gamma`` at each milestone (torchvision's v1 recipe: 0.1 every 30 epochs)."""

    name = "piecewise_step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        warm = _warmup(step, self.warmup_steps)
        if warm is not None:
            return warm
        return self.gamma ** sum(step >= m for m in self.milestones)


def make_schedule(
    spec: Mapping[str, Any], *, steps_per_epoch: int = 1, total_steps: int | None = None
) -> Schedule:
    """Build a schedule from ``{"name": ..., **fields}``; ``*_epochs`` fields (and
    ``milestone_epochs``) are converted to steps; ``total_steps`` fills in when not given."""
    fields = {k: v for k, v in spec.items() if v is not None}  # None: not given
    name = fields.pop("name", None)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from: {', '.join(sorted(SCHEDULES))}")
    cls = SCHEDULES[name]
    for key in [k for k in fields if k.endswith("_epochs")]:
        steps = (
            "milestones" if key == "milestone_epochs" else key.removesuffix("_epochs") + "_steps"
        )
        if steps in fields:
            raise ValueError(f"schedule {name}: set {key} or {steps}, not both")
    if "milestone_epochs" in fields:
        fields["milestones"] = [e * steps_per_epoch for e in fields.pop("milestone_epochs")]
    for key in [k for k in fields if k.endswith("_epochs")]:
        fields[key.removesuffix("_epochs") + "_steps"] = round(fields.pop(key) * steps_per_epoch)
    if "milestones" in fields:
        fields["milestones"] = tuple(round(m) for m in fields["milestones"])
    valid = {f.name for f in dataclasses.fields(cls)}
    if "total_steps" in valid and "total_steps" not in fields and total_steps is not None:
        fields["total_steps"] = total_steps
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(
            f"schedule {name}: unknown field {unknown[0]!r}; valid: "
            f"{', '.join(sorted(valid))} (or the same in epochs)"
        )
    try:
        schedule = cls(**fields)
    except TypeError as err:
        raise ValueError(f"schedule {name}: {err}") from None
    if getattr(schedule, "decay_steps", 1) <= 0 or schedule.warmup_steps < 0:  # type: ignore[attr-defined]
        raise ValueError(f"schedule {name}: step counts must be positive ({schedule})")
    return schedule


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Schedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that multiplies every group's base learning rate by ``schedule(step)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

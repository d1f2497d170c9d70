"""Train D alone with a transferred correction: one param group per layer, one LR lambda each.

``param_groups`` splits the parameters into one group per named tensor, every group starting at
D's learning rate, and returns one :class:`LayerFactor` per group; ``LambdaLR(optimizer,
factors)`` (see :func:`make_scheduler`) then sets, before the step with index t,

    lr_layer(t) = lr_D · schedule(t) · c_layer(t / total_steps)

where ``schedule`` and ``total_steps`` are the transferred run's own. Works with ``Graft`` (which
takes named groups) and with any ``torch.optim.Optimizer`` that accepts ``(name, param)`` pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor

from graftbench.errors import UserError
from graftbench.optim.factory import make_rule
from graftbench.optim.schedules import SCHEDULES, Schedule
from graftbench.transfer.fit import interpolate
from graftbench.transfer.schedule_file import Transfer

__all__ = ["LayerFactor", "check_direction", "check_layers", "make_scheduler", "param_groups"]


@dataclass(frozen=True)
class LayerFactor:
    """One layer's LR multiplier, ``schedule(step) · c(step / total_steps)``.

    Its fields are strings, numbers and tuples of them (the schedule as its name and fields), so
    ``LambdaLR.state_dict()``, which stores each lambda's ``__dict__``, loads back with
    ``torch.load(weights_only=True)``.
    """

    schedule: tuple[tuple[str, Any], ...]
    total_steps: int
    knots: tuple[float, ...]
    values: tuple[float, ...]

    def __call__(self, step: int) -> float:
        correction = interpolate(self.knots, self.values, step / self.total_steps)
        return _schedule(self.schedule)(step) * correction


def param_groups(
    params: Iterable[Any],
    transfer: Transfer,
    schedule: Schedule,
    total_steps: int,
    *,
    lr: float | None = None,
) -> tuple[list[dict[str, Any]], list[LayerFactor]]:
    """One param group per layer and its LR lambda, in the order of ``params``.

    ``params``: ``model.named_parameters()``, or groups ``{"params": [(name, p), ...], **opts}``
    whose other keys (e.g. ``weight_decay``) each layer's group keeps. Every group's ``lr`` is
    ``lr`` (default: D's learning rate in the source run), unless the group sets its own. The
    model's layer names must be exactly the file's, or :class:`UserError` names the first
    difference.
    """
    groups = _named_groups(params)
    check_layers([name for group in groups for name, _ in group["params"]], transfer)
    base_lr = transfer.direction_lr if lr is None else lr
    spec = _schedule_items(schedule)
    out: list[dict[str, Any]] = []
    factors: list[LayerFactor] = []
    for group in groups:
        options = {k: v for k, v in group.items() if k != "params"}
        for name, param in group["params"]:
            out.append({"lr": base_lr, **options, "params": [(name, param)]})
            fit = transfer.layers[name]
            factors.append(LayerFactor(spec, total_steps, fit.knots, fit.values))
    return out, factors


def make_scheduler(
    optimizer: torch.optim.Optimizer, factors: list[LayerFactor]
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` driving each layer's group with its own factor."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, list(factors))


def check_direction(transfer: Transfer, spec: Mapping[str, Any]) -> None:
    """The optimizer trained alone must be the source run's D, learning rate aside: the
    correction is the scale of that direction, not of another one."""
    source = make_rule(transfer.direction)
    target = make_rule(dict(spec))
    if source.name != target.name:
        raise UserError(
            f"the transfer is for {source.name}'s direction (from {transfer.source['label']}); "
            f"this run trains {target.name}"
        )
    for key, value in source.hyperparams.items():
        if key != "lr" and target.hyperparams.get(key) != value:
            raise UserError(
                f"the transfer is for {source.name} with {key}={value!r} "
                f"(from {transfer.source['label']}); this run has "
                f"{key}={target.hyperparams.get(key)!r}"
            )


def _named_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    items = list(params)
    groups = items if items and isinstance(items[0], Mapping) else [{"params": items}]
    out = []
    for group in groups:
        pairs = list(group["params"])
        if not all(isinstance(p, tuple) and isinstance(p[1], Tensor) for p in pairs):
            raise TypeError("a transferred schedule needs named parameters: (name, tensor) pairs")
        out.append({**group, "params": pairs})
    return out


def check_layers(names: list[str], transfer: Transfer) -> None:
    """The model's trainable tensors (``names``) must be exactly the transfer's layers."""
    where = f"the transfer from {transfer.source['run_id']}"
    counts = f"(model: {len(names)} layers, transfer: {len(transfer.layers)})"
    known = set(transfer.layers)
    missing = next((n for n in names if n not in known), None)
    if missing is not None:
        raise UserError(f"layer {missing!r} of the model is not in {where} {counts}")
    present = set(names)
    extra = next((n for n in transfer.layers if n not in present), None)
    if extra is not None:
        raise UserError(f"layer {extra!r} of {where} is not in the model {counts}")


def _schedule_items(schedule: Schedule) -> tuple[tuple[str, Any], ...]:
    fields = tuple((f.name, getattr(schedule, f.name)) for f in dataclasses.fields(schedule))
    return (("name", schedule.name), *fields)


@cache
def _schedule(items: tuple[tuple[str, Any], ...]) -> Schedule:
    fields = dict(items)
    return SCHEDULES[fields.pop("name")](**fields)

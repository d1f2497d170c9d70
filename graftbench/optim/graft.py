"""``Graft``: the step magnitude of one optimizer with the step direction of another.

Algorithm 2 of Agarwal et al. (arXiv 2002.11803): at every step both children see the same
gradient, keep their own state, and each proposes the step it would take from the current
weights, dM and dD. The grafted step is

    w <- w + ||dM|| / (||dD|| + eps) * dD

per parameter tensor (``granularity="layer"``) or with norms over all tensors
(``granularity="global"``). dM includes M's learning rate, so an LR schedule acts through M.

Cost: M's update is reduced to its norms before D's is computed, in the same workspace (one
scratch tensor per parameter, kept between steps, for the rules that need one); the grafted step
is applied with one foreach pass. No weights are copied or reverted, nothing syncs with the host,
and ``Graft(M, M)`` (same rule and hyperparameters, learning rates aside - D's learning rate
never changes a direction) is M itself at M's cost.

Zero gradients or a zero direction: where ||dD|| = 0 the ratio is defined as 0, so the tensor
does not move (no NaN, even with ``eps=0``); a zero dM gives a zero step.

Param groups: ``lr`` is M's learning rate (what ``torch.optim.lr_scheduler`` drives). Any other
key names a hyperparameter and is set on each child that has it, e.g.
``{"params": biases, "weight_decay": 0.0}``. D keeps its own ``lr``, which only the eps term and
the generic torch.optim path see.

Decoupled (AdamW-style) weight decay is not part of either child's step: it is applied once per
step, ``w <- w * (1 - lr * wd)``, from whichever child sets ``decoupled_weight_decay``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from graftbench.optim.rules import Rule, Update, make_rule

__all__ = ["Graft"]

GRANULARITIES = ("layer", "global")
_RESERVED_GROUP_KEYS = {"params", "param_names", "lr", "initial_lr"}


@dataclass
class _Bucket:
    """Parameters with gradients that share a param group, device, dtype and step count."""

    group: dict[str, Any]
    step: int
    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    workspace: list[Tensor] | None = None


@dataclass
class _Record:
    """Norms of the last step for one bucket: kept on the device, read only when asked."""

    names: list[str]
    magnitude_norm: Tensor
    direction_norm: Tensor
    ratio: Tensor


class Graft(torch.optim.Optimizer):
    """Optimizer taking M's step magnitude and D's step direction (``direction=None``: M alone).

    ``magnitude`` and ``direction`` accept a mapping ``{"name": ..., **hyperparameters}``, a
    rule name, a :class:`~graftbench.optim.rules.Rule`, or a ``torch.optim.Optimizer`` class or
    ``functools.partial`` of one (the slower generic path). Pass ``model.named_parameters()`` to
    have the implicit step-size correction reported per named layer.
    """

    def __init__(
        self,
        params: Iterable[Any],
        magnitude: Any,
        direction: Any = None,
        *,
        granularity: str = "layer",
        eps: float = 1e-16,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"invalid granularity {granularity!r}; choose from: {', '.join(GRANULARITIES)}"
            )
        if eps < 0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        self.magnitude: Rule = make_rule(magnitude)
        self.direction: Rule = self.magnitude if direction is None else make_rule(direction)
        self.granularity = granularity
        self.eps = eps
        self.plain = self.direction is self.magnitude or _same_apart_from_lr(
            self.magnitude, self.direction
        )
        self.last_step: list[_Record] = []
        # Scratch tensors shared by M and D, one per parameter: not state, never checkpointed.
        self._workspace: dict[Tensor, Tensor] = {}
        mag = dict(self.magnitude.hyperparams)
        defaults = {"lr": mag.pop("lr"), "magnitude": mag, "direction": self.direction.hyperparams}
        super().__init__(params, defaults)

    def __repr__(self) -> str:
        pair = repr(self.magnitude) if self.plain else f"{self.magnitude!r} # {self.direction!r}"
        return f"Graft({pair}, granularity={self.granularity!r}, groups={len(self.param_groups)})"

    # torch.optim.Optimizer pickles only defaults, state and param_groups: keep the children too
    _PICKLED = ("magnitude", "direction", "granularity", "eps", "plain")

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in self._PICKLED}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.last_step = []
        self._workspace = {}

    @property
    def label(self) -> str:
        """``M#D`` in rule names, e.g. ``adam#sgd``."""
        return f"{self.magnitude.name}#{self.direction.name}"

    # -- param groups ----------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        magnitude = dict(self.defaults["magnitude"])
        direction = dict(self.defaults["direction"])
        for key in [k for k in group if k not in _RESERVED_GROUP_KEYS]:
            value = group.pop(key)
            if key not in magnitude and key not in direction:
                raise ValueError(
                    f"param group key {key!r} is not a hyperparameter of "
                    f"{self.magnitude.name} or {self.direction.name}"
                )
            for child in (magnitude, direction):
                if key in child:
                    child[key] = value
        magnitude = self.magnitude.validate(
            {**magnitude, "lr": group.get("lr", self.defaults["lr"])}
        )
        group["lr"] = magnitude.pop("lr")
        direction = self.direction.validate(direction)
        self._decoupled_decay(magnitude, direction)  # raises if the children disagree
        group["magnitude"], group["direction"] = magnitude, direction
        super().add_param_group(group)

    def _decoupled_decay(self, magnitude: Mapping[str, Any], direction: Mapping[str, Any]) -> float:
        rates = {self.magnitude.decoupled_decay(magnitude)}
        if not self.plain:
            rates.add(self.direction.decoupled_decay(direction))
        rates.discard(0.0)
        if len(rates) > 1:
            raise ValueError(
                f"decoupled weight decay differs between magnitude and direction ({sorted(rates)});"
                " it is applied once per step, so set it on one of them"
            )
        return rates.pop() if rates else 0.0

    def _hyperparams(self, group: Mapping[str, Any], role: str) -> dict[str, Any]:
        if role == "magnitude":
            return {**group["magnitude"], "lr": group["lr"]}
        return group["direction"]

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buckets = self._buckets()
        if self.plain:
            for b in buckets:
                update = self._update(self.magnitude, "magnitude", b)
                self._decay(b)
                if update.divisors is None:
                    torch._foreach_add_(b.params, update.tensors, alpha=update.scale)
                else:
                    torch._foreach_addcdiv_(
                        b.params, update.tensors, update.divisors, value=update.scale
                    )
            return loss

        magnitude_norms = []
        for b in buckets:  # M's update is reduced to its norms: D may reuse its workspace
            update = self._update(self.magnitude, "magnitude", b).materialised()
            magnitude_norms.append(_norms(update))
        directions = [self._update(self.direction, "direction", b).materialised() for b in buckets]
        direction_norms = [_norms(d) for d in directions]
        ratios = self._ratios(magnitude_norms, direction_norms)
        self.last_step = []
        for b, update, ratio, m_norm, d_norm in zip(
            buckets, directions, ratios, magnitude_norms, direction_norms, strict=True
        ):
            self._decay(b)
            coefficients = (ratio * update.scale).expand(len(b.params)).unbind()
            torch._foreach_addcmul_(b.params, update.tensors, coefficients)
            self.last_step.append(_Record(b.names, m_norm, d_norm, ratio.expand(len(b.params))))
        return loss

    def _buckets(self) -> list[_Bucket]:
        buckets: dict[tuple, _Bucket] = {}
        for index, group in enumerate(self.param_groups):
            names = group.get("param_names") or [
                f"{index}.{i}" for i in range(len(group["params"]))
            ]
            workspace = self._uses_workspace(group)
            for p, name in zip(group["params"], names, strict=True):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Graft does not support sparse gradients")
                state = self.state[p]
                if not state:
                    self._init_state(p, group, state)
                state["step"] += 1
                key = (index, p.device, p.dtype, state["step"])
                bucket = buckets.get(key)
                if bucket is None:
                    bucket = buckets[key] = _Bucket(group, state["step"])
                    if workspace:
                        bucket.workspace = []
                bucket.params.append(p)
                bucket.grads.append(p.grad)
                bucket.states.append(state)
                bucket.names.append(name)
                if workspace:
                    bucket.workspace.append(self._scratch(p))
        return list(buckets.values())

    def _uses_workspace(self, group: Mapping[str, Any]) -> bool:
        return self.magnitude.uses_workspace(self._hyperparams(group, "magnitude")) or (
            not self.plain and self.direction.uses_workspace(self._hyperparams(group, "direction"))
        )

    def _scratch(self, p: Tensor) -> Tensor:
        scratch = self._workspace.get(p)
        if scratch is None:
            scratch = self._workspace[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return scratch

    def _init_state(self, p: Tensor, group: Mapping[str, Any], state: dict[str, Any]) -> None:
        state["step"] = 0
        state["magnitude"] = self.magnitude.init(p, self._hyperparams(group, "magnitude"))
        if not self.plain:
            state["direction"] = self.direction.init(p, self._hyperparams(group, "direction"))

    def _update(self, rule: Rule, role: str, b: _Bucket) -> Update:
        states = [s[role] for s in b.states]
        hp = self._hyperparams(b.group, role)
        return rule.update(b.params, b.grads, states, hp, b.step, b.workspace)

    def _decay(self, b: _Bucket) -> None:
        rate = self._decoupled_decay(b.group["magnitude"], b.group["direction"])
        if rate:
            torch._foreach_mul_(b.params, 1 - b.group["lr"] * rate)

    def _ratios(self, magnitude: list[Tensor], direction: list[Tensor]) -> list[Tensor]:
        """||dM|| / (||dD|| + eps), 0 where ||dD|| = 0: per tensor, or one global value."""
        if self.granularity == "global":
            device = magnitude[0].device
            m = torch.linalg.vector_norm(torch.cat([n.to(device) for n in magnitude]))
            d = torch.linalg.vector_norm(torch.cat([n.to(device) for n in direction]))
            ratio = _safe_ratio(m, d, self.eps)
            return [ratio.to(n.device) for n in magnitude]
        return [_safe_ratio(m, d, self.eps) for m, d in zip(magnitude, direction, strict=True)]

    # -- the implicit step-size correction -------------------------------------------------
    def correction(self) -> dict[str, dict[str, float]]:
        """Per named tensor: ||dM||, ||dD|| and their ratio at the last step (syncs).

        Empty for a plain optimizer (M#M), whose ratio is 1 by definition.
        """
        out: dict[str, dict[str, float]] = {}
        for record in self.last_step:
            values = torch.stack([record.magnitude_norm, record.direction_norm, record.ratio])
            for name, (m, d, r) in zip(record.names, values.T.tolist(), strict=True):
                out[name] = {"magnitude_norm": m, "direction_norm": d, "ratio": r}
        return out

    def correction_summary(self) -> dict[str, float]:
        """Mean/min/max of the per-tensor ratio ||dM||/||dD|| and the global norms (syncs)."""
        if self.plain:
            return {"ratio_mean": 1.0, "ratio_min": 1.0, "ratio_max": 1.0}
        if not self.last_step:
            return {}
        device = self.last_step[0].ratio.device
        ratio = torch.cat([r.ratio.to(device) for r in self.last_step])
        m = torch.cat([r.magnitude_norm.to(device) for r in self.last_step])
        d = torch.cat([r.direction_norm.to(device) for r in self.last_step])
        values = torch.stack(
            [
                ratio.mean(),
                ratio.min(),
                ratio.max(),
                torch.linalg.vector_norm(m),
                torch.linalg.vector_norm(d),
            ]
        ).tolist()
        keys = ("ratio_mean", "ratio_min", "ratio_max", "magnitude_norm", "direction_norm")
        return dict(zip(keys, values, strict=True))


def _norms(update: Update) -> Tensor:
    norms = torch._foreach_norm(update.tensors, 2, dtype=torch.float32)
    return torch.stack(norms).mul_(abs(update.scale))


def _safe_ratio(magnitude: Tensor, direction: Tensor, eps: float) -> Tensor:
    ratio = magnitude / (direction + eps)
    return torch.where(direction > 0, ratio, torch.zeros_like(ratio))


def _same_apart_from_lr(a: Rule, b: Rule) -> bool:
    if type(a) is not type(b):
        return False
    strip = lambda hp: {k: v for k, v in hp.items() if k != "lr"}  # noqa: E731
    return strip(a.hyperparams) == strip(b.hyperparams) and getattr(a, "factory", None) is getattr(
        b, "factory", None
    )

"""``Graft``: the step magnitude of one optimizer with the step direction of another.

Algorithm 2 of Agarwal et al. (arXiv 2002.11803): at every step both children see the same
gradient, keep their own state, and each proposes the step it would take from the current
weights, dM and dD. The grafted step is

    w <- w + ||dM|| / (||dD|| + eps) * dD

per parameter tensor (``granularity="layer"``) or with norms over all tensors
(``granularity="global"``). dM includes M's learning rate, so an LR schedule acts through M.

Cost: M's update is reduced to its norms before D's is computed, in the same workspace (one
scratch tensor per parameter, kept between steps, for the rules that need one); the grafted step
is applied with one foreach pass. On CPU the step runs over blocks of a few MiB of tensors, so
that each block's updates, norms and step reuse data still in cache. No weights are copied or
reverted and nothing syncs with the host. Norms are taken in float32 for half-precision weights
(in float64 for float64 ones); on CPU, a large half-precision tensor is reduced in slices, so no
float32 copy of it is made, and float32/float64 norms are BLAS dot products.

Implementation: ``fused=None`` (the default) runs torch's fused Adam/AdaGrad kernels where they
exist for every parameter's device (checked once, at construction: see
``rules.fused_kernel_works``), else foreach ops; ``fused=False`` always foreach ops.

``Graft(M, M')`` with the same rule and hyperparameters, learning rates aside, is M itself at M's
cost (the *plain* shortcut): D's learning rate never changes a direction. Where the two learning
rates differ it is taken only for rules whose step is proportional to lr (``Rule.linear_in_lr``;
not for Adafactor's relative step or the generic path), and the ratio ||dM||/||dD|| it records
is then lr_M / lr_D, exactly (up to eps), without computing a norm.

Zero gradients or a zero direction: where ||dD|| = 0 the ratio is defined as 0, so the tensor
does not move (no NaN, even with ``eps=0``); a zero dM gives a zero step.

Param groups: ``lr`` is M's learning rate (what ``torch.optim.lr_scheduler`` drives). Any other
key names a hyperparameter and is set on each child that has it, e.g.
``{"params": biases, "weight_decay": 0.0}``. D keeps its own ``lr``, which only the eps term and
the generic torch.optim path see. A child on the generic path (any torch.optim.Optimizer class,
Shampoo, SOAP) keeps the state of its own param group under ``"child_state"``.

Decoupled (AdamW-style) weight decay is not part of either child's step: it is applied once per
step, ``w <- w * (1 - lr * wd)``, from whichever child sets ``decoupled_weight_decay``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from graftbench.optim.factory import make_rule
from graftbench.optim.generic import Child, TorchRule
from graftbench.optim.rules import Rule, Update, fused_kernel_works

__all__ = ["Graft"]

GRANULARITIES = ("layer", "global")
ROLES = ("magnitude", "direction")
CHILD_STATE = "child_state"
_RESERVED_GROUP_KEYS = {"params", "param_names", "lr", "initial_lr", CHILD_STATE}
# Half-precision tensors are reduced to float32 norms in slices of this many elements on CPU,
# where torch would otherwise convert the whole tensor first.
_NORM_SLICE = 1 << 18
# A CPU step runs over blocks of tensors of about this size (see ``_cache_blocks``).
_CACHE_BLOCK_BYTES = 4 << 20


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
    """Norms of the last step for one bucket: kept on the device, read only when asked.

    The plain shortcut records no norms (None) and its ratio lr_M / lr_D as a number.
    """

    names: list[str]
    magnitude_norm: Tensor | None
    direction_norm: Tensor | None
    ratio: Tensor | float


class Graft(torch.optim.Optimizer):
    """Optimizer taking M's step magnitude and D's step direction (``direction=None``: M alone).

    ``magnitude`` and ``direction`` accept a mapping ``{"name": ..., **hyperparameters}``, a
    rule name, a :class:`~graftbench.optim.rules.Rule`, or a ``torch.optim.Optimizer`` class or
    ``functools.partial`` of one (the slower generic path). Pass ``model.named_parameters()`` to
    have the implicit step-size correction reported per named layer. ``foreach``/``fused`` as in
    torch.optim: ``None`` picks torch's fused kernels where they work (see the module doc),
    ``fused=False`` or ``foreach=True`` foreach ops; there is no per-tensor loop
    (``foreach=False``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        magnitude: Any,
        direction: Any = None,
        *,
        granularity: str = "layer",
        eps: float = 1e-16,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"invalid granularity {granularity!r}; choose from: {', '.join(GRANULARITIES)}"
            )
        if eps < 0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        if foreach is False:
            raise ValueError("foreach=False: Graft has no per-tensor loop; use foreach or fused")
        if foreach and fused:
            raise ValueError("fused and foreach cannot both be True")
        self.magnitude: Rule = make_rule(magnitude)
        self.direction: Rule = self.magnitude if direction is None else make_rule(direction)
        self.granularity = granularity
        self.eps = eps
        self.plain = self.direction is self.magnitude or _same_apart_from_lr(
            self.magnitude, self.direction
        )
        # Whether the plain shortcut records lr_M / lr_D: a separate D whose lr may differ (it
        # may only be equal for a rule whose step is not proportional to lr: nothing to record).
        self._lr_ratio = (
            self.plain and self.direction is not self.magnitude and self.magnitude.linear_in_lr
        )
        self.last_step: list[_Record] = []
        self._fused_request = False if foreach else fused
        self.fused = self._fused_request is not False  # narrowed by each param group's devices
        # Scratch tensors shared by M and D, one per parameter: not state, never checkpointed.
        self._workspace: dict[Tensor, Tensor] = {}
        # Persistent optimizers of generic-path children, per (role, group index); their state
        # lives in self.state and the param groups, so they are rebuilt, never checkpointed.
        self._children: dict[tuple[str, int], Child] = {}
        mag = dict(self.magnitude.hyperparams)
        defaults = {"lr": mag.pop("lr"), "magnitude": mag, "direction": self.direction.hyperparams}
        super().__init__(params, defaults)

    def __repr__(self) -> str:
        pair = repr(self.magnitude) if self.plain else f"{self.magnitude!r} # {self.direction!r}"
        return f"Graft({pair}, granularity={self.granularity!r}, groups={len(self.param_groups)})"

    # torch.optim.Optimizer pickles only defaults, state and param_groups: keep the children too
    _PICKLED = (
        "magnitude",
        "direction",
        "granularity",
        "eps",
        "plain",
        "_lr_ratio",
        "_fused_request",
        "fused",
    )

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in self._PICKLED}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.last_step = []
        self._workspace = {}
        self._children = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._children = {}  # rebuilt from the loaded state on the next step

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
        self._choose_implementation(self.param_groups[-1]["params"])

    def _choose_implementation(self, params: list[Tensor]) -> None:
        """Narrow ``self.fused`` to what the devices of ``params`` support (once per group)."""
        kernels = {rule.fused_kernel for rule in (self.magnitude, self.direction)} - {None}
        if not self.fused or not kernels:
            return
        devices = {p.device.type for p in params}
        usable = all(p.is_floating_point() for p in params) and all(
            fused_kernel_works(kernel, device) for kernel in kernels for device in devices
        )
        if self._fused_request and not usable:
            raise ValueError(
                f"fused=True: torch's fused {'/'.join(sorted(kernels))} kernels do not work "
                f"for parameters on {', '.join(sorted(devices))}"
            )
        self.fused = usable

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
            self._plain_step(buckets)
            return loss
        generic = {role: self._step_children(role, buckets) for role in ROLES}
        self.last_step = []
        pending = []
        for b in (piece for bucket in buckets for piece in _cache_blocks(bucket)):
            # M's update is reduced to its norms first: D may reuse its workspace
            m_norm = _norms(self._update("magnitude", b, generic).materialised())
            direction = self._update("direction", b, generic).materialised()
            d_norm = _norms(direction)
            if self.granularity == "layer":  # applied while the block is still in cache
                self._apply(b, direction, _safe_ratio(m_norm, d_norm, self.eps), m_norm, d_norm)
            else:
                pending.append((b, direction, m_norm, d_norm))
        if pending:
            ratio = self._global_ratio([p[2] for p in pending], [p[3] for p in pending])
            for b, direction, m_norm, d_norm in pending:
                self._apply(b, direction, ratio.to(m_norm.device), m_norm, d_norm)
        return loss

    def _apply(
        self, b: _Bucket, direction: Update, ratio: Tensor, m_norm: Tensor, d_norm: Tensor
    ) -> None:
        """The grafted step of one bucket, ``ratio * dD``, recorded with its norms."""
        self._decay(b)
        ratios = ratio.expand(len(b.params))
        _add_scaled(b.params, direction.tensors, ratios * direction.scale)
        self.last_step.append(_Record(b.names, m_norm, d_norm, ratios))

    def _plain_step(self, buckets: list[_Bucket]) -> None:
        """M's step alone; records lr_M / lr_D where D is a separate rule (see the module doc)."""
        self.last_step = []
        if self.magnitude.per_group:
            self._step_children("magnitude", buckets, direct=True)
        for b in buckets:
            if not self.magnitude.per_group and not self._stepped_in_place(b):
                update = self._update("magnitude", b, {})
                self._decay(b)
                if update.divisors is None:
                    torch._foreach_add_(b.params, update.tensors, alpha=update.scale)
                else:
                    torch._foreach_addcdiv_(
                        b.params, update.tensors, update.divisors, value=update.scale
                    )
            if self._lr_ratio:
                lr_d = b.group["direction"]["lr"]
                ratio = b.group["lr"] / lr_d if lr_d else 0.0  # dD = 0: the ratio is 0
                self.last_step.append(_Record(b.names, None, None, ratio))

    def _stepped_in_place(self, b: _Bucket) -> bool:
        """M alone stepped the weights with its fused kernel (see ``Rule.step_weights``)."""
        if not self.fused:
            return False
        states = [s["magnitude"] for s in b.states]
        hp = self._hyperparams(b.group, "magnitude")
        return self.magnitude.step_weights(b.params, b.grads, states, hp, b.step)

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

    def _update(self, role: str, b: _Bucket, generic: dict[str, dict[Tensor, Tensor]]) -> Update:
        rule: Rule = getattr(self, role)
        if rule.per_group:  # stepped already, per param group, by _step_children
            return Update([generic[role][p] for p in b.params], 1.0)
        states = [s[role] for s in b.states]
        hp = self._hyperparams(b.group, role)
        return rule.update(b.params, b.grads, states, hp, b.step, b.workspace, self.fused)

    def _step_children(
        self, role: str, buckets: list[_Bucket], direct: bool = False
    ) -> dict[Tensor, Tensor]:
        """Step a generic-path rule once per param group; its step for each parameter (none when
        ``direct``: the child then stepped the weights)."""
        rule = getattr(self, role)
        if not rule.per_group:
            return {}
        assert isinstance(rule, TorchRule)
        members: dict[int, list[tuple[Tensor, Tensor, dict[str, Any]]]] = {}
        for b in buckets:
            members.setdefault(id(b.group), []).extend(
                zip(b.params, b.grads, b.states, strict=True)
            )
        steps: dict[Tensor, Tensor] = {}
        for index, group in enumerate(self.param_groups):
            if id(group) not in members:
                continue
            params, grads, states = zip(*members[id(group)], strict=True)
            hp = self._hyperparams(group, role)
            child = self._children.get((role, index))
            if child is None:
                child = self._children[role, index] = rule.child(group["params"], hp, direct)
            saved = group.setdefault(CHILD_STATE, {}).setdefault(role, {})
            role_states = [s[role] for s in states]
            deltas = child.step(list(params), list(grads), role_states, saved, hp)
            if deltas is not None:
                steps.update(zip(params, deltas, strict=True))
        return steps

    def _decay(self, b: _Bucket) -> None:
        rate = self._decoupled_decay(b.group["magnitude"], b.group["direction"])
        if rate:
            torch._foreach_mul_(b.params, 1 - b.group["lr"] * rate)

    def _global_ratio(self, magnitude: list[Tensor], direction: list[Tensor]) -> Tensor:
        """||dM|| / (||dD|| + eps) with norms over every tensor, 0 where ||dD|| = 0."""
        device = magnitude[0].device
        m = torch.linalg.vector_norm(torch.cat([n.to(device) for n in magnitude]))
        d = torch.linalg.vector_norm(torch.cat([n.to(device) for n in direction]))
        return _safe_ratio(m, d, self.eps)

    # -- the implicit step-size correction -------------------------------------------------
    def correction(self) -> dict[str, dict[str, float | None]]:
        """The implicit step-size correction at the last step, per named tensor (syncs):

            {name: {"magnitude_norm": ||dM||, "direction_norm": ||dD||, "ratio": ratio}}

        with ``ratio = ||dM|| / (||dD|| + eps)`` (0 where dD = 0). Names are those passed with
        ``named_parameters()``, else ``"<group>.<index>"``. The plain shortcut (M#M' with a
        separate D) computes no norms (None) and reports ``ratio = lr_M / lr_D``; M alone
        (``direction=None``), or a shortcut for a rule whose step is not proportional to lr
        (taken only when the learning rates are equal), reports nothing: an empty dict.
        """
        out: dict[str, dict[str, float | None]] = {}
        for record in self.last_step:
            if record.magnitude_norm is None:
                for name in record.names:
                    out[name] = {"magnitude_norm": None, "direction_norm": None}
                    out[name]["ratio"] = record.ratio
                continue
            values = torch.stack([record.magnitude_norm, record.direction_norm, record.ratio])
            for name, (m, d, r) in zip(record.names, values.T.tolist(), strict=True):
                out[name] = {"magnitude_norm": m, "direction_norm": d, "ratio": r}
        return out

    def correction_summary(self) -> dict[str, float]:
        """Mean/min/max of the per-tensor ratio ||dM||/||dD|| and the global norms ||dM||,
        ||dD|| over all tensors (syncs); the plain shortcut gives the ratios only (lr_M / lr_D,
        or 1 for M alone)."""
        if self.plain:
            ratios = [r.ratio for r in self.last_step for _ in r.names] or [1.0]
            mean = sum(ratios) / len(ratios)
            return {"ratio_mean": mean, "ratio_min": min(ratios), "ratio_max": max(ratios)}
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


def _cache_blocks(bucket: _Bucket) -> list[_Bucket]:
    """A CPU bucket in blocks of whole tensors of at most ``_CACHE_BLOCK_BYTES`` (a larger tensor
    alone), so that the ops of a step run one after the other on data still in cache
    (``scripts/bench_optim.py --cpu-paths`` prints what this and ``_dot_norms`` save). Each
    tensor's arithmetic is unchanged. Elsewhere, the bucket whole: one kernel launch per op."""
    if bucket.params[0].device.type != "cpu":
        return [bucket]
    blocks: list[list[int]] = [[]]
    size = 0
    for i, p in enumerate(bucket.params):
        nbytes = p.numel() * p.element_size()
        if blocks[-1] and size + nbytes > _CACHE_BLOCK_BYTES:
            blocks.append([])
            size = 0
        blocks[-1].append(i)
        size += nbytes
    if len(blocks) == 1:
        return [bucket]
    pick = lambda items, block: None if items is None else [items[i] for i in block]  # noqa: E731
    return [
        _Bucket(
            bucket.group,
            bucket.step,
            *(pick(items, block) for items in (bucket.params, bucket.grads, bucket.states)),
            pick(bucket.names, block),
            pick(bucket.workspace, block),
        )
        for block in blocks
    ]


def _add_scaled(params: list[Tensor], tensors: list[Tensor], coefficients: Tensor) -> None:
    """``params[i] += coefficients[i] * tensors[i]``, the coefficients at full precision.

    A foreach op would round a float32 coefficient to bf16/fp16 weights' precision (the step's
    size off by up to 2^-9): on CPU, where reading the coefficients costs no synchronisation,
    half-precision weights take them as Python numbers. On other devices the rounding stays, to
    keep the step free of host synchronisation.
    """
    if params[0].device.type == "cpu" and params[0].dtype != coefficients.dtype:
        for param, tensor, coefficient in zip(params, tensors, coefficients.tolist(), strict=True):
            param.add_(tensor, alpha=coefficient)
    else:
        torch._foreach_addcmul_(params, tensors, coefficients.unbind())


def _norms(update: Update) -> Tensor:
    """||scale * t|| per tensor, in float32 for half precision and float64 for float64 (a rule may
    return tensors of another precision than its weights: Muon's are bfloat16)."""
    tensors = update.tensors
    dtypes = {t.dtype for t in tensors}
    dtype = functools.reduce(torch.promote_types, dtypes, torch.float32)
    if tensors[0].device.type != "cpu":  # CUDA's foreach kernel accumulates half precision in
        norms = torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype))  # float32, no copy
    elif dtypes != {dtype}:
        norms = _sliced_norms(tensors, dtype)
    else:
        norms = _dot_norms(tensors)
    return norms.mul_(abs(update.scale))


def _dot_norms(tensors: list[Tensor]) -> Tensor:
    """Norms of float32/float64 CPU tensors as sqrt(t . t): BLAS's dot reads memory about twice
    as fast as torch's norm kernel on CPU (and summed 3M float32 normal numbers with a relative
    error of 4e-5 against its 1e-4). Its rounding depends on the thread count (part of a run's
    identity) and, with one thread, on where the data starts in memory: the same for every run,
    as torch aligns each tensor it allocates to 64 bytes."""
    squares = []
    for t in tensors:
        flat = t.reshape(-1)  # a view, except for a tensor that is not dense
        squares.append(torch.dot(flat, flat))
    return torch.stack(squares).sqrt_()


def _sliced_norms(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Norms in ``dtype`` of half-precision CPU tensors. torch converts a whole tensor before
    reducing it; converting slices that stay in cache is several times faster (and summing their
    squares is more accurate than one long float32 accumulation)."""
    pieces: list[Tensor] = []
    owners: list[int] = []
    for i, t in enumerate(tensors):
        parts = t.view(-1).split(_NORM_SLICE) if t.is_contiguous() else (t,)
        pieces.extend(parts)
        owners.extend([i] * len(parts))
    norms = torch.stack(torch._foreach_norm(pieces, 2, dtype=dtype))
    if len(pieces) == len(tensors):
        return norms
    index = torch.tensor(owners, device=norms.device)
    squares = norms.square_()
    return squares.new_zeros(len(tensors)).index_add_(0, index, squares).sqrt_()


def _safe_ratio(magnitude: Tensor, direction: Tensor, eps: float) -> Tensor:
    ratio = magnitude / (direction + eps)
    return torch.where(direction > 0, ratio, torch.zeros_like(ratio))


def _same_apart_from_lr(a: Rule, b: Rule) -> bool:
    """Whether Graft(a, b) is a: the same rule and hyperparameters, with learning rates that are
    equal or, for a step proportional to lr, in a ratio Graft records instead of measuring."""
    if type(a) is not type(b) or getattr(a, "factory", None) is not getattr(b, "factory", None):
        return False
    strip = lambda hp: {k: v for k, v in hp.items() if k != "lr"}  # noqa: E731
    if strip(a.hyperparams) != strip(b.hyperparams):
        return False
    lr_a, lr_b = a.hyperparams["lr"], b.hyperparams["lr"]
    return lr_a == lr_b or (a.linear_in_lr and lr_b > 0)

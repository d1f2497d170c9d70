"""Update rules: optimizers reduced to "gradients in, update tensors out".

A rule owns no tensors itself. ``init`` creates the per-parameter state (kept by the caller,
e.g. in ``Graft.state[p]``) and ``update`` turns a bucket of gradients - tensors sharing one
param group, device, dtype and step count - into the step those parameters would take, with
``torch._foreach_*`` ops over the whole bucket.

The step is returned as ``Update(tensors, scale)`` meaning ``scale * tensors``, or
``Update(tensors, scale, divisors)`` meaning ``scale * tensors / divisors``. Rules return the
unscaled tensors, which may alias their own state (SGD's momentum buffer) or the gradients, so a
caller can take norms and apply the step without materialising ``scale * tensors``; a quotient is
left undivided so that a caller who only applies it can do so in one ``addcdiv`` pass. Callers
must treat both the gradients and the returned tensors as read-only; divisors are scratch they
may overwrite. Rules never touch the weights: coupled (L2) weight decay enters through the
gradient, decoupled weight decay is applied by the caller once per step (see
``Rule.decoupled_decay``).

A rule that needs a scratch buffer per tensor (a denominator, a copy to modify) computes in the
caller's ``workspace`` when one is passed (see ``Rule.uses_workspace``) rather than allocating:
on CPU a fresh buffer the size of the model costs a page fault per 4 KiB, more than a pass over it.

Adam and AdaGrad run torch's fused multi-tensor kernels when the caller passes ``fused=True``
(``Graft`` decides that once, at construction, from :func:`fused_kernel_works`): one pass updates
the state and writes the step into a zeroed workspace, where the same computation with foreach
ops takes about a dozen passes. Otherwise, and for tensor layouts the kernels cannot read, they
use foreach ops.

Hyperparameter names and defaults follow ``torch.optim``: ``make_rule({"name": "adam", **kw})``
steps like ``torch.optim.Adam(**kw)``.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from graftbench.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "MODULES_VARIABLE",
    "RULES",
    "Rule",
    "Update",
    "allowed_modules",
    "available",
    "fused_kernel_works",
]


class Update(NamedTuple):
    """The step ``scale * tensors`` (``/ divisors`` where given).

    ``tensors`` may alias rule state or gradients (read-only); ``divisors`` are scratch (the
    workspace or fresh tensors, never state) that the caller may overwrite.
    """

    tensors: list[Tensor]
    scale: float
    divisors: list[Tensor] | None = None

    def materialised(self) -> Update:
        """The same step without divisors: the quotient is computed in the divisors' storage."""
        if self.divisors is None:
            return self
        return Update(_inverse_times(self.divisors, self.tensors), self.scale)


RULES: dict[str, type[Rule]] = {}


def available() -> list[str]:
    """Names of the shipped update rules."""
    return sorted(RULES)


class Rule:
    """Base class of update rules. Subclasses set ``name`` and ``defaults`` and implement
    ``init`` and ``update``; they are registered by name on definition.

    ``defaults`` holds every hyperparameter with its default, named as torch.optim names it: it
    is the one source of defaults (configs list only what differs from it).
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    # The step is lr times something lr does not change, so two instances that differ only in
    # lr step in the same direction with norms in the ratio of their lrs (Graft's shortcut).
    linear_in_lr: ClassVar[bool] = True
    # torch's fused kernel the rule runs when the caller passes fused=True ("adam", "adagrad";
    # "sgd": only to step the weights of SGD alone, see ``step_weights``).
    fused_kernel: ClassVar[str | None] = None
    # Stepped once per param group by a persistent optimizer (the generic path) instead of
    # through ``update`` (see graftbench.optim.generic).
    per_group: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            RULES[cls.name] = cls

    def __init__(self, **hyperparams: Any) -> None:
        self.hyperparams = self.validate(hyperparams)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{self.name}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.hyperparams == other.hyperparams  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    # -- hyperparameters -------------------------------------------------------------------
    def validate(self, hyperparams: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and check values; raise ``ValueError`` naming the valid choices."""
        unknown = sorted(set(hyperparams) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown hyperparameter {unknown[0]!r}; "
                f"valid: {', '.join(sorted(self.defaults))}"
            )
        hp = {**self.defaults, **{k: _plain(v) for k, v in hyperparams.items()}}
        self.check_types(hp)
        for key in ("lr", "weight_decay", "eps", "momentum", "lr_decay"):
            value = hp.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{self.name}: invalid {key} {value}: must be >= 0")
        self.check(hp)
        return hp

    def check_types(self, hp: dict[str, Any]) -> None:
        """Each value has the type of its default (ints pass for floats, never bools)."""
        for key, default in self.defaults.items():
            value = hp[key]
            if isinstance(default, bool):
                ok, expected = isinstance(value, bool), "true or false"
            elif isinstance(default, int | float):
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                expected = "a number"
            elif isinstance(default, tuple):
                ok, expected = (
                    isinstance(value, tuple) and len(value) == len(default),
                    (f"{len(default)} values"),
                )
            else:
                ok, expected = True, ""
            if not ok:
                raise ValueError(f"{self.name}: invalid {key} {value!r}: expected {expected}")

    def check(self, hp: dict[str, Any]) -> None:
        """Rule-specific checks of a complete hyperparameter dict."""

    def decoupled_decay(self, hp: Mapping[str, Any]) -> float:
        """Rate of the decoupled (AdamW-style) weight decay ``p *= 1 - lr * rate``, or 0."""
        return float(hp["weight_decay"]) if hp.get("decoupled_weight_decay") else 0.0

    def coupled_decay(self, hp: Mapping[str, Any]) -> float:
        """Rate of the L2 weight decay added to the gradient, or 0."""
        return 0.0 if hp.get("decoupled_weight_decay") else float(hp.get("weight_decay", 0.0))

    def decayed_grads(self, params: list[Tensor], grads: list[Tensor], hp: Mapping) -> list[Tensor]:
        """``grads + wd * params`` for coupled weight decay (a new list), else ``grads``."""
        wd = self.coupled_decay(hp)
        return torch._foreach_add(grads, params, alpha=wd) if wd else grads

    # -- the rule --------------------------------------------------------------------------
    def uses_workspace(self, hp: Mapping[str, Any]) -> bool:
        """Whether ``update`` computes in a workspace (one scratch tensor per parameter)."""
        return False

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        """Fresh per-parameter state."""
        raise NotImplementedError

    def step_weights(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        hp: Mapping[str, Any],
        step: int,
    ) -> bool:
        """Step ``params`` in place with torch's fused kernel, when the rule alone is the step
        (Graft(M, M)) and the kernel applies; False: the caller applies ``update``."""
        return False

    def update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        hp: Mapping[str, Any],
        step: int,
        workspace: list[Tensor] | None = None,
        fused: bool = False,
    ) -> Update:
        """The step for one bucket; ``step`` counts from 1 and is the same for the bucket.

        ``workspace``: tensors shaped like ``params`` whose contents the rule may overwrite and
        return in the update; without one, a rule that uses a workspace allocates it.
        ``fused``: run torch's fused kernel (``fused_kernel``), checked to work on this device.
        """
        raise NotImplementedError


def _plain(value: Any) -> Any:
    """Config values (lists, OmegaConf containers) as the plain types torch.optim takes."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return value
    return tuple(_plain(v) for v in value)


def _inverse_times(denominators: list[Tensor], numerators: list[Tensor]) -> list[Tensor]:
    """``numerators / denominators`` computed in the denominators' storage (no new buffer)."""
    torch._foreach_reciprocal_(denominators)
    torch._foreach_mul_(denominators, numerators)
    return denominators


def _zeros(param: Tensor) -> Tensor:
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def _scratch(params: list[Tensor], workspace: list[Tensor] | None) -> list[Tensor]:
    """The workspace, or fresh tensors shaped like ``params`` for a caller that passed none."""
    if workspace is not None:
        return workspace
    return [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]


def _copy(tensors: list[Tensor], workspace: list[Tensor]) -> list[Tensor]:
    torch._foreach_copy_(workspace, tensors)
    return workspace


def _layouts_match(targets: list[Tensor], *others: list[Tensor]) -> bool:
    """Whether torch's fused optimizer kernels may step ``targets`` (a workspace or a buffer, never
    the weights) with ``others`` (gradients, state).

    The kernels read every tensor as flat memory, unchecked on CPU: each target must be dense and
    its companions laid out like it.
    """
    for i, target in enumerate(targets):
        layout = target.stride()
        if not _dense(target) or any(tensors[i].stride() != layout for tensors in others):
            return False
    return True


@functools.cache
def fused_kernel_works(kernel: str, device_type: str) -> bool:
    """Whether torch's private fused ``kernel`` ("adam", "adagrad", "sgd") runs on ``device_type``
    with the arguments the rules pass and computes what they expect; probed once per process.

    The kernels are private: another torch may lack them, rename an argument or change what they
    compute. Then the rules use foreach ops, with a warning, instead of failing mid-run.
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    if device_type not in _get_fused_kernels_supported_devices():
        return False
    try:
        device = torch.device(device_type)
        grad = torch.tensor([0.5, -2.0], device=device)
        state = [torch.zeros(2, device=device) for _ in range(2)]
        out = torch.zeros(2, device=device)
        if kernel == "adam":
            _fused_adam([out], [grad], [state[0]], [state[1]], [], 1, 0.9, 0.999, 1e-8, False)
            expected = grad / (grad.abs() + 1e-8)  # Adam's first step from 0 with lr 1
        elif kernel == "sgd":
            hp = {"weight_decay": 0.0, "momentum": 0.9, "lr": 1.0, "dampening": 0.0}
            _fused_sgd([out], [grad], [state[0]], {**hp, "nesterov": False}, first=True)
            expected = grad  # SGD's first step from 0 with lr 1: the gradient
        else:
            _fused_adagrad([out], [grad], [state[0]], 1, 1.0, 1e-10)
            expected = grad / (grad.abs() + 1e-10)
        ok = torch.allclose(out.cpu(), -expected.cpu(), rtol=1e-5, atol=0)
        problem = "computes a different step"
    except Exception as err:  # any failure of a private op means: do not use it
        ok, problem = False, f"failed ({type(err).__name__}: {err})"
    if not ok:
        warnings.warn(
            f"torch._fused_{kernel}_ on {device_type} {problem}; using foreach ops instead",
            RuntimeWarning,
            stacklevel=2,
        )
    return ok


def _fused_sgd(params, grads, bufs, hp: Mapping[str, Any], *, first: bool) -> None:
    """torch's SGD step with momentum, in place (coupled weight decay included)."""
    torch._fused_sgd_(
        params,
        grads,
        bufs,
        weight_decay=float(hp["weight_decay"]),
        momentum=float(hp["momentum"]),
        lr=float(hp["lr"]),
        dampening=float(hp["dampening"]),
        nesterov=bool(hp["nesterov"]),
        maximize=False,
        is_first_step=first,
    )


def _fused_adam(out, grads, exp_avgs, exp_avg_sqs, maxima, step, beta1, beta2, eps, amsgrad):
    """torch's Adam step from zero weights with lr 1, ``-(m / (1 - beta1**t)) / denom``, into
    ``out`` (zeroed by the caller)."""
    torch._fused_adam_(
        out,
        grads,
        exp_avgs,
        exp_avg_sqs,
        maxima,
        _step_counts(out, step),
        lr=1.0,
        beta1=beta1,
        beta2=beta2,
        weight_decay=0.0,
        eps=eps,
        amsgrad=amsgrad,
        maximize=False,
    )


def _fused_adagrad(targets, grads, sums, step, lr, eps):
    """torch's AdaGrad step ``targets -= lr * g / (sqrt(sum) + eps)`` after ``sum += g * g``."""
    torch._fused_adagrad_(
        targets,
        grads,
        sums,
        _step_counts(targets, step),
        lr=lr,
        lr_decay=0.0,
        weight_decay=0.0,
        eps=eps,
        maximize=False,
    )


def _dense(t: Tensor) -> bool:
    return (
        t.is_contiguous()
        or t.is_contiguous(memory_format=torch.channels_last)
        or t.is_contiguous(memory_format=torch.channels_last_3d)
    )


def _step_counts(params: list[Tensor], step: int) -> list[Tensor]:
    """The step count as the fused kernels take it: a float32 scalar on the device, per tensor."""
    count = torch.full((), float(step), dtype=torch.float32, device=params[0].device)
    return [count] * len(params)


class SGD(Rule):
    """torch.optim.SGD: heavy-ball or Nesterov momentum with dampening."""

    name = "sgd"
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=1e-3,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        decoupled_weight_decay=False,
    )

    def check(self, hp: dict[str, Any]) -> None:
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError("sgd: nesterov momentum requires momentum > 0 and dampening = 0")

    def uses_workspace(self, hp: Mapping[str, Any]) -> bool:
        return hp["nesterov"]

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        return {"momentum_buffer": _zeros(param)} if hp["momentum"] else {}

    fused_kernel = "sgd"  # SGD alone only: one pass over weights, gradients and buffers

    def step_weights(self, params, grads, states, hp, step):
        if not hp["momentum"] or self.decoupled_decay(hp):
            return False
        bufs = [s["momentum_buffer"] for s in states]
        if not _layouts_match(params, grads, bufs):
            return False
        _fused_sgd(params, grads, bufs, hp, first=step == 1)
        return True

    def update(self, params, grads, states, hp, step, workspace=None, fused=False):
        grads = self.decayed_grads(params, grads, hp)
        momentum = hp["momentum"]
        if not momentum:
            return Update(grads, -hp["lr"])
        bufs = [s["momentum_buffer"] for s in states]
        if step == 1:  # torch starts the buffer at the first gradient, undampened
            torch._foreach_copy_(bufs, grads)
        else:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads, alpha=1 - hp["dampening"])
        if hp["nesterov"]:
            nesterov = _copy(grads, _scratch(params, workspace))
            torch._foreach_add_(nesterov, bufs, alpha=momentum)
            return Update(nesterov, -hp["lr"])
        return Update(bufs, -hp["lr"])


class Adam(Rule):
    """torch.optim.Adam, including amsgrad and (``decoupled_weight_decay``) AdamW."""

    name = "adam"
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        amsgrad=False,
        decoupled_weight_decay=False,
    )

    def check(self, hp: dict[str, Any]) -> None:
        if len(hp["betas"]) != 2 or not all(0.0 <= b < 1.0 for b in hp["betas"]):
            raise ValueError(f"{self.name}: invalid betas {hp['betas']}: need two values in [0, 1)")

    fused_kernel = "adam"

    def uses_workspace(self, hp: Mapping[str, Any]) -> bool:
        return True

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        state = {"exp_avg": _zeros(param), "exp_avg_sq": _zeros(param)}
        if hp["amsgrad"]:
            state["max_exp_avg_sq"] = _zeros(param)
        return state

    def update(self, params, grads, states, hp, step, workspace=None, fused=False):
        beta1, beta2 = hp["betas"]
        grads = self.decayed_grads(params, grads, hp)
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        maxima = [s["max_exp_avg_sq"] for s in states] if hp["amsgrad"] else []
        workspace = _scratch(params, workspace)
        companions = [grads, exp_avgs, exp_avg_sqs] + ([maxima] if maxima else [])
        if fused and _layouts_match(workspace, *companions):
            torch._foreach_zero_(workspace)
            _fused_adam(
                workspace,
                grads,
                exp_avgs,
                exp_avg_sqs,
                maxima,
                step,
                beta1,
                beta2,
                hp["eps"],
                hp["amsgrad"],
            )
            return Update(workspace, hp["lr"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        if maxima:
            torch._foreach_maximum_(maxima, exp_avg_sqs)
        second = maxima or exp_avg_sqs
        # torch's m / (sqrt(v) / c + eps) with c = sqrt(1 - beta2**step), computed as
        # c * m / (sqrt(v) + c * eps): the bias correction moves into scale and eps, saving a pass.
        correction = math.sqrt(1 - beta2**step)
        denom = _copy(second, workspace)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, hp["eps"] * correction)
        scale = -hp["lr"] * correction / (1 - beta1**step)
        return Update(exp_avgs, scale, denom)


class AdamW(Adam):
    """torch.optim.AdamW: Adam whose weight decay (default 1e-2) is decoupled."""

    name = "adamw"
    defaults: ClassVar[dict[str, Any]] = {
        **Adam.defaults,
        "weight_decay": 1e-2,
        "decoupled_weight_decay": True,
    }


class Adagrad(Rule):
    """torch.optim.Adagrad, plus heavy-ball ``momentum`` on the preconditioned gradient
    (``buf = momentum * buf + g / (sqrt(sum g^2) + eps)``; the paper runs AdaGrad with 0.9)."""

    name = "adagrad"
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=1e-2,
        lr_decay=0.0,
        weight_decay=0.0,
        initial_accumulator_value=0.0,
        eps=1e-10,
        momentum=0.0,
        decoupled_weight_decay=False,
    )

    fused_kernel = "adagrad"

    def uses_workspace(self, hp: Mapping[str, Any]) -> bool:
        return not hp["momentum"]  # with momentum, the fused kernel works in the buffer

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        state = {"sum": torch.full_like(param, hp["initial_accumulator_value"])}
        if hp["momentum"]:
            state["momentum_buffer"] = _zeros(param)
        return state

    def update(self, params, grads, states, hp, step, workspace=None, fused=False):
        grads = self.decayed_grads(params, grads, hp)
        sums = [s["sum"] for s in states]
        lr = hp["lr"] / (1 + (step - 1) * hp["lr_decay"])
        bufs = [s["momentum_buffer"] for s in states] if hp["momentum"] else None
        # The fused kernel steps its "weights" by -clr * g / std: with momentum, the (scaled)
        # buffer itself with clr = -1; without, a zeroed workspace with clr = 1.
        target = bufs if bufs else _scratch(params, workspace)
        if fused and _layouts_match(target, grads, sums):
            if bufs:
                torch._foreach_mul_(bufs, hp["momentum"])
            else:
                torch._foreach_zero_(target)
            _fused_adagrad(target, grads, sums, step, -1.0 if bufs else 1.0, hp["eps"])
            return Update(target, -lr if bufs else lr)
        torch._foreach_addcmul_(sums, grads, grads, 1)
        std = _copy(sums, _scratch(params, workspace))
        torch._foreach_sqrt_(std)
        torch._foreach_add_(std, hp["eps"])
        if bufs:
            torch._foreach_mul_(bufs, hp["momentum"])
            torch._foreach_addcdiv_(bufs, grads, std)
            return Update(bufs, -lr)
        return Update(grads, -lr, std)


class RMSprop(Rule):
    """torch.optim.RMSprop, centered or not, with optional momentum."""

    name = "rmsprop"
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        decoupled_weight_decay=False,
    )

    def check(self, hp: dict[str, Any]) -> None:
        if not 0.0 <= hp["alpha"] <= 1.0:
            raise ValueError(f"rmsprop: invalid alpha {hp['alpha']}: must be in [0, 1]")

    def uses_workspace(self, hp: Mapping[str, Any]) -> bool:
        return True

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        state = {"square_avg": _zeros(param)}
        if hp["momentum"]:
            state["momentum_buffer"] = _zeros(param)
        if hp["centered"]:
            state["grad_avg"] = _zeros(param)
        return state

    def update(self, params, grads, states, hp, step, workspace=None, fused=False):
        alpha = hp["alpha"]
        grads = self.decayed_grads(params, grads, hp)
        square_avgs = [s["square_avg"] for s in states]
        torch._foreach_mul_(square_avgs, alpha)
        torch._foreach_addcmul_(square_avgs, grads, grads, 1 - alpha)
        avg = _copy(square_avgs, _scratch(params, workspace))
        if hp["centered"]:
            grad_avgs = [s["grad_avg"] for s in states]
            torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
            torch._foreach_addcmul_(avg, grad_avgs, grad_avgs, -1)
        torch._foreach_sqrt_(avg)
        torch._foreach_add_(avg, hp["eps"])
        if hp["momentum"]:
            bufs = [s["momentum_buffer"] for s in states]
            torch._foreach_mul_(bufs, hp["momentum"])
            torch._foreach_addcdiv_(bufs, grads, avg)
            return Update(bufs, -hp["lr"])
        return Update(grads, -hp["lr"], avg)


class Lion(Rule):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
    ``sign(lerp(m, g, 1 - beta1))`` steps; weight decay decoupled by default, as in the paper."""

    name = "lion"
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=1e-4,
        betas=(0.9, 0.99),
        weight_decay=0.0,
        decoupled_weight_decay=True,
    )

    check = Adam.check

    def uses_workspace(self, hp: Mapping[str, Any]) -> bool:
        return True

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        return {"exp_avg": _zeros(param)}

    def update(self, params, grads, states, hp, step, workspace=None, fused=False):
        beta1, beta2 = hp["betas"]
        grads = self.decayed_grads(params, grads, hp)
        exp_avgs = [s["exp_avg"] for s in states]
        direction = _copy(exp_avgs, _scratch(params, workspace))
        torch._foreach_lerp_(direction, grads, 1 - beta1)
        torch._foreach_sign_(direction)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)
        return Update(direction, -hp["lr"])


class Adafactor(Rule):
    """torch.optim.Adafactor (Shazeer & Stern 2018 as torch implements it): factored second
    moments over the last two dimensions, relative step size, update clipping; weight decay
    decoupled by default, as in torch. Computed without host synchronisation."""

    name = "adafactor"
    linear_in_lr = False  # the relative step min(lr, 1 / sqrt(t)) is not proportional to lr
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=1e-2,
        beta2_decay=-0.8,
        eps=(None, 1e-3),
        d=1.0,
        weight_decay=0.0,
        decoupled_weight_decay=True,
    )

    def check(self, hp: dict[str, Any]) -> None:
        if hp["beta2_decay"] > 0:
            raise ValueError(f"adafactor: invalid beta2_decay {hp['beta2_decay']}: must be <= 0")
        eps1, eps2 = hp["eps"]
        if (eps1 is not None and eps1 < 0) or eps2 < 0:
            raise ValueError(f"adafactor: invalid eps {hp['eps']}: must be >= 0")
        if hp["d"] < 1:
            raise ValueError(f"adafactor: invalid d {hp['d']}: must be >= 1 (clipping threshold)")

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        if param.dim() > 1:
            row, col = list(param.shape), list(param.shape)
            row[-1], col[-2] = 1, 1
            return {"row_var": param.new_zeros(row), "col_var": param.new_zeros(col)}
        return {"variance": _zeros(param)}

    def update(self, params, grads, states, hp, step, workspace=None, fused=False):
        eps1, eps2 = hp["eps"]
        if eps1 is None:
            eps1 = torch.finfo(params[0].dtype).eps
        grads = self.decayed_grads(params, grads, hp)
        beta2_weight = step ** hp["beta2_decay"]
        rho = min(hp["lr"], 1 / math.sqrt(step))
        # Shapes differ per tensor (factored statistics), so this rule loops; no .item() calls.
        rms = torch._foreach_norm(params)
        updates = []
        for param, grad, state, param_norm in zip(params, grads, states, rms, strict=True):
            if grad.dim() > 1:
                row_var, col_var = state["row_var"], state["col_var"]
                row_mean = torch.linalg.vector_norm(grad, dim=-1, keepdim=True).square_()
                row_var.lerp_(row_mean.div_(grad.size(-1)), beta2_weight)
                col_mean = torch.linalg.vector_norm(grad, dim=-2, keepdim=True).square_()
                col_var.lerp_(col_mean.div_(grad.size(-2)), beta2_weight)
                var = row_var @ col_var
                var.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
            else:
                state["variance"].lerp_(grad * grad, beta2_weight)
                var = state["variance"].clone()
            update = var.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)
            scale = param_norm.div(math.sqrt(param.numel())).clamp_(min=eps2).mul_(rho)
            clip = torch.linalg.vector_norm(update).div_(math.sqrt(update.numel()) * hp["d"])
            updates.append(update.mul_(scale.div_(clip.clamp_(min=1.0))))
        return Update(updates, -1.0)


MODULES_VARIABLE = "GRAFTBENCH_OPTIMIZER_MODULES"
_ALLOWED_MODULES = ("torch.optim", "pytorch_optimizer", "heavyball")


def allowed_modules() -> tuple[str, ...]:
    """Module prefixes a dotted optimizer name may import from: torch.optim, pytorch_optimizer,
    heavyball, and those listed (comma-separated) in ``$GRAFTBENCH_OPTIMIZER_MODULES``."""
    extra = os.environ.get(MODULES_VARIABLE, "").split(",")
    return _ALLOWED_MODULES + tuple(m.strip() for m in extra if m.strip())


def import_optimizer(path: str) -> Any:
    """The optimizer class at a dotted ``path``, imported only from :func:`allowed_modules`."""
    module, _, attr = path.rpartition(".")
    allowed = allowed_modules()
    if not any(module == prefix or module.startswith(prefix + ".") for prefix in allowed):
        raise ValueError(
            f"optimizer {path!r} is not in an allowed module; allowed: {', '.join(allowed)} "
            f"(list more module prefixes, comma-separated, in ${MODULES_VARIABLE})"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise ValueError(f"cannot import optimizer class {path!r}") from None

"""The generic path: any ``torch.optim.Optimizer`` class as a rule, and the shipped rules that are
a library's optimizer (Shampoo and SOAP from pytorch-optimizer).

Such a rule cannot be split into "gradients in, update out": the optimizer owns its algorithm,
and many keep part of their state in the param group (most of pytorch-optimizer's count steps in
``group["step"]``). So the rule is stepped once per param group, by a persistent instance of the
optimizer, a :class:`Child`:

- its per-parameter state *is* ``Graft.state[p][role]`` (the same dicts); its param-group state
  (every key of its group that is not a hyperparameter) and any state it keeps under a key that
  is not a parameter (MADGRAD's ``state["k"]``) are kept in the Graft param group, under
  ``"child_state"``; all of it is in ``Graft.state_dict()`` and restored on resume;
- it steps *shadows*, tensors kept between steps that are set to the weights before each step,
  with copies of the gradients (optimizers may edit gradients in place; the other child must see
  the true ones), and the step is the shadows' change. When ``Graft`` is the optimizer alone
  (M#M), the child steps the weights themselves: the generic path then costs what the optimizer
  costs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from graftbench.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

from graftbench.optim.rules import Rule, import_optimizer

__all__ = ["SOAP", "Child", "Shampoo", "TorchRule"]

_IMPLEMENTATION_FLAGS = {"foreach", "fused", "capturable", "differentiable", "maximize"}


class TorchRule(Rule):
    """Any ``torch.optim.Optimizer`` class (or a partial of one) as a rule: the generic path.

    Slower than a shipped rule (the weights are copied to the shadows and the step taken out of
    them, two extra passes, and the gradients copied: a third) but grafts optimizers graftbench
    does not ship, e.g. ``torch.optim.NAdam`` or ``pytorch_optimizer.AdaBelief``. The optimizer's
    own weight decay is part of its step.
    """

    per_group = True
    linear_in_lr = False  # unknown: an optimizer may use lr in any way

    def __init__(self, factory: Callable[..., torch.optim.Optimizer], **hyperparams: Any) -> None:
        if isinstance(factory, functools.partial):
            hyperparams = {**factory.keywords, **hyperparams}
            factory = factory.func
        if not (inspect.isclass(factory) and issubclass(factory, torch.optim.Optimizer)):
            raise ValueError(f"not a torch.optim.Optimizer class: {factory!r}")
        self.factory = factory
        self.name = f"{factory.__module__}.{factory.__qualname__}"
        signature = inspect.signature(factory.__init__).parameters.values()
        self.defaults = {
            p.name: p.default
            for p in signature
            if p.default is not inspect.Parameter.empty and p.name not in _IMPLEMENTATION_FLAGS
        }
        self.defaults.setdefault("lr", 1e-3)
        super().__init__(**hyperparams)

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and self.factory is other.factory  # type: ignore[attr-defined]

    def check_types(self, hp: dict[str, Any]) -> None:
        """The optimizer's constructor checks its own arguments (see ``check``)."""

    def check(self, hp: dict[str, Any]) -> None:
        try:  # let the optimizer validate its own arguments, on a throwaway parameter
            self.factory([torch.zeros(2, 2, requires_grad=True)], **self.library_hp(hp))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.name}: {err}") from None

    def library_hp(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        """The hyperparameters as the optimizer's constructor names them."""
        return dict(hp)

    def decoupled_decay(self, hp: Mapping[str, Any]) -> float:
        return 0.0

    def decayed_grads(self, params, grads, hp):
        return grads

    def init(self, param: Tensor, hp: Mapping[str, Any]) -> dict[str, Any]:
        return {}  # the optimizer fills it on its first step

    def child(self, params: list[Tensor], hp: Mapping[str, Any], direct: bool) -> Child:
        """A persistent optimizer over one param group's ``params``; ``direct``: it steps the
        weights themselves (M#M), else shadows of them."""
        return Child(self, params, hp, direct)


class Child:
    """A persistent instance of a rule's optimizer over one param group (see the module doc)."""

    def __init__(
        self, rule: TorchRule, params: list[Tensor], hp: Mapping[str, Any], direct: bool
    ) -> None:
        self.rule = rule
        self.direct = direct
        shadows = (
            params
            if direct
            else [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
        )
        self.shadow_of = dict(zip(params, shadows, strict=True))
        self.optimizer = rule.factory(shadows, **rule.library_hp(hp))

    def step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        saved: dict[str, Any],
        hp: Mapping[str, Any],
    ) -> list[Tensor] | None:
        """Step the optimizer for ``params`` (those with gradients) and return their steps, held in
        the shadows until the next call; ``None`` when it stepped the weights directly.

        ``states`` (the per-parameter dicts) and ``saved`` (``{"group": ..., "optimizer": ...}``,
        the group's and the optimizer's own state) are read and updated in place.
        """
        optimizer = self.optimizer
        group = optimizer.param_groups[0]
        library_hp = self.rule.library_hp(hp)
        group.update(saved.get("group", {}))
        group.update(library_hp)
        optimizer.state.update(saved.get("optimizer", {}))
        shadows = [self.shadow_of[p] for p in params]
        if not self.direct:
            self._load(params, grads, shadows)
        for shadow, state in zip(shadows, states, strict=True):
            optimizer.state[shadow] = state
        optimizer.step()
        for shadow, state in zip(shadows, states, strict=True):
            current = optimizer.state[shadow]
            if current is not state:  # the optimizer replaced the dict: keep ours, updated
                state.clear()
                state.update(current)
                optimizer.state[shadow] = state
        saved["group"] = {k: v for k, v in group.items() if k != "params" and k not in library_hp}
        saved["optimizer"] = {
            k: v for k, v in optimizer.state.items() if not isinstance(k, torch.Tensor)
        }
        if self.direct:
            return None
        torch._foreach_sub_(shadows, params)
        return shadows

    def _load(self, params: list[Tensor], grads: list[Tensor], shadows: list[Tensor]) -> None:
        """Shadows := weights, their gradients := copies of the gradients (None where absent)."""
        stepping = set(shadows)
        for shadow in self.shadow_of.values():
            if shadow not in stepping:
                shadow.grad = None
        for shadow, grad in zip(shadows, grads, strict=True):
            if shadow.grad is None or shadow.grad.stride() != grad.stride():
                shadow.grad = torch.empty_like(grad, memory_format=torch.preserve_format)
        torch._foreach_copy_(shadows, params)
        torch._foreach_copy_([s.grad for s in shadows], grads)


class LibraryRule(TorchRule):
    """A shipped rule whose step is a library's optimizer class (``library``, a dotted path),
    with its hyperparameters in ``defaults`` under torch.optim's names (``renamed`` maps those
    the library names differently)."""

    library: ClassVar[str]
    renamed: ClassVar[dict[str, str]] = {}
    install: ClassVar[str]

    def __init__(self, **hyperparams: Any) -> None:
        try:
            self.factory = import_optimizer(self.library)
        except ValueError:
            raise ValueError(
                f"{self.name} needs {self.install}: pip install {self.install}"
            ) from None
        Rule.__init__(self, **hyperparams)

    def __repr__(self) -> str:
        return Rule.__repr__(self)

    check_types = Rule.check_types

    def library_hp(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        return {self.renamed.get(k, k): v for k, v in hp.items()}


class Shampoo(LibraryRule):
    """Shampoo (Gupta, Koren, Singer 2018) as ``pytorch_optimizer.Shampoo`` implements it: per
    tensor dimension i a statistic ``L_i += G_(i) G_(i)^T`` (from ``matrix_eps * I``) and the step
    ``-lr * G x_i L_i^(-1/(2k))`` for a tensor of order k (``L^-1/4 G R^-1/4`` for a matrix), roots
    by SVD every ``preconditioning_compute_steps``. No grafting of its own: graft it with
    ``Graft`` (``Graft(params, "adagrad", "shampoo")`` is AdaGrad-grafted Shampoo)."""

    name = "shampoo"
    library = "pytorch_optimizer.Shampoo"
    install = "pytorch-optimizer"
    renamed: ClassVar[dict[str, str]] = {"decoupled_weight_decay": "weight_decouple"}
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=1e-3,
        momentum=0.0,
        weight_decay=0.0,
        decoupled_weight_decay=False,
        fixed_decay=False,
        preconditioning_compute_steps=1,
        matrix_eps=1e-6,
    )


class SOAP(LibraryRule):
    """SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam") as
    ``pytorch_optimizer.SOAP`` implements it: Adam in the eigenbasis of Shampoo's statistics,
    the basis refreshed every ``precondition_frequency`` steps; the first step only initialises
    the statistics (no move), as in the authors' code. Weight decay is decoupled, AdamW-style."""

    name = "soap"
    library = "pytorch_optimizer.SOAP"
    install = "pytorch-optimizer"
    defaults: ClassVar[dict[str, Any]] = dict(
        lr=3e-3,
        betas=(0.95, 0.95),
        shampoo_beta=None,
        weight_decay=1e-2,
        precondition_frequency=10,
        max_precondition_dim=10000,
        merge_dims=False,
        precondition_1d=False,
        correct_bias=True,
        normalize_gradient=False,
        data_format="channels_first",
        eps=1e-8,
    )

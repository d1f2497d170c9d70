"""``make_rule``: any optimizer spec a user or a config hands us, as an update rule."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from graftbench.optim.generic import TorchRule
from graftbench.optim.rules import RULES, Rule, available, import_optimizer


def make_rule(spec: Any) -> Rule:
    """Build a rule from what a user or a config hands us.

    Accepts a rule object; a rule name; a mapping with ``"name"`` plus hyperparameters (what a
    Hydra config yields); a ``torch.optim.Optimizer`` class or ``functools.partial`` of one; or a
    mapping whose name is a dotted path to such a class (``"torch.optim.NAdam"``). A dotted path
    is imported only from the modules :func:`allowed_modules` names: names can come from a results
    directory someone else wrote, and importing a module runs its code.
    """
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        hyperparams = dict(spec)
        name = hyperparams.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(
                f"optimizer spec needs a 'name'; choose from: {', '.join(available())}"
            )
        if name in RULES:
            return RULES[name](**hyperparams)
        if "." in name:
            return TorchRule(import_optimizer(name), **hyperparams)
        raise ValueError(
            f"unknown optimizer {name!r}; choose from: {', '.join(available())} "
            "(or a dotted path to a torch.optim.Optimizer class)"
        )
    if isinstance(spec, functools.partial) or inspect.isclass(spec):
        return TorchRule(spec)
    raise ValueError(f"cannot build an update rule from {spec!r}")

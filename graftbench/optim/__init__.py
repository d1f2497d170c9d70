"""Update rules, the ``Graft`` optimizer and learning-rate schedules.

Importing this package registers every rule (names and defaults) without importing torch; the
``Graft`` optimizer (a ``torch.optim.Optimizer``) is imported on first use.
"""

from typing import Any

from graftbench.optim.factory import make_rule
from graftbench.optim.generic import TorchRule
from graftbench.optim.muon import Muon
from graftbench.optim.rules import Rule, Update, available

__all__ = ["Graft", "Muon", "Rule", "TorchRule", "Update", "available", "make_rule"]


def __getattr__(name: str) -> Any:
    if name == "Graft":
        from graftbench.optim.graft import Graft

        return Graft
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

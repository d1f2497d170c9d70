"""Update rules, the ``Graft`` optimizer and learning-rate schedules."""

from graftbench.optim.graft import Graft
from graftbench.optim.rules import Rule, TorchRule, Update, available, make_rule

__all__ = ["Graft", "Rule", "TorchRule", "Update", "available", "make_rule"]

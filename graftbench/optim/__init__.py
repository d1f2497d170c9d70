"""Update rules, the ``Graft`` optimizer and learning-rate schedules."""

from graftbench.optim.generic import TorchRule
from graftbench.optim.graft import Graft
from graftbench.optim.muon import Muon
from graftbench.optim.rules import Rule, Update, available, make_rule

__all__ = ["Graft", "Muon", "Rule", "TorchRule", "Update", "available", "make_rule"]

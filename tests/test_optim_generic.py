"""The generic path (any torch.optim.Optimizer class) against the optimizers themselves: alone it
must be the optimizer, step for step and across a checkpoint; grafted it must be Algorithm 2."""

from __future__ import annotations

import functools
import io

import pytest
import torch

from graftbench.optim import Graft
from graftbench.optim.reference import CopyRevertGraft
from tests.optim_helpers import assert_same_weights, tiny_model, train

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

STEPS = 30
# every torch.optim class that steps the test model (LBFGS needs a closure, SparseAdam sparse
# gradients; Muon takes only matrices: it gets the model's matrix, see _params)
TORCH = [
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adadelta,
    torch.optim.Adagrad,
    torch.optim.Adamax,
    torch.optim.ASGD,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Rprop,
    torch.optim.Adafactor,
    torch.optim.Muon,
]
# pytorch-optimizer's that keep state in the param group (a step count, D-Adaptation's d, ...)
GROUP_STATE = [
    "AdaBelief",
    "AdaBound",
    "DAdaptAdam",
    "Lamb",
    "Lion",
    "MADGRAD",
    "Prodigy",
    "Ranger",
    "ScheduleFreeAdamW",
    "Shampoo",
    "SOAP",
]
OPTIMIZERS = [pytest.param(cls, id=cls.__name__) for cls in TORCH] + [
    pytest.param(getattr(pytorch_optimizer, name), id=name) for name in GROUP_STATE
]


def _params(model: torch.nn.Module, cls: type) -> list[torch.Tensor]:
    """The parameters ``cls`` can step: all, or the matrices for Muon."""
    params = list(model.parameters())
    return [p for p in params if p.dim() == 2] if cls is torch.optim.Muon else params


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_generic_path_alone_is_the_optimizer_across_a_checkpoint(cls):
    """Graft(X) is X over 30 steps, bit for bit, with a state_dict round trip at step 15."""
    alone = tiny_model()
    train(alone, cls(_params(alone, cls)), STEPS)

    first = tiny_model()
    graft = Graft(_params(first, cls), cls)
    train(first, graft, STEPS // 2)
    saved = _round_trip({"model": first.state_dict(), "optim": graft.state_dict()})
    if cls.__module__.startswith("pytorch_optimizer"):
        assert "step" in saved["optim"]["param_groups"][0]["child_state"]["magnitude"]["group"]

    resumed = tiny_model(seed=123)
    resumed.load_state_dict(saved["model"])
    graft = Graft(_params(resumed, cls), cls)
    graft.load_state_dict(saved["optim"])
    train(resumed, graft, STEPS - STEPS // 2)
    assert_same_weights(resumed, alone, rtol=0, atol=0)


GRAFTED = [
    pytest.param(torch.optim.NAdam, id="NAdam"),
    pytest.param(torch.optim.Adafactor, id="Adafactor"),
    pytest.param(pytorch_optimizer.AdaBelief, id="AdaBelief"),
    pytest.param(pytorch_optimizer.Prodigy, id="Prodigy"),
]


@pytest.mark.parametrize("cls", GRAFTED)
@pytest.mark.parametrize("role", ["magnitude", "direction"])
def test_generic_child_grafts_like_copy_and_revert(cls, role):
    """In a grafted pair the generic child steps shadows of the weights: the same as Algorithm 2
    with the real optimizer, as magnitude or as direction."""
    adam = ({"name": "adam", "lr": 1e-2}, functools.partial(torch.optim.Adam, lr=1e-2))
    pair = ((cls, cls), adam) if role == "magnitude" else (adam, (cls, cls))
    ours, theirs = tiny_model(), tiny_model()
    graft = Graft(ours.parameters(), pair[0][0], pair[1][0])
    assert not graft.plain
    train(ours, graft, STEPS)
    train(theirs, CopyRevertGraft(theirs.parameters(), pair[0][1], pair[1][1]), STEPS)
    assert_same_weights(ours, theirs, rtol=1e-4, atol=1e-5)


def test_grafted_generic_child_resumes_bit_for_bit():
    adabelief = {"name": "pytorch_optimizer.AdaBelief", "lr": 1e-2}

    def make(model):
        return Graft(model.parameters(), "adagrad", adabelief)

    straight = tiny_model()
    train(straight, make(straight), 20)
    first = tiny_model()
    graft = make(first)
    train(first, graft, 10)
    saved = _round_trip({"model": first.state_dict(), "optim": graft.state_dict()})
    assert saved["optim"]["param_groups"][0]["child_state"]["direction"]["group"]["step"] == 10
    resumed = tiny_model(seed=7)
    resumed.load_state_dict(saved["model"])
    graft = make(resumed)
    graft.load_state_dict(saved["optim"])
    train(resumed, graft, 10)
    assert_same_weights(resumed, straight, rtol=0, atol=0)


def test_generic_child_skips_parameters_without_gradients():
    model = tiny_model()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    graft = Graft(model.parameters(), "sgd", torch.optim.NAdam)
    train(model, graft, 3)
    assert torch.equal(frozen, before) and frozen not in graft.state
    frozen.requires_grad_(True)  # unfrozen: its state starts now
    train(model, graft, 2)
    assert graft.state[frozen]["step"] == 2
    assert graft.state[frozen]["direction"]["step"] == 2

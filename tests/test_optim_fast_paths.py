"""The fast paths of the rules (fused kernels, workspace, lazy quotients) against torch.optim and
against the foreach fallback, which other devices and odd memory layouts take."""

from __future__ import annotations

import functools

import pytest
import torch

from graftbench.optim import Graft, Update, make_rule
from graftbench.optim import graft as graft_module
from graftbench.optim import rules as rules_module
from graftbench.optim.reference import CopyRevertGraft
from tests.optim_helpers import assert_same_weights, tiny_model, train
from tests.test_graft import PAPER
from tests.test_graft import ROUND_OFF as GRAFT_ROUND_OFF
from tests.test_rules import AGAINST_TORCH
from tests.test_rules import ROUND_OFF as RULE_ROUND_OFF

FUSED_RULES = [case for case in AGAINST_TORCH if case[0] in ("adam", "adamw", "adagrad")]


@pytest.fixture
def foreach_only(monkeypatch):
    """Make every Graft take its foreach fallback, as on a device without fused kernels."""
    monkeypatch.setattr(rules_module, "fused_kernel_works", lambda kernel, device: False)
    monkeypatch.setattr(graft_module, "fused_kernel_works", lambda kernel, device: False)


@pytest.mark.parametrize(
    ("name", "hp", "torch_cls"),
    FUSED_RULES,
    ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FUSED_RULES)],
)
def test_foreach_fallback_reproduces_torch_optim(name, hp, torch_cls, foreach_only):
    ours, theirs = tiny_model(), tiny_model()
    train(ours, Graft(ours.parameters(), {"name": name, **hp}), 50)
    train(theirs, torch_cls(theirs.parameters(), **hp), 50)
    assert_same_weights(ours, theirs, **RULE_ROUND_OFF)


@pytest.mark.parametrize(("m", "d"), [("adam", "adagrad"), ("adagrad", "adam"), ("sgd", "adam")])
def test_foreach_fallback_grafts_like_copy_and_revert(m, d, foreach_only):
    """M and D share one workspace: M's quotient is reduced to norms before D overwrites it."""
    ours, theirs = tiny_model(), tiny_model()
    train(ours, Graft(ours.parameters(), PAPER[m][0], PAPER[d][0]), 30)
    train(theirs, CopyRevertGraft(theirs.parameters(), PAPER[m][1], PAPER[d][1]), 30)
    assert_same_weights(ours, theirs, **GRAFT_ROUND_OFF)


@pytest.mark.parametrize("magnitude_first", [True, False])
def test_adagrad_momentum_grafts_alike_fused_and_foreach(magnitude_first):
    adagrad = {"name": "adagrad", "lr": 0.05, "momentum": 0.9, "lr_decay": 0.01}
    pair = (adagrad, PAPER["adam"][0]) if magnitude_first else (PAPER["adam"][0], adagrad)
    fused, fallback = tiny_model(), tiny_model()
    graft = Graft(fused.parameters(), *pair)
    assert graft.fused
    train(fused, graft, 30)
    train(fallback, Graft(fallback.parameters(), *pair, fused=False), 30)
    assert_same_weights(fused, fallback, **GRAFT_ROUND_OFF)


def _layouts() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A weight (of the layout under test) and its gradient."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, 3, 3, generator=generator)
    grad = torch.randn(4, 3, 3, 3, generator=generator)
    channels_last = weight.contiguous(memory_format=torch.channels_last)
    return {
        "channels-last weight, standard grad": (channels_last, grad),
        "channels-last weight and grad": (
            channels_last,
            grad.contiguous(memory_format=torch.channels_last),
        ),
        "strided weight": (
            torch.randn(5, 8, generator=generator)[:, ::2],
            torch.randn(5, 4, generator=generator),
        ),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
@pytest.mark.parametrize(
    ("spec", "torch_optimizer"),
    [
        (
            {"name": "adam", "lr": 1e-2, "amsgrad": True},
            functools.partial(torch.optim.Adam, lr=1e-2, amsgrad=True),
        ),
        ({"name": "adagrad", "lr": 0.05}, functools.partial(torch.optim.Adagrad, lr=0.05)),
    ],
    ids=["adam", "adagrad"],
)
def test_memory_layouts_the_fused_kernels_cannot_read_are_stepped_correctly(
    layout, spec, torch_optimizer
):
    """torch's fused CPU kernels read tensors as flat memory without checking their layouts."""
    weight, grad = _layouts()[layout]
    ours, theirs = torch.nn.Parameter(weight), torch.nn.Parameter(weight.clone())
    assert ours.stride() == weight.stride()
    graft, reference = Graft([ours], spec), torch_optimizer([theirs])
    for _ in range(5):
        ours.grad, theirs.grad = grad, grad.clone()
        graft.step()
        reference.step()
    torch.testing.assert_close(ours, theirs, **RULE_ROUND_OFF)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "adam", "amsgrad": True, "weight_decay": 0.1},
        {"name": "adagrad"},
        {"name": "rmsprop", "centered": True},
        {"name": "sgd", "momentum": 0.9, "nesterov": True},
        {"name": "lion"},
    ],
    ids=lambda spec: spec["name"],
)
def test_rule_steps_alike_with_and_without_a_workspace(spec):
    model = tiny_model()
    params = list(model.parameters())
    grads = [torch.randn_like(p) for p in params]
    rule = make_rule(spec)
    hp = rule.hyperparams
    steps = []
    for workspace in (None, [torch.full_like(p, float("nan")) for p in params]):
        states = [rule.init(p, hp) for p in params]
        for step in (1, 2):
            update = rule.update(params, grads, states, hp, step, workspace, True).materialised()
        steps.append([t * update.scale for t in update.tensors])
    for with_, without in zip(*steps, strict=True):
        torch.testing.assert_close(with_, without)


def test_materialised_divides_in_the_divisors_storage():
    tensors, divisors = [torch.tensor([1.0, 4.0])], [torch.tensor([2.0, 8.0])]
    update = Update(tensors, -0.5, divisors).materialised()
    assert update.divisors is None and update.scale == -0.5
    assert update.tensors[0] is divisors[0]
    torch.testing.assert_close(update.tensors[0], torch.tensor([0.5, 0.5]))
    plain = Update(tensors, 2.0)
    assert plain.materialised() is plain


def test_workspace_is_reused_and_never_checkpointed():
    model = tiny_model()
    graft = Graft(model.parameters(), PAPER["adam"][0], PAPER["adagrad"][0])
    train(model, graft, 2)
    pointers = {id(p): w.data_ptr() for p, w in graft._workspace.items()}
    train(model, graft, 2)
    assert {id(p): w.data_ptr() for p, w in graft._workspace.items()} == pointers
    saved = graft.state_dict()["state"][0]
    assert set(saved) == {"step", "magnitude", "direction"}
    assert set(saved["magnitude"]) == {"exp_avg", "exp_avg_sq"}
    assert set(saved["direction"]) == {"sum"}


def test_sgd_alone_steps_the_weights_with_torchs_fused_kernel(monkeypatch):
    """SGD alone (M#M) is one fused pass over weights, gradients and buffers, as torch's fused
    SGD; a grafted SGD or another layout keeps the foreach path."""
    assert rules_module.fused_kernel_works("sgd", "cpu")  # probed before we count calls
    calls = []
    kernel = torch._fused_sgd_
    monkeypatch.setattr(torch, "_fused_sgd_", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    sgd = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
    ours, theirs = tiny_model(), tiny_model()
    graft = Graft(ours.parameters(), sgd)
    reference = torch.optim.SGD(
        theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4, fused=True
    )
    train(ours, graft, 5)
    train(theirs, reference, 5)
    assert len(calls) == 5 * 2  # ours and torch's, once per step each
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    calls.clear()
    grafted = tiny_model()
    train(grafted, Graft(grafted.parameters(), sgd, "adam"), 2)
    assert calls == []

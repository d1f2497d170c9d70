"""The rules that are another library's optimizer - muon (torch.optim.Muon), shampoo and soap
(pytorch-optimizer) - against those optimizers and against their definitions, alone and grafted."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch

from graftbench.optim import Graft, make_rule
from graftbench.optim.reference import CopyRevertGraft
from graftbench.optim.rules import RULES
from tests.optim_helpers import TorchMuon, assert_same_weights, tiny_model, train

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

STEPS = 30
ROUND_OFF = dict(rtol=1e-4, atol=1e-5)
# name -> (our spec, the library's optimizer with the same hyperparameters)
LIBRARY = {
    "muon": ({"name": "muon", "lr": 0.02}, functools.partial(TorchMuon, lr=0.02)),
    "shampoo": (
        {"name": "shampoo", "lr": 0.05, "momentum": 0.5},
        functools.partial(pytorch_optimizer.Shampoo, lr=0.05, momentum=0.5),
    ),
    "soap": ({"name": "soap"}, pytorch_optimizer.SOAP),
}
TORCH = {
    "adam": ({"name": "adam", "lr": 1e-2}, functools.partial(torch.optim.Adam, lr=1e-2)),
    "adagrad": ({"name": "adagrad", "lr": 0.05}, functools.partial(torch.optim.Adagrad, lr=0.05)),
    "sgd": (
        {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    ),
}


@pytest.mark.parametrize("plain_form", ["M", "M#M"])
@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_rule_alone_is_the_library_optimizer(name, plain_form):
    spec, library = LIBRARY[name]
    ours, theirs = tiny_model(), tiny_model()
    graft = Graft(ours.parameters(), spec, spec if plain_form == "M#M" else None)
    assert graft.plain
    train(ours, graft, STEPS)
    train(theirs, library(theirs.parameters()), STEPS)
    if name == "muon":  # our own arithmetic (see graftbench/optim/muon.py): round-off
        assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-6)
    else:  # the library's optimizer itself steps the weights
        assert_same_weights(ours, theirs, rtol=0, atol=0)


PAIRS = [
    ("adam", "muon"),
    ("sgd", "muon"),
    ("muon", "adam"),
    ("adagrad", "shampoo"),
    ("adam", "shampoo"),
    ("shampoo", "sgd"),
    ("adam", "soap"),
    ("adagrad", "soap"),
    ("soap", "adam"),
]
# Grafted, weight decay is applied outside the norms (tests/test_graft.py): none here.
GRAFTED = {
    **TORCH,
    "muon": (
        {"name": "muon", "lr": 0.02, "weight_decay": 0.0},
        functools.partial(TorchMuon, lr=0.02, weight_decay=0.0),
    ),
    "shampoo": LIBRARY["shampoo"],
    "soap": LIBRARY["soap"],
}


@pytest.mark.parametrize("granularity", ["layer", "global"])
@pytest.mark.parametrize(("m", "d"), PAIRS, ids=[f"{m}#{d}" for m, d in PAIRS])
def test_grafted_pair_takes_the_magnitude_of_m_and_the_direction_of_d(m, d, granularity):
    """Step for step against Algorithm 2 with the real optimizers (copy and revert): every step
    has ||step|| = ||dM|| and points along dD. Each step starts both from our weights: Muon's
    bfloat16 Newton-Schulz, Shampoo's inverse roots and SOAP's eigenbases of near-singular
    statistics turn round-off differences in the weights into visible ones within a few steps."""
    ours, theirs = tiny_model(), tiny_model()
    graft = Graft(ours.parameters(), GRAFTED[m][0], GRAFTED[d][0], granularity=granularity)
    reference = CopyRevertGraft(
        theirs.parameters(), GRAFTED[m][1], GRAFTED[d][1], granularity=granularity
    )
    for _ in range(10):
        train(ours, graft, 1)
        train(theirs, reference, 1)
        assert_same_weights(ours, theirs, **ROUND_OFF)
        theirs.load_state_dict(ours.state_dict())


def test_muon_weight_decay_is_applied_once_outside_the_norms():
    lr, wd = 1e-2, 0.1  # M's lr: decoupled decay is w <- w * (1 - lr_M * wd)
    ours, theirs = tiny_model(), tiny_model()
    muon = {"name": "muon", "lr": 0.02, "weight_decay": wd}
    graft = Graft(ours.parameters(), TORCH["adam"][0], muon)
    reference = CopyRevertGraft(theirs.parameters(), TORCH["adam"][1], GRAFTED["muon"][1])

    def decay():
        with torch.no_grad():
            for p in theirs.parameters():
                p.mul_(1 - lr * wd)

    for _ in range(5):  # step for step, as above
        train(ours, graft, 1)
        train(theirs, reference, 1, before_step=decay)
        assert_same_weights(ours, theirs, **ROUND_OFF)
        theirs.load_state_dict(ours.state_dict())


def test_muon_routes_tensors_as_its_docstring_says():
    model = tiny_model()
    groups = [
        {"params": [model[0].weight, model[1].weight, model[1].bias, model[3].weight]},
        {"params": [model[3].bias, model[6].weight, model[6].bias], "use_muon": False, "lr": 3e-3},
    ]
    graft = Graft(groups, {"name": "muon", "lr": 0.02})
    train(model, graft, 2)
    kinds = {p: set(graft.state[p]["magnitude"]) for p in model.parameters()}
    assert kinds[model[0].weight] == kinds[model[3].weight] == {"momentum_buffer"}  # kernels
    assert kinds[model[1].weight] == {"exp_avg", "exp_avg_sq"}  # a norm's gain: AdamW
    assert kinds[model[6].weight] == {"exp_avg", "exp_avg_sq"}  # use_muon=False: the head

    # the head group is torch.optim.AdamW at its own lr
    reference = tiny_model()
    head = [reference[3].bias, reference[6].weight, reference[6].bias]
    adamw = torch.optim.AdamW(head, lr=3e-3, weight_decay=0.1)
    body = TorchMuon([p for p in reference.parameters() if all(p is not h for h in head)], lr=0.02)

    class Both:
        def zero_grad(self):
            reference.zero_grad()

        def step(self):
            adamw.step()
            body.step()

    train(reference, Both(), 2)
    assert_same_weights(model, reference, rtol=1e-5, atol=1e-6)


def test_shampoo_is_its_definition():
    """Gupta et al. 2018 for a matrix: L = eps I + sum G G^T, R = eps I + sum G^T G,
    W <- W - lr L^-1/4 G R^-1/4 (roots of the float64 eigendecomposition here)."""
    lr, eps = 0.1, 1e-6
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3, generator=generator))
    optimizer = pytorch_optimizer.Shampoo([weight], lr=lr, matrix_eps=eps)
    expected = weight.detach().double().clone()
    left, right = eps * torch.eye(4, dtype=torch.float64), eps * torch.eye(3, dtype=torch.float64)
    for _ in range(3):
        grad = torch.randn(4, 3, generator=generator)
        weight.grad = grad.clone()
        optimizer.step()
        g = grad.double()
        left += g @ g.T
        right += g.T @ g
        expected -= lr * _power(left, -1 / 4) @ g @ _power(right, -1 / 4)
    torch.testing.assert_close(weight.detach().double(), expected, rtol=1e-4, atol=1e-5)


def _power(matrix: torch.Tensor, exponent: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values**exponent) @ vectors.T


def test_soap_is_its_definition():
    """Vyas et al. 2024, Algorithm 3, for a matrix whose eigenbasis is not refreshed yet: the
    first step sets L = (1-b) G G^T, R = (1-b) G^T G and the bases Q_L, Q_R (no move); then Adam
    on Q_L^T G Q_R, the update rotated back, bias-corrected, then decoupled weight decay."""
    lr, (b1, b2), eps, wd = 3e-3, (0.95, 0.95), 1e-8, 1e-2
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 4, generator=generator))
    optimizer = pytorch_optimizer.SOAP([weight], precondition_frequency=100)
    expected = weight.detach().double().clone()
    m = torch.zeros(4, 4, dtype=torch.float64)
    v = torch.zeros(4, 4, dtype=torch.float64)
    for t in range(5):
        grad = torch.randn(4, 4, generator=generator)
        weight.grad = grad.clone()
        optimizer.step()
        g = grad.double()
        if t == 0:
            q_left = torch.linalg.eigh((1 - b2) * g @ g.T).eigenvectors
            q_right = torch.linalg.eigh((1 - b2) * g.T @ g).eigenvectors
            continue
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (q_left.T @ g @ q_right) ** 2
        update = q_left @ ((q_left.T @ m @ q_right) / (v.sqrt() + eps)) @ q_right.T
        expected -= lr * (1 - b2**t) ** 0.5 / (1 - b1**t) * update
        expected *= 1 - lr * wd
    torch.testing.assert_close(weight.detach().double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "library", "renamed"),
    [
        ("shampoo", pytorch_optimizer.Shampoo, {"decoupled_weight_decay": "weight_decouple"}),
        ("soap", pytorch_optimizer.SOAP, {}),
        ("muon", torch.optim.Muon, {}),
    ],
)
def test_defaults_are_the_librarys(name, library, renamed):
    signature = inspect.signature(library.__init__).parameters.values()
    theirs = {
        p.name: p.default
        for p in signature
        if p.default is not inspect.Parameter.empty and p.name not in ("maximize", "kwargs")
    }
    ours = {renamed.get(k, k): v for k, v in RULES[name].defaults.items()}
    if name == "muon":  # the AdamW share's own hyperparameters (torch.optim.AdamW's defaults)
        assert {k: ours.pop(k) for k in ("use_muon", "adamw_betas", "adamw_eps")} == {
            "use_muon": True,
            "adamw_betas": (0.9, 0.999),
            "adamw_eps": 1e-8,
        }
    assert ours == theirs
    assert make_rule(name).hyperparams == RULES[name].defaults

"""Each rule on its own (``Graft(params, M)`` and ``Graft(params, M, M)``) against torch.optim,
and the rules torch lacks against their definitions."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from graftbench.optim import Graft, TorchRule, available, make_rule
from graftbench.optim.rules import RULES, _plain, allowed_modules
from tests.optim_helpers import assert_same_weights, tiny_model, train

STEPS = 50
# float32 round-off accumulated over 50 steps of a model with BatchNorm
ROUND_OFF = dict(rtol=2e-5, atol=2e-6)

AGAINST_TORCH = [
    ("sgd", {"lr": 0.05}, torch.optim.SGD),
    ("sgd", {"lr": 0.05, "momentum": 0.9}, torch.optim.SGD),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-2}, torch.optim.SGD),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}, torch.optim.SGD),
    ("adam", {"lr": 1e-2}, torch.optim.Adam),
    (
        "adam",
        {"lr": 1e-2, "betas": (0.8, 0.99), "amsgrad": True, "weight_decay": 1e-2},
        torch.optim.Adam,
    ),
    ("adam", {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}, torch.optim.Adam),
    ("adamw", {"lr": 1e-2}, torch.optim.AdamW),
    ("adagrad", {"lr": 0.05}, torch.optim.Adagrad),
    (
        "adagrad",
        {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 1e-3},
        torch.optim.Adagrad,
    ),
    ("rmsprop", {"lr": 1e-3}, torch.optim.RMSprop),
    (
        "rmsprop",
        {"lr": 1e-3, "momentum": 0.9, "centered": True, "weight_decay": 1e-3},
        torch.optim.RMSprop,
    ),
    ("adafactor", {"lr": 1e-2}, torch.optim.Adafactor),
    (
        "adafactor",
        {"lr": 1e-2, "weight_decay": 0.1, "beta2_decay": -0.5, "d": 2.0},
        torch.optim.Adafactor,
    ),
]


@pytest.mark.parametrize("plain_form", ["M", "M#M"])
@pytest.mark.parametrize(
    ("name", "hp", "torch_cls"),
    AGAINST_TORCH,
    ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(AGAINST_TORCH)],
)
def test_rule_reproduces_torch_optim(name, hp, torch_cls, plain_form):
    ours, theirs = tiny_model(), tiny_model()
    spec = {"name": name, **hp}
    direction = spec if plain_form == "M#M" else None
    graft = Graft(ours.parameters(), spec, direction)
    assert graft.plain
    reference = torch_cls(theirs.parameters(), **hp)
    train(ours, graft, STEPS)
    train(theirs, reference, STEPS)
    assert_same_weights(ours, theirs, **ROUND_OFF)


def _by_definition(model, step_fn, steps=STEPS):
    """Train with an update written out per tensor, straight from a rule's definition."""
    state: dict = {}

    def optimizer_step():
        with torch.no_grad():
            for p in model.parameters():
                step_fn(p, p.grad, state.setdefault(p, {"t": 0}))

    class Defined:
        def zero_grad(self):
            model.zero_grad()

        def step(self):
            optimizer_step()

    train(model, Defined(), steps)


def test_lion_matches_definition():
    lr, (b1, b2), wd = 1e-3, (0.9, 0.99), 0.1

    def lion(p, g, s):  # Chen et al. 2023, Algorithm 2 (decoupled weight decay)
        m = s.setdefault("m", torch.zeros_like(p))
        update = (b1 * m + (1 - b1) * g).sign()
        p.mul_(1 - lr * wd).add_(update, alpha=-lr)
        m.mul_(b2).add_(g, alpha=1 - b2)

    ours, theirs = tiny_model(), tiny_model()
    train(ours, Graft(ours.parameters(), {"name": "lion", "lr": lr, "weight_decay": wd}), STEPS)
    _by_definition(theirs, lion)
    assert_same_weights(ours, theirs, **ROUND_OFF)


def test_adagrad_momentum_extension_matches_definition():
    lr, mu, eps = 0.05, 0.9, 1e-10

    def adagrad_momentum(p, g, s):  # heavy ball on the AdaGrad-preconditioned gradient
        acc = s.setdefault("acc", torch.zeros_like(p))
        buf = s.setdefault("buf", torch.zeros_like(p))
        acc.add_(g * g)
        buf.mul_(mu).add_(g / (acc.sqrt() + eps))
        p.add_(buf, alpha=-lr)

    ours, theirs = tiny_model(), tiny_model()
    spec = {"name": "adagrad", "lr": lr, "momentum": mu}
    train(ours, Graft(ours.parameters(), spec), STEPS)
    _by_definition(theirs, adagrad_momentum)
    assert_same_weights(ours, theirs, **ROUND_OFF)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop"])
def test_decoupled_weight_decay_on_rules_torch_lacks_it_for(name):
    """``decoupled_weight_decay``: w <- w * (1 - lr * wd), then the rule's own step."""
    lr, wd = 1e-2, 0.5
    ours, theirs = tiny_model(), tiny_model()
    spec = {"name": name, "lr": lr, "weight_decay": wd, "decoupled_weight_decay": True}
    train(ours, Graft(ours.parameters(), spec), STEPS)
    torch_cls = {
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
    }[name]

    def decay():
        with torch.no_grad():
            for p in theirs.parameters():
                p.mul_(1 - lr * wd)

    train(theirs, torch_cls(theirs.parameters(), lr=lr), STEPS, before_step=decay)
    assert_same_weights(ours, theirs, **ROUND_OFF)


def test_every_shipped_rule_has_a_test():
    # muon, shampoo and soap: tests/test_optim_library_rules.py
    tested = {name for name, _, _ in AGAINST_TORCH} | {"lion", "muon", "shampoo", "soap"}
    assert tested == set(available())


TORCH_DEFAULTS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adafactor": torch.optim.Adafactor,
}
IMPLEMENTATION_FLAGS = {"foreach", "fused", "capturable", "differentiable", "maximize"}


@pytest.mark.parametrize("name", sorted(TORCH_DEFAULTS))
def test_defaults_are_torch_optims(name):
    """Rule.defaults is the one source of defaults: every torch.optim argument, torch's value."""
    signature = inspect.signature(TORCH_DEFAULTS[name].__init__).parameters.values()
    theirs = {
        p.name: _plain(p.default)
        for p in signature
        if p.default is not inspect.Parameter.empty and p.name not in IMPLEMENTATION_FLAGS
    }
    ours = dict(RULES[name].defaults)
    # graftbench's extensions, at the value that behaves as torch does
    extensions = {
        "sgd": {"decoupled_weight_decay": False},
        "adagrad": {"momentum": 0.0, "decoupled_weight_decay": False},
        "rmsprop": {"decoupled_weight_decay": False},
        "adafactor": {"decoupled_weight_decay": True},  # torch's Adafactor always decouples
        "adamw": {"decoupled_weight_decay": True},
    }.get(name, {})
    assert ours == {**theirs, **extensions}


def test_dotted_names_import_only_from_allowed_modules(monkeypatch):
    assert isinstance(make_rule({"name": "torch.optim.NAdam"}), TorchRule)
    for name in ("os.system", "subprocess.Popen", "torch.optimizer_evil.X", "pickle.loads"):
        with pytest.raises(ValueError, match=r"not in an allowed module; allowed: torch\.optim, "):
            make_rule({"name": name})
    with pytest.raises(ValueError, match=r"\$GRAFTBENCH_OPTIMIZER_MODULES"):
        make_rule({"name": "tests.optim_helpers.Custom"})
    monkeypatch.setenv("GRAFTBENCH_OPTIMIZER_MODULES", " mylab.optim , tests.optim_helpers")
    assert allowed_modules()[-2:] == ("mylab.optim", "tests.optim_helpers")
    with pytest.raises(ValueError, match="cannot import optimizer class"):
        make_rule({"name": "tests.optim_helpers.Custom"})  # allowed now, but not there
    with pytest.raises(ValueError, match=r"not a torch\.optim\.Optimizer class"):
        make_rule({"name": "tests.optim_helpers.tiny_model"})
    # a class handed over in Python is the user's own choice
    assert make_rule(torch.optim.Rprop).name == "torch.optim.rprop.Rprop"


def test_rules_leave_gradients_untouched():
    model = tiny_model()
    for name in available():
        graft = Graft(
            model.parameters(),
            {"name": name, "momentum": 0.9, "nesterov": True} if name == "sgd" else name,
        )
        train(model, graft, 1)
        grads = [p.grad.clone() for p in model.parameters()]
        graft.step()
        for before, p in zip(grads, model.parameters(), strict=True):
            assert torch.equal(before, p.grad), name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "adm"}, "unknown optimizer 'adm'; choose from: adafactor, adagrad, adam, adamw"),
        ({"name": "adam", "beta": 0.9}, "unknown hyperparameter 'beta'; valid: amsgrad, betas"),
        ({"name": "sgd", "lr": -0.1}, "invalid lr -0.1: must be >= 0"),
        ({"name": "sgd", "lr": "fast"}, "invalid lr 'fast': expected a number"),
        ({"name": "adam", "betas": (0.9, 1.5)}, "invalid betas"),
        ({"name": "sgd", "nesterov": True}, "nesterov momentum requires momentum > 0"),
        ({"lr": 0.1}, "optimizer spec needs a 'name'; choose from"),
        ({"name": "torch.optim.Nope"}, "cannot import optimizer class 'torch.optim.Nope'"),
        ({"name": "torch.optim.SGD", "lr": -1.0}, "torch.optim.sgd.SGD: invalid lr -1.0"),
        ({"name": "torch.optim.Adam", "betas": (0.9, 1.5)}, "Invalid beta parameter at index 1"),
        ({"name": "adafactor", "d": 0.5}, "invalid d 0.5: must be >= 1"),
    ],
)
def test_bad_specs_raise_clear_value_errors(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_rule(spec)


def test_specs_from_configs_become_torch_types():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"name": "adam", "lr": 0.01, "betas": [0.8, 0.9]})
    rule = make_rule(cfg)
    assert rule.hyperparams["betas"] == (0.8, 0.9)
    assert rule == make_rule({"name": "adam", "lr": 0.01, "betas": (0.8, 0.9)})
    assert copy.deepcopy(rule) == rule

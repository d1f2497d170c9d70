"""``Graft`` against Algorithm 2 written the slow, obvious way (copy and revert with real
torch.optim optimizers), and the properties a drop-in optimizer must have."""

from __future__ import annotations

import functools
import io
import itertools
import math

import pytest
import torch

from graftbench.optim import Graft
from graftbench.optim.reference import CopyRevertGraft
from tests.optim_helpers import assert_same_weights, batch, tiny_model, train

# The paper's three optimizers, as our specs and as torch.optim factories.
PAPER = {
    "sgd": (
        {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    ),
    "adam": ({"name": "adam", "lr": 1e-2}, functools.partial(torch.optim.Adam, lr=1e-2)),
    "adagrad": ({"name": "adagrad", "lr": 0.05}, functools.partial(torch.optim.Adagrad, lr=0.05)),
}
STEPS = 30
# Grafting divides by a norm, so round-off is amplified a little more than for a plain rule.
ROUND_OFF = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("granularity", ["layer", "global"])
@pytest.mark.parametrize(("m", "d"), list(itertools.product(PAPER, PAPER)))
def test_graft_matches_copy_and_revert(m, d, granularity):
    ours, theirs = tiny_model(), tiny_model()
    graft = Graft(ours.parameters(), PAPER[m][0], PAPER[d][0], granularity=granularity)
    assert graft.plain == (m == d)
    reference = CopyRevertGraft(
        theirs.parameters(), PAPER[m][1], PAPER[d][1], granularity=granularity
    )
    train(ours, graft, STEPS)
    train(theirs, reference, STEPS)
    assert_same_weights(ours, theirs, **ROUND_OFF)


def test_nesterov_magnitude_does_not_leak_into_the_direction():
    """torch's Nesterov SGD edits gradients in place; D must still see the true gradient."""
    spec = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0}
    factory = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True)
    ours, theirs = tiny_model(), tiny_model()
    train(ours, Graft(ours.parameters(), spec, PAPER["adam"][0]), STEPS)
    train(theirs, CopyRevertGraft(theirs.parameters(), factory, PAPER["adam"][1]), STEPS)
    assert_same_weights(ours, theirs, **ROUND_OFF)


def test_grafted_step_has_the_magnitude_of_m_and_the_direction_of_d():
    """One step from the definition: per tensor, ||step|| = ||dM|| and step ∥ dD."""
    model = tiny_model()
    x, y = batch()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    lr = 0.3
    graft = Graft(model.named_parameters(), {"name": "sgd", "lr": lr}, {"name": "adam"})
    graft.step()
    correction = graft.correction()
    for (name, p), w0 in zip(model.named_parameters(), before, strict=True):
        step = p.detach() - w0
        d_m = -lr * p.grad
        d_d = -1e-3 * p.grad.sign()  # Adam's first step: lr * g / (|g| + eps)
        assert step.norm().item() == pytest.approx(d_m.norm().item(), rel=1e-4)
        cosine = torch.nn.functional.cosine_similarity(step.flatten(), d_d.flatten(), dim=0)
        assert cosine.item() == pytest.approx(1.0, abs=1e-4)
        assert correction[name]["magnitude_norm"] == pytest.approx(d_m.norm().item(), rel=1e-4)
        assert correction[name]["ratio"] == pytest.approx(
            d_m.norm().item() / d_d.norm().item(), rel=1e-3
        )


def test_correction_is_recorded_on_the_device_and_summarised():
    model = tiny_model()
    graft = Graft(model.named_parameters(), PAPER["adam"][0], PAPER["sgd"][0])
    train(model, graft, 3)
    assert all(isinstance(r.ratio, torch.Tensor) for r in graft.last_step)
    per_layer = graft.correction()
    assert set(per_layer) == {name for name, _ in model.named_parameters()}
    ratios = [v["ratio"] for v in per_layer.values()]
    summary = graft.correction_summary()
    assert summary["ratio_min"] == pytest.approx(min(ratios))
    assert summary["ratio_max"] == pytest.approx(max(ratios))
    assert summary["ratio_mean"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-5)
    total = math.sqrt(sum(v["magnitude_norm"] ** 2 for v in per_layer.values()))
    assert summary["magnitude_norm"] == pytest.approx(total, rel=1e-5)
    plain = Graft(model.parameters(), PAPER["adam"][0])
    assert plain.correction() == {} and plain.correction_summary()["ratio_mean"] == 1.0


@pytest.mark.parametrize("pair", [("adam", "sgd"), ("sgd", "sgd"), ("adagrad", "adam")])
@pytest.mark.parametrize("granularity", ["layer", "global"])
def test_state_dict_round_trip_resumes_bit_for_bit(pair, granularity):
    m, d = pair

    def make(model):
        return Graft(model.parameters(), PAPER[m][0], PAPER[d][0], granularity=granularity)

    straight = tiny_model()
    train(straight, make(straight), 20)

    first = tiny_model()
    graft = make(first)
    train(first, graft, 10)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": graft.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = tiny_model(seed=123)
    resumed.load_state_dict(saved["model"])
    graft = make(resumed)
    graft.load_state_dict(saved["optim"])
    train(resumed, graft, 10)
    assert_same_weights(resumed, straight, rtol=0, atol=0)


@pytest.mark.parametrize("eps", [1e-16, 0.0])
def test_zero_gradient_and_zero_direction_make_no_step_and_no_nan(eps):
    model = tiny_model()
    graft = Graft(model.parameters(), PAPER["adam"][0], {"name": "sgd", "lr": 0.1}, eps=eps)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    graft.step()  # zero gradient: zero magnitude and zero direction
    for p, w0 in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, w0)
    train(model, graft, 3)
    # Adam's momentum still moves it (dM != 0) but plain SGD has no direction now (dD = 0).
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    graft.step()
    for p, w0 in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, w0)
    assert all(torch.isfinite(r.ratio).all() for r in graft.last_step)


def test_parameters_without_gradients_are_left_alone():
    model = tiny_model()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    graft = Graft(model.parameters(), PAPER["adam"][0], PAPER["sgd"][0])
    train(model, graft, 3)
    assert torch.equal(frozen, before)
    assert frozen not in graft.state


def _groups(model):
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return [
        {"params": decay, "weight_decay": 1e-2},
        {"params": no_decay, "weight_decay": 0.0, "lr": 0.02},
    ]


def test_param_groups_with_their_own_hyperparameters():
    ours, theirs = tiny_model(), tiny_model()
    graft = Graft(_groups(ours), {"name": "sgd", "lr": 0.05, "momentum": 0.9}, PAPER["adam"][0])
    assert [g["magnitude"]["weight_decay"] for g in graft.param_groups] == [1e-2, 0.0]
    assert [g["direction"]["weight_decay"] for g in graft.param_groups] == [1e-2, 0.0]
    assert [g["lr"] for g in graft.param_groups] == [0.05, 0.02]

    def magnitude(params):
        return torch.optim.SGD(_groups(theirs), lr=0.05, momentum=0.9)

    def direction(params):
        groups = _groups(theirs)
        groups[1].pop("lr")  # per-group lr is M's; D keeps its own
        return torch.optim.Adam(groups, lr=1e-2)

    reference = CopyRevertGraft(theirs.parameters(), magnitude, direction)
    train(ours, graft, STEPS)
    train(theirs, reference, STEPS)
    assert_same_weights(ours, theirs, **ROUND_OFF)


def test_bad_param_group_key_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="param group key 'betas' is not a hyperparameter"):
        Graft([{"params": model.parameters(), "betas": (0.9, 0.9)}], "sgd", "adagrad")
    with pytest.raises(ValueError, match="invalid lr -1"):
        Graft([{"params": model.parameters(), "lr": -1}], "sgd", "adagrad")
    with pytest.raises(ValueError, match="invalid granularity 'tensor'; choose from: layer"):
        Graft(model.parameters(), "sgd", granularity="tensor")


def test_decoupled_weight_decay_is_applied_once_outside_the_norms():
    lr, wd = 0.05, 0.3
    ours, theirs = tiny_model(), tiny_model()
    m = {
        "name": "sgd",
        "lr": lr,
        "momentum": 0.9,
        "weight_decay": wd,
        "decoupled_weight_decay": True,
    }
    train(ours, Graft(ours.parameters(), m, PAPER["adam"][0]), STEPS)

    reference = CopyRevertGraft(theirs.parameters(), PAPER["sgd"][1], PAPER["adam"][1])

    def decay():
        with torch.no_grad():
            for p in theirs.parameters():
                p.mul_(1 - lr * wd)

    train(theirs, reference, STEPS, before_step=decay)
    assert_same_weights(ours, theirs, **ROUND_OFF)
    with pytest.raises(ValueError, match="decoupled weight decay differs"):
        Graft(
            tiny_model().parameters(),
            m,
            {"name": "adam", "weight_decay": 0.1, "decoupled_weight_decay": True},
        )


def test_generic_path_grafts_any_torch_optimizer():
    # lr 3e-3: at 1e-2 the loss reaches ~0.007 and round-off in its tiny gradients grows chaotically
    nadam = functools.partial(torch.optim.NAdam, lr=3e-3)
    ours, theirs = tiny_model(), tiny_model()
    graft = Graft(ours.parameters(), nadam, torch.optim.SGD)
    assert graft.label == "torch.optim.nadam.NAdam#torch.optim.sgd.SGD" and not graft.plain
    train(ours, graft, STEPS)
    reference = CopyRevertGraft(theirs.parameters(), nadam, torch.optim.SGD)
    train(theirs, reference, STEPS)
    assert_same_weights(ours, theirs, **ROUND_OFF)

    # ... and it checkpoints like the rest
    again = tiny_model()
    graft2 = Graft(again.parameters(), {"name": "torch.optim.NAdam", "lr": 1e-2}, "sgd")
    train(again, graft2, 5)
    buffer = io.BytesIO()
    torch.save(graft2.state_dict(), buffer)
    buffer.seek(0)
    graft2.load_state_dict(torch.load(buffer, weights_only=True))
    train(again, graft2, 5)


def test_generic_and_shipped_rule_agree():
    ours, theirs = tiny_model(), tiny_model()
    train(ours, Graft(ours.parameters(), PAPER["sgd"][0], PAPER["adam"][0]), STEPS)
    train(theirs, Graft(theirs.parameters(), PAPER["sgd"][1], PAPER["adam"][1]), STEPS)
    assert_same_weights(ours, theirs, **ROUND_OFF)


def test_lr_scheduler_drives_the_magnitude():
    ours, theirs = tiny_model(), tiny_model()
    graft = Graft(ours.parameters(), PAPER["adam"][0], PAPER["sgd"][0])
    ours_sched = torch.optim.lr_scheduler.StepLR(graft, step_size=5, gamma=0.5)
    reference = CopyRevertGraft(theirs.parameters(), PAPER["adam"][1], PAPER["sgd"][1])
    theirs_sched = torch.optim.lr_scheduler.StepLR(reference.magnitude, step_size=5, gamma=0.5)
    train(ours, graft, STEPS, scheduler=ours_sched)
    train(theirs, reference, STEPS, scheduler=theirs_sched)
    assert graft.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** (STEPS // 5))
    assert_same_weights(ours, theirs, **ROUND_OFF)


def test_bfloat16_parameters():
    ours, theirs = tiny_model(), tiny_model()
    ours.to(torch.bfloat16)
    x, y = batch()
    graft = Graft(ours.parameters(), PAPER["adam"][0], PAPER["sgd"][0])
    reference = Graft(theirs.parameters(), PAPER["adam"][0], PAPER["sgd"][0])
    for model, optimizer, inputs in ((ours, graft, x.bfloat16()), (theirs, reference, x)):
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs).float(), y).backward()
            optimizer.step()
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    assert all(r.ratio.dtype == torch.float32 for r in graft.last_step)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.float(), q, rtol=5e-2, atol=2e-2)


@pytest.mark.parametrize("clone", ["deepcopy", "pickle"])
def test_a_copied_graft_steps_like_the_original(clone):
    import copy
    import pickle

    model = tiny_model()
    graft = Graft(model.parameters(), PAPER["adam"][0], PAPER["sgd"][0], granularity="global")
    train(model, graft, 3)
    pair = (
        copy.deepcopy((model, graft))
        if clone == "deepcopy"
        else pickle.loads(pickle.dumps((model, graft)))
    )
    twin_model, twin = pair
    assert (twin.label, twin.granularity, twin.plain) == ("adam#sgd", "global", False)
    train(model, graft, 3)
    train(twin_model, twin, 3)
    assert_same_weights(model, twin_model, rtol=0, atol=0)

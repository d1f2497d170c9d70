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
from graftbench.optim import graft as graft_module
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
# In float64 the same 30 steps agree to ~4e-15; a ratio 0.1% off moves weights by ~1e-3.
FLOAT64 = dict(rtol=1e-12, atol=1e-12)
PAIRS = list(itertools.product(PAPER, PAPER))


@pytest.fixture(params=["whole", "per_tensor"])
def cache_blocks(request, monkeypatch):
    """On CPU a step runs over blocks of tensors: the tiny model fits in one block ("whole");
    "per_tensor" makes every tensor a block of its own, as ResNet-50's large tensors are."""
    if request.param == "per_tensor":
        monkeypatch.setattr(graft_module, "_CACHE_BLOCK_BYTES", 1)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("granularity", ["layer", "global"])
@pytest.mark.parametrize(("m", "d"), PAIRS)
def test_graft_matches_copy_and_revert(m, d, granularity, dtype, cache_blocks):
    ours, theirs = tiny_model().to(dtype), tiny_model().to(dtype)
    graft = Graft(ours.parameters(), PAPER[m][0], PAPER[d][0], granularity=granularity)
    assert graft.plain == (m == d)
    reference = CopyRevertGraft(
        theirs.parameters(), PAPER[m][1], PAPER[d][1], granularity=granularity
    )
    train(ours, graft, STEPS)
    train(theirs, reference, STEPS)
    assert_same_weights(ours, theirs, **(FLOAT64 if dtype == torch.float64 else ROUND_OFF))
    if m != d:
        assert all(r.ratio.dtype == dtype for r in graft.last_step)


@pytest.mark.parametrize("granularity", ["layer", "global"])
@pytest.mark.parametrize(("m", "d"), PAIRS)
def test_graft_in_bfloat16_steps_as_defined(m, d, granularity):
    """bf16 weights. One step: what copy and revert computes in float64 from the same bf16 weights
    and gradients, to the resolution of bf16 operands (2^-7 of |w| + |step|: the children's bf16
    state rounds their steps by ~2^-9). Then a few more steps in bf16. (A bf16 trajectory cannot
    be compared with a float32 one: steps below half a bf16 ulp of a weight vanish.)"""
    model = tiny_model().bfloat16()
    train(model, torch.optim.SGD(model.parameters(), lr=0.0), 1)  # bf16 gradients
    before = [p.detach().double() for p in model.parameters()]
    exact = [torch.nn.Parameter(w.clone()) for w in before]
    for e, p in zip(exact, model.parameters(), strict=True):
        e.grad = p.grad.double()
    CopyRevertGraft(exact, PAPER[m][1], PAPER[d][1], granularity=granularity).step()
    graft = Graft(model.parameters(), PAPER[m][0], PAPER[d][0], granularity=granularity)
    graft.step()
    for p, e, w in zip(model.parameters(), exact, before, strict=True):
        resolution = 2**-7 * (w.abs() + (e - w).abs())
        assert ((p.double() - e).abs() <= resolution).all()

    losses = train(model, graft, 5)  # bf16 state and weights over several steps
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    if m != d:
        assert all(r.ratio.dtype == torch.float32 for r in graft.last_step)
    assert losses[-1] < losses[0]


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


def test_norms_of_large_half_precision_tensors_are_taken_in_slices():
    from graftbench.optim.rules import Update

    generator = torch.Generator().manual_seed(0)
    big = torch.randn(3 * graft_module._NORM_SLICE + 5, generator=generator).bfloat16()
    tensors = [big, torch.randn(7, 3, generator=generator).bfloat16(), big[::2]]
    norms = graft_module._norms(Update(tensors, -2.0))
    assert norms.dtype == torch.float32
    expected = torch.stack([2 * t.double().norm() for t in tensors]).float()
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=0)  # float32 sums of ~1e6 squares


def test_plain_shortcut_records_the_learning_rate_ratio():
    """M#M' with the same rule apart from lr steps like M and records lr_M / lr_D, which is what
    the norms would give."""
    shortcut_model, measured_model = tiny_model(), tiny_model()
    shortcut = Graft(shortcut_model.named_parameters(), {"name": "adam", "lr": 4e-3}, "adam")
    assert shortcut.plain
    train(shortcut_model, shortcut, 3)
    correction = shortcut.correction()
    assert set(correction) == {name for name, _ in shortcut_model.named_parameters()}
    for value in correction.values():
        assert value == {"magnitude_norm": None, "direction_norm": None, "ratio": 4.0}
    summary = shortcut.correction_summary()
    assert summary == {"ratio_mean": 4.0, "ratio_min": 4.0, "ratio_max": 4.0}
    # the same ratio, measured: Adam with amsgrad=False and True take the same first step
    measured = Graft(
        measured_model.named_parameters(),
        {"name": "adam", "lr": 4e-3},
        {"name": "adam", "amsgrad": True},
    )
    assert not measured.plain
    train(measured_model, measured, 1)
    for name, value in measured.correction().items():
        assert value["ratio"] == pytest.approx(4.0, rel=1e-6), name


def test_plain_shortcut_is_not_taken_for_a_step_not_proportional_to_lr():
    model = tiny_model()
    adafactor = Graft(model.parameters(), {"name": "adafactor", "lr": 0.02}, "adafactor")
    assert not adafactor.plain
    train(model, adafactor, 2)
    assert all(isinstance(r.ratio, torch.Tensor) for r in adafactor.last_step)
    assert Graft(model.parameters(), "adafactor", "adafactor").plain
    assert not Graft(model.parameters(), "sgd", {"name": "sgd", "lr": 0.0}).plain


def test_fused_or_foreach_is_chosen_once_at_construction(monkeypatch):

    model = tiny_model()
    assert Graft(model.parameters(), "adam", "sgd").fused
    assert not Graft(model.parameters(), "adam", "sgd", fused=False).fused
    assert not Graft(model.parameters(), "adam", "sgd", foreach=True).fused
    with pytest.raises(ValueError, match="foreach=False"):
        Graft(model.parameters(), "adam", foreach=False)
    monkeypatch.setattr(graft_module, "fused_kernel_works", lambda kernel, device: False)
    assert not Graft(model.parameters(), "adam").fused
    with pytest.raises(ValueError, match="fused=True: torch's fused adam kernels do not work"):
        Graft(model.parameters(), "adam", fused=True)


def test_a_changed_private_kernel_falls_back_to_foreach_with_a_warning(monkeypatch):
    from graftbench.optim import rules

    def renamed_argument(*args, **kwargs):
        raise TypeError("_fused_adam_() got an unexpected keyword argument 'lr'")

    monkeypatch.setattr(torch, "_fused_adam_", renamed_argument)
    rules.fused_kernel_works.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="torch._fused_adam_ on cpu failed"):
            graft = Graft(tiny_model().parameters(), "adam", "sgd")
        assert not graft.fused
        train(tiny_model(), graft, 1)
    finally:
        rules.fused_kernel_works.cache_clear()


def test_correction_is_recorded_on_the_device_and_summarised(cache_blocks):
    model = tiny_model()
    graft = Graft(model.named_parameters(), PAPER["adam"][0], PAPER["sgd"][0])
    train(model, graft, 3)
    assert all(isinstance(r.ratio, torch.Tensor) for r in graft.last_step)
    blocks = 1 if cache_blocks == "whole" else len(list(model.parameters()))
    assert len(graft.last_step) == blocks
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

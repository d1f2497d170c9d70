"""Schedules against their formulas, and through LambdaLR on a Graft."""

from __future__ import annotations

import io
import math

import pytest
import torch

from graftbench.optim import Graft
from graftbench.optim.schedules import make_schedule, make_scheduler


def test_constant_with_warmup():
    s = make_schedule({"name": "constant", "warmup_steps": 4})
    assert [s(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert make_schedule({"name": "constant"})(0) == 1.0


@pytest.mark.parametrize("staircase", [True, False])
def test_warmup_then_stepwise_exponential_decay(staircase):
    s = make_schedule(
        {
            "name": "warmup_exp_decay",
            "warmup_steps": 10,
            "decay_rate": 0.5,
            "decay_steps": 4,
            "staircase": staircase,
        }
    )
    for step in range(40):
        if step < 10:
            expected = (step + 1) / 10
        else:
            exponent = (step - 10) / 4
            expected = 0.5 ** (math.floor(exponent) if staircase else exponent)
        assert s(step) == pytest.approx(expected), step
    assert s(13) == pytest.approx(1.0 if staircase else 0.5**0.75)
    assert s(14) == pytest.approx(0.5)


def test_warmup_cosine():
    s = make_schedule(
        {"name": "warmup_cosine", "warmup_steps": 5, "min_factor": 0.1}, total_steps=105
    )
    assert s(4) == 1.0 and s(5) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(105) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)


def test_warmup_inverse_sqrt_is_the_transformer_schedule_at_peak_one():
    w, d_model = 4000, 512
    s = make_schedule({"name": "warmup_rsqrt", "warmup_steps": w})
    for step in [0, 100, 3998, 3999, 4000, 10_000, 100_000]:
        n = step + 1
        vaswani = d_model**-0.5 * min(n**-0.5, n * w**-1.5)
        assert s(step) == pytest.approx(vaswani / d_model**-0.5 / w**-0.5)
    assert s(w - 1) == 1.0


def test_piecewise_step_in_epochs_is_torchvisions_v1_recipe():
    s = make_schedule(
        {"name": "piecewise_step", "milestone_epochs": [30, 60, 80], "gamma": 0.1},
        steps_per_epoch=10,
    )
    assert s.milestones == (300, 600, 800)
    assert [s(i) for i in (0, 299, 300, 599, 600, 800)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.001]
    )


def test_epochs_are_converted_to_steps():
    s = make_schedule(
        {"name": "warmup_exp_decay", "warmup_epochs": 5, "decay_epochs": 2.5, "decay_rate": 0.97},
        steps_per_epoch=100,
    )
    assert (s.warmup_steps, s.decay_steps) == (500, 250)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "linear"}, "unknown schedule 'linear'; choose from: constant, piecewise_step"),
        ({"name": "constant", "warmup": 3}, "unknown field 'warmup'; valid: warmup_steps"),
        ({"name": "warmup_cosine"}, "schedule warmup_cosine: .*total_steps"),
        ({"name": "warmup_exp_decay", "decay_steps": 0}, "step counts must be positive"),
    ],
)
def test_bad_schedules(spec, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(spec)


def test_lambda_lr_drives_grafts_magnitude_and_checkpoints():
    param = torch.nn.Parameter(torch.ones(3))
    graft = Graft([param], {"name": "adam", "lr": 0.1}, "sgd")
    schedule = make_schedule(
        {"name": "warmup_exp_decay", "warmup_steps": 2, "decay_rate": 0.5, "decay_steps": 1}
    )
    scheduler = make_scheduler(graft, schedule)
    lrs = []
    for _ in range(5):
        lrs.append(graft.param_groups[0]["lr"])
        param.grad = torch.ones(3)
        graft.step()
        scheduler.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.05, 0.025])
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_scheduler(Graft([param], {"name": "adam", "lr": 0.1}, "sgd"), schedule)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.last_epoch == 5

"""Schedule transfer: the definition c = ratio / schedule, the fits, the file, and D trained alone
with the transferred per-layer learning rates reproducing the grafted run."""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest
import torch

from graftbench import rundir, transfer
from graftbench.errors import UserError
from graftbench.optim import Graft
from graftbench.optim.schedules import make_schedule
from graftbench.transfer.fit import Series, corrections, fit_piecewise, fit_static, interpolate

STEPS = 24
SGD_M = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
SGD_D = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
WARMUP_COSINE = {"name": "warmup_cosine", "warmup_steps": 4, "min_factor": 0.0}


# -- helpers ------------------------------------------------------------------------------------
def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 5, generator=generator), torch.randint(0, 3, (16,), generator=generator))
        for _ in range(steps)
    ]


def train(model, optimizer, scheduler, data, record=None) -> None:
    """The engine's step order: backward, step, scheduler, zero_grad; ``record(k)`` after step k."""
    for k, (x, y) in enumerate(data, start=1):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if record is not None:
            record(k)


def write_run(
    path,
    records,
    *,
    magnitude=SGD_M,
    direction=SGD_D,
    schedule=WARMUP_COSINE,
    steps_per_epoch=STEPS,
    epochs=1,
    status="done",
    run_json_extra=None,
):
    """A run directory as the engine leaves it: config.yaml, run.json, metrics.jsonl."""
    path.mkdir(parents=True)
    cfg = {
        "seed": 0,
        "magnitude": magnitude,
        "direction": direction,
        "schedule": schedule,
        "graft": {"granularity": "layer"},
        "trainer": {"epochs": epochs, "max_steps": None, "layer_log_every_steps": 1},
    }
    rundir.write_yaml(path / rundir.CONFIG, cfg)
    rundir.write_json(
        path / rundir.RUN,
        {
            "run_id": path.name,
            "label": f"{magnitude['name']}#{direction['name']}",
            "status": status,
            "total_steps": epochs * steps_per_epoch,
            **(run_json_extra or {}),
        },
    )
    rundir.append_jsonl(path / rundir.METRICS, {"kind": "train", "step": 1, "loss": 1.0})
    for record in records:
        rundir.append_jsonl(path / rundir.METRICS, {"kind": "layers", **record})
    return path


def definition_records(names, schedule, correction, steps=STEPS, every=1):
    """Layer records whose ratio is exactly ``schedule(k - 1) * correction(name, fraction)``."""
    return [
        {
            "step": k,
            "ratio": {n: schedule(k - 1) * correction(n, (k - 1) / steps) for n in names},
        }
        for k in range(every, steps + 1, every)
    ]


def named(model):
    return [n for n, _ in model.named_parameters()]


def grafted_records(direction) -> tuple[list[dict], torch.nn.Module]:
    """Train ``Graft(sgd lr 0.1, direction)`` like the engine, recording every step's ratios."""
    model = tiny_model()
    schedule = make_schedule(WARMUP_COSINE, total_steps=STEPS)
    optimizer = Graft(model.named_parameters(), SGD_M, direction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    records = []

    def record(k):
        correction = optimizer.correction()
        if not correction:
            raise NoRatioRecorded(f"{optimizer!r} records no ratio")
        records.append({"step": k, "ratio": {n: v["ratio"] for n, v in correction.items()}})

    train(model, optimizer, scheduler, batches(STEPS), record)
    return records, model


class NoRatioRecorded(Exception):
    pass


def transferred_sgd(transfer_: transfer.Transfer, data, lr=None) -> torch.nn.Module:
    """D alone (sgd, momentum 0.9) from the same initial weights, with the transferred lrs."""
    model = tiny_model()
    schedule = make_schedule(WARMUP_COSINE, total_steps=STEPS)
    groups, factors = transfer.param_groups(
        model.named_parameters(), transfer_, schedule, STEPS, lr=lr
    )
    optimizer = Graft(groups, SGD_D)  # the shipped rule, as the engine would run D
    assert optimizer.plain  # D alone: no M, no M state
    train(model, optimizer, transfer.make_scheduler(optimizer, factors), data)
    return model


def assert_one_line_error(call, *words):
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and message
    for word in words:
        assert word in message, message
    return message


# -- exactness ----------------------------------------------------------------------------------
def test_lr_ratio_by_definition_transfers_as_2_and_sgd_with_it_is_sgd_at_the_grafted_lr(tmp_path):
    schedule = make_schedule(WARMUP_COSINE, total_steps=STEPS)
    names = named(tiny_model())
    records = definition_records(names, schedule, lambda n, f: 0.1 / 0.05)
    run = write_run(tmp_path / "sgd+sgd-s0-deadbeef", records)
    t = transfer.from_run(run, "static")
    assert list(t.layers) == names
    for fit in t.layers.values():
        assert fit.values == pytest.approx((2.0,), rel=1e-14)
        assert fit.points == STEPS and fit.quality["rel_rmse"] < 1e-14
    # the grafted step is 0.1 · schedule · dD-direction: plain SGD at lr 0.1 under the schedule
    data = batches(STEPS)
    reference = tiny_model()
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    train(reference, sgd, torch.optim.lr_scheduler.LambdaLR(sgd, schedule), data)
    transferred = transferred_sgd(t, data)
    for a, b in zip(reference.parameters(), transferred.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "direction",
    [
        pytest.param(
            functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9), id="generic-torch-sgd"
        ),
        pytest.param(SGD_D, id="shipped-sgd"),
    ],
)
def test_grafted_sgd_pair_transfers_as_2_and_sgd_reproduces_its_weights(tmp_path, direction):
    records, grafted = grafted_records(direction)
    spec = (
        SGD_D if isinstance(direction, dict) else {"name": "torch.optim.SGD", **direction.keywords}
    )
    run = write_run(tmp_path / "sgd+sgd-s0-0123abcd", records, direction=spec)
    t = transfer.from_run(run, "static")
    for name, fit in t.layers.items():
        assert fit.values[0] == pytest.approx(2.0, rel=1e-5), name
    transferred = transferred_sgd(t, batches(STEPS), lr=0.05)
    for (name, a), b in zip(grafted.named_parameters(), transferred.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# -- fits ---------------------------------------------------------------------------------------
def test_piecewise_fit_recovers_a_linearly_growing_correction_under_a_warmup(tmp_path):
    steps = 400
    spec = {"name": "warmup_cosine", "warmup_steps": 100, "min_factor": 0.0}
    schedule = make_schedule(spec, total_steps=steps)

    def correction(name, fraction):
        return 1 + 2 * fraction if name == "grows" else 3.0

    records = definition_records(["grows", "flat"], schedule, correction, steps=steps, every=10)
    run = write_run(tmp_path / "adagrad+sgd-s0-00000001", records,
                    magnitude={"name": "adagrad", "lr": 0.01}, schedule=spec,
                    steps_per_epoch=steps)  # fmt: skip
    t = transfer.from_run(run, "piecewise", knots=4)
    grows, flat = t.layers["grows"], t.layers["flat"]
    assert len(grows.knots) == 4 and grows.knots[0] == pytest.approx(9 / steps)
    assert grows.knots[-1] == pytest.approx((steps - 1) / steps)
    assert grows.values == pytest.approx([1 + 2 * k for k in grows.knots], rel=1e-9)
    assert grows.quality["r2"] == pytest.approx(1.0, abs=1e-9)
    assert grows.quality["rel_rmse"] < 1e-9
    assert flat.values == pytest.approx([3.0] * 4, rel=1e-9) and flat.quality["r2"] is None
    assert t.fit["dropped_steps"] == 0 and t.fit["steps"] == 40
    # the static fit of the same layer: the median over training
    static = transfer.from_run(run, "static").layers["grows"]
    assert static.values[0] == pytest.approx(np.median([1 + 2 * (k - 1) / steps
                                                        for k in range(10, 401, 10)]))  # fmt: skip


def test_piecewise_fit_is_robust_to_noise_and_reports_its_quality():
    rng = np.random.default_rng(0)
    fractions = np.linspace(0, 1, 200)
    truth = np.interp(fractions, [0, 0.5, 1], [1.0, 4.0, 2.0])
    noisy = truth * np.exp(rng.normal(0, 0.05, fractions.size))
    fit = fit_piecewise(Series(fractions, noisy), knots=3)
    assert fit.values == pytest.approx([1.0, 4.0, 2.0], rel=0.03)
    assert 0.9 < fit.quality["r2"] < 1 and 0.03 < fit.quality["rel_rmse"] < 0.07


def test_static_fit_is_the_median_not_moved_by_a_transient():
    values = np.array([1e4, 2.0, 2.1, 1.9, 2.0, 2.05, 2.0])  # AdaGrad's empty accumulator at step 1
    fit = fit_static(Series(np.linspace(0, 1, values.size), values))
    assert fit.values == (2.0,) and fit.knots == (0.0,)


def test_zero_schedule_factors_do_not_enter_the_fit_and_bad_ratios_are_dropped():
    def schedule(step):  # off for the first 4 steps, then 1e-7 (below the threshold), then 1
        return 0.0 if step < 4 else 1e-7 if step < 6 else 1.0

    records = [{"step": k, "ratio": {"w": 0.0 if k <= 4 else 3.0, "b": 1.5}} for k in range(1, 11)]
    records[-1]["ratio"]["b"] = float("nan")
    records[-2]["ratio"]["b"] = 0.0  # ||dD|| = 0: the tensor did not move
    samples = corrections(records, schedule, total_steps=10)
    assert samples.dropped_steps == 6 and samples.steps == 4
    assert samples.layers["w"].values.tolist() == [3.0] * 4
    assert samples.layers["b"].values.tolist() == [1.5, 1.5] and samples.layers["b"].dropped == 2
    assert samples.layers["w"].fractions.tolist() == [0.6, 0.7, 0.8, 0.9]


def test_interpolate_is_numpy_interp_in_plain_floats():
    knots, values = (0.1, 0.4, 0.9), (2.0, 5.0, 1.0)
    for x in np.linspace(-0.5, 1.5, 41):
        got = interpolate(knots, values, float(x))
        assert type(got) is float and got == pytest.approx(np.interp(x, knots, values), abs=1e-12)
    assert interpolate((0.0,), (7.0,), 0.3) == 7.0


# -- the file -----------------------------------------------------------------------------------
def test_file_is_deterministic_versioned_and_round_trips(tmp_path):
    schedule = make_schedule(WARMUP_COSINE, total_steps=STEPS)
    records = definition_records(["a", "b"], schedule, lambda n, f: 2 + f)
    run = write_run(tmp_path / "adam+sgd-s0-1a2b3c4d", records, magnitude={"name": "adam"})
    made, path = transfer.distil(run, "piecewise")
    assert path == run / "transfer-piecewise.json"
    first = path.read_bytes()
    again, other = transfer.distil(run, "piecewise", out=tmp_path / "elsewhere" / "t.json")
    assert other.read_bytes() == first  # no paths, no times: same run, same bytes
    data = json.loads(first)
    assert data["format"] == "graftbench-transfer" and data["schema_version"] == 1
    assert data["kind"] == "piecewise" and "ratio" in data["definition"]
    assert data["source"]["run_id"] == "adam+sgd-s0-1a2b3c4d"
    assert len(data["source"]["config_hash"]) == 8 and data["source"]["total_steps"] == STEPS
    assert [layer["name"] for layer in data["layers"]] == ["a", "b"]
    loaded = transfer.read(path)
    assert loaded == made and loaded.content_hash == made.content_hash == again.content_hash
    static, _ = transfer.distil(run, "static")
    assert static.content_hash != made.content_hash
    assert set(json.loads((run / "transfer-static.json").read_text())["layers"][0]) == {
        "name", "multiplier", "points", "quality"
    }  # fmt: skip


def test_a_real_grafted_run_transfers_onto_its_own_model(tmp_path):
    from graftbench import config
    from graftbench.models import build_model
    from graftbench.train import runner
    from tests.train_helpers import QUICK, merged

    overrides = ["magnitude=adagrad", "direction=sgd", "trainer.layer_log_every_steps=2"]
    cfg = config.compose(merged(QUICK, f"results_dir={tmp_path}", *overrides))
    run = runner.prepare_run(cfg, overrides)
    assert runner.execute(run, cfg) == 0
    for kind in transfer.KINDS:
        t, path = transfer.distil(run, kind)
        assert path.parent == run and t.source["config_hash"] == run.name.rsplit("-", 1)[1]
        assert t.fit["steps"] == 11 and t.source["total_steps"] == 22
        assert all(v > 0 for fit in t.layers.values() for v in fit.values)
    with torch.device("meta"):
        model = build_model(cfg.model)
    schedule = make_schedule(t.source["schedule"], steps_per_epoch=22, total_steps=22)
    groups, factors = transfer.param_groups(model.named_parameters(), t, schedule, 22)
    assert len(groups) == len(factors) == len(list(model.parameters())) == len(t.layers)
    assert all(g["lr"] == cfg.direction.lr for g in groups)


# -- the mechanism ------------------------------------------------------------------------------
def static_transfer(names, multiplier=2.0) -> transfer.Transfer:
    source = {
        "run_id": "adagrad+sgd-s0-00000000",
        "config_hash": "00000000",
        "label": "adagrad#sgd",
        "direction": SGD_D,
        "schedule": WARMUP_COSINE,
    }
    layers = {n: transfer.Fit((0.0,), (multiplier * (i + 1),), 1) for i, n in enumerate(names)}
    return transfer.Transfer("static", layers, source, {})


def test_param_groups_keep_group_options_and_set_each_layers_lr():
    model = tiny_model()
    params = list(model.named_parameters())
    t = static_transfer(named(model))
    schedule = make_schedule(WARMUP_COSINE, total_steps=STEPS)
    user_groups = [
        {"params": [p for p in params if p[1].dim() > 1]},
        {"params": [p for p in params if p[1].dim() <= 1], "weight_decay": 0.0},
    ]
    groups, factors = transfer.param_groups(user_groups, t, schedule, STEPS)
    optimizer = Graft(groups, {**SGD_D, "weight_decay": 1e-4})
    scheduler = transfer.make_scheduler(optimizer, factors)
    by_name = {g["param_names"][0]: g for g in optimizer.param_groups}
    assert by_name["0.bias"]["magnitude"]["weight_decay"] == 0.0
    assert by_name["0.weight"]["magnitude"]["weight_decay"] == 1e-4
    for step in range(3):
        for group, factor in zip(optimizer.param_groups, factors, strict=True):
            layer = list(t.layers).index(group["param_names"][0])
            expected = 0.05 * schedule(step) * 2.0 * (layer + 1)
            assert group["lr"] == pytest.approx(expected, rel=1e-15)
            assert factor(step) == pytest.approx(schedule(step) * 2.0 * (layer + 1))
        optimizer.step()
        scheduler.step()


def test_scheduler_state_loads_with_weights_only_and_resumes_bit_identically():
    data = batches(8)
    t = static_transfer(named(tiny_model()))
    piecewise = transfer.Transfer(
        "piecewise",
        {n: transfer.Fit((0.0, 0.5, 1.0), (1.0, 3.0, 2.0), 3) for n in t.layers},
        t.source,
        {},
    )
    schedule = make_schedule({"name": "piecewise_step", "milestones": [5]}, total_steps=8)

    def setup():
        model = tiny_model()
        groups, factors = transfer.param_groups(model.named_parameters(), piecewise, schedule, 8)
        optimizer = Graft(groups, SGD_D)
        return model, optimizer, transfer.make_scheduler(optimizer, factors)

    straight = setup()
    train(*straight, data)
    first = setup()
    train(*first, data[:3])
    buffer = io.BytesIO()
    torch.save({"optimizer": first[1].state_dict(), "scheduler": first[2].state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = setup()
    resumed[0].load_state_dict(first[0].state_dict())
    resumed[1].load_state_dict(state["optimizer"])
    resumed[2].load_state_dict(state["scheduler"])
    train(*resumed, data[3:])
    for a, b in zip(straight[0].parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(a, b)


# -- errors: one line, nothing written ----------------------------------------------------------
def layer_records(names=("w",), steps=STEPS):
    schedule = make_schedule(WARMUP_COSINE, total_steps=steps)
    return definition_records(list(names), schedule, lambda n, f: 2.0, steps=steps)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("no layer records", ["no per-layer ratio records", "layer_log_every_steps"]),
        ("failed", ["failed", "not done"]),
        ("running", ["running", "not done"]),
        ("plain", ["plain optimizer sgd", "M#M"]),
        ("nan ratios", ["layer 'w'", "NaN"]),
        ("not a run", ["not a run directory"]),
        ("max_steps without steps_per_epoch", ["steps_per_epoch"]),
    ],
)
def test_bad_sources_are_one_line_errors_and_write_nothing(tmp_path, case, words):
    run = tmp_path / "run"
    records = layer_records()
    if case == "no layer records":
        write_run(run, [])
    elif case in ("failed", "running"):
        write_run(run, records, status=case)
    elif case == "plain":
        write_run(run, [], direction=dict(SGD_M))  # a distinct dict: YAML writes no alias
    elif case == "nan ratios":
        write_run(run, [{"step": r["step"], "ratio": {"w": float("nan")}} for r in records])
    elif case == "not a run":
        run.mkdir()
    else:
        write_run(run, records)
        cfg = rundir.read_yaml(run / rundir.CONFIG)
        cfg["trainer"]["max_steps"] = 10
        rundir.write_yaml(
            run / rundir.CONFIG, {k: v for k, v in cfg.items() if k != "schema_version"}
        )
    before = sorted(p.name for p in run.iterdir())
    for kind in transfer.KINDS:
        assert_one_line_error(lambda kind=kind: transfer.distil(run, kind), *words)
        assert_one_line_error(
            lambda kind=kind: transfer.distil(run, kind, out=tmp_path / "out.json"), *words
        )
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (tmp_path / "out.json").exists()


def test_bad_fit_settings_are_one_line_errors(tmp_path):
    run = write_run(tmp_path / "run", layer_records()[:3])
    assert_one_line_error(lambda: transfer.from_run(run, "spline"), "'spline'", "static, piecewise")
    assert_one_line_error(lambda: transfer.from_run(run, "piecewise", knots=1), "at least 2 knots")
    assert_one_line_error(
        lambda: transfer.from_run(run, "piecewise", knots=4), "layer 'w'", "fewer knots"
    )
    samples = transfer.read_source(run).samples  # what a plot draws: c per layer and step
    assert samples.layers["w"].values == pytest.approx([2.0] * 3)


def test_steps_per_epoch_from_run_json_rebuilds_a_cut_short_schedule(tmp_path):
    records = layer_records(steps=2 * STEPS)[:STEPS]
    run = write_run(tmp_path / "run", records, epochs=2, run_json_extra={"steps_per_epoch": STEPS})
    t = transfer.from_run(run, "static")  # epochs=2 x 24 steps: the cosine of 48 steps
    assert t.source["total_steps"] == 2 * STEPS
    assert t.layers["w"].values[0] == pytest.approx(2.0, rel=1e-14)


def test_layer_names_that_do_not_match_the_model_are_one_line_errors():
    model = tiny_model()
    schedule = make_schedule(WARMUP_COSINE, total_steps=STEPS)
    missing = static_transfer(named(model)[:-1])
    extra = static_transfer([*named(model), "head.weight"])
    renamed = static_transfer(["net." + n for n in named(model)])
    for t, words in [
        (missing, ["'2.bias' of the model is not in", "model: 4 layers, transfer: 3"]),
        (extra, ["'head.weight' of the transfer", "is not in the model"]),
        (renamed, ["'0.weight' of the model"]),
    ]:
        assert_one_line_error(
            lambda t=t: transfer.param_groups(model.named_parameters(), t, schedule, STEPS), *words
        )


def test_training_another_optimizer_than_the_source_direction_is_an_error():
    t = static_transfer(["w"])
    assert_one_line_error(lambda: transfer.check_direction(t, {"name": "adam"}), "sgd", "adam")
    assert_one_line_error(
        lambda: transfer.check_direction(t, {**SGD_D, "momentum": 0.0}), "momentum=0.9"
    )
    transfer.check_direction(t, {**SGD_D, "lr": 0.3})  # the learning rate may differ


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{", ["invalid JSON"]),
        ("[]", ["not a JSON object"]),
        ('{"schema_version": 1}', ["not a transfer file"]),
        (None, ["schema_version 2 is not supported", "reads 1"]),
        ("kind", ["kind 'spline'"]),
        ("negative", ["multiplier", "non-negative"]),
        ("duplicate", ["appears twice"]),
        ("knots", ["knots must increase"]),
    ],
)
def test_reading_a_bad_transfer_file_is_a_one_line_error(tmp_path, content, words):
    good = static_transfer(["a", "b"]).to_json()
    path = tmp_path / "t.json"
    if content is None:
        content = json.dumps({**good, "schema_version": 2})
    elif content == "kind":
        content = json.dumps({**good, "kind": "spline"})
    elif content == "negative":
        content = json.dumps({**good, "layers": [{"name": "a", "multiplier": -1.0}]})
    elif content == "duplicate":
        content = json.dumps({**good, "layers": [good["layers"][0]] * 2})
    elif content == "knots":
        bad = {"name": "a", "knots": [0.5, 0.1], "values": [1.0, 2.0]}
        content = json.dumps({**good, "kind": "piecewise", "layers": [bad]})
    path.write_text(content)
    assert_one_line_error(lambda: transfer.read(path), str(path), *words)
    assert_one_line_error(lambda: transfer.read(tmp_path / "absent.json"), "no such transfer file")


def test_writing_never_replaces_a_file_that_is_not_a_transfer(tmp_path):
    records = layer_records()
    run = write_run(tmp_path / "run", records)
    before = (run / rundir.RUN).read_bytes()
    assert_one_line_error(
        lambda: transfer.distil(run, "static", out=run / rundir.RUN), "refusing to overwrite"
    )
    assert (run / rundir.RUN).read_bytes() == before
    assert_one_line_error(lambda: transfer.distil(run, "static", out=tmp_path), "directory")
    transfer.distil(run, "static")
    transfer.distil(run, "static")  # an older transfer file is replaced

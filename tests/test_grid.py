"""Grid expansion: the product of the axes, each point exactly what `graftbench train` with the
same overrides would run."""

from __future__ import annotations

import pytest

from graftbench import config
from graftbench.errors import UserError
from graftbench.sweep.grid import expand


def assert_points_match_compose(grid, sample=None):
    runs = grid.runs if sample is None else grid.runs[::sample]
    for run in runs:
        composed = config.compose(list(run.overrides))
        assert config.plain(composed) == run.config, run.overrides
        assert config.run_id(composed) == run.run_id


def test_demo_grid_is_the_papers_3x3_with_seeds():
    grid = expand(["experiment=demo"])
    assert grid.name == "demo"
    assert list(dict.fromkeys((r.magnitude, r.direction) for r in grid.runs)) == [
        (m, d) for m in ("sgd", "adam", "adagrad") for d in ("sgd", "adam", "adagrad")
    ]
    assert {r.seed for r in grid.runs} == {0, 1, 2, 3, 4}
    assert len(grid.runs) == 45
    assert any(r.run_id.startswith("sgd+adam-s0-") for r in grid.runs)
    assert_points_match_compose(grid, sample=5)


def test_comma_lists_expand_to_the_cartesian_product():
    grid = expand(
        ["magnitude=sgd,adam", "direction=adagrad,adam", "seed=0,1,2", "schedule.warmup_epochs=2,5"]
    )
    assert len(grid.runs) == 2 * 2 * 3 * 2
    assert len({r.run_id for r in grid.runs}) == len(grid.runs)
    assert grid.runs[0].point == {
        "magnitude": "sgd",
        "direction": "adagrad",
        "seed": 0,
        "schedule.warmup_epochs": 2,
    }
    assert_points_match_compose(grid, sample=5)


def test_plain_override_pins_a_key_the_config_sweeps():
    grid = expand(["experiment=demo", "magnitude=adam", "seed=7"])
    assert [r.direction for r in grid.runs] == ["sgd", "adam", "adagrad"]
    assert {(r.magnitude, r.seed) for r in grid.runs} == {("adam", 7)}


def test_swept_interpolation_source_is_resolved_per_point():
    # peak_lr.sgd feeds the sgd schema's lr through an interpolation
    grid = expand(["magnitude=sgd", "direction=sgd", "peak_lr.sgd=0.5,0.6", "seed=0"])
    assert [r.config["magnitude"]["lr"] for r in grid.runs] == [0.5, 0.6]
    assert_points_match_compose(grid)


def test_plain_direction_follows_a_swept_magnitude():
    grid = expand(["direction=null", "magnitude=adam", "magnitude.lr=0.3,0.4", "seed=0"])
    assert [r.config["direction"]["lr"] for r in grid.runs] == [0.3, 0.4]
    assert_points_match_compose(grid)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.epoch=1,2"], "unknown key 'trainer.epoch'; did you mean 'epochs'"),
        (["magnitude=sgd,adm"], "unknown optimizer for magnitude 'adm'"),
        (["trainer.epochs=1,x"], "trainer.epochs: expected an integer, got 'x'"),
        (["sweep.grid.seed=[]"], "the sweep axis 'seed' has no values"),
        (["magnitude.lr=0.1,nan"], "magnitude.lr: nan is not a finite number"),
        (["peak_lr.lion=0.1,0.2"], "peak_lr.lion is set but this run uses sgd"),
        (["trainer.epochs=1,2", "trainer.epochs=3"], "'trainer.epochs' is given twice"),
        (["seed=1,1"], "duplicate points"),
    ],
)
def test_bad_grids_are_refused_before_anything_runs(overrides, message):
    with pytest.raises(UserError, match=message):
        expand(overrides)


def test_estimate_totals_device_hours():
    grid = expand(["experiment=demo", "sweep.device_hours_per_run=2.5"])
    assert grid.estimate_device_hours == pytest.approx(len(grid.runs) * 2.5) == 45 * 2.5


def test_execution_keys_do_not_change_run_ids_and_travel_apart():
    grid = expand(["magnitude=sgd,adam", "trainer.log_every_steps=3", "data.workers=1"])
    plain = expand(["magnitude=sgd,adam"])
    assert [r.run_id for r in grid.runs] == [r.run_id for r in plain.runs]
    assert all(r.execution["trainer"]["log_every_steps"] == 3 for r in grid.runs)
    assert all("log_every_steps" not in r.identity["trainer"] for r in grid.runs)
    assert_points_match_compose(grid)


def test_an_axis_over_an_execution_key_is_refused_as_duplicate_runs():
    with pytest.raises(UserError, match="duplicate points"):
        expand(["trainer.log_every_steps=1,2"])

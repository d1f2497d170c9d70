"""Smoke test of scripts/bench_optim.py on small shapes: every variant runs, figures come out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench_optim.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_optim", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


SHAPES = [torch.Size([32, 16, 3, 3]), torch.Size([32]), torch.Size([10, 32])]


@pytest.mark.parametrize("torch_impl", ["foreach", "fused"])
def test_times_memory_and_floors_for_a_pair(bench, torch_impl, capsys):
    setup = bench.Setup("cpu", torch.float32, torch_impl)
    samples = bench.time_pair("adam#sgd", SHAPES, setup, repeats=3)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "bM": 3, "bD": 3, "c": 3}
    memory = bench.measure_memory(["adam#sgd"], SHAPES, setup)
    assert set(memory["adam#sgd"]) == {"mem_a", "mem_b", "mem_c"}
    results = {"adam#sgd": {**bench.summarise(samples), **memory["adam#sgd"]}}
    bench.print_table(results)
    checks = bench.check_floors(results)
    assert [c["figure"] for c in checks] == ["a/b", "a/c", "mem_a"]
    out = capsys.readouterr().out
    assert "adam#sgd" in out and ("PASS" in out or "FAIL" in out)
    json.dumps({"floors": checks, "pairs": results})


def test_graft_steps_as_the_pair_says(bench):
    """Variant a grafts M#D; b runs M and D one after the other on the same parameters."""
    setup = bench.Setup("cpu", torch.float32, "foreach")
    a = bench.Variant("a", "sgd#adam", setup.params(SHAPES), setup)
    assert a.optimizers[0].label == "sgd#adam"
    b = bench.Variant("b", "sgd#adam", setup.params(SHAPES), setup)
    assert [type(o) for o in b.optimizers] == [torch.optim.SGD, torch.optim.Adam]
    assert all(o.defaults["foreach"] for o in b.optimizers)
    b.warm_up()
    # momentum, exp_avg and exp_avg_sq, and Adam's step count (a float32 scalar per tensor)
    assert b.state_bytes() == 3 * sum(s.numel() for s in SHAPES) * 4 + len(SHAPES) * 4


def test_library_rules_are_timed_against_the_optimizers_alone(bench, capsys):
    setup = bench.Setup("cpu", torch.float32, "default")
    shapes = [torch.Size([8, 4, 3, 3]), torch.Size([8]), torch.Size([10, 8])]
    results = bench.time_rules(shapes, setup, repeats=2)
    assert set(results) == {"muon", "shampoo", "soap", "nadam"}
    assert all(r["X#X/X"] > 0 and r["adam#X/(adam+X)"] > 0 for r in results.values())
    checks = bench.print_rules(results)
    assert [c["figure"] for c in checks] == ["X#X/X", "adam#muon/(adam+muon)"]
    assert checks[0]["rule"] in ("muon", "shampoo", "soap")  # nadam's overhead is reported
    out = capsys.readouterr().out
    assert "generic path alone (nadam#nadam)" in out and "adam#soap" in out
    json.dumps({"floors": checks, "rules": results})


def test_cpu_paths_are_switched_for_one_step_and_restored(bench):
    setup = bench.Setup("cpu", torch.float32, "default")
    shipped = (bench.graft_module._CACHE_BLOCK_BYTES, bench.graft_module._dot_norms)
    samples = bench.time_cpu_paths("sgd#adagrad", SHAPES, setup, repeats=2)
    assert {k: len(v) for k, v in samples.items()} == {k: 2 for k in bench.CPU_PATHS}
    assert (bench.graft_module._CACHE_BLOCK_BYTES, bench.graft_module._dot_norms) == shipped

"""Schedule transfer end to end: `graftbench transfer`, then `graftbench train magnitude=<D>
schedule=transferred schedule.source=...` through the real config, runner and engine: exactness,
identity, bit-identical resume without the source, sweeps over sources, DDP, the reports, and
every mistake refused with one line before anything is written."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch

from graftbench import config, rundir, transfer
from graftbench.errors import UserError
from graftbench.record import Exit, RunRecord
from graftbench.report import collect, tables, transfers
from graftbench.report.plots import plot_sweep
from graftbench.sweep.grid import expand
from graftbench.train import runner
from graftbench.train.engine import state_bytes
from graftbench.transfer.transferred import layer_names
from tests.test_resume import assert_same_run, signal_at_step
from tests.train_helpers import QUICK, merged, only_run_dir, run, train_in_process, weights
from tests.transfer_helpers import transfer_file

CPU = "trainer.device=cpu"  # bit for bit
SOURCE = ("magnitude=adagrad", "direction=sgd", "trainer.layer_log_every_steps=2", CPU)
TRANSFERRED = ("magnitude=sgd", "schedule=transferred", CPU)
# what `--run-dir` needs to resume a QUICK run with the same records: its execution settings
QUICK_EXECUTION = [o for o in QUICK if o.split("=")[0].endswith("_every_steps")] + [CPU]


def one_line_error(result) -> str:
    assert result.returncode == Exit.USAGE, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graftbench: error: "), result.stderr
    return lines[0]


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """One sweep folder: adagrad#sgd (the source), sgd alone, adagrad alone, and sgd with the
    static and the piecewise transfer of adagrad#sgd; the transfer files beside it."""
    root = tmp_path_factory.mktemp("family")
    code, source = train_in_process(root, *SOURCE)
    assert code == Exit.DONE
    assert train_in_process(root, "magnitude=sgd", CPU)[0] == Exit.DONE
    assert train_in_process(root, "magnitude=adagrad", CPU)[0] == Exit.DONE
    files = {}
    for kind in transfer.KINDS:
        files[kind] = transfer.distil(source, kind, out=root / f"{kind}.json")[1]
        code, _ = train_in_process(root, *TRANSFERRED, f"schedule.source={files[kind]}")
        assert code == Exit.DONE
    return {"sweep": source.parent, "source": source, "files": files, "root": root}


# -- exactness ------------------------------------------------------------------------------
def test_sgd_pair_transfers_as_2_and_sgd_with_it_retrains_the_grafted_weights(tmp_path):
    """sgd(lr 0.1)#sgd(lr 0.05) steps as sgd at 0.1: its correction is 2 on every layer, and
    sgd at its own lr 0.05 with the transferred schedule trains the same weights."""
    pair = ("magnitude=sgd", "direction=sgd", "magnitude.lr=0.1", "direction.lr=0.05")
    shape = ("schedule=warmup_cosine", "schedule.warmup_steps=4", CPU)
    code, grafted = train_in_process(
        tmp_path / "a", *pair, *shape, "trainer.layer_log_every_steps=1"
    )
    assert code == Exit.DONE
    out = tmp_path / "t.json"
    result = run("transfer", str(grafted), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "schedule.source=" in result.stdout
    data = json.loads(out.read_text())
    assert data["kind"] == "static" and data["source"]["run_id"] == grafted.name
    multipliers = [layer["multiplier"] for layer in data["layers"]]
    model = config.compose(QUICK).model
    assert [layer["name"] for layer in data["layers"]] == layer_names(model)
    assert multipliers == pytest.approx([2.0] * len(multipliers), rel=1e-12)

    # the schedule it trains under is the source's (warmup_cosine): the transfer says so
    code, alone = train_in_process(
        tmp_path / "b", "magnitude=sgd", "schedule=transferred", f"schedule.source={out}", CPU
    )
    assert code == Exit.DONE
    stored = rundir.read_yaml(alone / rundir.CONFIG)
    assert stored["schedule"] == {"name": "transferred", "sha256": transfer.read(out).content_hash}
    assert stored["magnitude"]["lr"] == 0.05  # D's learning rate in the source run
    assert str(out) not in (alone / rundir.CONFIG).read_text()
    ours, theirs = weights(alone), weights(grafted)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-6, atol=1e-8, msg=name)


def test_identity_is_the_content_not_the_path(family, tmp_path):
    static = family["files"]["static"]
    copy = shutil.copy(static, tmp_path / "elsewhere.json")

    def run_id(source):
        return config.run_id(
            config.compose(merged(QUICK, *TRANSFERRED, f"schedule.source={source}"))
        )

    assert run_id(static) == run_id(copy)
    # distilled on the spot from the run directory: the same content, so the same run
    assert run_id(family["source"]) == run_id(static)
    assert run_id(family["files"]["piecewise"]) != run_id(static)
    cfg = config.compose(merged(QUICK, *TRANSFERRED, f"schedule.source={copy}"))
    assert config.identity(cfg)["schedule"] == {
        "name": "transferred",
        "sha256": cfg.schedule.sha256,
    }
    assert config.execution(cfg)["schedule"] == {"source": str(copy), "kind": None, "knots": None}


# -- resume, sweeps, DDP --------------------------------------------------------------------
def test_interrupted_transferred_run_resumes_bit_identically_from_its_own_copy(
    family, tmp_path, monkeypatch
):
    piecewise = family["files"]["piecewise"]
    code, reference = train_in_process(
        tmp_path / "ref", *TRANSFERRED, f"schedule.source={piecewise}"
    )
    assert code == Exit.DONE
    source = shutil.copy(piecewise, tmp_path / "moved-away.json")
    with monkeypatch.context() as patch:
        signal_at_step(patch, 9, signal.SIGTERM)
        code, run_dir = train_in_process(
            tmp_path / "int", *TRANSFERRED, f"schedule.source={source}"
        )
    assert code == Exit.INTERRUPTED and run_dir.name == reference.name
    (tmp_path / "moved-away.json").unlink()  # resuming reads the run directory's copy
    cfg = runner.load(run_dir, overrides=QUICK_EXECUTION)
    assert runner.execute(run_dir, cfg) == Exit.DONE
    assert_same_run(run_dir, reference)
    record = rundir.read_json(run_dir / rundir.RUN)
    assert record["transfer"]["kind"] == "piecewise" and record["attempts"] == 2


def test_a_tampered_copy_is_refused_before_training(family, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        signal_at_step(patch, 1, signal.SIGTERM)
        code, run_dir = train_in_process(
            tmp_path, *TRANSFERRED, f"schedule.source={family['files']['static']}"
        )
    assert code == Exit.INTERRUPTED
    kept = run_dir / rundir.TRANSFER
    data = json.loads(kept.read_text())
    data["layers"][0]["multiplier"] *= 2
    kept.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"transfer\.json hashes to .* edited or copied"):
        runner.execute(run_dir, runner.load(run_dir, overrides=QUICK_EXECUTION))
    assert rundir.read_json(run_dir / rundir.RUN)["status"] == "failed"


def test_a_sweep_over_sources_trains_one_run_per_transfer(family, tmp_path):
    files = family["files"]
    result = run(
        "sweep",
        *merged(QUICK, "trainer.max_steps=3"),
        *TRANSFERRED,
        f"schedule.source={files['static']},{files['piecewise']}",
        "sweep.name=sources",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "schedule transfer: adagrad#sgd -> sgd alone" in result.stdout  # the sweep's report
    assert (tmp_path / "sources" / "figures" / "transfer_adagrad-sgd.png").exists()
    runs = sorted((tmp_path / "sources").glob("*/run.json"))
    assert len(runs) == 2
    kinds = set()
    for path in runs:
        record = rundir.read_json(path)
        assert record["status"] == "done"
        kinds.add(record["transfer"]["kind"])
        sha = rundir.read_yaml(path.parent / rundir.CONFIG)["schedule"]["sha256"]
        assert transfer.read(path.parent / rundir.TRANSFER).content_hash == sha
    assert kinds == {"static", "piecewise"}


def test_two_sources_with_the_same_content_are_one_point_of_a_sweep(family):
    static, run_dir = family["files"]["static"], family["source"]
    with pytest.raises(UserError, match="are the same run") as err:
        expand([*QUICK, *TRANSFERRED, f"schedule.source={static},{run_dir}"])
    assert "\n" not in str(err.value)


def test_two_gloo_processes_train_a_transferred_run_like_one(family, tmp_path):
    common = [
        *merged(QUICK, "trainer.max_steps=6", "trainer.per_device_batch_size=32"),
        *TRANSFERRED,
        f"schedule.source={family['files']['piecewise']}",
    ]
    one = run("train", *common, f"results_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = run(
        "train", *common, "trainer.devices=2", f"results_dir={tmp_path / 'two'}", cwd=tmp_path
    )
    assert two.returncode == 0, two.stderr
    one_dir, two_dir = only_run_dir(tmp_path / "one"), only_run_dir(tmp_path / "two")
    assert one_dir.name == two_dir.name
    checksums = rundir.read_json(two_dir / rundir.SUMMARY)["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    a, b = weights(one_dir), weights(two_dir)
    for name, tensor in a.items():
        if "running_" in name or "num_batches" in name:
            continue  # BN running statistics are rank 0's alone under DDP
        torch.testing.assert_close(b[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


# -- memory and reports ---------------------------------------------------------------------
def test_optimizer_state_bytes_are_recorded_and_transfer_saves_ms_state(family):
    runs, problems = collect.collect(family["sweep"])
    assert not problems
    by_kind = {}
    for row in runs.to_dict("records"):
        record = rundir.read_json(family["sweep"] / row["run_id"] / rundir.RUN)
        floats = 4 * record["parameters"]
        kind = row["transfer.kind"]
        kind = kind if isinstance(kind, str) else f"{row['magnitude']}#{row['direction']}"
        by_kind[kind] = record["optimizer_state_bytes"] / floats
        assert row["optimizer_state_bytes"] == record["optimizer_state_bytes"]
    # sgd: a momentum buffer; adagrad (with momentum): sum and buffer; adagrad#sgd: all three
    assert by_kind == {
        "sgd#sgd": 1, "adagrad#adagrad": 2, "adagrad#sgd": 3, "static": 1, "piecewise": 1
    }  # fmt: skip


def test_state_bytes_count_each_storage_once():
    p = torch.nn.Parameter(torch.zeros(10))
    optimizer = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(10)
    optimizer.step()
    assert state_bytes(optimizer) == 40
    optimizer.state[p]["alias"] = optimizer.state[p]["momentum_buffer"][:5]
    assert state_bytes(optimizer) == 40


def test_table_shows_the_roles_side_by_side_and_the_grid_leaves_transferred_runs_out(family):
    result = run("table", str(family["sweep"]), "--transfer", cwd=family["root"])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "schedule transfer: adagrad#sgd -> sgd alone" in text
    for role in ("D alone", "M#D", "D + transferred", "M alone", "optimizer state", "KiB"):
        assert role in text
    assert "transferred static" in text and "transferred piecewise" in text
    runs, _ = collect.collect(family["sweep"])
    [built] = transfers.build(runs)
    assert [r.role for r in built.rows] == [
        "D alone", "M#D", "D + transferred", "D + transferred", "M alone"
    ]  # fmt: skip
    assert built.rows[0].state_bytes == built.rows[2].state_bytes < built.rows[1].state_bytes
    data = json.loads(transfers.render([built], "json"))
    assert data[0]["rows"][1]["final.top1.n"] == 1
    # the M×D table: sgd#sgd is sgd alone, not pooled with the transferred runs
    [grid] = [t for t in tables.build_tables(runs, ["top1"])]
    assert grid.values("sgd", "sgd")[2] == 1
    plain = run("table", str(family["sweep"]), cwd=family["root"])
    assert "see --transfer" in plain.stderr


def test_plot_draws_the_discovered_correction_and_the_curves(family, tmp_path):
    written, messages = plot_sweep(family["sweep"], tmp_path, formats=("png",))
    assert tmp_path / "transfer_adagrad-sgd.png" in written, messages
    assert not [m for m in messages if "transfer" in m], messages


# -- mistakes: one line, exit 2, nothing written --------------------------------------------
def test_transfer_from_a_run_without_layer_records_or_a_failed_run_is_refused(tmp_path):
    code, quiet = train_in_process(
        tmp_path, *SOURCE[:2], "trainer.layer_log_every_steps=0", "trainer.max_steps=2"
    )
    assert code == Exit.DONE
    cfg = config.compose(merged(QUICK, f"results_dir={tmp_path}", *SOURCE[:2], "seed=1"))
    failed = runner.prepare_run(cfg)
    RunRecord(failed).start(None)
    RunRecord(failed).fail("RuntimeError: the node went away")
    before = listing(tmp_path)
    for run_dir, args, words in [
        (quiet, [], "no per-layer ratio records"),
        (failed, ["--kind", "piecewise", "--out", str(tmp_path / "t.json")], "failed, not done"),
        (tmp_path, [], "not a run directory"),
    ]:
        line = one_line_error(run("transfer", str(run_dir), *args, cwd=tmp_path))
        assert words in line, line
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["model.depth=14"], "of the model is not in the transfer"),
        (["model.width=8", "model.depth=8"], None),  # QUICK's own model: the control
        (["magnitude=adam"], "train it with magnitude=sgd"),
        (["magnitude.momentum=0.0"], "momentum=0.9"),
        (["direction=sgd"], "leave direction out"),
        (["schedule.kind=piecewise"], "holds a static transfer"),
        (["schedule.sha256=" + "0" * 64], "not to schedule.sha256"),
    ],
)
def test_a_transferred_run_that_cannot_be_trained_is_refused_before_anything_is_written(
    family, tmp_path, overrides, words
):
    args = merged(
        [*QUICK, *TRANSFERRED, f"schedule.source={family['files']['static']}"],
        f"results_dir={tmp_path / 'results'}",
        "trainer.max_steps=1",
        *overrides,
    )
    if words is None:
        cfg = config.compose(args)
        assert cfg.schedule.sha256 == transfer.read(family["files"]["static"]).content_hash
        return
    with pytest.raises(UserError) as err:
        config.compose(args)
    assert words in str(err.value) and "\n" not in str(err.value)
    if overrides == ["model.depth=14"]:  # and through the real CLI, from a run directory too
        for source in (family["files"]["static"], family["source"]):
            cli = merged(args, f"schedule.source={source}")
            line = one_line_error(run("train", *cli, cwd=tmp_path))
            assert words in line, line
        assert not (tmp_path / "results").exists()


def test_learning_rate_is_the_sources_unless_given(family, tmp_path):
    static = family["files"]["static"]
    source_lr = transfer.read(static).direction_lr
    base = [*QUICK, *TRANSFERRED, f"schedule.source={static}"]
    assert config.compose(base).magnitude.lr == source_lr
    assert config.compose([*base, "experiment=demo"]).magnitude.lr == source_lr  # peak_lr: no
    assert config.compose([*base, "magnitude.lr=0.3"]).magnitude.lr == 0.3
    with pytest.raises(UserError, match="takes D's learning rate from the source run"):
        config.compose([*base, "peak_lr.sgd=0.2"])
    with pytest.raises(UserError, match=r"schedule\.source must be set"):
        config.compose([*QUICK, *TRANSFERRED])
    odd = json.loads(static.read_text())
    odd["source"]["schedule"] = {"name": "constant", "__class__": "os.system"}
    (tmp_path / "odd.json").write_text(json.dumps(odd))
    with pytest.raises(UserError, match=r"source\.schedule: schedule constant: unknown field"):
        config.compose([*base[:-1], f"schedule.source={tmp_path / 'odd.json'}"])
    bad = transfer_file(tmp_path / "resnet20.json", ["model.depth=20"])
    with pytest.raises(UserError, match=r"of the transfer from .* is not in the model"):
        config.compose([*base[:-1], f"schedule.source={bad}"])

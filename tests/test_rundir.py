"""The run-directory contract: atomic files, schema checks, torn JSONL lines."""

from __future__ import annotations

import json

import pytest

from graftbench import rundir
from graftbench.rundir import RunDirError, Status


def test_json_round_trip_carries_schema_version(tmp_path):
    path = tmp_path / "run.json"
    rundir.write_json(path, {"run_id": "adam#sgd-s0-abc", "status": Status.RUNNING})
    data = rundir.read_json(path)
    assert data["schema_version"] == rundir.SCHEMA_VERSION
    assert data["status"] == "running" and Status(data["status"]) is Status.RUNNING
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "missing"),
        ('{"run_id": "x", "sta', "unreadable"),
        ('{"schema_version": 99}', "schema_version 99 is not supported"),
        ("[1, 2]", "not a mapping"),
    ],
)
def test_unreadable_files_raise_run_dir_error(tmp_path, content, message):
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RunDirError, match=message):
        rundir.read_json(path)


def test_update_json_is_read_modify_write(tmp_path):
    path = tmp_path / "run.json"
    rundir.write_json(path, {"status": "pending", "step": 0})
    rundir.update_json(path, lambda r: {**r, "status": "queued"})
    unchanged = rundir.update_json(path, lambda r: None)
    assert unchanged["status"] == "queued" and unchanged["step"] == 0


def test_jsonl_ignores_a_torn_last_line_but_not_a_torn_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in range(3):
        rundir.append_jsonl(path, {"kind": "train", "step": step, "loss": 1.0 / (step + 1)})
    assert [r["step"] for r in rundir.read_jsonl(path)] == [0, 1, 2]
    with path.open("a") as f:
        f.write('{"kind": "train", "st')
    assert [r["step"] for r in rundir.read_jsonl(path)] == [0, 1, 2]
    lines = path.read_text().split("\n")
    path.write_text("\n".join([*lines[:2], '{"torn', *lines[2:]]))
    with pytest.raises(RunDirError, match="unreadable line"):
        rundir.read_jsonl(path)


def test_rewrite_jsonl_keeps_the_header(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in range(5):
        rundir.append_jsonl(path, {"kind": "train", "step": step})
    rundir.rewrite_jsonl(path, lambda r: r["step"] <= 2)
    assert [r["step"] for r in rundir.read_jsonl(path)] == [0, 1, 2]
    assert json.loads(path.read_text().split("\n")[0])["kind"] == "header"


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "config.yaml"
    rundir.write_yaml(path, {"magnitude": {"name": "adam", "lr": 0.001}})
    assert rundir.read_yaml(path)["magnitude"]["lr"] == 0.001


def test_finished_statuses():
    assert {s for s in Status if s.finished} == {Status.DONE, Status.DIVERGED}


def test_yaml_never_writes_aliases_and_never_reads_them(tmp_path):
    shared = [0.9, 0.999]  # a config's lists can be shared objects (a copied optimizer subtree)
    path = tmp_path / "config.yaml"
    rundir.write_yaml(path, {"magnitude": {"betas": shared, "again": shared}})
    assert "&" not in path.read_text() and "*" not in path.read_text()
    assert rundir.read_yaml(path)["magnitude"]["again"] == shared
    path.write_text("schema_version: 2\na: &x [1, 2]\nb: *x\n")
    with pytest.raises(RunDirError, match="aliases are not allowed"):
        rundir.read_yaml(path)


def test_symlinked_files_are_neither_read_nor_written(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text('{"schema_version": 2}')
    link = tmp_path / "run" / "run.json"
    link.parent.mkdir()
    link.symlink_to(outside)
    with pytest.raises(RunDirError, match="symbolic link"):
        rundir.read_json(link)
    with pytest.raises(RunDirError, match="symbolic link"):
        rundir.write_json(link, {"status": "done"})
    with pytest.raises(RunDirError, match="symbolic link"):
        rundir.append_jsonl(link, {"kind": "train", "step": 1})
    assert outside.read_text() == '{"schema_version": 2}'

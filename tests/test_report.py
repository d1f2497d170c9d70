"""The report layer: collecting run directories, the M × D tables and the spread numbers.

The synthetic sweep is written with the real run-directory writers; every expected number is
computed here with numpy from the values the sweep was written with.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.report.collect import collect, load_curves
from graftbench.report.statistics import complete_block
from graftbench.report.tables import (
    build_table,
    build_tables,
    compare,
    decimals_for,
    default_metrics,
    higher_is_better,
    load_reference,
    render,
    render_comparison,
)

OPTIMIZERS = ("sgd", "adam", "adagrad")
SEEDS = (0, 1, 2)
# (magnitude, direction) -> status of each seed; absent pairs: every seed done.
# "torn" and "future" are done runs whose summary.json is half-written / of a future schema.
STATUSES = {
    ("sgd", "adam"): ("diverged", "done", "done"),
    ("sgd", "adagrad"): ("diverged", "diverged", "diverged"),
    ("adam", "sgd"): ("done", "running", "done"),
    ("adam", "adagrad"): ("done", "done", "failed"),
    ("adagrad", "sgd"): ("missing", "missing", "missing"),
    ("adagrad", "adam"): ("done", "future", "done"),
    ("adagrad", "adagrad"): ("torn", "diverged", "failed"),
}
STEPS = 5


def run_id(m: str, d: str, seed: int) -> str:
    return f"{m}+{d}-s{seed}-0123abcd"  # as graftbench.config.run_id spells them


def write_manifest(root: Path, entries: list[dict]) -> None:
    rundir.write_json(
        root / rundir.SWEEP,
        {"name": root.name, "created_at": rundir.now(), "grid": {}, "runs": entries},
    )


def write_run(root: Path, entry: dict, status: str, final: dict | None, curves: bool) -> Path:
    """A run directory as training leaves it: run.json, summary.json when finished, and
    (``curves``) train/eval/layers records in metrics.jsonl."""
    path = root / entry["run_id"]
    identity = {k: entry[k] for k in ("run_id", "magnitude", "direction", "seed")}
    recorded = {"torn": "done", "future": "done"}.get(status, status)
    rundir.write_json(path / rundir.RUN, {**entry, "status": recorded, "step": STEPS})
    if recorded in ("done", "diverged"):
        summary = {**identity, "status": recorded, "steps": STEPS, "final": final, "best": final}
        rundir.write_json(path / rundir.SUMMARY, summary)
    if status == "torn":
        (path / rundir.SUMMARY).write_text('{"schema_version": 1, "run_id": "x", "fin')
    if status == "future":
        future = {"schema_version": rundir.SCHEMA_VERSION + 1, **identity}
        (path / rundir.SUMMARY).write_text(json.dumps(future))
    if curves:
        for step in range(STEPS):
            ratio = {"layer.0.weight": 2.0**step, "layer.1.weight": 0.5 + step}
            rundir.append_jsonl(
                path / rundir.METRICS,
                {"kind": "train", "step": step, "loss": 3.0 / (step + 1), "lr": 0.1,
                 "graft": {"ratio_mean": sum(ratio.values()) / 2, "ratio_min": 0.5}},
            )  # fmt: skip
            rundir.append_jsonl(
                path / rundir.METRICS, {"kind": "layers", "step": step, "ratio": ratio}
            )
            if step % 2 == 0:
                top1 = final["top1"] - (STEPS - step) if final else 0.0
                rundir.append_jsonl(
                    path / rundir.METRICS, {"kind": "eval", "step": step, "top1": top1, "loss": 1.0}
                )
    return path


def make_sweep(root: Path, curves: bool = True) -> dict[tuple[str, str, int], dict]:
    """The 3 × 3 × 3-seed sweep of :data:`STATUSES`; returns the final metrics of every run
    that was written with a summary, keyed by (magnitude, direction, seed)."""
    rng = np.random.default_rng(0)
    entries, finals = [], {}
    for i, m in enumerate(OPTIMIZERS):
        for j, d in enumerate(OPTIMIZERS):
            for seed in SEEDS:
                entry = {
                    "run_id": run_id(m, d, seed),
                    "overrides": [
                        "data=digits",
                        f"magnitude={m}",
                        f"direction={d}",
                        f"seed={seed}",
                    ],
                    "magnitude": m,
                    "direction": d,
                    "seed": seed,
                }
                entries.append(entry)
                status = STATUSES.get((m, d), ("done",) * 3)[seed]
                final = {
                    "top1": 60 + 5 * i + 0.5 * j + rng.normal(0, 0.3),
                    "loss": 3 - 0.3 * i + 0.05 * j + rng.normal(0, 0.02),
                }
                if status == "diverged":
                    final = {"top1": 0.1, "loss": float("nan")}
                if status != "missing":
                    write_run(root, entry, status, final, curves)
                    finals[m, d, seed] = final
    write_manifest(root, entries)
    return finals


def expected_cells(finals: dict, metric: str) -> dict[tuple[str, str], list[float]]:
    """The values of the done runs with a readable summary, per cell."""
    cells: dict[tuple[str, str], list[float]] = {(m, d): [] for m in OPTIMIZERS for d in OPTIMIZERS}
    for (m, d, seed), final in finals.items():
        if STATUSES.get((m, d), ("done",) * 3)[seed] == "done":
            cells[m, d].append(final[metric])
    return cells


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("built") / "sweep"
    return root, make_sweep(root)


@pytest.fixture
def sweep(built, tmp_path):
    """A fresh copy of the sweep (the writers fsync: building it once per test is slow)."""
    root, finals = built
    return Path(shutil.copytree(root, tmp_path / "sweep")), finals


# -- collect --------------------------------------------------------------------------------
def test_collect_has_one_row_per_planned_run_in_grid_order(sweep):
    root, finals = sweep
    runs, problems = collect(root)
    assert list(runs["run_id"]) == [
        run_id(m, d, s) for m in OPTIMIZERS for d in OPTIMIZERS for s in SEEDS
    ]
    assert list(runs["magnitude"].cat.categories) == list(OPTIMIZERS)
    assert list(runs["direction"].cat.categories) == list(OPTIMIZERS)
    recorded = {"torn": "unreadable", "future": "unreadable"}
    for row in runs.itertuples():
        status = STATUSES.get((row.magnitude, row.direction), ("done",) * 3)[row.seed]
        assert row.status == recorded.get(status, status), row.run_id
    done = runs[runs["status"] == "done"]
    assert len(done) == sum(STATUSES.get((m, d), ("done",) * 3).count("done") for m in
                            OPTIMIZERS for d in OPTIMIZERS)  # fmt: skip
    for _, row in done.iterrows():
        final = finals[row["magnitude"], row["direction"], row["seed"]]
        assert row["final.top1"] == final["top1"] and row["best.loss"] == final["loss"]
    assert list(runs["overrides.magnitude"]) == list(runs["magnitude"])
    assert list(runs["overrides.seed"]) == [s for _ in range(9) for s in SEEDS]  # typed: ints
    assert set(runs["overrides.data"]) == {"digits"}
    assert problems and all("adagrad+" in p for p in problems)


def test_unreadable_files_become_marked_rows_and_problems(sweep):
    root, _ = sweep
    runs, problems = collect(root)
    by_id = runs.set_index("run_id")
    torn, future = run_id("adagrad", "adagrad", 0), run_id("adagrad", "adam", 1)
    assert by_id.at[torn, "status"] == by_id.at[future, "status"] == "unreadable"
    assert "unreadable" in by_id.at[torn, "problem"]
    assert "schema_version 3 is not supported" in by_id.at[future, "problem"]
    assert len(problems) == 2
    assert any(torn in p for p in problems) and any(future in p for p in problems)
    assert by_id.at[torn, "magnitude"] == "adagrad"  # identity still known from the manifest


def test_a_future_manifest_falls_back_to_the_run_directories(sweep):
    root, _ = sweep
    (root / rundir.SWEEP).write_text(json.dumps({"schema_version": 7, "runs": []}))
    runs, problems = collect(root)
    assert "schema_version 7" in problems[0]
    assert len(runs) == 27 - 3  # the three missing runs have no directory to find
    assert "missing" not in set(runs["status"])
    assert list(runs["magnitude"].cat.categories) == list(OPTIMIZERS)  # known order, not a-z


def test_a_single_run_directory_and_runs_outside_the_manifest(sweep, tmp_path):
    root, finals = sweep
    single, _ = collect(root / run_id("adam", "adam", 1))
    assert len(single) == 1 and single.at[0, "status"] == "done"
    assert single.at[0, "final.top1"] == finals["adam", "adam", 1]["top1"]

    entry = {"run_id": "extra", "magnitude": "adam", "direction": "sgd", "seed": 9}
    write_run(root, entry, "done", {"top1": 1.0}, curves=False)
    runs, _ = collect(root)
    assert runs.iloc[-1]["run_id"] == "extra" and runs.iloc[-1]["seed"] == 9

    with pytest.raises(UserError, match="no such results directory"):
        collect(tmp_path / "nowhere")


def test_load_curves_flattens_records_and_survives_a_torn_last_line(sweep):
    root, _ = sweep
    path = root / run_id("sgd", "sgd", 0) / rundir.METRICS
    rundir.append_jsonl(path, {"kind": "train", "step": 4, "loss": 0.123})  # a resumed step
    with path.open("a") as f:
        f.write('{"kind": "train", "step": 5, "lo')
    curves, problems = load_curves(root)
    assert len(problems) == 2 and all("summary.json" in p for p in problems)  # none from jsonl
    assert set(curves["kind"]) == {"train", "eval"}
    train = curves[(curves["run_id"] == run_id("sgd", "sgd", 0)) & (curves["kind"] == "train")]
    assert list(train["step"]) == list(range(STEPS))
    assert train["loss"].iloc[-1] == 0.123  # the last record of a step wins
    assert train["graft.ratio_mean"].iloc[1] == (2.0 + 1.5) / 2
    assert list(curves["magnitude"].cat.categories) == list(OPTIMIZERS)
    assert curves["run_id"].nunique() == 27 - 3

    layers, _ = load_curves(root, kinds=("layers",))
    assert {"ratio.layer.0.weight", "ratio.layer.1.weight"} <= set(layers.columns)
    assert layers["ratio.layer.0.weight"].max() == 2.0 ** (STEPS - 1)


# -- tables ---------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["top1", "loss"])
def test_pivot_matches_numpy_over_seeds(sweep, metric):
    root, finals = sweep
    table = build_tables(collect(root)[0], [metric])[0]
    assert table.magnitudes == table.directions == list(OPTIMIZERS)
    for (m, d), values in expected_cells(finals, metric).items():
        assert table.n.at[m, d] == len(values)
        if values:
            assert table.mean.at[m, d] == pytest.approx(np.mean(values), rel=1e-12)
        if len(values) > 1:
            assert table.std.at[m, d] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        else:
            assert np.isnan(table.std.at[m, d])


def test_cells_are_marked_when_seeds_disagree(sweep):
    root, _ = sweep
    table = build_tables(collect(root)[0], ["top1"])[0]
    text = {(m, d): table.text(m, d, 1) for m in OPTIMIZERS for d in OPTIMIZERS}
    assert re.fullmatch(r"\d+\.\d ± \d\.\d \[\d+\.\d, \d+\.\d\] \(n=3\)", text["sgd", "sgd"])
    assert text["sgd", "adam"].endswith("(n=2, 1 diverged)")
    assert text["sgd", "adagrad"] == "diverged"
    assert text["adam", "sgd"].endswith("(n=2, 1 running)")
    assert text["adam", "adagrad"].endswith("(n=2, 1 failed)")
    assert text["adagrad", "sgd"] == "missing"
    assert text["adagrad", "adam"].endswith("(n=2, 1 unreadable)")
    assert text["adagrad", "adagrad"] == "1 diverged, 1 failed, 1 unreadable"
    assert table.status("adagrad", "adagrad") == "diverged"  # the precedence
    assert table.status("sgd", "sgd") == "ok"


@pytest.mark.parametrize("metric", ["top1", "loss"])
def test_best_and_tied_cells_are_marked_from_the_intervals(sweep, metric):
    root, finals = sweep
    table = build_tables(collect(root)[0], [metric])[0]
    cells = expected_cells(finals, metric)
    grid = [[np.array(cells[m, d]) for d in OPTIMIZERS] for m in OPTIMIZERS]
    mean = np.array([[v.mean() if v.size else np.nan for v in row] for row in grid])

    def interval(v: np.ndarray) -> tuple[float, float]:  # Student t; one value: the point
        if v.size < 2:
            return (v.mean(), v.mean()) if v.size else (np.nan, np.nan)
        half = scipy.stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
        return v.mean() - half, v.mean() + half

    bounds = [[interval(v) for v in row] for row in grid]

    def expected(transpose: bool) -> tuple[np.ndarray, np.ndarray]:
        """(best, tied) by the overlap rule, line by line."""
        x = mean.T if transpose else mean
        b = [list(r) for r in zip(*bounds, strict=True)] if transpose else bounds
        best, tied = np.zeros((3, 3), bool), np.zeros((3, 3), bool)
        for i in range(3):
            if np.isfinite(x[i]).sum() < 2:
                continue
            k = int(np.nanargmax(x[i]) if metric == "top1" else np.nanargmin(x[i]))
            top = [
                np.isfinite(x[i, j]) and b[i][j][0] <= b[i][k][1] and b[i][k][0] <= b[i][j][1]
                for j in range(3)
            ]
            (best if sum(top) == 1 else tied)[i] = top
        return (best.T, tied.T) if transpose else (best, tied)

    markdown = render([table], "markdown", decimals=2)
    texts = [
        [cell.strip() for cell in line.split("|")[2:-1]]
        for line in markdown.splitlines()
        if line.startswith(("| sgd", "| adam", "| adagrad"))
    ]
    bold = np.array([[c.startswith("**") for c in row] for row in texts])
    italic = np.array([[c.replace("**", "").startswith("*") for c in row] for row in texts])
    dagger = np.array([["†" in c for c in row] for row in texts])
    double = np.array([["‡" in c for c in row] for row in texts])
    (row_best, row_tied), (column_best, column_tied) = expected(False), expected(True)
    np.testing.assert_array_equal(bold, row_best)
    np.testing.assert_array_equal(dagger, row_tied)
    np.testing.assert_array_equal(italic, column_best)
    np.testing.assert_array_equal(double, column_tied)
    assert row_tied.any() and column_best.any()  # the sweep has both kinds
    assert "† tied for the row's best" in markdown
    assert higher_is_better(metric) == (metric == "top1")


def test_latex_is_booktabs_and_escapes_names(sweep):
    root, _ = sweep
    table = build_tables(collect(root)[0], ["top1"])[0]
    latex = render([table], "latex")
    for command in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}{lccc}"):
        assert command in latex
    body = latex.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert [line.split(" & ")[0] for line in body] == list(OPTIMIZERS)
    assert all(line.count(" & ") == 3 and line.endswith("\\\\") for line in body)
    marks = table.statistics.marks
    assert latex.count("\\textbf{") == int(marks.best_in_row.to_numpy().sum())
    assert latex.count("\\underline{") == int(marks.best_in_column.to_numpy().sum())
    assert "\n".join(body).count("$^\\dagger$") == int(marks.tied_in_row.to_numpy().sum())
    assert "†" not in latex and "η" not in latex and "–" not in latex
    depth = 0
    for ch in latex.replace("\\{", "").replace("\\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert "$\\pm$" in latex and "±" not in latex
    renamed = build_table(
        collect(root)[0].assign(
            magnitude=lambda f: f["magnitude"].cat.rename_categories({"adam": "adam_w#2"})
        ),
        "top1",
    )
    assert "adam\\_w\\#2 &" in render([renamed], "latex")


def test_csv_round_trip_keeps_full_precision(sweep):
    root, _ = sweep
    tables = build_tables(collect(root)[0], ["top1", "loss"])
    back = pd.read_csv(pd.io.common.StringIO(render(tables, "csv")))
    assert list(back["metric"].unique()) == ["final.top1", "final.loss"]
    for table in tables:
        rows = back[back["metric"] == table.metric].set_index(["magnitude", "direction"])
        for m in OPTIMIZERS:
            for d in OPTIMIZERS:
                mean, std, n = table.values(m, d)
                assert rows.at[(m, d), "n"] == n
                assert rows.at[(m, d), "mean"] == mean or np.isnan(mean)
                assert rows.at[(m, d), "std"] == std or np.isnan(std)
                assert rows.at[(m, d), "status"] == table.status(m, d)


def test_json_is_strict_and_carries_the_statistics(sweep):
    root, _ = sweep
    table = build_tables(collect(root)[0], ["top1"])[0]
    data = json.loads(render([table], "json"))[0]
    cells = {(c["magnitude"], c["direction"]): c for c in data["cells"]}
    assert (
        cells["adagrad", "sgd"]["mean"] is None and cells["adagrad", "sgd"]["status"] == "missing"
    )
    assert cells["adagrad", "adagrad"]["others"] == {"diverged": 1, "failed": 1, "unreadable": 1}
    low, high = table.interval("sgd", "sgd")
    assert (cells["sgd", "sgd"]["ci_low"], cells["sgd", "sgd"]["ci_high"]) == (low, high)
    stats = data["statistics"]
    assert [e["term"] for e in stats["anova"]["effects"]] == ["M", "D", "M×D"]
    assert [e["p"] for e in stats["anova"]["effects"]] == [
        e.p for e in table.statistics.anova.effects
    ]
    assert stats["anova"]["rows"] == ["sgd", "adam"] and stats["anova"]["partial"] is True
    by_m = stats["spread"]["by_magnitude"]
    assert by_m["low"] <= by_m["estimate"] <= by_m["high"]
    assert stats["no_test"] is None and stats["clustering"] is None  # no curves given
    assert data["notes"][0].startswith("changing M moves top1 by")
    assert data["notes"][1].startswith("two-way ANOVA (10 runs")


def test_unknown_metric_and_format_are_user_errors(sweep):
    root, _ = sweep
    runs = collect(root)[0]
    assert default_metrics(runs) == ["top1"]
    with pytest.raises(UserError, match="no run reports the metric 'bleu'"):
        build_tables(runs, ["bleu"])
    with pytest.raises(UserError, match="unknown table format"):
        render(build_tables(runs), "html")


def test_a_swept_override_gets_one_table_per_value(tmp_path):
    entries = []
    for lr in ("0.1", "1e-05"):  # as Hydra overrides spell them
        for m in ("sgd", "adam"):
            for seed in (0, 1):
                entry = {"run_id": f"{m}+{m}-lr{lr}-s{seed}", "magnitude": m, "direction": m}
                entry |= {"seed": seed, "overrides": [f"+magnitude.lr={lr}", f"seed={seed}"]}
                top1 = 100 * float(lr) + seed
                write_run(tmp_path, entry, "done", {"top1": top1}, curves=False)
                entries.append(entry)
    write_manifest(tmp_path, entries)
    tables = build_tables(collect(tmp_path)[0], ["top1"])
    lr = "overrides.magnitude.lr"
    assert [t.where for t in tables] == [{lr: 1e-05}, {lr: 0.1}]  # numbers, in numeric order
    assert tables[1].mean.at["sgd", "sgd"] == pytest.approx(10.5)
    assert tables[0].n.to_numpy().tolist() == [[2, 0], [0, 2]]
    assert "magnitude.lr=1e-05" in tables[0].title


def test_a_swept_override_gets_the_clustering_of_its_own_runs(tmp_path):
    entries = []
    for lr in ("0.1", "0.01"):
        for m in ("sgd", "adam"):
            for seed in (0, 1):
                entry = {"run_id": f"{m}+{m}-lr{lr}-s{seed}", "magnitude": m, "direction": m}
                entry |= {"seed": seed, "overrides": [f"+magnitude.lr={lr}", f"seed={seed}"]}
                status = "diverged" if (lr, m, seed) == ("0.1", "adam", 1) else "done"
                write_run(tmp_path, entry, status, {"top1": 50.0 + seed}, curves=True)
                entries.append(entry)
    write_manifest(tmp_path, entries)
    runs = collect(tmp_path)[0]
    curves = load_curves(tmp_path, kinds=("train",), runs=runs)[0]
    tables = build_tables(runs, ["top1"], curves=curves)
    assert [t.where["overrides.magnitude.lr"] for t in tables] == [0.01, 0.1]
    assert [t.clustering.left_out for t in tables] == [{}, {"diverged": 1}]
    assert all(t.clustering.cells == ["sgd#sgd", "adam#adam"] for t in tables)


# -- the statistics under a table ----------------------------------------------------------
def test_spread_with_missing_cells_matches_a_hand_computation(sweep):
    root, finals = sweep
    table = build_tables(collect(root)[0], ["top1"])[0]
    cells = expected_cells(finals, "top1")
    x = {k: np.mean(v) for k, v in cells.items() if v}
    # by M: column sgd has sgd, adam; column adam has all three; column adagrad has one value
    by_m = np.mean(
        [
            abs(x["sgd", "sgd"] - x["adam", "sgd"]),
            max(x[m, "adam"] for m in OPTIMIZERS) - min(x[m, "adam"] for m in OPTIMIZERS),
        ]
    )
    by_d = np.mean(
        [
            abs(x["sgd", "sgd"] - x["sgd", "adam"]),
            max(x["adam", d] for d in OPTIMIZERS) - min(x["adam", d] for d in OPTIMIZERS),
        ]
    )
    result = table.statistics.spread
    assert result.by_magnitude.estimate == pytest.approx(by_m)
    assert result.by_direction.estimate == pytest.approx(by_d)
    lines = render([table], "markdown", decimals=1).splitlines()
    sentence = next(line for line in lines if line.startswith("changing M moves"))
    assert sentence.startswith(f"changing M moves top1 by {by_m:.1f} (95% CI ")
    # amounts keep two significant digits at least: by_d is below 1, so two decimals
    assert f"changing D by {by_d:.2f} (95% CI " in sentence
    anova = next(line for line in lines if line.startswith("two-way ANOVA"))
    assert "over M in {sgd, adam} × D in {sgd, adam}" in anova


def test_the_complete_block_prefers_more_cells_then_more_rows_then_grid_order():
    present = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=bool)
    assert complete_block(present) == ([0, 1], [0, 1])  # two 2 × 2 blocks: the earlier rows
    assert complete_block(np.array([[1, 1], [1, 0]], dtype=bool)) == ([0, 1], [0])


def test_one_seed_per_cell_reports_no_test(tmp_path):
    entries = []
    for i, m in enumerate(OPTIMIZERS):
        for j, d in enumerate(OPTIMIZERS):
            entry = {"run_id": run_id(m, d, 0), "magnitude": m, "direction": d, "seed": 0}
            write_run(tmp_path, entry, "done", {"top1": 90 + i + 0.1 * j}, curves=False)
            entries.append(entry)
    write_manifest(tmp_path, entries)
    table = build_tables(collect(tmp_path)[0], ["top1"])[0]
    text = render([table])
    assert "n=1: no test possible" in text and "%" not in text.split("\n\n", 2)[2]
    assert "One value per cell, so no intervals" in text
    assert "[" not in text.split("\n\n")[1]  # no interval in any cell


def test_decimals_follow_the_spread_not_only_the_largest_value(tmp_path):
    """99.72 beside 100 with "changing M moves top5 by 0.28" must not print as 100."""
    entries = []
    for i, m in enumerate(OPTIMIZERS[:2]):
        for seed in (0, 1, 2):
            entry = {"run_id": run_id(m, "sgd", seed), "magnitude": m, "direction": "sgd"}
            entry["seed"] = seed
            top5 = 100.0 if i == 0 else 99.72 + 0.2 * (seed - 1)
            write_run(tmp_path, entry, "done", {"top5": top5}, curves=False)
            entries.append(entry)
    write_manifest(tmp_path, entries)
    table = build_tables(collect(tmp_path)[0], ["top5"])[0]
    assert decimals_for(table) == 2
    text = render([table])
    assert "| 99.72 ± 0.20 [99.22, 100.22] (n=3)" in text  # not "100 ± 0 [99, 100]"
    assert "| 100.00 ± 0.00 [100.00, 100.00] (n=3)" in text
    assert "changing M moves top5 by 0.28 (95% CI " in text


def test_tables_with_curves_report_the_clustering(sweep):
    root, _ = sweep
    runs = collect(root)[0]
    curves = load_curves(root, kinds=("train",), runs=runs)[0]
    table = build_tables(runs, ["top1"], curves=curves)[0]
    clustering = table.clustering
    assert clustering.left_out == {"diverged": 5, "failed": 2, "unreadable": 2, "running": 1}
    assert clustering.steps == STEPS
    text = render([table])
    assert text.rstrip().splitlines()[-1] == clustering.sentence()
    data = json.loads(render([table], "json"))[0]["statistics"]["clustering"]
    assert data["verdict"] == clustering.verdict() and data["cells"] == clustering.cells


# -- comparing with reference numbers -------------------------------------------------------
def test_compare_with_typed_reference_numbers(sweep, tmp_path):
    root, finals = sweep
    table = build_tables(collect(root)[0], ["top1"])[0]
    reference = tmp_path / "paper.csv"
    reference.write_text(
        "M \\ D,SGD,Adam,AdaGrad\n"
        "SGD,70.0,71.5 ± 0.3,diverged\n"
        "Adam,75.25,76.0,\n"
        "AdaGrad,80.0,81.0,82.0\n"
        "Lion,1.0,2.0,3.0\n"
    )
    comparison = compare(table, load_reference(reference))
    assert comparison.magnitudes == [*OPTIMIZERS, "lion"]
    cells = expected_cells(finals, "top1")
    assert comparison.difference.at["sgd", "sgd"] == pytest.approx(
        np.mean(cells["sgd", "sgd"]) - 70
    )
    assert comparison.difference.at["sgd", "adam"] == pytest.approx(
        np.mean(cells["sgd", "adam"]) - 71.5
    )
    assert np.isnan(comparison.difference.at["sgd", "adagrad"])  # "diverged" on both sides
    assert np.isnan(comparison.difference.at["adagrad", "sgd"])  # missing here
    assert np.isnan(comparison.difference.at["lion", "sgd"])  # only in the reference
    markdown = render_comparison(comparison, "markdown", decimals=2)
    assert f"{np.mean(cells['adam', 'adam']) - 76:+.2f}" in markdown
    assert "| lion " in markdown and "diverged" in markdown and "reference: changing M" in markdown
    latex = render_comparison(comparison, "latex")
    assert latex.count("\\cmidrule(lr)") == 3 and "\\multicolumn{3}{c}{adagrad}" in latex
    rows = pd.read_csv(pd.io.common.StringIO(render_comparison(comparison, "csv")))
    assert len(rows) == 4 * 3


def test_our_csv_is_a_reference_for_the_same_sweep(sweep, tmp_path):
    root, _ = sweep
    tables = build_tables(collect(root)[0], ["top1", "loss"])
    path = tmp_path / "ours.csv"
    path.write_text(render(tables, "csv"))
    with pytest.raises(UserError, match="several metrics"):
        load_reference(path)
    comparison = compare(tables[0], load_reference(path, metric="top1"))
    differences = comparison.difference.stack().dropna()
    assert len(differences) == int((tables[0].n > 0).to_numpy().sum())
    assert (differences == 0).all()

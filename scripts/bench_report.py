"""Time the table path on a synthetic 10,000-run sweep: collect + pivot + statistics + render.

The sweep is the full M × D grid of {sgd, adam, adagrad} × 10 seeds × 112 learning rates
(10,080 runs): most runs done, some diverged, failed, running or never started. Files hold what
``graftbench.rundir.write_json`` writes, written without its fsync so that building is quick.
The target is under 3 s for the 224 tables (top1, top5 per learning rate), each with its
intervals, ties, bootstrap spread and ANOVA. The CPU time is printed too: on a shared machine
the wall time also counts waiting for a core.

Printed apart, not in the total: importing the report modules (scipy and statsmodels), and the
clustering of training curves for each of the 112 grids from an in-memory frame of 100 logged
steps per run (reading 10,080 ``metrics.jsonl`` files is not timed).

    python scripts/bench_report.py [--runs-per-pair 1120] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from graftbench import rundir

started = time.perf_counter()
from graftbench.report.collect import collect  # noqa: E402  (timed: scipy, statsmodels)
from graftbench.report.tables import build_tables, render  # noqa: E402

IMPORT_S = time.perf_counter() - started

OPTIMIZERS = ("sgd", "adam", "adagrad")
SEEDS = 10


def build(root: Path, runs_per_pair: int) -> int:
    """Write the manifest and run directories; returns the number of runs."""
    rng = random.Random(0)
    entries = []
    for lr_index in range(runs_per_pair // SEEDS):
        for m in OPTIMIZERS:
            for d in OPTIMIZERS:
                for seed in range(SEEDS):
                    lr = round(1e-4 * 1.05**lr_index, 8)
                    entries.append(
                        {
                            "run_id": f"{m}+{d}-lr{lr_index}-s{seed}",
                            "overrides": {"optim.lr": lr, "seed": seed},
                            "magnitude": m,
                            "direction": d,
                            "seed": seed,
                        }
                    )
    _write(root / rundir.SWEEP, {"name": "bench", "grid": {}, "runs": entries})
    for entry in entries:
        status = rng.choices(
            ["done", "diverged", "failed", "running", None], weights=[90, 4, 2, 2, 2]
        )[0]
        if status is None:  # never started: missing
            continue
        run_dir = root / entry["run_id"]
        run_dir.mkdir()
        _write(run_dir / rundir.RUN, {**entry, "status": status, "step": 1000})
        if status in ("done", "diverged"):
            top1 = 70 + 3 * OPTIMIZERS.index(entry["magnitude"]) + rng.gauss(0, 0.5)
            metrics = {"loss": rng.uniform(1, 2), "top1": top1, "top5": top1 + 15}
            _write(
                run_dir / rundir.SUMMARY,
                {**entry, "status": status, "final": metrics, "best": metrics},
            )
    return len(entries)


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps({"schema_version": rundir.SCHEMA_VERSION, **data}, indent=2))


def synthetic_curves(runs: pd.DataFrame, steps: int = 100) -> pd.DataFrame:
    """Train records of every run: log loss falling at a rate set by M, plus noise."""
    rng = np.random.default_rng(0)
    rate = runs["magnitude"].cat.codes.to_numpy() * 0.003 + 0.01
    log = np.log(2.3) - rate[:, None] * np.arange(steps) + rng.normal(0, 0.05, (len(runs), steps))
    frame = pd.DataFrame(
        {
            **{k: np.repeat(runs[k].to_numpy(), steps) for k in ("run_id", "seed", "status")},
            "magnitude": runs["magnitude"].repeat(steps).to_numpy(),
            "direction": runs["direction"].repeat(steps).to_numpy(),
            "kind": "train",
            "step": np.tile(np.arange(steps), len(runs)),
            "loss": np.exp(log).ravel(),
        }
    )
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-per-pair", type=int, default=1120)
    parser.add_argument("--keep", type=Path, help="build the sweep here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        n = build(root, args.runs_per_pair)
        start, cpu = time.perf_counter(), time.process_time()
        runs, problems = collect(root)
        collected = time.perf_counter()
        tables = build_tables(runs, ["top1", "top5"])
        pivoted = time.perf_counter()
        for table in tables:
            assert table.statistics is not None  # computed once, on first use
        analyzed = time.perf_counter()
        text = render(tables, "markdown")
        rendered, cpu = time.perf_counter(), time.process_time() - cpu
    curves = synthetic_curves(runs[runs["status"].isin(["done", "diverged"])])
    # the clustering is the difference between pivoting with and without the curves
    clustered = time.perf_counter()
    build_tables(runs, ["top1"])
    between = time.perf_counter()
    grids = build_tables(runs, ["top1"], curves=curves)
    clustered = (time.perf_counter() - between) - (between - clustered)
    verdicts = pd.Series([g.clustering.verdict() for g in grids]).value_counts().to_dict()
    total = rendered - start
    print(
        f"{n} runs, {len(tables)} tables, {len(text)} characters, {len(problems)} problems\n"
        f"collect {collected - start:.2f} s + pivot {pivoted - collected:.2f} s + "
        f"statistics {analyzed - pivoted:.2f} s + render {rendered - analyzed:.2f} s = "
        f"{total:.2f} s wall, {cpu:.2f} s CPU (target < 3 s: "
        f"{'holds' if total < 3 else 'MISSED'})\n"
        f"statistics per table: {(analyzed - pivoted) / len(tables) * 1000:.1f} ms\n"
        f"not in the total: importing the report modules {IMPORT_S:.2f} s; clustering the "
        f"training curves of {len(grids)} grids ({len(curves):,} records) {clustered:.2f} s "
        f"(verdicts: {verdicts})"
    )


if __name__ == "__main__":
    main()

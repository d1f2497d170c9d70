"""Time the table path on a synthetic 10,000-run sweep: collect + pivot + render.

The sweep is the full M × D grid of {sgd, adam, adagrad} × 10 seeds × 112 learning rates
(10,080 runs): most runs done, some diverged, failed, running or never started. Files hold what
``graftbench.rundir.write_json`` writes, written without its fsync so that building is quick.
The target is under 3 s. The CPU time is printed too: on a shared machine the wall time also
counts waiting for a core.

    python scripts/bench_report.py [--runs-per-pair 1120] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from graftbench import rundir
from graftbench.report.collect import collect
from graftbench.report.tables import build_tables, render

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
                            "run_id": f"{m}#{d}-lr{lr_index}-s{seed}",
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
        text = render(tables, "markdown")
        rendered, cpu = time.perf_counter(), time.process_time() - cpu
    print(
        f"{n} runs, {len(tables)} tables, {len(text)} characters, {len(problems)} problems\n"
        f"collect {collected - start:.2f} s + pivot {pivoted - collected:.2f} s + "
        f"render {rendered - pivoted:.2f} s = {rendered - start:.2f} s wall, {cpu:.2f} s CPU "
        "(target < 3 s)"
    )


if __name__ == "__main__":
    main()

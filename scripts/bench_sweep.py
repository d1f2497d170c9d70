"""Sweep machinery overheads: launching, expanding a grid, reading status.

    python scripts/bench_sweep.py [--runs 100] [--grid 10000] [--status-runs 1000]

1. Launcher overhead: the local launcher starts one worker process per run for 100 no-op runs
   (runs already done: the worker starts, reads run.json and exits), one at a time. Printed per
   run, with the bare interpreter start-up (`python -c pass`) measured side by side and
   subtracted. Floor: < 1.5 s per run beyond Python start-up.
2. Expanding a 10,000-point grid ({sgd, adam, adagrad}² × 1,112 seeds) into run specs with
   resolved configs and run ids. Floor: < 2 s.
3. `graftbench status` on a 1,000-run sweep (run.json plus a metrics.jsonl per run): collecting
   the states and rendering the table, in process. Floor: < 2 s.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from graftbench import rundir
from graftbench.rundir import Status
from graftbench.sweep.grid import expand
from graftbench.sweep.launchers import LocalLauncher
from graftbench.sweep.monitor import LineMonitor
from graftbench.sweep.plan import plan
from graftbench.sweep.status import collect, render


def launcher_overhead(root: Path, runs: int) -> tuple[float, float]:
    grid = expand(
        [
            "magnitude=sgd",
            "direction=sgd",
            f"seed=range(0,{runs})",
            f"results_dir={root}",
            "sweep.name=noop",
        ]
    )
    claimed = plan(grid).launch
    for run_dir in claimed:
        rundir.update_json(run_dir / rundir.RUN, lambda r: {**r, "status": Status.DONE})
    start = time.perf_counter()
    codes = LocalLauncher(max_parallel=1, poll_s=0.01).launch(
        claimed, LineMonitor(runs, io.StringIO())
    )
    per_run = (time.perf_counter() - start) / runs
    assert set(codes.values()) == {0}, codes
    start = time.perf_counter()
    for _ in range(runs):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    return per_run, (time.perf_counter() - start) / runs


def grid_expansion(points: int) -> tuple[float, int]:
    seeds = -(-points // 9)
    start = time.perf_counter()
    grid = expand(
        ["magnitude=sgd,adam,adagrad", "direction=sgd,adam,adagrad", f"seed=range(0,{seeds})"]
    )
    return time.perf_counter() - start, len(grid.runs)


def status_time(root: Path, runs: int) -> float:
    sweep = root / "status"
    for i in range(runs):
        run_dir = sweep / f"adam+sgd-s{i}-{i:08x}"
        run_dir.mkdir(parents=True)
        rundir.write_json(
            run_dir / rundir.RUN,
            {
                "run_id": run_dir.name,
                "magnitude": "adam",
                "direction": "sgd",
                "seed": i,
                "status": "done" if i % 3 else "running",
                "total_steps": 1000,
                "started_at": rundir.now(),
                "host": "elsewhere",
                "pid": 1,
            },
        )
        for step in range(0, 1001, 10):
            rundir.append_jsonl(
                run_dir / rundir.METRICS, {"kind": "train", "step": step, "loss": 1 / (step + 1)}
            )
        rundir.append_jsonl(
            run_dir / rundir.METRICS, {"kind": "eval", "step": 1000, "top1": 70.0, "top5": 90.0}
        )
    start = time.perf_counter()
    states = collect(sweep)
    table = render(states)
    assert len(states) == runs and table.count("\n") == runs + 2
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--grid", type=int, default=10_000)
    parser.add_argument("--status-runs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_run, python = launcher_overhead(root, args.runs)
        expand_s, points = grid_expansion(args.grid)
        status_s = status_time(root, args.status_runs)
    overhead = per_run - python
    rows = [
        (
            f"launch, per no-op run ({args.runs} runs)",
            f"{per_run:.3f} s",
            f"python start-up {python:.3f} s; overhead {overhead:.3f} s",
            overhead < 1.5,
        ),
        (f"expand a {points}-point grid", f"{expand_s:.2f} s", "", expand_s < 2.0),
        (f"status on {args.status_runs} runs", f"{status_s:.2f} s", "", status_s < 2.0),
    ]
    for name, value, note, ok in rows:
        print(f"{name:42s} {value:>9s}  {'ok  ' if ok else 'FAIL'}  {note}")


if __name__ == "__main__":
    main()

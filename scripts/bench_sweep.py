"""Sweep machinery at scale: launching, expanding, preparing, dry runs and status.

    python scripts/bench_sweep.py [--runs 100] [--grid 10000] [--dry-run 45000] [--status 10000]

Each figure is printed as ``<what>: <number> s`` with its floor (a quiet 2-core CPU):

1. launch overhead: the local launcher starts one worker per run for 100 no-op runs (runs
   already done: the worker starts, reads run.json and exits), one at a time; the bare
   interpreter start-up (``python -c pass``) is measured beside it and subtracted. < 1.5 s/run.
2. expand: a 10,000-point grid ({sgd, adam, adagrad}² × 1,112 seeds) into run specs with
   resolved configs, identities and run ids. < 2 s.
3. prepare: the same 10,000 runs planned as ``graftbench sweep`` does before launching: the
   manifest, every run directory with config.yaml and a claimed run.json. < 10 s.
4. dry run: ``graftbench sweep --dry-run 'seed=range(0,5000)'`` over the 3×3 pairs (45,000
   runs) as a command: wall time < 10 s and peak memory < 300 MB.
5. status: ``graftbench status`` on a 10,000-run sweep (run.json plus a metrics.jsonl per run),
   collected and rendered in process. < 2 s.
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
from graftbench.record import RunRecord
from graftbench.sweep.grid import expand
from graftbench.sweep.launchers import LocalLauncher
from graftbench.sweep.monitor import LineMonitor
from graftbench.sweep.plan import plan
from graftbench.sweep.status import collect, render

PAIRS = ["magnitude=sgd,adam,adagrad", "direction=sgd,adam,adagrad"]


def launch_overhead(root: Path, runs: int) -> tuple[float, float]:
    grid = expand(
        ["magnitude=sgd", f"seed=range(0,{runs})", f"results_dir={root}", "sweep.name=noop"]
    )
    claimed = plan(grid).launch
    for launch in claimed:  # finished already: the worker only checks and exits
        record = RunRecord(launch.run_dir)
        record.start(launch.token)
        record.finish(rundir.Status.DONE, {})
    launcher = LocalLauncher(max_parallel=1, poll_s=0.01)
    launcher.submit(claimed)
    start = time.perf_counter()
    codes = launcher.wait(LineMonitor(runs, io.StringIO()))
    per_run = (time.perf_counter() - start) / runs
    assert set(codes.values()) == {0}, codes
    start = time.perf_counter()
    for _ in range(runs):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    return per_run, (time.perf_counter() - start) / runs


def expansion(points: int) -> tuple[float, int]:
    seeds = -(-points // 9)
    start = time.perf_counter()
    grid = expand([*PAIRS, f"seed=range(0,{seeds})"])
    return time.perf_counter() - start, len(grid.runs)


def preparation(root: Path, points: int) -> tuple[float, int]:
    seeds = -(-points // 9)
    grid = expand([*PAIRS, f"seed=range(0,{seeds})", f"results_dir={root}", "sweep.name=big"])
    start = time.perf_counter()
    planned = plan(grid)
    return time.perf_counter() - start, len(planned.launch)


def dry_run(root: Path, points: int) -> tuple[float, float]:
    seeds = -(-points // 9)
    command = [sys.executable, "-m", "graftbench", "sweep", "--dry-run", *PAIRS]
    command += [f"seed=range(0,{seeds})", f"results_dir={root / 'dry'}"]
    # started from a small interpreter: a child forked from this process would count the
    # pages it shares with it until exec
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "done.returncode); print(done.stdout[:300])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True
    )
    seconds, peak_kb, code = done.stdout.split("\n", 1)[0].split()
    assert code == "0" and f"{points:,} runs" in done.stdout, done.stdout
    return float(seconds), int(peak_kb) / 1024


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
                "owner": {"host": "elsewhere", "pid": 1},
            },
            sync=False,
        )
        lines = [{"schema_version": rundir.SCHEMA_VERSION, "kind": "header"}]
        lines += [{"kind": "train", "step": s, "loss": 1 / (s + 1)} for s in range(0, 1001, 10)]
        lines += [{"kind": "eval", "step": 1000, "top1": 70.0, "top5": 90.0}]
        rundir.write_text_atomic(
            run_dir / rundir.METRICS,
            "".join(f"{rundir.json.dumps(r)}\n" for r in lines),
            sync=False,
        )
    start = time.perf_counter()
    states = collect(sweep)
    table = render(states)
    assert len(states) == runs and table.count("\n") >= runs
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--grid", type=int, default=10_000)
    parser.add_argument("--dry-run", type=int, default=45_000, dest="dry")
    parser.add_argument("--status", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_run, python = launch_overhead(root, args.runs)
        expand_s, points = expansion(args.grid)
        prepare_s, prepared = preparation(root, args.grid)
        dry_s, dry_mb = dry_run(root, args.dry)
        status_s = status_time(root, args.status)
    overhead = per_run - python
    figures = [
        (f"launch overhead per no-op run ({args.runs} runs)", overhead, "s", 1.5),
        ("python start-up (subtracted above)", python, "s", None),
        (f"expand a {points:,}-run grid", expand_s, "s", 2.0),
        (f"prepare a {prepared:,}-run sweep", prepare_s, "s", 10.0),
        (f"sweep --dry-run of {args.dry:,} runs", dry_s, "s", 10.0),
        (f"sweep --dry-run of {args.dry:,} runs, peak memory", dry_mb, "MB", 300.0),
        (f"status of {args.status:,} runs", status_s, "s", 2.0),
    ]
    for what, value, unit, floor in figures:
        verdict = (
            ""
            if floor is None
            else f"  (floor < {floor:g} {unit}: {'ok' if value < floor else 'FAIL'})"
        )
        print(f"{what}: {value:.3f} {unit}{verdict}")


if __name__ == "__main__":
    main()

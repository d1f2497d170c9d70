"""Does the demo's claim survive another thread count? The demo grid with trainer.threads=1
and trainer.threads=2, side by side.

    python scripts/thread_check.py                            # run both grids afresh
    python scripts/thread_check.py --threads1 DIR --threads2 DIR   # finished sweeps instead

Threads are part of a run's identity (kernels sum in another order), so the two grids have
different run ids and numbers that differ beyond the last digits once training amplifies them.
The claim holds on both when the ANOVA finds the same effects at the same alpha, the
clustering verdict of the training curves is the same, and each grid's estimates of how far
changing M and changing D move the primary metric (and the clustering ratio) lie within the
other grid's 95% CIs. Prints the comparison; ``--out`` (default
``results/reference/demo/threads.json``) keeps it for the README (``scripts/reference.py``),
which shows it when the threads=1 grid is the reference's own runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import reference  # scripts/reference.py (this script's folder is on sys.path)

PRIMARY = reference.METRICS[0]
RUNS_ROOT = reference.ROOT / "results" / "thread-check-runs"


def summarize(sweep_dir: Path) -> tuple[dict[str, Any], list[str], int]:
    """The primary metric's table as table.json data, its run ids and its decimals."""
    from graftbench.report import tables

    runs, built = reference.load(sweep_dir)
    table = next(t for t in built if t.name == PRIMARY)
    data = json.loads(tables.render([table], "json"))[0]
    return data, sorted(runs["run_id"]), tables.decimals_for(table)


def within(x: dict[str, Any], ci: dict[str, Any]) -> bool:
    return ci["low"] is not None and ci["low"] <= x["estimate"] <= ci["high"]


def compare(one: dict[str, Any], two: dict[str, Any]) -> dict[str, bool]:
    """Which parts of the claim agree between the two grids (see the module docstring)."""
    s1, s2 = one["statistics"], two["statistics"]
    c1, c2 = s1["clustering"], s2["clustering"]
    return {
        "which of M and D drives the result (ANOVA main effects)": (
            reference.headline(one) == reference.headline(two)
        ),
        "M×D interaction (ANOVA)": (
            ("M×D" in reference.significant(one)) == ("M×D" in reference.significant(two))
        ),
        **{
            f"how far changing {term} moves {PRIMARY} (each within the other's CI)": (
                within(s1["spread"][key], s2["spread"][key])
                and within(s2["spread"][key], s1["spread"][key])
            )
            for term, key in (("M", "by_magnitude"), ("D", "by_direction"))
        },
        "clustering verdict of the training curves": c1["verdict"] == c2["verdict"],
        "clustering ratio M/D (each within the other's CI)": (
            within(c1["ratio"], c2["ratio"]) and within(c2["ratio"], c1["ratio"])
        ),
    }


def cell_differences(one: dict[str, Any], two: dict[str, Any]) -> tuple[float, float]:
    """(largest |difference| of cell means, median seed std over both grids' cells)."""
    means = [np.array([c["mean"] for c in t["cells"]], dtype=float) for t in (one, two)]
    stds = np.array([c["std"] for t in (one, two) for c in t["cells"]], dtype=float)
    return float(np.nanmax(np.abs(means[0] - means[1]))), float(np.nanmedian(stds))


def report(tables: dict[str, dict[str, Any]], digits: int) -> str:
    lines = []
    for threads, table in tables.items():
        spread = table["statistics"]["spread"]
        lines += [
            f"trainer.threads={threads}: {reference.headline(table)}",
            f"  changing M moves {PRIMARY} by {reference.interval(spread['by_magnitude'], digits)}"
            f", changing D by {reference.interval(spread['by_direction'], digits)}",
            f"  ANOVA: {reference.anova_text(table)}",
            f"  {reference.clustering_text(table)}",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads1", type=Path, help="a finished demo sweep, trainer.threads=1")
    parser.add_argument("--threads2", type=Path, help="a finished demo sweep, trainer.threads=2")
    parser.add_argument("--out", type=Path, default=reference.REFERENCE / "threads.json")
    args = parser.parse_args()
    sweeps, walls = {}, {}
    for threads, given in (("1", args.threads1), ("2", args.threads2)):
        if given is None:
            given, timing = reference.run_demo(RUNS_ROOT, [f"trainer.threads={threads}"])
            walls[threads] = {"wall_s": round(timing.wall_s, 1), "load": round(timing.load, 1)}
        sweeps[threads] = given
    summaries = {t: summarize(d) for t, d in sweeps.items()}
    tables = {t: s[0] for t, s in summaries.items()}
    digits = max(s[2] for s in summaries.values())
    agree = compare(tables["1"], tables["2"])
    largest, std = cell_differences(tables["1"], tables["2"])
    shared = set(summaries["1"][1]) & set(summaries["2"][1])
    print(report(tables, digits))
    print(
        f"cell means differ by up to {largest:.{digits}f} (median seed std {std:.{digits}f}); "
        f"run ids shared by the two grids: {len(shared)}"
    )
    for part, ok in agree.items():
        print(f"  {part}: {'agrees' if ok else 'DIFFERS'}")
    holds = all(agree.values())
    print(f"the claim {'holds' if holds else 'does not hold'} on both within its CIs")
    result = {
        "metric": tables["1"]["metric"],
        "threads": tables,
        "runs": {t: s[1] for t, s in summaries.items()},
        "sweep_timing": walls,
        "agree": agree,
        "holds": holds,
        "max_cell_difference": largest,
        "median_seed_std": std,
        "decimals": digits,
    }
    from graftbench import rundir

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_text_atomic(args.out, json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

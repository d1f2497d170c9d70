"""Read a sweep's results into pandas: one row per run, and training curves in long form.

Everything is read through :mod:`graftbench.rundir`. A file that cannot be read (half-written,
future ``schema_version``, ...) never raises: its run gets the status ``unreadable`` and a
message in the returned list of problems, so a table can still be drawn around it.

Row order and the order of the ``magnitude``/``direction`` categories follow the manifest's
run list (grid order: sgd, adam, adagrad), not the alphabet; runs outside a manifest follow
:data:`KNOWN_OPTIMIZERS`, then the alphabet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.rundir import RunDirError, Status

MISSING = "missing"  # in the manifest, but no run directory yet
UNREADABLE = "unreadable"  # a file the run needs could not be read (see the problems)
STATUSES = (*(s.value for s in Status), MISSING, UNREADABLE)

KNOWN_OPTIMIZERS = ("sgd", "adam", "adagrad")
IDENTITY = ("run_id", "magnitude", "direction", "seed")
RUN_COLUMNS = (
    *IDENTITY,
    "status",
    "task",
    "step",
    "total_steps",
    "wall_time_s",
    "diverged_step",
    "error",
    "problem",
    "path",
    "in_grid",
    "optimizer_state_bytes",
)
# a run of D with a transferred schedule (run.json's ``transfer``); NaN for every other run
TRANSFER_PREFIX = "transfer."
TRANSFER_COLUMNS = tuple(f"{TRANSFER_PREFIX}{k}" for k in ("source_run_id", "source_label", "kind"))
OVERRIDE_PREFIX = "overrides."
FINISHED = {s.value for s in Status if s.finished}
# the columns collect() works out itself; every other run column is copied from summary.json
# and run.json as they record it
COMPUTED_COLUMNS = ("status", "problem", "path", "in_grid")
SOURCE_FIELDS = tuple(c for c in RUN_COLUMNS if c not in COMPUTED_COLUMNS)


def collect(sweep_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[str]]:
    """All runs of a sweep (or one run directory) as a DataFrame, and the reading problems.

    Columns: :data:`RUN_COLUMNS`, :data:`TRANSFER_COLUMNS`, then ``overrides.<key>`` for every
    swept value of the run's grid point, then ``final.<metric>`` and ``best.<metric>`` from
    ``summary.json``. ``in_grid`` is False for a run directory the sweep's manifest does not
    list (e.g. a ``graftbench train`` with other settings into the same folder; see
    :func:`split_grid`); without a manifest every run is the grid.
    ``magnitude`` and ``direction`` are categoricals in grid order. ``status`` is a
    :class:`~graftbench.rundir.Status` value, :data:`MISSING` or :data:`UNREADABLE`.

    Raises :class:`~graftbench.errors.UserError` only when ``sweep_dir`` is not a directory.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such results directory")
    problems: list[str] = []
    planned = _manifest_runs(root, problems)
    # Sequential on purpose: the files are small and usually cached, and JSON parsing holds the
    # GIL, so a thread pool measured slower (scripts/bench_report.py).
    run_dirs = _run_dirs(root, planned)
    results = [_read_run(*run) for run in run_dirs]
    for (row, run_problems), (_, entry, _) in zip(results, run_dirs, strict=True):
        row["in_grid"] = bool(entry) or not planned
        problems += run_problems
    grid = {name: [e.get(name) for e in planned] for name in ("magnitude", "direction")}
    return _frame([row for row, _ in results], grid), problems


def split_grid(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs of the sweep's grid, the other runs found in its folder) of a
    :func:`collect` frame: tables are built from the first, the second are only listed."""
    inside = runs["in_grid"].fillna(True).astype(bool)
    return runs[inside], runs[~inside]


def load_curves(
    sweep_dir: str | os.PathLike[str],
    kinds: Sequence[str] = ("train", "eval"),
    runs: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The ``metrics.jsonl`` records of ``kinds`` for every run, in long form.

    Columns: run_id, magnitude, direction, seed, status, kind, step, then every record field,
    nested mappings flattened with dots (``graft.ratio_mean``; a ``layers`` record gives
    ``ratio.<tensor name>``). ``runs`` (e.g. a filtered :func:`collect` frame) limits which runs
    are read. A torn last line is ignored; if a resumed run logged a step twice, the last record
    wins. Runs without a metrics file yet are skipped silently.
    """
    problems: list[str] = []
    if runs is None:
        runs, problems = collect(sweep_dir)
    wanted = set(kinds)
    records: list[dict[str, Any]] = []
    for run in runs.itertuples(index=False):
        path = Path(run.path) / rundir.METRICS if isinstance(run.path, str) else None
        if path is None or not path.is_file():
            continue
        try:
            lines = rundir.read_jsonl(path)
        except RunDirError as err:
            problems.append(str(err))
            continue
        identity = {k: getattr(run, k) for k in (*IDENTITY, "status")}
        records += [
            {**identity, **_flatten(r)} for r in lines if r.get("kind") in wanted and "step" in r
        ]
    columns = [*IDENTITY, "status", "kind", "step"]
    curves = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=columns)
    curves = curves.drop_duplicates(["run_id", "kind", "step"], keep="last")
    for name in ("magnitude", "direction"):
        curves[name] = pd.Categorical(curves[name], categories=runs[name].cat.categories)
    rest = [c for c in curves.columns if c not in columns]
    return curves[columns + rest].reset_index(drop=True), problems


# -- where the runs are ---------------------------------------------------------------------
def _manifest_runs(root: Path, problems: list[str]) -> list[dict[str, Any]]:
    path = root / rundir.SWEEP
    if not path.is_file():
        return []
    try:
        manifest = rundir.read_any_json(path)
    except RunDirError as err:
        problems.append(f"{err}; listing the run directories instead")
        return []
    entries = manifest.get("runs")
    if not isinstance(entries, list):
        problems.append(f"{path}: no list of runs; listing the run directories instead")
        return []
    valid = [e for e in entries if isinstance(e, dict) and isinstance(e.get("run_id"), str)]
    outside = [e["run_id"] for e in valid if not rundir.is_run_id(e["run_id"])]
    if outside:  # "../x", "/etc": a manifest may come from anyone
        problems.append(
            f"{path}: ignored {len(outside)} run id(s) that are not names: {outside[0]!r}"
        )
    return [e for e in valid if rundir.is_run_id(e["run_id"])]


def _run_dirs(root: Path, planned: list[dict[str, Any]]) -> list[tuple[Path, dict[str, Any], bool]]:
    """(run directory, manifest entry, whether it exists) in grid order, then the run
    directories outside the manifest."""
    if not planned and _is_run_dir(root):
        return [(root, {}, True)]
    present = {
        e.name
        for e in os.scandir(root)
        if e.is_dir(follow_symlinks=False) and rundir.is_run_id(e.name)
    }
    runs = [(root / e["run_id"], e, e["run_id"] in present) for e in planned]
    extra = present - {e["run_id"] for e in planned}
    runs += [(root / name, {}, True) for name in sorted(extra) if _is_run_dir(root / name)]
    return runs


def _is_run_dir(path: Path) -> bool:
    return (path / rundir.RUN).is_file() or (path / rundir.SUMMARY).is_file()


# -- one run --------------------------------------------------------------------------------
def _read_run(path: Path, entry: dict[str, Any], exists: bool) -> tuple[dict[str, Any], list[str]]:
    """The run's row and the problems met reading it."""
    row: dict[str, Any] = {"run_id": entry.get("run_id", path.name), "path": str(path)}
    row.update({k: entry[k] for k in ("magnitude", "direction", "seed") if k in entry})
    row.update(_overrides(entry.get("overrides")))
    if not exists:
        row["status"] = MISSING
        return row, []

    # A finished run is never rerun (Status.finished), so the summary of a planned run is
    # enough; run.json is read for a run in progress, failed, without a readable summary, or
    # outside the manifest (for its grid point).
    summary, summary_problem = _read_optional(path / rundir.SUMMARY)
    finished = summary is not None and summary.get("status") in FINISHED
    run, run_problem = (None, None) if finished and entry else _read_optional(path / rundir.RUN)
    if summary:
        row["step"] = summary.get("steps")
        for which in ("final", "best"):
            values = summary.get(which)
            if isinstance(values, Mapping):
                row.update({f"{which}.{k}": v for k, v in values.items()})
    for source in (summary, run):  # run.json, when read, has the last word
        if source:
            row.update({k: source[k] for k in SOURCE_FIELDS if source.get(k) is not None})
            row.update(_transfer(source.get("transfer")))
    if run and not entry:
        row.update(_overrides(run.get("overrides")))

    status = (run or summary or {}).get("status")
    problem = None
    if run_problem:
        problem = run_problem
    elif not run and not summary:
        problem = summary_problem or f"{path / rundir.RUN}: missing"
    elif status not in STATUSES:
        problem = f"{path / (rundir.RUN if run else rundir.SUMMARY)}: unknown status {status!r}"
    elif status == Status.DONE and not summary:
        problem = summary_problem or f"{path / rundir.SUMMARY}: missing for a done run"
    if problem is not None:
        row["problem"] = problem
        row["status"] = UNREADABLE
        return row, [problem]
    row["status"] = status
    # a torn or future summary of an unfinished run is worth a note, not a marked cell
    return row, [summary_problem] if summary_problem else []


def _transfer(transfer: Any) -> dict[str, Any]:
    if not isinstance(transfer, Mapping):
        return {}
    fields = {c: transfer.get(c.removeprefix(TRANSFER_PREFIX)) for c in TRANSFER_COLUMNS}
    return {k: v for k, v in fields.items() if isinstance(v, str)}


def transferred(runs: pd.DataFrame) -> pd.Series:
    """Which runs trained D with a transferred schedule: not cells of the M x D grid (see
    :mod:`graftbench.report.transfers`)."""
    column = f"{TRANSFER_PREFIX}source_run_id"
    if column not in runs:
        return pd.Series(False, index=runs.index)
    return runs[column].notna()


def _read_optional(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(content, None), (None, None) when absent, or (None, the reason it is unreadable)."""
    try:
        return rundir.read_any_json(path), None
    except RunDirError as err:
        return None, (None if not path.exists() else str(err))


def _overrides(overrides: Any) -> dict[str, Any]:
    """A grid point as ``overrides.<key>`` columns, from the manifest's Hydra ``key=value``
    strings (values typed: ``0.1`` a float, ``null`` None) or from a mapping."""
    if isinstance(overrides, Mapping):
        items = [(str(k), _scalar(v)) for k, v in overrides.items()]
    elif isinstance(overrides, list):
        pairs = (str(o).split("=", 1) for o in overrides if "=" in str(o))
        items = [(k.lstrip("+~"), _typed(v)) for k, v in pairs]
    else:
        return {}
    return {f"{OVERRIDE_PREFIX}{k}": v for k, v in items}


def _typed(text: str) -> Any:
    """An override value as Hydra reads it, near enough for filtering and sorting."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # ``1e-05``, which YAML 1.1 reads as text
        except ValueError:
            return value
    return _scalar(value)


def _scalar(value: Any) -> Any:
    """Lists and mappings as text, so override columns stay hashable for grouping."""
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# -- the frame ------------------------------------------------------------------------------
def _frame(rows: list[dict[str, Any]], grid: dict[str, list[Any]]) -> pd.DataFrame:
    runs = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for column in (*RUN_COLUMNS, *TRANSFER_COLUMNS):
        if column not in runs:
            runs[column] = None
    for name, planned in grid.items():
        values = runs[name].map(_optimizer_name)
        runs[name] = pd.Categorical(values, categories=grid_order(planned, values))
    runs["seed"] = pd.to_numeric(runs["seed"], errors="coerce").astype("Int64")
    for column in ("step", "total_steps", "wall_time_s", "diverged_step", "optimizer_state_bytes"):
        runs[column] = pd.to_numeric(runs[column], errors="coerce")
    overrides = sorted(c for c in runs.columns if c.startswith(OVERRIDE_PREFIX))
    metrics = sorted(c for c in runs.columns if c.startswith(("final.", "best.")))
    for column in metrics:
        runs[column] = pd.to_numeric(runs[column], errors="coerce").astype(float)
    return runs[[*RUN_COLUMNS, *TRANSFER_COLUMNS, *overrides, *metrics]]


def _optimizer_name(value: Any) -> Any:
    """``adam`` from ``adam`` or from a rule spec ``{"name": "adam", "lr": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        value = value.get("name")
    return value if isinstance(value, str) else np.nan


def grid_order(first: Iterable[Any], more: Iterable[Any] = ()) -> list[str]:
    """Names in order of first appearance in ``first`` (the manifest), then the rest of
    ``more`` in :data:`KNOWN_OPTIMIZERS` order, then alphabetically."""
    order = list(dict.fromkeys(_optimizer_name(v) for v in first))
    order = [v for v in order if isinstance(v, str)]
    rest = {v for v in more if isinstance(v, str)} - set(order)
    known = [v for v in KNOWN_OPTIMIZERS if v in rest]
    return order + known + sorted(rest - set(known))

"""Schedule transfer side by side: D alone, M#D, D with the transferred schedule, M alone.

``graftbench table SWEEP --transfer``: one table per grafted pair M#D that a run of the sweep
transferred from (``schedule=transferred``, run.json's ``transfer``). Its rows are the runs of
the sweep in four roles, each with its optimizer-state memory (``optimizer_state_bytes``: the
tensors of the optimizer's state after the first step) and its final metrics, mean ± std over
seeds:

    D alone           D with no direction and its own schedule
    M#D               the grafted pair (the source of the transfer and its other seeds)
    D + transferred   D alone with lr_layer(t) = lr_D · schedule(t) · c_layer(t), per kind
    M alone           for reference: what M costs and reaches by itself

Runs of one role that differ in their learning rate or schedule get a row each. A sweep holds
one workload; that the runs of a table share their model and data is assumed, not checked.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.report.collect import TRANSFER_PREFIX, transferred
from graftbench.report.tables import FORMATS, default_metrics, metric_column
from graftbench.rundir import RunDirError, Status

D_ALONE, GRAFTED, TRANSFERRED, M_ALONE = "D alone", "M#D", "D + transferred", "M alone"
ROLES = (D_ALONE, GRAFTED, TRANSFERRED, M_ALONE)
MEMORY_NOTE = (
    "optimizer state: bytes of the tensors in the optimizer's state after the first step "
    "(run.json optimizer_state_bytes); D + transferred keeps D's state alone"
)


@dataclass(frozen=True)
class Row:
    """The runs of one role (and learning rate and schedule) and what they reached."""

    role: str
    optimizer: str
    lr: str
    schedule: str
    run_ids: list[str]
    state_bytes: float  # the median over the runs that recorded it; NaN if none did
    values: dict[str, tuple[float, float, int]]  # metric column -> (mean, std, n) over done runs
    others: dict[str, int] = field(default_factory=dict)  # runs without a value, by status


@dataclass(frozen=True)
class TransferTable:
    """One grafted pair M#D and the runs that compare D with its transferred schedule."""

    magnitude: str
    direction: str
    sources: list[str]  # the source run ids the transferred runs name
    metrics: list[str]  # metric columns, e.g. final.top1
    rows: list[Row]

    @property
    def title(self) -> str:
        return f"schedule transfer: {self.magnitude}#{self.direction} -> {self.direction} alone"


def build(runs: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[TransferTable]:
    """The tables of every pair transferred from, in the order the transferred runs appear.

    ``runs``: :func:`graftbench.report.collect.collect`'s frame. Raises ``UserError`` when no
    run of the sweep has a transferred schedule."""
    moved = runs[transferred(runs)]
    if moved.empty:
        raise UserError(
            "no run of this sweep has a transferred schedule (graftbench train magnitude=<D> "
            "schedule=transferred schedule.source=...)"
        )
    columns = [metric_column(m) for m in (metrics or _default_metrics(runs))]
    missing = [c for c in columns if c not in runs]
    if missing:
        raise UserError(f"no run reports the metric {missing[0].removeprefix('final.')!r}")
    labels = moved[f"{TRANSFER_PREFIX}source_label"].astype(str)
    tables = []
    for label in dict.fromkeys(labels):
        m, _, d = label.partition("#")
        family = moved[labels == label]
        roles = {
            D_ALONE: _plain(runs, d),
            GRAFTED: runs[
                (runs["magnitude"].astype(str) == m)
                & (runs["direction"].astype(str) == d)
                & ~transferred(runs)
            ],
            TRANSFERRED: family,
            M_ALONE: _plain(runs, m),
        }
        rows = [row for role in ROLES for row in _rows(role, roles[role], columns)]
        sources = list(dict.fromkeys(family[f"{TRANSFER_PREFIX}source_run_id"].astype(str)))
        tables.append(TransferTable(m, d, sources, columns, rows))
    return tables


def render(
    tables: Sequence[TransferTable], fmt: str = "markdown", decimals: int | None = None
) -> str:
    """``markdown`` or ``latex`` (a table per pair, with the memory note), ``csv`` (one tidy
    row per role row, full precision) or ``json``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return pd.DataFrame([r for t in tables for r in _tidy(t)]).to_csv(index=False)
    if fmt == "json":
        data = [{"title": t.title, "sources": t.sources, "rows": _tidy(t)} for t in tables]
        return json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"
    parts = []
    for table in tables:
        names = [c.split(".", 1)[1] for c in table.metrics]
        headers = ["run", "optimizer", "lr", "schedule", "optimizer state", *names, "seeds"]
        body = [
            [
                row.role,
                row.optimizer,
                row.lr,
                row.schedule,
                memory(row.state_bytes),
                *(_cell(row, c, decimals) for c in table.metrics),
                str(len(row.run_ids)),
            ]
            for row in table.rows
        ]
        sources = ", ".join(table.sources)
        if fmt == "markdown":
            text = tabulate(body, headers, tablefmt="pipe", disable_numparse=True)
            parts.append(
                f"### {table.title} (from {sources}; final metrics, mean ± std over seeds)\n\n"
                f"{text}\n\n{MEMORY_NOTE}\n"
            )
        else:
            text = tabulate(body, headers, tablefmt="latex_booktabs", disable_numparse=True)
            parts.append(f"% {table.title} (from {sources})\n{text}\n% {MEMORY_NOTE}\n")
    return "\n".join(parts)


def memory(value: float) -> str:
    """Bytes as a short size: ``612 B``, ``77.4 KiB``, ``1.25 MiB``; ``n/a`` when unknown."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"


# -- rows -----------------------------------------------------------------------------------
def _default_metrics(runs: pd.DataFrame) -> list[str]:
    chosen = default_metrics(runs)
    reported = {c.split(".", 1)[1] for c in runs.columns if c.startswith("final.")}
    return chosen + (["loss"] if "loss" in reported and "loss" not in chosen else [])


def _plain(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    alone = (runs["magnitude"].astype(str) == name) & (runs["direction"].astype(str) == name)
    return runs[alone & ~transferred(runs)]


def _rows(role: str, runs: pd.DataFrame, columns: list[str]) -> list[Row]:
    """One row per configuration among ``runs`` (their stored identity less the seed: seeds
    are replicates); rows that would read the same get their configuration's hash."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for run in runs.to_dict("records"):
        cfg = _config(run["path"])
        variant = {k: v for k, v in cfg.items() if k not in ("seed", "schema_version")}
        text = json.dumps(variant, sort_keys=True, default=str)
        key = (*_describe(role, run, cfg), hashlib.sha256(text.encode()).hexdigest()[:8])
        groups.setdefault(key, []).append(run)
    shown = [key[:3] for key in groups]
    rows = []
    for (optimizer, lr, schedule, variant), members in groups.items():
        if shown.count((optimizer, lr, schedule)) > 1:
            schedule = f"{schedule}, config {variant}"
        frame = pd.DataFrame(members)
        done = frame["status"] == Status.DONE
        values = {}
        for column in columns:
            numbers = pd.to_numeric(frame.get(column), errors="coerce")[done].dropna()
            std = float(numbers.std()) if len(numbers) > 1 else math.nan
            mean = float(numbers.mean()) if len(numbers) else math.nan
            values[column] = (mean, std, len(numbers))
        others = frame.loc[~done, "status"].value_counts().to_dict()
        state = pd.to_numeric(frame["optimizer_state_bytes"], errors="coerce").dropna()
        rows.append(
            Row(
                role=role,
                optimizer=optimizer,
                lr=lr,
                schedule=schedule,
                run_ids=list(frame["run_id"]),
                state_bytes=float(state.median()) if len(state) else math.nan,
                values=values,
                others={str(k): int(v) for k, v in others.items()},
            )
        )
    return rows


def _describe(role: str, run: dict[str, Any], cfg: dict[str, Any]) -> tuple[str, str, str]:
    """(optimizer, learning rate, schedule) as the table shows them."""
    magnitude, direction = cfg.get("magnitude") or {}, cfg.get("direction") or {}
    schedule = (cfg.get("schedule") or {}).get("name", "?")
    lr_m, lr_d = _lr(magnitude), _lr(direction)
    if role == GRAFTED:
        return f"{run['magnitude']}#{run['direction']}", f"M {lr_m}, D {lr_d}", schedule
    if role == TRANSFERRED:
        kind, source = run[f"{TRANSFER_PREFIX}kind"], run[f"{TRANSFER_PREFIX}source_run_id"]
        return str(run["magnitude"]), f"{lr_m} · c(t)", f"transferred {kind} ({source})"
    return str(run["magnitude"]), lr_m, schedule


def _lr(spec: Mapping[str, Any]) -> str:
    value = spec.get("lr")
    return f"{value:g}" if isinstance(value, int | float) else "?"


def _config(path: Any) -> dict[str, Any]:
    """The run's stored config (its identity), or nothing when it cannot be read."""
    if not isinstance(path, str):
        return {}
    try:
        return rundir.read_yaml(Path(path) / rundir.CONFIG, versions=rundir.READABLE_VERSIONS)
    except RunDirError:
        return {}


# -- rendering ------------------------------------------------------------------------------
def _cell(row: Row, column: str, decimals: int | None) -> str:
    mean, std, n = row.values[column]
    others = ", ".join(f"{count} {status}" for status, count in sorted(row.others.items()))
    if n == 0:
        return others or "n/a"
    places = decimals if decimals is not None else _places(mean)
    text = f"{mean:.{places}f}" + (f" ± {std:.{places}f}" if n > 1 else "")
    return f"{text} ({others})" if others else text


def _places(value: float) -> int:
    """Three significant digits (96.4, 0.123), at most 6 decimals."""
    if not math.isfinite(value) or value == 0:
        return 2
    return int(min(6, max(0, 2 - math.floor(math.log10(abs(value))))))


def _tidy(table: TransferTable) -> list[dict[str, Any]]:
    out = []
    for row in table.rows:
        record = {
            "pair": f"{table.magnitude}#{table.direction}",
            "role": row.role,
            "optimizer": row.optimizer,
            "lr": row.lr,
            "schedule": row.schedule,
            "optimizer_state_bytes": row.state_bytes,
            "runs": " ".join(row.run_ids),
            "others": ", ".join(f"{v} {k}" for k, v in sorted(row.others.items())),
        }
        for column, (mean, std, n) in row.values.items():
            record.update({f"{column}.mean": mean, f"{column}.std": std, f"{column}.n": n})
        out.append(record)
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value

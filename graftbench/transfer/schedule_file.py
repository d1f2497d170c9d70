"""The transfer file: a versioned JSON holding a distilled per-layer correction.

    {
      "format": "graftbench-transfer",
      "schema_version": 1,
      "kind": "static" | "piecewise",
      "definition": "...",              # the definition of c, for a reader without this code
      "source": {run_id, config_hash, label, magnitude, direction, schedule, granularity,
                 epochs, steps_per_epoch, total_steps},
      "fit": {method, knots, min_schedule_factor, steps, dropped_steps, dropped_ratios},
      "layers": [{"name", "multiplier" (static) | "knots" + "values" (piecewise),
                  "points", "quality": {"rel_rmse", "r2"}}, ...]
    }

The file has its own ``schema_version``, separate from the run directory's: it travels on its
own (``--out`` anywhere, ``schedule.source=FILE``), so its version moves only when this format
does. It holds no paths and no times, so distilling the same run twice gives the same bytes, and
:attr:`Transfer.content_hash` (what a transferred run's identity records) depends on the
correction alone. Reading one parses JSON and checks every field; nothing in it is executed or
instantiated.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftbench import rundir
from graftbench.errors import UserError
from graftbench.transfer.fit import Fit

__all__ = ["DEFINITION", "FORMAT", "KINDS", "SCHEMA_VERSION", "Transfer", "read", "write"]

FORMAT = "graftbench-transfer"
SCHEMA_VERSION = 1
KINDS = ("static", "piecewise")
DEFINITION = (
    "c_layer(t) = ratio_layer(t) / schedule(t): ratio = ||dM||/||dD|| of the source run M#D at "
    "its step t (0-based), schedule(t) the source run's learning-rate factor at that step; "
    "steps with schedule(t) < fit.min_schedule_factor are not fitted. A run of D alone steps "
    "with lr_layer(t) = lr_D * schedule(t) * c_layer(t / total_steps), lr_D being "
    "source.direction.lr unless overridden; static: c_layer = multiplier; piecewise: linear "
    "between (knots, values) in the fraction of training, constant beyond the end knots."
)


@dataclass(frozen=True)
class Transfer:
    """A distilled correction: one :class:`~graftbench.transfer.fit.Fit` per layer, in the
    model's parameter order, and where it came from."""

    kind: str
    layers: dict[str, Fit]
    source: dict[str, Any]
    fit: dict[str, Any]

    @property
    def direction(self) -> dict[str, Any]:
        """D's optimizer spec in the source run (``name``, ``lr``, ...)."""
        return dict(self.source["direction"])

    @property
    def direction_lr(self) -> float:
        return float(self.source["direction"]["lr"])

    @property
    def content_hash(self) -> str:
        """sha256 of the content (canonical JSON): what a transferred run's identity holds."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> str:
        """One line on what the transfer holds: the median over layers of c at the start and
        the end of training (a static transfer: the multipliers' range) and the fit quality."""
        label, d = self.source["label"], self.direction["name"]
        head = f"{label} -> {d} alone: {self.kind} correction of {len(self.layers)} layers"
        if self.kind == "static":
            values = sorted(fit.values[0] for fit in self.layers.values())
            shape = (
                f"multipliers {values[0]:.3g} .. {_median(values):.3g} (median) .. {values[-1]:.3g}"
            )
        else:
            first = _median([fit.values[0] for fit in self.layers.values()])
            last = _median([fit.values[-1] for fit in self.layers.values()])
            shape = f"c from {first:.3g} to {last:.3g} over training (median over layers)"
        misses = [f.quality.get("rel_rmse") for f in self.layers.values()]
        misses = sorted(m for m in misses if isinstance(m, int | float))
        quality = (
            f"; rel. RMSE median {_median(misses):.2g}, max {misses[-1]:.2g}" if misses else ""
        )
        return f"{head}, {shape}{quality}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "definition": DEFINITION,
            "source": self.source,
            "fit": self.fit,
            "layers": [_layer_json(self.kind, name, fit) for name, fit in self.layers.items()],
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Transfer:
        """Validate a parsed file; every problem is a one-line :class:`UserError`."""
        check = _Checker(where)
        check.that(isinstance(data, dict), "not a JSON object")
        check.that(data.get("format") == FORMAT, f"not a transfer file (no format {FORMAT!r})")
        version = data.get("schema_version")
        check.that(
            version == SCHEMA_VERSION,
            f"transfer schema_version {version!r} is not supported (this graftbench reads "
            f"{SCHEMA_VERSION})",
        )
        kind = data.get("kind")
        check.that(kind in KINDS, f"kind {kind!r} is not one of {', '.join(KINDS)}")
        source = check.mapping(data, "source")
        direction = check.mapping(source, "direction")
        check.that(isinstance(direction.get("name"), str), "source.direction.name is missing")
        check.number(direction.get("lr"), "source.direction.lr", positive=True)
        check.that(
            isinstance(check.mapping(source, "schedule").get("name"), str),
            "source.schedule.name is missing",
        )
        fit = check.mapping(data, "fit")
        layers = data.get("layers")
        check.that(isinstance(layers, list) and layers, "layers: expected a non-empty list")
        parsed: dict[str, Fit] = {}
        for index, layer in enumerate(layers):
            name, layer_fit = _parse_layer(check, kind, index, layer)
            check.that(name not in parsed, f"layer {name!r} appears twice")
            parsed[name] = layer_fit
        return cls(kind, parsed, source, fit)


def read(path: Path) -> Transfer:
    """The transfer file at ``path``, validated (raises :class:`UserError`). Read like a run
    directory's files (a results directory may come from anyone): never through a symbolic
    link, at most ``rundir.MAX_BYTES[rundir.TRANSFER]`` bytes."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{path}: no such transfer file")
    if path.is_dir():
        raise UserError(f"{path}: not a transfer file (a directory)")
    try:
        text = rundir.read_text(path, rundir.MAX_BYTES[rundir.TRANSFER])
    except rundir.RunDirError as err:
        raise UserError(f"not a transfer file: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not a transfer file (invalid JSON: {err})") from None
    return Transfer.from_json(data, str(path))


def write(transfer: Transfer, path: Path) -> None:
    """Write ``transfer`` atomically; an existing file is replaced only if it is a transfer
    file (never a run's results)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; --out takes a file name")
    if path.exists():
        try:
            read(path)
        except UserError:
            raise UserError(f"refusing to overwrite {path}: it is not a transfer file") from None
    rundir.write_text_atomic(path, json.dumps(transfer.to_json(), indent=2) + "\n")


def _layer_json(kind: str, name: str, fit: Fit) -> dict[str, Any]:
    shape = (
        {"multiplier": fit.values[0]}
        if kind == "static"
        else {"knots": list(fit.knots), "values": list(fit.values)}
    )
    return {"name": name, **shape, "points": fit.points, "quality": fit.quality}


def _parse_layer(check: _Checker, kind: str, index: int, layer: Any) -> tuple[str, Fit]:
    check.that(isinstance(layer, dict), f"layers[{index}]: expected an object")
    name = layer.get("name")
    check.that(isinstance(name, str) and name, f"layers[{index}]: name is missing")
    where = f"layer {name!r}"
    if kind == "static":
        knots = (0.0,)
        values = (check.number(layer.get("multiplier"), f"{where}: multiplier"),)
    else:
        knots = tuple(check.numbers(layer.get("knots"), f"{where}: knots"))
        values = tuple(check.numbers(layer.get("values"), f"{where}: values"))
        check.that(len(knots) == len(values), f"{where}: {len(knots)} knots, {len(values)} values")
        check.that(
            all(a < b for a, b in itertools.pairwise(knots)),
            f"{where}: knots must increase",
        )
    points = layer.get("points", 0)
    quality = layer.get("quality", {})
    check.that(isinstance(points, int) and not isinstance(points, bool), f"{where}: points")
    check.that(isinstance(quality, dict), f"{where}: quality must be an object")
    return name, Fit(knots, values, points, quality)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where

    def that(self, condition: Any, problem: str) -> None:
        if not condition:
            raise UserError(f"{self.where}: {problem}")

    def mapping(self, parent: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = parent.get(key)
        self.that(isinstance(value, dict), f"{key}: expected an object")
        return value

    def number(self, value: Any, what: str, *, positive: bool = False) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
        sign = "positive" if positive else "non-negative"
        self.that(ok, f"{what}: expected a finite {sign} number, got {value!r}")
        return float(value)

    def numbers(self, values: Any, what: str) -> list[float]:
        self.that(isinstance(values, list) and values, f"{what}: expected a non-empty list")
        return [self.number(v, what) for v in values]

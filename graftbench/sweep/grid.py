"""Expand a sweep into runs: the cartesian product of its axes, each point a resolved config.

Axes come from the config's ``sweep.grid`` (``magnitude: [sgd, adam, adagrad]``) and from comma
lists on the command line (``seed=0,1,2``, any Hydra sweep syntax), the command line winning
for a key both name; a plain ``key=value`` pins a key the config sweeps. Any config key can be
an axis.

Speed: Hydra composes once per combination of config-group choices (``magnitude``,
``direction``, ``model``, ...); each point then patches that resolved config with its values.
Only when a swept key feeds an interpolation (``peak_lr.sgd``) is each point resolved by
OmegaConf again. Either way a point's config - and so its run id - is exactly what
``graftbench train`` with the same overrides would get.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf

from graftbench import config, schema
from graftbench.errors import UserError

_SIMPLE = re.compile(r"^[\w.:/+-]+$")
_INTERPOLATION = re.compile(r"\$\{(?:oc\.select:)?([\w.]+)")


@dataclass(frozen=True)
class RunSpec:
    """One grid point."""

    run_id: str
    overrides: tuple[str, ...]  # base + point, as a user would type them for `graftbench train`
    point: dict[str, Any]  # the swept keys' values
    config: dict[str, Any] = field(repr=False)  # the resolved run config
    identity: dict[str, Any] = field(repr=False)  # what it computes (config.yaml)
    execution: dict[str, Any] = field(repr=False)  # where and how: this command's settings

    @property
    def magnitude(self) -> str:
        return config.short_name(self.config["magnitude"]["name"])

    @property
    def direction(self) -> str:
        return config.short_name(self.config["direction"]["name"])

    @property
    def seed(self) -> int:
        return self.config["seed"]


@dataclass(frozen=True)
class Grid:
    name: str
    base: tuple[str, ...]
    axes: dict[str, list[Any]]
    runs: list[RunSpec]
    estimate_device_hours: float | None = None


def expand(overrides: Sequence[str]) -> Grid:
    """The grid these command-line overrides describe (plus the config's ``sweep.grid``)."""
    parsed = config.parse(overrides)
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    pinned = {o.key_or_group for o in parsed if not o.is_sweep_override()}
    cli_axes = {o.key_or_group: _values(o) for o in parsed if o.is_sweep_override()}
    base_cfg = config.compose_unresolved(base)
    axes: dict[str, list[Any]] = {}
    for key, values in (OmegaConf.to_container(base_cfg.sweep.grid) or {}).items():
        if key not in pinned:
            axes[key] = list(values) if isinstance(values, list) else [values]
    axes.update(cli_axes)
    for key, values in axes.items():
        if not values:
            raise UserError(f"the sweep axis {key!r} has no values")
    group_axes = {k: v for k, v in axes.items() if config.is_group(k)}
    value_axes = {k: v for k, v in axes.items() if not config.is_group(k)}

    runs_by_point: dict[tuple, RunSpec] = {}
    typed = [o.key_or_group for o in parsed]
    unused: list[list[str]] = []
    for choice, combo in _combos(base, group_axes):
        prefix = base + [_override(k, v) for k, v in choice.items()]
        for point, spec in _points(combo, prefix, _checked_axes(combo, value_axes), unused, typed):
            full = {**choice, **point}
            runs_by_point[_key(full)] = RunSpec(point=full, **spec)
    if unused and all(unused):  # ignored by every run of the grid
        raise UserError(unused[0][0])
    ordered = [runs_by_point[_key(p)] for p in _product(axes)]
    seen: dict[str, RunSpec] = {}
    for spec in ordered:
        if spec.run_id in seen:
            first, second = (
                " ".join(_override(k, v) for k, v in s.point.items())
                for s in (seen[spec.run_id], spec)
            )
            raise UserError(
                f"the sweep has duplicate points: {first!r} and {second!r} are the same run "
                f"{spec.run_id} (an axis repeats a value, or two values mean the same)"
            )
        seen[spec.run_id] = spec
    name = str(OmegaConf.select(base_cfg, "sweep.name"))
    estimate = OmegaConf.select(base_cfg, "sweep.device_hours_per_run", default=None)
    hours = None if estimate is None else float(estimate) * len(ordered)
    return Grid(name, tuple(base), axes, ordered, hours)


def _combos(
    base: list[str], group_axes: dict[str, list[Any]]
) -> Iterable[tuple[dict[str, Any], DictConfig]]:
    """Each combination of group choices with its composed (unresolved) config.

    ``magnitude`` and ``direction`` each only fill their own subtree, so composing ``(X, X)``
    once per optimizer name X gives every pair's subtrees: 3 compositions for a 3×3 grid, not 9.
    """
    roles = {k: v for k, v in group_axes.items() if k in config.ROLES}
    others = {k: v for k, v in group_axes.items() if k not in config.ROLES}
    for other in _product(others):
        prefix = base + [_override(k, v) for k, v in other.items()]
        names = list(dict.fromkeys(name for values in roles.values() for name in values))
        by_name = {
            name: config.compose_unresolved(prefix + [_override(r, name) for r in roles])
            for name in names
        }
        reference = next(iter(by_name.values()), None)
        if reference is not None and any(
            _outside_roles(c) != _outside_roles(reference) for c in by_name.values()
        ):
            by_name = {}  # an optimizer config reaches outside its role: compose every pair
        for role_choice in _product(roles):
            choice = {**other, **role_choice}
            if not roles:
                yield choice, config.compose_unresolved(prefix)
            elif not by_name:
                yield (
                    choice,
                    config.compose_unresolved(
                        prefix + [_override(r, n) for r, n in role_choice.items()]
                    ),
                )
            else:
                combo = copy.deepcopy(reference)
                for role, name in role_choice.items():
                    combo[role] = copy.deepcopy(by_name[name][role])
                yield choice, combo


def _outside_roles(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=False)
    return {k: v for k, v in container.items() if k not in config.ROLES}


def _key(point: dict[str, Any]) -> tuple:
    """A point's identity in the grid (2 and 2.0 are the same value)."""
    return tuple((k, repr(_number(v))) for k, v in sorted(point.items()))


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _product(axes: dict[str, list[Any]]) -> Iterable[dict[str, Any]]:
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def _values(override: Override) -> list[Any]:
    """A sweep override's values, typed as Hydra parses them (``1`` int, ``0.1`` float)."""
    return list(override.sweep_iterator())


def _override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's syntax, quoting what needs it."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str) and _SIMPLE.match(value):
        text = value
    elif isinstance(value, str):
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    else:
        raise UserError(f"sweep axis {key!r}: unsupported value {value!r}")
    return f"{key}={text}"


def _checked_axes(combo: DictConfig, value_axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Each value against the composed config: the key exists and the type fits; values come
    back as the schema types them (``2`` for a float key is ``2.0``, as `train` would see it)."""
    typed: dict[str, list[Any]] = {}
    for key, values in value_axes.items():
        config.check_key_value(combo, key, *values)
        typed[key] = [_as_schema_types(combo, key, v) for v in values]
    return typed


def _as_schema_types(combo: DictConfig, key: str, value: Any) -> Any:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(combo, parent) if parent else combo
    if not isinstance(node, DictConfig) or leaf not in node.keys():  # noqa: SIM118
        return value
    kind = _declared_type(node, leaf)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and isinstance(node.get(leaf), ListConfig):
        element = node[leaf]._metadata.element_type
        return [float(v) if element is float and isinstance(v, int) else v for v in value]
    return value


def _declared_type(node: DictConfig, leaf: str) -> Any:
    """The schema's type of ``node[leaf]`` (``float`` for an Optional[float] set to null)."""
    child = node._get_node(leaf)
    return getattr(getattr(child, "_metadata", None), "ref_type", None)


def _points(
    combo: DictConfig,
    prefix: list[str],
    axes: dict[str, list[Any]],
    unused: list[list[str]],
    typed: list[str],
) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    sources = _interpolation_sources(combo)
    fast = not any(_related(key, source) for key in axes for source in sources)
    if OmegaConf.select(combo, "schedule.name") == schema.TRANSFERRED:
        # finalize completes a transferred schedule from schedule.source (its content hash,
        # D's learning rate): a point that changes the schedule is finalized on its own
        fast = fast and not any(_related(key, "schedule") for key in axes)
    plain_direction = OmegaConf.select(combo, "direction") is None
    if fast:
        resolved = config.plain(config.finalize(combo))
        _check_axis_values(resolved, axes, plain_direction)
        identity, execution = config.identity(resolved), config.execution(resolved)
        tree = schema.execution_tree(resolved)
        known = config.Encoded(identity)
        unused.append(config.unused_overrides(resolved, typed))
    for point in _product(axes):
        overrides = tuple(prefix + [_override(k, v) for k, v in point.items()])
        if fast:
            container = _with_point(resolved, point, plain_direction)
            ident = _with_point(identity, _in_identity(point, tree), plain_direction)
            run_id = config.run_id_of(ident, known)
        else:
            cfg = copy.deepcopy(combo)
            for key, value in point.items():
                OmegaConf.update(cfg, key, value, force_add=True)
            container = config.plain(config.finalize(cfg))
            ident, execution = config.identity(container), config.execution(container)
            run_id = config.run_id(container)
            unused.append(config.unused_overrides(container, typed))
        yield (
            point,
            {
                "run_id": run_id,
                "overrides": overrides,
                "config": container,
                "identity": ident,
                "execution": execution,
            },
        )


def _with_point(resolved: dict[str, Any], point: dict[str, Any], plain: bool) -> dict[str, Any]:
    container = _patched(resolved, point)
    if plain and any(_related(k, "magnitude") for k in point) and "magnitude" in container:
        container["direction"] = dict(container["magnitude"])
    return container


def _in_identity(point: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    """The point's keys that are identity (an execution key is not hashed)."""
    return {k: v for k, v in point.items() if not config.is_execution_key(tree, k)}


def _check_axis_values(
    resolved: dict[str, Any], axes: dict[str, list[Any]], plain_direction: bool
) -> None:
    """The grid checked without checking every point: the combination once, each axis value
    against its bounds once, and the axes of a section whose values are checked together
    (an optimizer's hyperparameters, the schedule, the batch) as their own small product."""
    config.check_run(resolved)
    for key, values in axes.items():
        for value in values:
            if problem := schema.check_key_bounds(resolved, key, value):
                raise UserError(problem)
    by_section: dict[str, dict[str, list[Any]]] = {}
    for key, values in axes.items():
        section = key.split(".")[0]
        section = "trainer" if section == "data" else section
        if section in (*config.ROLES, "schedule", "trainer"):
            by_section.setdefault(section, {})[key] = values
    for section_axes in by_section.values():
        for point in _product(section_axes):
            config.check_run(_with_point(resolved, point, plain_direction))


def _interpolation_sources(cfg: DictConfig) -> set[str]:
    raw = OmegaConf.to_container(cfg, resolve=False)
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.update(_INTERPOLATION.findall(node))

    walk(raw)
    return found


def _related(key: str, source: str) -> bool:
    return key == source or source.startswith(key + ".") or key.startswith(source + ".")


def _patched(resolved: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``resolved`` with ``point``'s dotted keys set (copying only the paths)."""
    out = dict(resolved)
    for dotted, value in point.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[leaf] = value
    return out

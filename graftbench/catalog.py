"""What the config tree offers, for people and for shells: every group's choices with a
one-line description, each choice's keys with their defaults and help (``graftbench list``),
and completion of ``key=value`` overrides (``graftbench train <Tab>``).

Nothing here is a copy. The choices are :func:`graftbench.config.groups`; a choice's
description is the first comment line of ``conf/<group>/<name>.yaml``; its values are what
Hydra composes from that file (an optimizer's defaults are its update rule's own,
``Rule.defaults``, with what the file changes, e.g. SGD's momentum 0.9); the help is the
schema's (:func:`graftbench.schema.help_of`). Completion runs on every Tab: it reads file
names and the schema's dataclasses, never torch or a composition.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from typing import Any

from omegaconf import OmegaConf
from tabulate import tabulate

from graftbench import config, schema
from graftbench.errors import UserError

# `graftbench list <what>` -> config group, in the order a new user needs them
LISTS = {
    "optimizers": "optim",
    "models": "model",
    "data": "data",
    "schedules": "schedule",
    "experiments": "experiment",
    "launchers": "launcher",
    "loggers": "logger",
}
# keys that choose a file of a group (`magnitude=adam` picks conf/optim/adam.yaml)
GROUP_KEYS = {
    **dict.fromkeys(config.ROLES, "optim"),
    **{group: group for group in LISTS.values() if group != "optim"},
}
GROUP_HELP = {"experiment": "a recipe: model, data, schedule, learning rates and the grid"}
COMPLETION_HELP_WIDTH = 60


# -- listing --------------------------------------------------------------------------------
def overview() -> str:
    """Every group's choices, one line each."""
    sections = []
    for label, group in _lists():
        rows = [(name, config.description(group, name)) for name in config.groups()[group]]
        body = tabulate(rows, tablefmt="plain")
        sections.append(f"{label} ({_chosen_by(group)}):\n" + _indent(body))
    sections.append("`graftbench list <group>` shows every key of each choice, with its default.")
    return "\n\n".join(sections)


def details(what: str) -> str:
    """One group: each choice with its description and its keys (experiments: their grid)."""
    labels = dict(_lists())
    group = labels.get(what) or (what if what in labels.values() else None)
    if group is None:
        raise UserError(f"cannot list {what!r}; choose from: {', '.join(labels)}")
    label = next(name for name, g in labels.items() if g == group)
    sections = [f"{label} ({_chosen_by(group)}{_set_with(group)}):"]
    for name in config.groups()[group]:
        head = f"{name}  {config.description(group, name)}".rstrip()
        if group == "experiment":
            grid = _grid(name)
            sections.append(head + (f"\n  grid: {grid}" if grid else ""))
            continue
        rows = settings(group, name)
        body = tabulate(rows, tablefmt="plain", disable_numparse=True) if rows else ""
        sections.append(head + ("\n" + _indent(body) if body else ""))
    return "\n\n".join(sections)


def settings(group: str, name: str) -> list[tuple[str, str, str]]:
    """(key, default, help) of every key of ``conf/<group>/<name>.yaml``, as a run gets them.
    Interpolations are shown as written (``${data.num_classes}``), except an optimizer's
    ``lr`` and ``weight_decay``, which fall back to the rule's defaults on the neutral base."""
    node = config.option(group, name)
    values = OmegaConf.to_container(node, resolve=group == "optim", enum_to_str=True)
    assert isinstance(values, dict)
    option_name = values.get("name")
    helps = schema.help_of(group, option_name)

    def help_of(key: str) -> str:  # generated help repeats "<rule>: <key>"; keep the rest
        text = helps[key][1] if key in helps else ""
        text = text.removeprefix(f"{option_name}: ").removeprefix(key).strip()
        return text[1:-1] if text.startswith("(") and text.endswith(")") else text

    return [(key, _text(value), help_of(key)) for key, value in _flat(values) if key != "name"]


def _grid(name: str) -> str:
    """An experiment's sweep grid, e.g. ``magnitude 3 × direction 3 × seed 1 = 9 runs``."""
    grid = config.option("experiment", name).get("sweep", {}).get("grid", {})
    axes = {key: list(values) for key, values in grid.items()}
    if not axes:
        return ""
    runs = 1
    for values in axes.values():
        runs *= len(values)
    shown = "; ".join(f"{key}: {', '.join(map(str, values))}" for key, values in axes.items())
    return f"{shown} ({runs} runs)"


def _lists() -> list[tuple[str, str]]:
    """(label, group) in :data:`LISTS` order, then any other group conf/ has."""
    present = config.groups()
    known = [(label, group) for label, group in LISTS.items() if group in present]
    return known + [(group, group) for group in present if group not in LISTS.values()]


def _chosen_by(group: str) -> str:
    keys = [key for key, g in GROUP_KEYS.items() if g == group] or [group]
    return ", ".join(f"{key}=<name>" for key in keys)


def _set_with(group: str) -> str:
    if group == "experiment":
        return ""
    key = "magnitude" if group == "optim" else group
    return f"; set a key with {key}.<key>=<value>"


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "???":
        return "(required)"
    if isinstance(value, list):
        return "[" + ", ".join(map(_text, value)) + "]"
    if isinstance(value, dict):
        return "{}"
    return str(value)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# -- shell completion -----------------------------------------------------------------------
def complete(before: list[str], incomplete: str) -> list[tuple[str, str]]:
    """Completions (value, help) of the override being typed, given the words before it.

    zsh and fish hand over ``magnitude=ad``. Bash splits words at ``=`` and replaces only the
    text after it: the words before end with ``magnitude``, ``=`` and ``incomplete`` is ``ad``,
    or, right after the sign, the words before end with ``magnitude`` and ``incomplete`` is
    ``=`` itself.
    """
    if incomplete == "=" and before:
        found = _values(before[-1])
    elif len(before) >= 2 and before[-1] == "=":
        found = _values(before[-2])
    elif "=" in incomplete:
        key = incomplete.split("=", 1)[0]
        found = [(f"{key}={value}", text) for value, text in _values(key)]
    else:
        found = _matching_keys(incomplete)
    # zsh and fish show the help beside each value: one short line (typer wraps long ones)
    return [(value, _cut(text, COMPLETION_HELP_WIDTH)) for value, text in found]


def _matching_keys(incomplete: str) -> list[tuple[str, str]]:
    """The keys at the level being typed; a single match is opened up (``mag`` ->
    ``magnitude=adam``, ``magnitude=sgd``, ...; ``tr`` -> ``trainer.epochs=``, ...), so the
    shell inserts the common part without a space after it."""
    found = [(key, text) for key, text in _keys(incomplete) if key.startswith(incomplete)]
    for _ in range(2):
        if len(found) != 1:
            break
        key = found[0][0]
        if key.endswith("="):
            opened = [(f"{key}{value}", text) for value, text in _values(key[:-1])]
        else:
            opened = _keys(key)
        found = opened or found
    return found


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _values(key: str) -> list[tuple[str, str]]:
    """The values ``key=`` can take, where there is a fixed set: a group's choices, an
    enumeration's members, true/false."""
    key = key.lstrip("+~")
    if key in GROUP_KEYS:
        group = GROUP_KEYS[key]
        return [(name, config.description(group, name)) for name in config.groups()[group]]
    kind = _field_kind(key)
    if isinstance(kind, type) and issubclass(kind, Enum):
        return [(str(member.value), "") for member in kind]
    if kind is bool:
        return [("true", ""), ("false", "")]
    return []


def _keys(incomplete: str) -> list[tuple[str, str]]:
    """``key=`` (or ``section.``) completions at the level ``incomplete`` is typing."""
    section, _, _ = incomplete.rpartition(".")
    if section == "peak_lr":
        return [(f"peak_lr.{name}=", "its learning rate") for name in config.groups()["optim"]]
    cls = _section(section) if section else schema.Config
    if cls is None:
        return []  # a group's subtree (magnitude.lr): its keys depend on the choice
    prefix = f"{section}." if section else ""
    out = []
    if not section:
        helps = {key: text for key, (_, text) in schema.help_of(None).items()}
        out = [(f"{key}=", GROUP_HELP.get(key) or helps.get(key, "")) for key in GROUP_KEYS]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not section and f.name in GROUP_KEYS:
            continue
        kind = _unwrap(hints[f.name])
        mark = "." if dataclasses.is_dataclass(kind) or typing.get_origin(kind) is dict else "="
        out.append((f"{prefix}{f.name}{mark}", f.metadata.get("help", "")))
    return out


def _section(dotted: str) -> type | None:
    """The schema dataclass of a section (``trainer``, ``sweep``), None for anything else."""
    cls: Any = schema.Config
    for part in dotted.split("."):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        cls = _unwrap(hints.get(part))
        if not dataclasses.is_dataclass(cls):
            return None
    return cls


def _field_kind(dotted: str) -> Any:
    section, _, leaf = dotted.rpartition(".")
    cls = _section(section) if section else schema.Config
    if cls is None:
        return None
    return _unwrap(typing.get_type_hints(cls).get(leaf))


def _unwrap(kind: Any) -> Any:
    """``Optional[X]`` -> ``X``."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return kind

"""Compose run configs from ``conf/`` with Hydra, and turn every mistake into one clear line.

``compose(["magnitude=adam", "direction=sgd", "trainer.epochs=3"])`` returns the resolved run
config. ``magnitude=<name>`` / ``direction=<name>`` select ``conf/optim/<name>.yaml`` for that
role (Hydra spells this ``optim@magnitude=<name>``); leaving ``direction`` out means the plain
optimizer, and the resolved config then carries ``direction`` equal to ``magnitude``. A model
listed under ``recipes`` in ``conf/config.yaml`` selects its experiment when none is given.

Every override is checked before Hydra sees it: unknown groups, options and keys, and values of
the wrong type raise :class:`~graftbench.errors.UserError` naming the valid choices.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from graftbench.errors import UserError
from graftbench.optim.graft import GRANULARITIES
from graftbench.optim.rules import make_rule
from graftbench.optim.schedules import make_schedule

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
ROLES = ("magnitude", "direction")

# Keys whose value must be one of a few words.
CHOICES = {
    "graft.granularity": GRANULARITIES,
    "trainer.precision": ("fp32", "bf16"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.progress": ("auto", "always", "never"),
}

# Keys that say where or how a run is executed and observed, not what it computes: they are
# left out of the run's identity, so moving a run (another results root, more GPUs, another
# launcher) keeps its id and its results.
NOT_IDENTITY = (
    "results_dir",
    "sweep",
    "recipes",
    "launcher",
    "logger",
    "data.root",
    "data.workers",
    "data.pin_memory",
    "data.persistent_workers",
    "trainer.devices",
    "trainer.device",
    "trainer.compile",
    "trainer.progress",
    "trainer.eval_every_epochs",
    "trainer.log_every_steps",
    "trainer.layer_log_every_steps",
    "trainer.checkpoint_every_steps",
)


def groups() -> dict[str, list[str]]:
    """Config group -> its options (file names without ``.yaml``)."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir()
    }


def _group_of(key: str) -> str | None:
    """The config group an override key selects (``magnitude`` -> ``optim``), if any."""
    if key in ROLES:
        return "optim"
    return key if key in groups() else None


def parse(overrides: Sequence[str]) -> list[Override]:
    """Parse ``key=value`` overrides with Hydra's grammar (sweeps like ``a=1,2`` included)."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise UserError(f"cannot parse overrides: {_one_line(err)}") from None


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved, validated run config for these overrides (no sweeps here)."""
    parsed = parse(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps:
        raise UserError(f"{sweeps[0]!r} is a list of values: use `graftbench sweep` to run a grid")
    choices = [o for o in parsed if _group_of(o.key_or_group) is not None]
    values = [o for o in parsed if _group_of(o.key_or_group) is None]
    hydra_choices = [c for c in map(_hydra_choice, choices) if c is not None]
    chosen = {o.key_or_group: o.value() for o in choices}
    recipe = _recipes().get(str(chosen.get("model")))
    if recipe is not None and "experiment" not in chosen:
        hydra_choices.append(f"experiment={recipe}")
    base = _compose(hydra_choices)
    for override in values:
        _check_value(base, override)
    cfg = _compose(hydra_choices + [o.input_line for o in values])
    return finalize(cfg)


def finalize(cfg: DictConfig) -> DictConfig:
    """Resolve interpolations, make ``direction`` explicit, and check what only code can check
    (optimizer hyperparameters, schedule fields)."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise UserError(f"{err.full_key} must be set, e.g. {err.full_key}=...") from None
    except OmegaConfBaseException as err:
        raise UserError(_one_line(err)) from None
    assert isinstance(container, dict)
    for dotted, allowed in CHOICES.items():
        value = OmegaConf.select(OmegaConf.create(container), dotted)
        if value not in allowed:
            raise UserError(f"{dotted}: invalid {value!r}; choose from: {', '.join(allowed)}")
    if container.get("direction") is None:
        container["direction"] = dict(container["magnitude"])
    for role in ROLES:
        try:
            make_rule(container[role])
        except ValueError as err:
            raise UserError(f"{role}: {err}") from None
    try:
        make_schedule(container["schedule"], total_steps=1)
    except ValueError as err:
        raise UserError(str(err)) from None
    resolved = OmegaConf.create(container)
    OmegaConf.set_struct(resolved, True)
    return resolved


@cache
def _recipes() -> dict[str, str]:
    return dict(OmegaConf.load(CONF_DIR / "config.yaml").get("recipes", {}))


def _hydra_choice(override: Override) -> str | None:
    key = override.key_or_group
    group = _group_of(key)
    value = override.value()
    options = groups()[group]
    if value is None and key == "direction":
        return None  # already the default: the plain optimizer
    if not isinstance(value, str) or value not in options:
        what = f"optimizer for {key}" if key in ROLES else key
        raise UserError(f"unknown {what} {value!r}; choose from: {', '.join(options)}")
    return f"optim@{key}={value}" if key in ROLES else f"{key}={value}"


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(_one_line(err)) from None
    finally:
        GlobalHydra.instance().clear()


_MISSING = object()


def _check_value(base: DictConfig, override: Override) -> None:
    """Unknown keys and wrong types, against the config composed without value overrides."""
    key = override.key_or_group
    if override.is_delete():
        return
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(base, parent, default=_MISSING) if parent else base
    # `in node` is False for a mandatory (???) value; node.keys() lists it
    if isinstance(node, DictConfig) and leaf in node.keys():  # noqa: SIM118
        if OmegaConf.is_missing(node, leaf):
            return  # a mandatory value (???): any value of the right kind is checked later
        try:
            current = node[leaf]
        except OmegaConfBaseException:
            return  # an interpolation to something missing: no type to check against
    else:
        if override.is_add() or override.is_force_add():
            return
        if not isinstance(node, DictConfig):
            known = parent
            while known and not isinstance(OmegaConf.select(base, known, default=None), DictConfig):
                known = known.rpartition(".")[0]
            where = f"{known!r} has" if known else "the config has"
            raise UserError(
                f"unknown key {key!r}: {where} no key {key[len(known) :].lstrip('.')!r}"
            )
        valid = sorted(str(k) for k in node)
        hint = difflib.get_close_matches(leaf, valid, n=1)
        where = f" under {parent!r}" if parent else ""
        did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
        raise UserError(f"unknown key {key!r}; {did_you_mean}valid keys{where}: {', '.join(valid)}")
    value = override.value()
    expected = _expected_type(current)
    if expected is not None and not _fits(value, current):
        raise UserError(f"{key}: expected {expected}, got {value!r}")


def _expected_type(current: Any) -> str | None:
    if current is None:
        return None
    if isinstance(current, bool):
        return "true or false"
    if isinstance(current, int):
        return "an integer"
    if isinstance(current, float):
        return "a number"
    if isinstance(current, str):
        return "a string"
    if isinstance(current, ListConfig):
        return "a list like [a,b]"
    if isinstance(current, DictConfig):
        return "a mapping (set its keys one by one, e.g. key.sub=value)"
    return None


def _fits(value: Any, current: Any) -> bool:
    if value is None:
        return True  # null turns an option off
    if isinstance(current, bool):
        return isinstance(value, bool)
    if isinstance(current, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(current, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(current, str):
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if isinstance(current, ListConfig):
        return isinstance(value, list)
    if isinstance(current, DictConfig):
        return isinstance(value, dict)
    return True


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(err).__name__


# -- run identity ---------------------------------------------------------------------------
def identity(cfg: DictConfig) -> dict[str, Any]:
    """What a run computes: the resolved config without the keys in ``NOT_IDENTITY``."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    for dotted in NOT_IDENTITY:
        node: Any = container
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return container


def config_hash(cfg: DictConfig) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def short_name(optimizer_name: str) -> str:
    """``adam`` stays ``adam``; ``torch.optim.NAdam`` becomes ``nadam``."""
    return optimizer_name.rpartition(".")[2].lower()


def run_id(cfg: DictConfig) -> str:
    """Stable and readable: ``adam+sgd-s0-1a2b3c4d`` (M+D, seed, hash of the identity).

    ``+`` rather than the paper's ``#``: W&B run ids (equal to ours) may not contain ``#``.
    """
    m, d = (short_name(cfg[role].name) for role in ROLES)
    return f"{m}+{d}-s{cfg.seed}-{config_hash(cfg)}"


def label(cfg: DictConfig) -> str:
    """``M#D`` as the paper writes it."""
    return "#".join(short_name(cfg[role].name) for role in ROLES)

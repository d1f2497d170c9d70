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

import copy
import difflib
import hashlib
import json
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
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

# What `check_run` looks at: a sweep re-checks each point only when an axis touches these.
CHECKED = (*CHOICES, *ROLES, "schedule")

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
    "data.source.root",
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


def is_group(key: str) -> bool:
    """Whether ``key=value`` picks a config file (``model=resnet50``) rather than a value."""
    return _group_of(key) is not None


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
    return finalize(compose_unresolved(overrides))


def compose_unresolved(overrides: Sequence[str]) -> DictConfig:
    """Hydra's composition for these overrides, checked, with interpolations still in place."""
    parsed = parse(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps:
        raise UserError(f"{sweeps[0]!r} is a list of values: use `graftbench sweep` to run a grid")
    choices = [o for o in parsed if is_group(o.key_or_group)]
    values = [o for o in parsed if not is_group(o.key_or_group)]
    hydra_choices = [c for c in map(_hydra_choice, choices) if c is not None]
    chosen = {o.key_or_group: o.value() for o in choices}
    recipe = _recipes().get(str(chosen.get("model")))
    if recipe is not None and "experiment" not in chosen:
        hydra_choices.append(f"experiment={recipe}")
    cfg = _compose(tuple(hydra_choices))
    for override in values:
        check_value(cfg, override)
    try:  # what Hydra itself does with value overrides once the defaults are composed
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(_one_line(err)) from None
    return cfg


def finalize(cfg: DictConfig) -> DictConfig:
    """Resolve interpolations, make ``direction`` explicit, and check the run."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise UserError(f"{err.full_key} must be set, e.g. {err.full_key}=...") from None
    except OmegaConfBaseException as err:
        raise UserError(_one_line(err)) from None
    assert isinstance(container, dict)
    if container.get("direction") is None:
        container["direction"] = dict(container["magnitude"])
    check_run(container)
    resolved = OmegaConf.create(container)
    OmegaConf.set_struct(resolved, True)
    return resolved


def check_run(container: dict[str, Any]) -> None:
    """What only code can check: word-valued keys, optimizer hyperparameters, schedule."""
    for dotted, allowed in CHOICES.items():
        value = lookup(container, dotted)
        if value not in allowed:
            raise UserError(f"{dotted}: invalid {value!r}; choose from: {', '.join(allowed)}")
    for role in ROLES:
        try:
            make_rule(container[role])
        except ValueError as err:
            raise UserError(f"{role}: {err}") from None
    try:
        make_schedule(container["schedule"], total_steps=1)
    except ValueError as err:
        raise UserError(str(err)) from None


def lookup(container: dict[str, Any], dotted: str) -> Any:
    """``container["a"]["b"]`` for ``"a.b"`` (None when absent)."""
    node: Any = container
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


@cache
def _recipes() -> dict[str, str]:
    return dict(OmegaConf.load(CONF_DIR / "config.yaml").get("recipes", {}))


def _hydra_choice(override: Override) -> str | None:
    key = override.key_or_group
    group = _group_of(key)
    value = override.value()
    options = groups()[group]
    if value is None and key == "direction":
        return None  # the default already: the plain optimizer
    if not isinstance(value, str) or value not in options:
        what = f"optimizer for {key}" if key in ROLES else key
        raise UserError(f"unknown {what} {value!r}; choose from: {', '.join(options)}")
    return f"optim@{key}={value}" if key in ROLES else f"{key}={value}"


def _compose(choices: tuple[str, ...]) -> DictConfig:
    """Hydra's composition of these group choices (a fresh copy of a cached result)."""
    return copy.deepcopy(_compose_cached(choices))


@cache
def _compose_cached(choices: tuple[str, ...]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(choices))
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(_one_line(err)) from None
    finally:
        GlobalHydra.instance().clear()


_MISSING = object()


def check_value(base: DictConfig, override: Override) -> None:
    """Unknown keys and wrong types, against the config composed without value overrides."""
    if not override.is_delete():
        check_key_value(
            base,
            override.key_or_group,
            override.value(),
            adding=override.is_add() or override.is_force_add(),
        )


def check_key_value(base: DictConfig, key: str, *values: Any, adding: bool = False) -> None:
    """``key`` exists in ``base`` (unless ``adding``) and each of ``values`` fits its type."""
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
        if adding:
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
    for kind, expected, fits in _KINDS:
        if isinstance(current, kind):
            for value in values:
                if value is not None and not fits(value):
                    raise UserError(f"{key}: expected {expected}, got {value!r}")
            return


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# What a new value must be, by the kind of the value it replaces (first match wins: bool
# before int); None and ??? accept anything, and null is always accepted (it turns a key off).
_KINDS: tuple[tuple[type, str, Callable[[Any], bool]], ...] = (
    (bool, "true or false", lambda v: isinstance(v, bool)),
    (int, "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    (float, "a number", _is_number),
    (str, "a string", lambda v: isinstance(v, str) or _is_number(v)),
    (ListConfig, "a list like [a,b]", lambda v: isinstance(v, list)),
    (
        DictConfig,
        "a mapping (set its keys one by one, e.g. key.sub=value)",
        lambda v: isinstance(v, dict),
    ),
)


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(err).__name__


# -- run identity ---------------------------------------------------------------------------
def plain(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """A resolved config as plain, independent dicts and lists."""
    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        return container
    return copy.deepcopy(cfg)


def _tree(paths: Sequence[str]) -> dict[str, Any]:
    """``("a.b", "c")`` -> ``{"a": {"b": None}, "c": None}`` (None: drop this key)."""
    tree: dict[str, Any] = {}
    for dotted in paths:
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = None
    return tree


_NOT_IDENTITY_TREE = _tree(NOT_IDENTITY)


def identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """What a run computes: the resolved config without the keys in ``NOT_IDENTITY``.

    Unpruned subtrees are shared with ``cfg``, not copied (sweeps compute this per point).
    """

    def prune(node: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            if key not in tree:
                out[key] = value
            elif tree[key] is not None and isinstance(value, dict):
                out[key] = prune(value, tree[key])
        return out

    return prune(cfg if isinstance(cfg, dict) else plain(cfg), _NOT_IDENTITY_TREE)


class Encoded:
    """The canonical JSON of every dict inside ``root``, by ``id``; holding ``root`` keeps those
    ids from being reused by other objects while this exists."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.texts: dict[int, str] = {}

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for child in node.values():
                    walk(child)
                self.texts[id(node)] = canonical_json(node, self)

        walk(root)


_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


def canonical_json(value: Any, known: Encoded | None = None) -> str:
    """JSON with sorted keys (``json``'s own formatting); dicts that ``known`` already encoded
    are not encoded again (a sweep's points share most of their config)."""
    if known is None or not isinstance(value, dict):
        return _ENCODER.encode(value)
    if id(value) in known.texts:
        return known.texts[id(value)]
    if not any(isinstance(v, dict) for v in value.values()):
        return _ENCODER.encode(value)
    body = ", ".join(
        f"{_ENCODER.encode(str(k))}: {canonical_json(v, known)}" for k, v in sorted(value.items())
    )
    return "{" + body + "}"


def config_hash(cfg: DictConfig | dict[str, Any], known: Encoded | None = None) -> str:
    """A short hash of the run's identity."""
    text = canonical_json(identity(cfg), known)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def short_name(optimizer_name: str) -> str:
    """``adam`` stays ``adam``; ``torch.optim.NAdam`` becomes ``nadam``."""
    return optimizer_name.rpartition(".")[2].lower()


def run_id(cfg: DictConfig | dict[str, Any], known: Encoded | None = None) -> str:
    """Stable and readable: ``adam+sgd-s0-1a2b3c4d`` (M+D, seed, hash of the identity).

    ``+`` rather than the paper's ``#``: W&B run ids (equal to ours) may not contain ``#``.
    """
    m, d = (short_name(cfg[role]["name"]) for role in ROLES)
    return f"{m}+{d}-s{cfg['seed']}-{config_hash(cfg, known)}"


def label(cfg: DictConfig | dict[str, Any]) -> str:
    """``M#D`` as the paper writes it."""
    return "#".join(short_name(cfg[role]["name"]) for role in ROLES)

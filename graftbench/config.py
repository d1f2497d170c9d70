"""Compose run configs from ``conf/`` with Hydra, and turn every mistake into one clear line.

``compose(["magnitude=adam", "direction=sgd", "trainer.epochs=3"])`` returns the resolved run
config. ``magnitude=<name>`` / ``direction=<name>`` select ``conf/optim/<name>.yaml`` for that
role (Hydra spells this ``optim@magnitude=<name>``); leaving ``direction`` out means the plain
optimizer, and the resolved config then carries ``direction`` equal to ``magnitude``.

Types, allowed values, defaults and bounds come from one schema (:mod:`graftbench.schema`).
Every override is checked before Hydra sees it, so unknown options and keys, values of the wrong
type and a key given twice raise :class:`~graftbench.errors.UserError` naming the valid choices;
then Hydra's public ``compose`` applies them.

A run's config has two parts (see :mod:`graftbench.schema`): its identity, hashed into the run
id and stored in the run directory, and its execution, which always comes from the current
command. :func:`for_run_dir` rebuilds a run's config from a stored identity - read as data,
checked against the schema, never instantiated - and the execution settings of this command.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Sequence
from enum import Enum
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

from graftbench import batching, schema
from graftbench.errors import UserError
from graftbench.schema import Encoded, identity_hash

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
ROLES = ("magnitude", "direction")
# Importing this module loads neither torch nor the update rules (they load on the first
# composition; torch only when a tensor is needed): shell completion uses it.


def groups() -> dict[str, list[str]]:
    """Config group -> its options (file names without ``.yaml``)."""
    return _groups()


def description(group: str, name: str) -> str:
    """The one-line description of ``conf/<group>/<name>.yaml``: its first comment line
    (after Hydra's ``# @package`` directive)."""
    try:
        text = (CONF_DIR / group / f"{name}.yaml").read_text(encoding="utf-8")
    except OSError:
        return ""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        line = line.lstrip("#").strip()
        if line and not line.startswith("@package"):
            return line.rstrip(" ,;:")
    return ""


def option(group: str, name: str) -> DictConfig:
    """``conf/<group>/<name>.yaml`` as a run gets it: its schema's defaults with the file's
    values, composed on the neutral base (interpolations unresolved; an optimizer's ``lr`` and
    ``weight_decay`` then fall back to the rule's own defaults)."""
    if name not in groups().get(group, []):
        raise UserError(f"unknown {group} {name!r}; choose from: {', '.join(groups()[group])}")
    key, choice = ("magnitude", f"optim@magnitude={name}") if group == "optim" else (group, None)
    composed = _composed((choice or f"{group}={name}",))
    return copy.deepcopy(composed if group == "experiment" else composed[key])


@cache
def _groups() -> dict[str, list[str]]:
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
    """Parse ``key=value`` overrides with Hydra's grammar (sweeps like ``a=1,2`` included); a
    key given twice is an error rather than "the last one wins"."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise UserError(f"cannot parse overrides: {_one_line(err)}") from None
    seen: dict[str, str] = {}
    for override in parsed:
        key = override.key_or_group
        if key in seen:
            raise UserError(
                f"{key!r} is given twice ({seen[key]!r} and {override.input_line!r}); "
                "give it once (a comma list sweeps it)"
            )
        seen[key] = override.input_line
    return parsed


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved, validated run config for these overrides (no sweeps here)."""
    parsed = parse(overrides)
    cfg = finalize(compose_unresolved(overrides))
    unused = unused_overrides(plain(cfg), [o.key_or_group for o in parsed])
    if unused:
        raise UserError(unused[0])
    return cfg


def compose_unresolved(overrides: Sequence[str]) -> DictConfig:
    """Hydra's composition for these overrides, checked, with interpolations still in place."""
    parsed = parse(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps:
        raise UserError(f"{sweeps[0]!r} is a list of values: use `graftbench sweep` to run a grid")
    choices = tuple(c for c in map(_hydra_choice, parsed) if c is not None)
    values = [o for o in parsed if not is_group(o.key_or_group)]
    reference = _composed(choices)
    for override in values:
        check_value(reference, override)
    if not values:
        return copy.deepcopy(reference)
    return _hydra((*choices, *(_as_hydra(reference, o) for o in values)))


def _as_hydra(reference: DictConfig, override: Override) -> str:
    """The override as Hydra takes it: a new key of a free mapping (``peak_lr.lion=0.1``)
    needs Hydra's ``++`` (add or set)."""
    parent, _, leaf = override.key_or_group.rpartition(".")
    node = OmegaConf.select(reference, parent, default=None) if parent else None
    fresh = isinstance(node, DictConfig) and _free_mapping(node) and leaf not in node
    if fresh and not (override.is_add() or override.is_force_add()):
        return "++" + override.input_line
    return override.input_line


def finalize(cfg: DictConfig) -> DictConfig:
    """Resolve interpolations, complete a transferred schedule (see
    :mod:`graftbench.transfer.transferred`), make ``direction`` explicit, and check the run."""
    lr_given = _given(cfg, "magnitude", "lr")
    container = _resolved(cfg)
    if container["schedule"].get("name") == schema.TRANSFERRED:
        from graftbench.transfer import transferred  # scipy: only for such a run

        transferred.complete(container, lr_given=lr_given)
    if container.get("direction") is None:
        container["direction"] = dict(container["magnitude"])
    check_run(container)
    return as_config(container)


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain data, interpolations resolved; a missing value is one line."""
    try:
        container = OmegaConf.to_container(
            cfg, resolve=True, throw_on_missing=True, enum_to_str=True
        )
    except MissingMandatoryValue as err:
        raise UserError(f"{err.full_key} must be set, e.g. {err.full_key}=...") from None
    except OmegaConfBaseException as err:
        raise UserError(_one_line(err)) from None
    assert isinstance(container, dict)
    return container


def _given(cfg: DictConfig, section: str, key: str) -> bool:
    """Whether ``cfg[section][key]`` was set to a value (on the command line, by a sweep axis,
    in an experiment file) rather than left to the schema's default, which for ``lr`` is the
    interpolation ``${oc.select:peak_lr.<name>,<torch's default>}``."""
    node = cfg.get(section)
    return (
        isinstance(node, DictConfig) and key in node and not OmegaConf.is_interpolation(node, key)
    )


def as_config(container: dict[str, Any]) -> DictConfig:
    """A plain, resolved config (struct mode: a misspelled key is an error, not None)."""
    cfg = OmegaConf.create(container)
    OmegaConf.set_struct(cfg, True)
    return cfg


def check_run(container: dict[str, Any]) -> None:
    """What only code can check: bounds, optimizer hyperparameters, the schedule, the batch."""
    from graftbench.optim.factory import make_rule
    from graftbench.optim.schedules import make_schedule

    problem = schema.check_bounds(container)
    if problem:
        raise UserError(problem)
    for role in ROLES:
        try:
            make_rule(container[role])
        except ValueError as err:
            raise UserError(f"{role}: {err}") from None
    if container["schedule"].get("name") == schema.TRANSFERRED:
        _check_transferred(container)
    else:
        try:
            make_schedule(container["schedule"], total_steps=1)
        except ValueError as err:
            raise UserError(str(err)) from None
    batching.validate(container, container["trainer"]["devices"])


def _check_transferred(container: dict[str, Any]) -> None:
    """What a transferred run's config must say once completed (composing reads the source;
    a stored identity is checked against the run directory's copy when it trains)."""
    digest = container["schedule"].get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set(_HEX)):
        raise UserError(f"schedule.sha256: expected a sha256 (64 hex digits), got {digest!r}")
    if container["direction"] != container["magnitude"]:
        raise UserError(
            "schedule=transferred trains one optimizer, D, alone: choose it with "
            "magnitude=<name> and leave direction out"
        )


_HEX = "0123456789abcdef"


def unused_overrides(container: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """Messages for overridden keys that this run would ignore: ``weight_decay`` when neither
    optimizer has one, ``peak_lr.<name>`` for an optimizer the run does not use."""
    used = {short_name(container[role]["name"]) for role in ROLES}
    problems = []
    for key in keys:
        if key == "weight_decay" and container.get("weight_decay") is not None:
            if not any("weight_decay" in container[role] for role in ROLES):
                problems.append("weight_decay is set but neither optimizer has a weight decay")
        elif key.startswith("peak_lr.") and key.split(".", 1)[1] not in used:
            problems.append(
                f"{key} is set but this run uses {' and '.join(sorted(used))}; it would be ignored"
            )
        elif key.startswith("peak_lr.") and container["schedule"]["name"] == schema.TRANSFERRED:
            problems.append(
                f"{key} is set but schedule=transferred takes D's learning rate from the source "
                "run; give magnitude.lr=... to change it"
            )
    return problems


def lookup(container: dict[str, Any], dotted: str) -> Any:
    """``container["a"]["b"]`` for ``"a.b"`` (None when absent)."""
    node: Any = container
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _hydra_choice(override: Override) -> str | None:
    key = override.key_or_group
    group = _group_of(key)
    if group is None:
        return None
    value = override.value()
    if key == "experiment" and value is None:
        return None
    options = groups()[group]
    if value is None and key == "direction":
        return None  # the default already: the plain optimizer
    if not isinstance(value, str) or value not in options:
        what = f"optimizer for {key}" if key in ROLES else key
        raise UserError(f"unknown {what} {value!r}; choose from: {', '.join(options)}")
    return f"optim@{key}={value}" if key in ROLES else f"{key}={value}"


def _composed(choices: tuple[str, ...]) -> DictConfig:
    """Hydra's composition of these group choices (cached; callers must not modify it)."""
    return _composed_cached(tuple(sorted(choices)))


@cache
def _composed_cached(choices: tuple[str, ...]) -> DictConfig:
    return _hydra(choices)


def _hydra(overrides: tuple[str, ...]) -> DictConfig:
    schema.register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(_one_line(err)) from None
    finally:
        GlobalHydra.instance().clear()


_MISSING = object()


def check_value(base: DictConfig, override: Override) -> None:
    """Unknown keys and wrong types, against the config composed without value overrides."""
    if not override.is_delete():
        check_key_value(base, override.key_or_group, override.value())


def check_key_value(base: DictConfig, key: str, *values: Any) -> None:
    """``key`` exists in ``base`` and each of ``values`` fits its type (the schema's)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(base, parent, default=_MISSING) if parent else base
    if parent in ROLES and node is None:
        raise UserError(
            f"{key}: {parent} is not set (the plain optimizer); choose it with {parent}=<name>"
        )
    # `in node` is False for a mandatory (???) value; node.keys() lists it
    if isinstance(node, DictConfig) and leaf in node.keys():  # noqa: SIM118
        if OmegaConf.is_missing(node, leaf):
            current = _schema_default(node, leaf)
        else:
            try:
                current = node[leaf]
            except OmegaConfBaseException:
                current = _schema_default(node, leaf)
    else:
        if not isinstance(node, DictConfig):
            known = parent
            while known and not isinstance(OmegaConf.select(base, known, default=None), DictConfig):
                known = known.rpartition(".")[0]
            where = f"{known!r} has" if known else "the config has"
            raise UserError(
                f"unknown key {key!r}: {where} no key {key[len(known) :].lstrip('.')!r}"
            )
        if _free_mapping(node):  # e.g. peak_lr: any key, values of the mapping's type
            for value in values:
                if value is not None and not _is_number(value) and _element_is_number(node):
                    raise UserError(f"{key}: expected a number, got {value!r}")
            return
        valid = sorted(str(k) for k in node)
        hint = difflib.get_close_matches(leaf, valid, n=1)
        where = f" under {parent!r}" if parent else ""
        did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
        raise UserError(f"unknown key {key!r}; {did_you_mean}valid keys{where}: {', '.join(valid)}")
    kind = OmegaConf.get_type(node, leaf) if isinstance(node, DictConfig) else None
    if kind is type(None):  # an Optional key set to null: its declared type
        kind = node._get_node(leaf)._metadata.ref_type
    if isinstance(kind, type) and issubclass(kind, Enum):
        allowed = [m.value for m in kind]
        for value in values:
            if value not in allowed:
                raise UserError(f"{key}: invalid {value!r}; choose from: {', '.join(allowed)}")
        return
    for kind, expected, fits in _KINDS:
        if isinstance(current, kind):
            for value in values:
                if value is not None and not fits(value):
                    raise UserError(f"{key}: expected {expected}, got {value!r}")
            return


def _free_mapping(node: DictConfig) -> bool:
    """A mapping whose keys are data (``peak_lr``, ``sweep.grid``), not a schema's fields."""
    return node._metadata.object_type in (None, dict)


def _element_is_number(node: DictConfig) -> bool:
    return node._metadata.element_type in (float, int)


def _schema_default(node: DictConfig, leaf: str) -> Any:
    """A typed example value for a key whose current value is missing or an interpolation."""
    kind = OmegaConf.get_type(node, leaf)
    return {int: 0, float: 0.0, bool: False, str: ""}.get(kind)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# What a new value must be, by the kind of the value it replaces (first match wins: bool
# before int); None accepts anything (an Optional key), and null is always accepted here
# (Hydra refuses it where the schema does not allow it).
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
    cause = err.__cause__
    text = str(err)
    if cause is not None and str(cause).strip():
        text = f"{text}: {cause}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type", "    "))]
    return " ".join(lines[:3]) if lines else type(err).__name__


# -- run identity ---------------------------------------------------------------------------
def plain(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """A resolved config as plain, independent dicts and lists."""
    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        assert isinstance(container, dict)
        return container
    return copy.deepcopy(cfg)


def identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """What a run computes: the resolved config without its execution keys (the schema's
    ``execution=True`` fields). Unpruned subtrees are shared with ``cfg``, not copied."""
    return schema.split(cfg if isinstance(cfg, dict) else plain(cfg))[0]


def execution(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Where and how a run executes: the execution keys of the resolved config."""
    return schema.split(cfg if isinstance(cfg, dict) else plain(cfg))[1]


def config_hash(cfg: DictConfig | dict[str, Any], known: Encoded | None = None) -> str:
    """A short hash of the run's identity."""
    return identity_hash(identity(cfg), known)


def short_name(optimizer_name: str) -> str:
    """``adam`` stays ``adam``; ``torch.optim.NAdam`` becomes ``nadam``."""
    return optimizer_name.rpartition(".")[2].lower()


def run_id(cfg: DictConfig | dict[str, Any], known: Encoded | None = None) -> str:
    """Stable and readable: ``adam+sgd-s0-1a2b3c4d`` (M+D, seed, hash of the identity).

    ``+`` rather than the paper's ``#``: W&B run ids (equal to ours) may not contain ``#``.
    """
    return run_id_of(identity(cfg if isinstance(cfg, dict) else plain(cfg)), known)


def run_id_of(ident: dict[str, Any], known: Encoded | None = None) -> str:
    """The run id of an identity (already split off its config)."""
    m, d = (short_name(ident[role]["name"]) for role in ROLES)
    return f"{m}+{d}-s{ident['seed']}-{identity_hash(ident, known)}"


def label(cfg: DictConfig | dict[str, Any]) -> str:
    """``M#D`` as the paper writes it."""
    return "#".join(short_name(cfg[role]["name"]) for role in ROLES)


# -- a stored identity, with this command's execution ---------------------------------------
def check_identity(stored: dict[str, Any], where: str) -> dict[str, Any]:
    """A stored identity checked against the schema: known keys and types only, no
    interpolations, no targets. Returns it as plain data; raises ``UserError``."""
    from graftbench.optim.factory import make_rule

    if _has_interpolation(stored):
        raise UserError(f"{where}: holds an interpolation (${{...}}); a stored config is resolved")
    base = OmegaConf.structured(schema.Config)
    for key, group in schema.GROUP_OF_KEY.items():
        node = stored.get(key)
        if not isinstance(node, dict):
            continue
        option = schema.schema_of(group, node.get("name"))
        if option is None and group != "optim":
            raise UserError(f"{where}: unknown {key} {node.get('name')!r}")
        base[key] = OmegaConf.structured(option) if option is not None else {}
    try:
        merged = OmegaConf.merge(base, stored)
    except OmegaConfBaseException as err:
        raise UserError(f"{where}: {_one_line(err)}") from None
    execution_part = schema.split(stored)[1]
    if execution_part:
        raise UserError(
            f"{where}: holds execution settings ({', '.join(sorted(execution_part))}); a run "
            "directory stores the identity only, where and how come from the command"
        )
    for role in ROLES:
        try:
            make_rule(stored[role])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{where}: {role}: {err}") from None
    del merged
    return stored


def _has_interpolation(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_has_interpolation(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_interpolation(v) for v in node)
    return isinstance(node, str) and "${" in node


def execution_overrides_only(overrides: Sequence[str], ident: dict[str, Any]) -> None:
    """Refuse overrides that would change a stored run's identity."""
    data = ident.get("data", {}).get("name")
    for override in parse(overrides):
        key = override.key_or_group
        if key in ("logger", "launcher", "experiment"):
            continue
        if key == "data" and override.value() == data:
            continue
        if not is_execution_key(schema.execution_tree(ident), key):
            raise UserError(
                f"{key!r} is part of the run's identity, which a run directory fixes; "
                "only where and how it runs can be changed here "
                "(start a new run with `graftbench train <overrides>`)"
            )


def is_execution_key(tree: dict[str, Any], dotted: str) -> bool:
    """Whether ``dotted`` lies in an execution tree (``schema.execution_tree``)."""
    node: Any = tree
    for part in dotted.split("."):
        if node is None:
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def execution_for(ident: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """This command's execution settings for a stored identity: the defaults of its data
    option with ``overrides`` (execution keys, ``logger=``, ``launcher=``, ``experiment=``)."""
    execution_overrides_only(overrides, ident)
    data = ident["data"]["name"]
    given = [o for o in overrides if parse([o])[0].key_or_group != "data"]
    cfg = compose_unresolved([f"data={data}", *given])
    # resolve execution interpolations (gpus_per_run: ${trainer.devices}) against the identity
    return execution(_resolved(OmegaConf.merge(cfg, _identity_overlay(ident))))


def _identity_overlay(ident: dict[str, Any]) -> DictConfig:
    """The identity without the group subtrees whose option the base composition may not
    match (model, schedule, optimizers): only values the execution may refer to."""
    return OmegaConf.create({k: v for k, v in ident.items() if k in ("trainer", "seed", "data")})


def for_run(ident: dict[str, Any], execution_part: dict[str, Any]) -> DictConfig:
    """A run's full config from its stored identity and this command's execution settings."""
    container = schema.merge(ident, execution_part)
    check_run(container)
    return as_config(container)

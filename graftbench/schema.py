"""The one schema of a run's config: every key's type, allowed values, default and help, and
whether it is part of the run's *identity* or of its *execution*.

Identity is what a run computes (model, data content, optimizers, schedule, seed, numerics such
as threads): it is hashed into the run id, stored in the run directory's ``config.yaml`` and
read back on resume. Execution is where and how the run executes and is observed (data paths,
logger, devices, launcher, workers, logging and checkpoint intervals): it always comes from the
command being run, never from a results directory. A field says which it is with
``execution=True``; nothing else keeps that list.

The dataclasses are registered in Hydra's ConfigStore as ``schema/<group>/<option>``; each file
in ``conf/<group>/`` starts from its schema (``defaults: [/schema/<group>/<name>@_here_]``), so
Hydra refuses a key the schema does not have or a value of the wrong type. Optimizer schemas are
generated from the update rules' own ``defaults`` and schedule schemas from the schedule
dataclasses: a default lives in exactly one place. A group's option is found from its subtree's
``name`` (``model.name: transformer`` for ``conf/model/transformer_base.yaml``).

Bounds (``minimum``, ``maximum``, finiteness) are checked by :func:`check_bounds`, since
OmegaConf checks types only.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, make_dataclass
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


def setting(
    default: Any,
    help: str,
    *,
    execution: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A config field: its default, a one-line help, whether it is execution (not identity),
    and its bounds (numbers must also be finite)."""
    metadata = {"help": help, "execution": execution, "minimum": minimum, "maximum": maximum}
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


class Progress(StrEnum):
    auto = "auto"
    always = "always"
    never = "never"


# "global" is a Python keyword, hence the functional form
Granularity = StrEnum("Granularity", {"layer": "layer", "global": "global"})


# -- sections that are not groups ---------------------------------------------------------
@dataclass
class TrainerConfig:
    epochs: int = setting(10, "training epochs (schedules are defined over them)", minimum=1)
    max_steps: Optional[int] = setting(
        None, "stop after this many steps (smoke tests); schedules keep `epochs`", minimum=1
    )
    batch_size: int = setting(
        64, "the global batch: per-device batch × devices × accumulation", minimum=1
    )
    threads: int = setting(
        1,
        "CPU threads per process (torch intra-op); part of the identity: kernels reduce in "
        "another order with another count, so the numbers change in the last digits",
        minimum=1,
    )
    precision: Precision = setting(Precision.fp32, "fp32 | bf16 (autocast, CUDA only)")
    deterministic: bool = setting(False, "deterministic algorithms (slower on GPU)")
    label_smoothing: float = setting(
        0.0, "label smoothing of the training loss (every task)", minimum=0.0, maximum=1.0
    )
    eval_every_epochs: int = setting(1, "evaluate every N epochs and at the end", minimum=1)
    average_last: int = setting(
        0, "> 1: evaluate the mean of the last N epochs' weights at the end", minimum=0
    )
    # -- execution: where and how, not what ------------------------------------------------
    devices: int = setting(
        1,
        "processes for this run: GPUs, or CPU processes over gloo (the batch is split into the "
        "same micro-batches whatever the count)",
        execution=True,
        minimum=1,
    )
    per_device_batch_size: Optional[int] = setting(
        None,
        "null: batch_size / devices; smaller: gradient accumulation fills the global batch",
        execution=True,
        minimum=1,
    )
    device: Device = setting(Device.auto, "auto (cuda when available) | cpu | cuda", execution=True)
    channels_last: bool = setting(
        False, "NHWC memory format for convolutions (CUDA)", execution=True
    )
    compile: bool = setting(False, "torch.compile the model", execution=True)
    log_every_steps: int = setting(
        10, "train records in metrics.jsonl (and the divergence check)", execution=True, minimum=1
    )
    layer_log_every_steps: int = setting(
        100,
        "per-tensor ||dM||/||dD|| records (what `graftbench transfer` reads); 0: none",
        execution=True,
        minimum=0,
    )
    checkpoint_every_steps: int = setting(
        500,
        "also at every epoch end and on SIGTERM/SIGINT/SIGUSR1/SIGUSR2; 0: only those",
        execution=True,
        minimum=0,
    )
    progress: Progress = setting(
        Progress.auto, "auto: a progress bar only when stdout is a terminal", execution=True
    )


@dataclass
class GraftConfig:
    granularity: Granularity = setting(
        Granularity["layer"],
        "layer: norms per parameter tensor (the paper's main results) | global: over all tensors",
    )
    eps: float = setting(1e-16, "added to ||dD|| in the ratio ||dM|| / (||dD|| + eps)", minimum=0)


@dataclass
class SweepConfig:
    name: str = setting("runs", "the results folder: <results_dir>/<name>/<run id>/")
    grid: dict[str, Any] = setting({}, "key -> list of values; `graftbench sweep` runs them all")
    device_hours_per_run: Optional[float] = setting(
        None, "an estimate, for `graftbench sweep --dry-run` to total up", minimum=0
    )
    metrics: list[str] = setting(
        [],
        "the metrics a finished sweep reports (e.g. [loss]); empty: top1/top5, bleu or loss, "
        "whichever the runs report",
    )


@dataclass
class Config:
    """The top level (conf/config.yaml starts from it)."""

    seed: int = setting(0, "random seed: weights, data order, augmentation", minimum=0)
    magnitude: Any = setting(MISSING, "M: the optimizer whose step size is taken (optim group)")
    direction: Any = setting(
        None, "D: the optimizer whose direction is taken; null: the same as magnitude (M#M)"
    )
    model: Any = setting(MISSING, "the network (model group)")
    data: Any = setting(MISSING, "the dataset and task (data group)")
    schedule: Any = setting(MISSING, "the learning-rate schedule (schedule group)")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    graft: GraftConfig = field(default_factory=GraftConfig)
    weight_decay: Optional[float] = setting(
        None,
        "weight decay of every optimizer that has one (null: each optimizer's own default)",
        minimum=0,
    )
    decay_1d_params: bool = setting(
        True, "false: no weight decay on biases and normalization parameters"
    )
    peak_lr: dict[str, float] = setting(
        {}, "this workload's learning rate per optimizer name; magnitude.lr=... overrides it"
    )
    logger: Any = setting(MISSING, "where metrics go besides metrics.jsonl", execution=True)
    launcher: Any = setting(MISSING, "where runs execute: local | slurm", execution=True)
    results_dir: str = setting(
        "results", "runs land in <results_dir>/<sweep.name>/<run id>/", execution=True
    )
    sweep: SweepConfig = setting(SweepConfig(), "the grid and its folder", execution=True)


# -- models ---------------------------------------------------------------------------------
class TransformerSize(StrEnum):
    tiny = "tiny"
    base = "base"
    paper = "paper"


class Norm(StrEnum):
    pre = "pre"
    post = "post"


class TiedEmbeddings(StrEnum):
    none = "none"
    decoder = "decoder"
    all = "all"


@dataclass
class SmallResNetModel:
    name: str = setting("small_resnet", "a CIFAR-style ResNet of 6n+2 layers (CPU-sized)")
    depth: int = setting(8, "layers: 6n+2", minimum=8)
    width: int = setting(16, "channels of the first stage (doubled per stage)", minimum=1)
    num_classes: int = setting("${data.num_classes}", "outputs", minimum=1)
    in_channels: int = setting("${data.in_channels}", "input channels", minimum=1)
    zero_init_residual: bool = setting(False, "last BN gamma of each block starts at 0")


@dataclass
class ResNet50Model:
    name: str = setting("resnet50", "torchvision's ResNet-50 (25.6M parameters at 1000 classes)")
    num_classes: int = setting("${data.num_classes}", "outputs", minimum=1)
    zero_init_residual: bool = setting(
        False, "last BN gamma of each block starts at 0 (Goyal et al.)"
    )


@dataclass
class TransformerModel:
    name: str = setting("transformer", "an encoder-decoder Transformer for translation")
    size: TransformerSize = setting(
        TransformerSize.base, "tiny (CPU tests) | base (Vaswani et al.) | paper (~375M)"
    )
    norm: Norm = setting(Norm.pre, "pre | post layer normalization")
    dropout: float = setting(0.1, "dropout rate", minimum=0.0, maximum=1.0)
    tie_embeddings: TiedEmbeddings = setting(
        TiedEmbeddings.none, "none | decoder (target embedding = softmax) | all"
    )


# -- data -----------------------------------------------------------------------------------
def _task(kind: str) -> Any:
    return setting(kind, "classification | translation (fixed by the dataset)")


@dataclass
class DigitsData:
    name: str = setting("digits", "scikit-learn's 8×8 digits, bundled (1,437 train / 360 test)")
    task: str = _task("classification")
    num_classes: int = setting(10, "classes", minimum=1)
    in_channels: int = setting(1, "image channels", minimum=1)
    workers: int = setting(0, "data-loading processes", execution=True, minimum=0)


@dataclass
class ImageNetData:
    name: str = setting("imagenet", "ImageNet or any ImageFolder: root/{train,val}/<class>/<img>")
    task: str = _task("classification")
    root: str = setting(
        MISSING, "the prepared folder (scripts/prepare_imagenet.py)", execution=True
    )
    crop_size: int = setting(224, "RandomResizedCrop (train) and CenterCrop (eval)", minimum=1)
    resize_size: int = setting(256, "evaluation resizes the shorter side to this first", minimum=1)
    num_classes: int = setting(1000, "classes", minimum=1)
    in_channels: int = setting(3, "image channels", minimum=1)
    workers: int = setting(8, "data-loading processes", execution=True, minimum=0)
    pin_memory: bool = setting(True, "pinned host memory (CUDA)", execution=True)
    persistent_workers: bool = setting(True, "keep loader workers between epochs", execution=True)


@dataclass
class SyntheticData:
    name: str = setting("synthetic", "random images from a fixed pool: benchmarks, not learning")
    task: str = _task("classification")
    train_size: int = setting(10240, "training images", minimum=1)
    val_size: int = setting(1024, "validation images", minimum=1)
    image_size: int = setting(224, "height = width", minimum=1)
    num_classes: int = setting(1000, "classes", minimum=1)
    in_channels: int = setting(3, "image channels", minimum=1)
    pool_seed: int = setting(0, "seed of the image pool (not the run's seed)", minimum=0)
    workers: int = setting(0, "data-loading processes", execution=True, minimum=0)


@dataclass
class TranslationData:
    name: str = setting("wmt14", "parallel text prepared by scripts/prepare_wmt14.py")
    task: str = _task("translation")
    root: str = setting(MISSING, "the prepared folder (manifest.json, spm.model)", execution=True)
    src_lang: str = setting("en", "source language")
    tgt_lang: str = setting("fr", "target language")
    train_split: str = setting("train", "training split")
    valid_split: str = setting("valid", "validation split (newstest2013)")
    test_split: str = setting("test", "test split (newstest2014)")
    max_tokens: Optional[int] = setting(
        None,
        "null: trainer.batch_size counts sentences; a number: padded tokens per micro-batch",
        minimum=1,
    )
    eval_max_tokens: int = setting(4096, "padded tokens per evaluation batch", minimum=1)
    valid_bleu_sentences: int = setting(
        500, "BLEU on the first N validation sentences during training", minimum=1
    )
    beam_size: int = setting(4, "beam search width", minimum=1)
    length_penalty: float = setting(0.6, "GNMT: ((5 + |Y|) / 6) ** alpha", minimum=0)
    max_len_ratio: float = setting(1.0, "output length limit: ratio × source length", minimum=0)
    max_len_offset: int = setting(50, "  + this many tokens", minimum=0)
    workers: int = setting(0, "data-loading processes", execution=True, minimum=0)


# -- logger and launchers (all execution) ---------------------------------------------------
class WandbMode(StrEnum):
    offline = "offline"
    online = "online"


@dataclass
class WandbConfig:
    project: str = setting("graftbench", "W&B project")
    entity: Optional[str] = setting(None, "W&B entity (team)")
    mode: WandbMode = setting(WandbMode.offline, "offline (sync later) | online")
    group: str = setting("${sweep.name}", "W&B group")
    tags: list[str] = setting([], "W&B tags")


@dataclass
class LoggerConfig:
    name: str = setting("jsonl", "jsonl | wandb")
    wandb: Optional[WandbConfig] = setting(None, "null: metrics.jsonl only")


@dataclass
class LocalLauncher:
    name: str = setting("local", "runs on this machine, each in its own process")
    max_parallel: Optional[int] = setting(
        None,
        "runs at once; null: as many as fit (one per gpus_per_run GPUs, or CPU cores / "
        "trainer.threads on a CPU machine)",
        minimum=1,
    )
    gpus_per_run: int = setting("${trainer.devices}", "CUDA devices per run", minimum=1)


@dataclass
class SlurmLauncher:
    name: str = setting("slurm", "one SLURM job array per sweep (submitit)")
    partition: Optional[str] = setting(None, "sbatch --partition")
    account: Optional[str] = setting(None, "sbatch --account")
    qos: Optional[str] = setting(None, "sbatch --qos")
    constraint: Optional[str] = setting(None, "sbatch --constraint")
    timeout_min: int = setting(4320, "time limit per job, minutes", minimum=1)
    nodes: int = setting(1, "nodes per run", minimum=1)
    tasks_per_node: int = setting(
        "${trainer.devices}", "processes per node (the run has nodes × tasks_per_node)", minimum=1
    )
    gpus_per_node: int = setting(
        "${launcher.tasks_per_node}", "one GPU per process; none when trainer.device=cpu", minimum=0
    )
    cpus_per_task: int = setting(8, "data-loading workers + 1", minimum=1)
    mem_gb: Optional[int] = setting(None, "memory per node", minimum=1)
    array_parallelism: int = setting(64, "array tasks running at once", minimum=1)
    max_num_timeout: int = setting(10, "requeues after a timeout", minimum=0)
    signal_delay_s: int = setting(
        120, "USR2 this long before the time limit: checkpoint, then requeue", minimum=0
    )
    additional_parameters: dict[str, Any] = setting({}, "any other sbatch option")


# -- the transferred schedule (graftbench.transfer) -----------------------------------------
TRANSFERRED = "transferred"


class TransferKind(StrEnum):
    static = "static"
    piecewise = "piecewise"


@dataclass
class TransferredSchedule:
    """D alone with a grafted run's per-layer correction (``graftbench transfer``).

    The identity holds what the run computes with, the transfer's content hash (``sha256``,
    filled in when the config is composed); where it is read from and how a run directory is
    distilled are execution: the run keeps its own copy (``transfer.json``) from the moment it
    is prepared, and resumes, DDP ranks and SLURM jobs read that copy.
    """

    name: str = setting(
        TRANSFERRED,
        "D alone (magnitude=<D>, no direction) with lr_layer(t) = lr_D * schedule(t) * "
        "c_layer(t), the source run's schedule and correction; lr_D: the source's unless "
        "magnitude.lr is given",
    )
    source: str = setting(
        MISSING,
        "a transfer file (`graftbench transfer RUN_DIR`) or a finished grafted run directory "
        "(distilled on the spot); read when the run is prepared, which keeps a copy",
        execution=True,
    )
    kind: Optional[TransferKind] = setting(
        None,
        "static | piecewise: the fit when source is a run directory (null: static); a file must "
        "be of this kind when it is set",
        execution=True,
    )
    knots: Optional[int] = setting(
        None,
        "knots of a piecewise fit of a run directory (null: graftbench.transfer's default, 4)",
        execution=True,
        minimum=2,
    )
    sha256: Optional[str] = setting(
        None,
        "the transfer's content hash, part of the run's identity: filled in from source (set "
        "it to pin the content: a source that hashes otherwise is an error)",
    )


# -- generated: optimizers and schedules ----------------------------------------------------
def _optimizer_schema(name: str) -> type:
    """A rule's hyperparameters, with its own defaults. ``lr`` comes from the workload's
    ``peak_lr`` table when it names the rule, ``weight_decay`` from the top-level
    ``weight_decay`` when that is set."""
    from graftbench.optim.rules import RULES

    fields: list[tuple[str, Any, Any]] = [("name", str, setting(name, f"the {name} update rule"))]
    for key, default in RULES[name].defaults.items():
        kind, value, help = _kind(default), default, f"{name}: {key}"
        if key == "lr":
            value = f"${{oc.select:peak_lr.{name},{default!r}}}"
            help = f"{name}: lr (the workload's peak_lr.{name} when it sets one)"
        elif key == "weight_decay":
            value = f"${{graftbench.fallback:${{weight_decay}},{default!r}}}"
            help = f"{name}: weight_decay (the top-level weight_decay when set)"
        minimum = 0.0 if key in ("lr", "weight_decay", "eps", "momentum", "lr_decay") else None
        fields.append((key, kind, setting(_listed(value), help, minimum=minimum)))
    return make_dataclass(f"{name}_optimizer", fields)


def _schedule_schema(name: str) -> type:
    """A schedule's fields; step counts may be given in epochs too (``warmup_epochs``)."""
    from graftbench.optim.schedules import SCHEDULES

    fields: list[tuple[str, Any, Any]] = [("name", str, setting(name, f"the {name} schedule"))]
    for f in dataclasses.fields(SCHEDULES[name]):
        if f.name == "total_steps":
            continue  # the run's length: trainer.epochs
        if f.name.endswith("_steps") or f.name == "milestones":
            base = f.name.removesuffix("_steps").removesuffix("s")
            steps_kind = list[int] if f.name == "milestones" else int
            epochs_kind = list[float] if f.name == "milestones" else float
            steps_help = f"{name}: {f.name} (or {base}_epochs; null: use that)"
            fields.append((f.name, Optional[steps_kind], setting(None, steps_help, minimum=0)))
            epochs_help = f"{name}: {base} in epochs (converted with the steps per epoch)"
            fields.append((f"{base}_epochs", Optional[epochs_kind], setting(None, epochs_help)))
        else:
            fields.append(
                (f.name, _kind(f.default), setting(_listed(f.default), f"{name}: {f.name}"))
            )
    return make_dataclass(f"{name}_schedule", fields)


def _kind(default: Any) -> Any:
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int  # a count (ns_steps); a float hyperparameter's default is written 0.0
    if isinstance(default, float):
        return float
    if isinstance(default, tuple):
        inner = [_kind(v) for v in default if v is not None]
        item = inner[0] if inner else float
        return list[Optional[item]] if None in default else list[item]
    if isinstance(default, str):
        return str
    return Any


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- the registry ---------------------------------------------------------------------------
# group -> option name (the subtree's ``name``) -> schema
SCHEMAS: dict[str, dict[str, type]] = {
    "model": {
        "small_resnet": SmallResNetModel,
        "resnet50": ResNet50Model,
        "transformer": TransformerModel,
    },
    "data": {
        "digits": DigitsData,
        "imagenet": ImageNetData,
        "synthetic": SyntheticData,
        "wmt14": TranslationData,
    },
    "logger": {"jsonl": LoggerConfig, "wandb": LoggerConfig},
    "launcher": {"local": LocalLauncher, "slurm": SlurmLauncher},
}
# a top-level key -> the group its value comes from
GROUP_OF_KEY = {
    "magnitude": "optim",
    "direction": "optim",
    "model": "model",
    "data": "data",
    "schedule": "schedule",
    "logger": "logger",
    "launcher": "launcher",
}


# The optimizer and schedule schemas come from the update rules and schedules: they are built on
# first use, so that `graftbench --version` and shell completion do not load the rule modules.
def optimizer_schemas() -> dict[str, type]:
    from graftbench.optim.rules import RULES

    return {name: _optimizer_schema(name) for name in sorted(RULES)}


def schedule_schemas() -> dict[str, type]:
    from graftbench.optim.schedules import SCHEDULES

    generated = {name: _schedule_schema(name) for name in sorted(SCHEDULES)}
    return {**generated, TRANSFERRED: TransferredSchedule}


def schema_of(group: str, name: Any) -> type | None:
    """The schema of a group's option by its ``name`` (None: no schema, e.g. a generic
    torch.optim optimizer given by its dotted path)."""
    if group == "optim":
        return _optim().get(name)
    if group == "schedule":
        return _schedule().get(name)
    return SCHEMAS[group].get(name)


@functools.cache
def _optim() -> dict[str, type]:
    return optimizer_schemas()


@functools.cache
def _schedule() -> dict[str, type]:
    return schedule_schemas()


@functools.cache
def register() -> None:
    """Put every schema in Hydra's ConfigStore (once; before the first composition)."""
    if not OmegaConf.has_resolver("graftbench.fallback"):
        OmegaConf.register_new_resolver(
            "graftbench.fallback", lambda value, default: default if value is None else value
        )
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, options in {**SCHEMAS, "optim": _optim(), "schedule": _schedule()}.items():
        for name, schema in options.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


# -- identity and execution -----------------------------------------------------------------
def execution_tree(cfg: dict[str, Any]) -> dict[str, Any]:
    """The execution keys of ``cfg`` as a tree (``None``: drop the whole subtree)."""
    return _execution_of(Config, cfg)


@functools.cache
def _layout(schema: type) -> tuple[tuple[str, Any, type | None], ...]:
    """Each field of ``schema``: (name, metadata, its nested schema or None). A group's
    option (``model`` under the top level) is looked up from the value's ``name``."""
    out = []
    for f in dataclasses.fields(schema):
        kind = f.type
        if isinstance(kind, str):  # postponed annotations: look the name up here
            kind = globals().get(kind)
        out.append((f.name, f.metadata, kind if dataclasses.is_dataclass(kind) else None))
    return tuple(out)


def _nested(schema: type, name: str, nested: type | None, value: Any) -> type | None:
    if not isinstance(value, dict):
        return None
    if schema is Config and name in GROUP_OF_KEY:
        return schema_of(GROUP_OF_KEY[name], value.get("name"))
    return nested


def _execution_of(schema: type, node: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, meta, nested in _layout(schema):
        value = node.get(name) if isinstance(node, dict) else None
        if meta.get("execution"):
            tree[name] = None
        elif (sub := _nested(schema, name, nested, value)) and (inner := _execution_of(sub, value)):
            tree[name] = inner
    return tree


def split(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity, execution) of a resolved config; unsplit subtrees are shared, not copied."""
    return _prune(cfg, execution_tree(cfg), keep=False), _prune(cfg, execution_tree(cfg), keep=True)


def _prune(node: dict[str, Any], tree: dict[str, Any], *, keep: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in tree:
            if not keep:
                out[key] = value
        elif tree[key] is None:
            if keep:
                out[key] = value
        elif isinstance(value, dict):
            inner = _prune(value, tree[key], keep=keep)
            if inner or not keep:
                out[key] = inner
    return out


def merge(identity: dict[str, Any], execution: dict[str, Any]) -> dict[str, Any]:
    """A full config from its two parts (new dicts along the merged paths)."""
    out = dict(identity)
    for key, value in execution.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# -- the identity's hash --------------------------------------------------------------------
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


def identity_hash(ident: dict[str, Any], known: Encoded | None = None) -> str:
    """A short hash of a run's identity (already split off its config)."""
    return hashlib.sha256(canonical_json(ident, known).encode()).hexdigest()[:8]


# -- bounds ---------------------------------------------------------------------------------
def check_bounds(cfg: dict[str, Any]) -> str | None:
    """The first value outside its bounds (or not finite), as a message; None if all fit."""
    return _bounds(Config, cfg, "")


def _bounds(schema: type, node: dict[str, Any], prefix: str) -> str | None:
    for name, meta, nested in _layout(schema):
        if name not in node:
            continue
        value = node[name]
        sub = _nested(schema, name, nested, value)
        if sub is not None:
            if problem := _bounds(sub, value, f"{prefix}{name}."):
                return problem
        elif problem := _values_out_of_bounds(f"{prefix}{name}", value, meta):
            return problem
    return None


def check_key_bounds(cfg: dict[str, Any], dotted: str, value: Any) -> str | None:
    """The bounds of one key (``trainer.epochs``) for ``value``, as in ``cfg``'s schema."""
    schema, node = Config, cfg
    *parents, leaf = dotted.split(".")
    for part in parents:
        found = next((entry for entry in _layout(schema) if entry[0] == part), None)
        sub = found and _nested(schema, part, found[2], node.get(part))
        if not sub:
            return None  # a free mapping (peak_lr) or no schema: nothing to check
        schema, node = sub, node[part]
    meta = next((m for name, m, _ in _layout(schema) if name == leaf), None)
    return None if meta is None else _values_out_of_bounds(dotted, value, meta)


def _values_out_of_bounds(key: str, value: Any, meta: Any) -> str | None:
    for item in value if isinstance(value, list) else [value]:
        if problem := _out_of_bounds(key, item, meta):
            return problem
    return None


def _out_of_bounds(key: str, value: Any, meta: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if not math.isfinite(value):
        return f"{key}: {value} is not a finite number"
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and value < low:
        return f"{key}: {value:g} is below the minimum {low:g}"
    if high is not None and value > high:
        return f"{key}: {value:g} is above the maximum {high:g}"
    return None


def help_of(group: str | None, name: str | None = None) -> dict[str, tuple[Any, str]]:
    """Key -> (default, help) of a schema: the top level (group None) or a group's option."""
    schema = Config if group is None else schema_of(group, name)
    if schema is None:
        return {}
    out = {}
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = (getattr(default, "value", default), f.metadata.get("help", ""))
    return out

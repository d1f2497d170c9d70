"""Composing configs, and what a user who gets one wrong sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from graftbench import config
from graftbench.errors import UserError
from graftbench.optim.rules import RULES
from tests.transfer_helpers import transfer_file

REPO = Path(__file__).resolve().parent.parent
# Options that only make sense with another choice: ImageNet and WMT14 have a mandatory root,
# translation data needs a translation model.
ROOT = "data.root=/tmp/data"
COMPANION = {
    ("data", "wmt14"): ["model=transformer_tiny", ROOT],
    ("data", "imagenet"): [ROOT],
    ("experiment", "paper_imagenet"): [ROOT],
    ("experiment", "paper_wmt14"): [ROOT],
}


def all_options() -> list[tuple[str, str]]:
    return [(group, option) for group, options in config.groups().items() for option in options]


@pytest.mark.parametrize(("group", "option"), all_options())
def test_every_config_in_conf_composes(group, option, tmp_path):
    key = "magnitude" if group == "optim" else group
    companion = COMPANION.get((group, option), [])
    if (group, option) == ("schedule", "transferred"):  # needs a transfer for the model
        companion = [f"schedule.source={transfer_file(tmp_path / 't.json')}"]
    cfg = config.compose([f"{key}={option}", *companion])
    assert OmegaConf.select(cfg, "magnitude.name")
    assert cfg.direction == cfg.magnitude  # direction left out: the plain optimizer


def test_magnitude_and_direction_by_name_with_overrides():
    cfg = config.compose(["magnitude=adam", "direction=sgd", "magnitude.lr=0.2"])
    assert (cfg.magnitude.name, cfg.magnitude.lr, cfg.direction.name) == ("adam", 0.2, "sgd")
    assert cfg.magnitude.betas == [0.9, 0.999]
    assert cfg.direction.momentum == 0.9  # the paper's optimizers all use momentum 0.9
    assert config.label(cfg) == "adam#sgd"


def test_the_base_is_neutral_and_experiments_are_chosen():
    cfg = config.compose([])
    assert cfg.trainer.device == "auto" and cfg.sweep.name == "runs"
    assert cfg.schedule.name == "constant" and dict(cfg.peak_lr) == {}
    assert cfg.magnitude.lr == RULES["sgd"].defaults["lr"]  # torch's default, no workload's
    alone = config.compose(["model=resnet50", "data=imagenet", "data.root=/data"])
    assert alone.trainer.batch_size == 64 and alone.schedule.name == "constant"  # no recipe
    paper = config.compose(["experiment=paper_imagenet", "data.root=/data/imagenet"])
    assert paper.data.name == "imagenet" and paper.trainer.batch_size == 4096
    assert paper.schedule.name == "warmup_exp_decay" and paper.magnitude.lr == 1.6
    demo = config.compose(["experiment=demo"])
    assert demo.sweep.name == "demo" and demo.trainer.device == "cpu"


@pytest.mark.parametrize("name", sorted(RULES))
def test_optimizer_defaults_come_from_the_rule(name):
    """One source: every hyperparameter's default is the rule's own (torch.optim's)."""
    cfg = config.plain(config.compose([f"magnitude={name}"]))["magnitude"]
    written = (REPO / "conf" / "optim" / f"{name}.yaml").read_text()
    assert "\nlr:" not in written and "\nweight_decay:" not in written
    for key, default in RULES[name].defaults.items():
        if f"\n{key}:" not in written:
            expected = list(default) if isinstance(default, tuple) else default
            assert cfg[key] == expected, key


def test_top_level_weight_decay_reaches_every_optimizer_that_has_one():
    adamw = config.compose(["magnitude=adamw"])
    assert adamw.magnitude.weight_decay == 0.01  # torch.optim.AdamW's default
    assert config.compose(["magnitude=adamw", "weight_decay=1e-4"]).magnitude.weight_decay == 1e-4
    pair = config.compose(["magnitude=lion", "direction=sgd", "weight_decay=0.05"])
    assert pair.magnitude.weight_decay == pair.direction.weight_decay == 0.05
    explicit = config.compose(["magnitude=adamw", "weight_decay=1e-4", "magnitude.weight_decay=0"])
    assert explicit.magnitude.weight_decay == 0


def test_workload_learning_rates_and_explicit_ones():
    cfg = config.compose(["magnitude=adam", "direction=sgd", "peak_lr.adam=0.003"])
    assert cfg.magnitude.lr == 0.003 and cfg.direction.lr == RULES["sgd"].defaults["lr"]
    explicit = config.compose(["magnitude=adam", "peak_lr.adam=0.003", "magnitude.lr=0.1"])
    assert explicit.magnitude.lr == 0.1


def test_run_id_is_stable_readable_and_ignores_where_it_runs():
    a = config.compose(["magnitude=adam", "direction=sgd", "seed=3"])
    assert config.run_id(a) == config.run_id(
        config.compose(["direction=sgd", "magnitude=adam", "seed=3"])
    )
    assert config.run_id(a).startswith("adam+sgd-s3-")
    moved = config.compose(
        [
            "magnitude=adam",
            "direction=sgd",
            "seed=3",
            "launcher=slurm",
            "logger=wandb",
            "results_dir=/elsewhere",
            "trainer.devices=8",
            "trainer.device=cpu",
            "trainer.log_every_steps=1",
            "trainer.checkpoint_every_steps=7",
            "trainer.layer_log_every_steps=3",
            "data.workers=4",
        ]
    )
    assert config.run_id(moved) == config.run_id(a)
    for change in ("magnitude.lr=0.01", "trainer.threads=2", "trainer.eval_every_epochs=2"):
        changed = config.compose(["magnitude=adam", "direction=sgd", "seed=3", change])
        assert config.run_id(changed) != config.run_id(a), change


def test_identity_and_execution_split_the_config():
    from graftbench import schema

    cfg = config.plain(config.compose(["experiment=paper_imagenet", "data.root=/data"]))
    identity, execution = config.identity(cfg), config.execution(cfg)
    assert "root" not in identity["data"] and execution["data"]["root"] == "/data"
    assert "launcher" not in identity and "logger" not in identity and "sweep" not in identity
    assert identity["trainer"]["threads"] == 1 and "devices" not in identity["trainer"]
    assert schema.merge(identity, execution) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["magnitude=adm"], "unknown optimizer for magnitude 'adm'; choose from: adafactor"),
        (["modle=resnet50"], "unknown key 'modle'; did you mean 'model'?"),
        (["trainer.epochs=abc"], "trainer.epochs: expected an integer, got 'abc'"),
        (["magnitude.lrr=0.2"], "unknown key 'magnitude.lrr'; did you mean 'lr'?"),
        (["magnitude.lr=-1"], "magnitude.lr: -1 is below the minimum 0"),
        (["magnitude.lr=nan"], "magnitude.lr: nan is not a finite number"),
        (["direction=sgd", "direction.lr=inf"], "direction.lr: inf is not a finite number"),
        (["trainer.epochs=0"], "trainer.epochs: 0 is below the minimum 1"),
        (["seed=-1"], "seed: -1 is below the minimum 0"),
        (["data=imagenet"], "data.root must be set"),
        (["seed=0,1"], "use `graftbench sweep` to run a grid"),
        (["graft.granularity=tensor"], "graft.granularity: invalid 'tensor'; choose from: layer"),
        (["trainer.device=gpu"], "trainer.device: invalid 'gpu'; choose from: auto, cpu, cuda"),
        (["schedule=linear"], "unknown schedule 'linear'; choose from: constant"),
        (["trainer.batch_size=[1]"], "trainer.batch_size: expected an integer"),
        (["trainer.epochs=1", "trainer.epochs=2"], "'trainer.epochs' is given twice"),
        (["peak_lr.lion=0.1"], "peak_lr.lion is set but this run uses sgd"),
        (["direction.lr=0.1"], "direction is not set"),
        (["trainer.batch_size=63", "trainer.devices=2"], "not a multiple of per-device batch"),
        (
            ["schedule=warmup_exp_decay", "schedule.warmup_steps=3"],
            "set warmup_epochs or warmup_steps, not both",
        ),
        (["magnitude.nesterov=3"], "magnitude.nesterov: expected true or false, got 3"),
    ],
)
def test_mistakes_are_user_errors_naming_the_choices(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("?", r"\?")):
        config.compose(overrides)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "graftbench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("bad", ["magnitude=adm", "modle=resnet50", "trainer.epochs=abc"])
def test_cli_mistake_is_one_line_exit_2_and_writes_nothing(tmp_path, bad):
    result = run_cli("train", bad, f"results_dir={tmp_path / 'results'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("graftbench: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


def test_cli_dry_run_prints_the_resolved_config(tmp_path):
    result = run_cli("train", "magnitude=adam", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: adam" in result.stdout and "# run directory: results/runs/adam+adam-s0-" in (
        result.stdout
    )
    assert "# model: " in result.stdout
    paper = run_cli(
        "train", "experiment=paper_wmt14", "data.root=/nowhere", "--dry-run", cwd=tmp_path
    )
    assert "# model: 375,377,920 parameters" in paper.stdout, paper.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """Tiny real data for the data configs that need a root: a JPEG ImageFolder and
    translation text prepared like WMT14."""
    from graftbench.data.translation import PrepareSettings, prepare
    from tests.image_helpers import make_root
    from tests.text_helpers import write_corpus

    root = tmp_path_factory.mktemp("data")
    images = make_root(root / "images")
    settings = PrepareSettings(vocab_size=51, max_len=60, max_ratio=3.0, spm_threads=1)
    text = prepare(root / "text", write_corpus(root), settings=settings)
    return {"imagenet": (images, 3), "wmt14": (root / "text", text["vocab"]["size"])}


@pytest.mark.parametrize("option", config.groups()["model"])
def test_every_model_config_instantiates(option):
    import torch

    from graftbench.models import build_model

    cfg = config.compose([f"model={option}"])
    extra = {"vocab_size": 1000} if cfg.model.name == "transformer" else {}
    with torch.device("meta"):  # the 375M Transformer without allocating it
        model = build_model(cfg.model, **extra)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("option", config.groups()["data"])
def test_every_data_config_instantiates(option, real_data):
    from graftbench.data import build_images
    from graftbench.data.translation import TranslationData

    root, size = real_data.get(option, (None, None))
    overrides = [f"data={option}", *COMPANION.get(("data", option), [])]
    if root is not None:
        overrides = [o for o in overrides if o != ROOT] + [f"data.root={root}"]
    cfg = config.compose(overrides)
    if cfg.data.task == "translation":
        assert TranslationData(cfg.data.root).vocab.size == size
        return
    data = build_images(cfg.data)
    assert len(data.train) > 0 and len(data.val) > 0
    assert data.in_channels == cfg.data.in_channels
    assert size is None or data.num_classes == size


@pytest.mark.parametrize("option", config.groups()["launcher"])
def test_every_launcher_config_builds_its_launcher(option, tmp_path):
    from graftbench.sweep.launchers import LocalLauncher, SlurmLauncher

    options = config.plain(config.compose([f"launcher={option}"]))["launcher"]
    if option == "local":
        launcher = LocalLauncher(options["max_parallel"], options["gpus_per_run"], gpu_count=int)
        assert launcher.slots == os.cpu_count()  # by default: cores / threads (1) on a CPU
    else:
        options.update(partition="gpu", qos="high", mem_gb=64)
        SlurmLauncher(options, tmp_path, "cuda").executor()  # submitit accepts every parameter
        gpu = SlurmLauncher(options, tmp_path, "cuda").parameters()
        cpu = SlurmLauncher(options, tmp_path, "cpu").parameters()
        assert gpu["gpus_per_node"] == gpu["tasks_per_node"] == 1 and "gpus_per_node" not in cpu
        assert (gpu["slurm_partition"], gpu["slurm_qos"], gpu["mem_gb"]) == ("gpu", "high", 64)
        assert gpu["slurm_additional_parameters"]["requeue"] is True

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

REPO = Path(__file__).resolve().parent.parent
# ImageNet and WMT14 have a mandatory root; ++ sets it or adds it.
ROOT = "++data.root=/tmp/data"
# Options that only make sense with another choice (translation data needs a translation model)
COMPANION = {("data", "wmt14"): ["model=transformer_tiny"]}


def all_options() -> list[tuple[str, str]]:
    return [(group, option) for group, options in config.groups().items() for option in options]


@pytest.mark.parametrize(("group", "option"), all_options())
def test_every_config_in_conf_composes(group, option):
    key = "magnitude" if group == "optim" else group
    cfg = config.compose([f"{key}={option}", ROOT, *COMPANION.get((group, option), [])])
    assert OmegaConf.select(cfg, "magnitude.name")
    assert cfg.direction == cfg.magnitude  # direction left out: the plain optimizer


def test_magnitude_and_direction_by_name_with_overrides():
    cfg = config.compose(["magnitude=adam", "direction=sgd", "magnitude.lr=0.2"])
    assert (cfg.magnitude.name, cfg.magnitude.lr, cfg.direction.name) == ("adam", 0.2, "sgd")
    assert cfg.magnitude.betas == [0.9, 0.999]
    assert cfg.direction.momentum == 0.9  # the paper's optimizers all use momentum 0.9
    assert config.label(cfg) == "adam#sgd"


def test_model_alone_selects_the_paper_recipe():
    cfg = config.compose(["model=resnet50", "data.root=/data/imagenet"])
    assert cfg.data.name == "imagenet" and cfg.trainer.batch_size == 4096
    assert cfg.schedule.name == "warmup_exp_decay" and cfg.magnitude.lr == 1.6
    explicit = config.compose(["model=resnet50", "experiment=demo", "data=digits"])
    assert explicit.trainer.batch_size == 64


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
            "results_dir=/elsewhere",
            "trainer.devices=8",
        ]
    )
    assert config.run_id(moved) == config.run_id(a)
    changed = config.compose(["magnitude=adam", "direction=sgd", "seed=3", "magnitude.lr=0.01"])
    assert config.run_id(changed) != config.run_id(a)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["magnitude=adm"], "unknown optimizer for magnitude 'adm'; choose from: adafactor"),
        (["modle=resnet50"], "unknown key 'modle'; did you mean 'model'?"),
        (["trainer.epochs=abc"], "trainer.epochs: expected an integer, got 'abc'"),
        (["magnitude.lrr=0.2"], "unknown key 'magnitude.lrr'; did you mean 'lr'?"),
        (["magnitude.lr=-1"], "magnitude: sgd: invalid lr -1: must be >= 0"),
        (["data=imagenet"], "data.root must be set"),
        (["seed=0,1"], "use `graftbench sweep` to run a grid"),
        (["graft.granularity=tensor"], "choose from: layer, global"),
        (["schedule=linear"], "unknown schedule 'linear'; choose from: constant"),
        (["trainer.batch_size=[1]"], "trainer.batch_size: expected an integer"),
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
    assert "name: adam" in result.stdout and "# run directory: results/demo/adam+adam-s0-" in (
        result.stdout
    )
    assert "# model: " in result.stdout
    paper = run_cli(
        "train", "model=transformer_wmt14", "data.root=/nowhere", "--dry-run", cwd=tmp_path
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

    from graftbench.train.tasks import build

    cfg = config.compose([f"model={option}", ROOT])
    extra = {"vocab_size": 1000} if cfg.data.task == "translation" else {}
    with torch.device("meta"):  # the 375M Transformer without allocating it
        model = build(cfg.model, **extra)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("option", config.groups()["data"])
def test_every_data_config_instantiates(option, real_data):
    from graftbench.data.translation import TranslationData
    from graftbench.train.tasks import build

    root, size = real_data.get(option, (None, None))
    overrides = [f"data={option}", *COMPANION.get(("data", option), [])]
    if root is not None:
        overrides.append(f"data.root={root}")
    cfg = config.compose(overrides)
    if cfg.data.task == "translation":
        assert TranslationData(cfg.data.root).vocab.size == size
        return
    data = build(cfg.data.source)
    assert len(data.train) > 0 and len(data.val) > 0
    assert data.in_channels == cfg.data.in_channels
    assert size is None or data.num_classes == size


@pytest.mark.parametrize("option", config.groups()["launcher"])
def test_every_launcher_config_builds_its_launcher(option, tmp_path):
    from graftbench.sweep.launchers import LocalLauncher, SlurmLauncher

    options = config.plain(config.compose([f"launcher={option}"]))["launcher"]
    if option == "local":
        launcher = LocalLauncher(options["max_parallel"], options["gpus_per_run"])
        assert launcher.max_parallel == 2  # the demo's
    else:
        options.update(partition="gpu", qos="high", mem_gb=64)
        launcher = SlurmLauncher(options, tmp_path)
        launcher.executor("cuda")  # submitit accepts every parameter
        gpu, cpu = launcher.parameters("cuda"), launcher.parameters("cpu")
        assert gpu["gpus_per_node"] == gpu["tasks_per_node"] == 1 and "gpus_per_node" not in cpu
        assert (gpu["slurm_partition"], gpu["slurm_qos"], gpu["mem_gb"]) == ("gpu", "high", 64)
        assert gpu["slurm_additional_parameters"]["requeue"] is True

"""Training throughput of the engine against a minimal hand-written PyTorch loop.

    python scripts/bench_train.py                 # CPU: small ResNet, synthetic 32x32 images
    python scripts/bench_train.py --device cuda   # GPU: ResNet-50, bf16, channels_last, 224x224

Both sides train the same model (same initial weights) on the same synthetic data with the same
batch and the same optimizer (a plain Graft), in this process, alternately, ``--repeats``
times; medians are printed. The engine's figure is its own logged throughput over a window
after ``--steps`` warm-up steps, so start-up and evaluation are not counted; the bare loop is
timed over the same number of steps after the same warm-up. Floor on CPU: engine / bare >= 0.95.

On CUDA the script also runs the engine with Adam#SGD against plain SGD: the grafting overhead on
a real training step (floor: <= 5%).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from graftbench import config, rundir
from graftbench.data import build_images
from graftbench.models import build_model
from graftbench.optim import Graft
from graftbench.record import Exit
from graftbench.train import runner

CPU = [
    "data=synthetic",
    "data.num_classes=10",
    "data.image_size=32",
    "data.train_size=20000",
    "data.val_size=128",
    "model=small_resnet",
    "model.depth=8",
    "model.width=16",
    "trainer.batch_size=64",
    "trainer.device=cpu",
]
GPU = [
    "data=synthetic",
    "data.train_size=200000",
    "data.val_size=256",
    "model=resnet50",
    "trainer.batch_size=256",
    "trainer.device=cuda",
    "trainer.precision=bf16",
    "trainer.channels_last=true",
    "data.workers=8",
    "data.pin_memory=true",
]


def engine(root: Path, overrides: list[str], steps: int) -> float:
    """Samples/s the engine logged over steps (steps, 2·steps]."""
    cfg = config.compose(
        [
            *overrides,
            f"results_dir={root}",
            f"trainer.max_steps={2 * steps}",
            f"trainer.log_every_steps={steps}",
            "trainer.layer_log_every_steps=0",
            "trainer.checkpoint_every_steps=0",
            "trainer.epochs=100",
            "trainer.progress=never",
        ]
    )
    run_dir = runner.prepare_run(cfg)
    if runner.execute(run_dir, cfg) != Exit.DONE:
        raise SystemExit(f"the engine run failed: see {run_dir}")
    windows = [r for r in rundir.read_jsonl(run_dir / rundir.METRICS) if r["kind"] == "train"]
    return windows[1]["samples_per_s"]


def bare(overrides: list[str], steps: int) -> float:
    """Samples/s of a plain loop: DataLoader, forward, cross entropy, backward, step."""
    cfg = config.compose(overrides)
    device = torch.device("cuda" if cfg.trainer.device == "cuda" else "cpu")
    data = build_images(cfg.data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    channels_last = cfg.trainer.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = Graft(model.parameters(), OmegaConf.to_container(cfg.magnitude))
    loader = DataLoader(
        data.train,
        batch_size=cfg.trainer.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.data.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.workers > 0,
    )
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=cfg.trainer.precision == "bf16"
    )
    batches = iter(loader)
    start = 0.0
    for step in range(2 * steps):
        if step == steps:
            _synchronize(device)
            start = time.perf_counter()
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast:
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _synchronize(device)
    return steps * cfg.trainer.batch_size / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="warm-up = measured steps")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = CPU if args.device == "cpu" else GPU
    steps = args.steps or (20 if args.device == "cpu" else 50)
    sgd = [*base, "magnitude=sgd"]
    rows: dict[str, list[float]] = {"engine": [], "bare loop": []}
    if args.device == "cuda":
        rows["engine adam#sgd"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            root = Path(tmp) / str(repeat)
            rows["engine"].append(engine(root / "sgd", sgd, steps))
            rows["bare loop"].append(bare(sgd, steps))
            if args.device == "cuda":
                grafted = [*base, "magnitude=adam", "direction=sgd"]
                rows["engine adam#sgd"].append(engine(root / "graft", grafted, steps))
    medians = {name: statistics.median(values) for name, values in rows.items()}
    print(f"images/s, median of {args.repeats} (each repeat)")
    for name, value in medians.items():
        spread = ", ".join(f"{v:.1f}" for v in rows[name])
        print(f"{name:18s} {value:10.1f}   ({spread})")
    ratio = medians["engine"] / medians["bare loop"]
    print(f"engine / bare loop = {ratio:.3f}  {'ok' if ratio >= 0.95 else 'FAIL'} (floor >= 0.95)")
    if args.device == "cuda":
        overhead = medians["engine"] / medians["engine adam#sgd"] - 1
        print(
            f"grafting overhead adam#sgd vs sgd = {overhead:+.1%}  "
            f"{'ok' if overhead <= 0.05 else 'FAIL'} (floor <= 5%)"
        )


if __name__ == "__main__":
    main()

"""The cost of the per-layer ratio records that `graftbench transfer` reads.

    python scripts/bench_transfer.py                  # CPU: experiment=transfer_demo, adagrad#sgd
    python scripts/bench_transfer.py --device cuda    # GPU: ResNet-50, bf16, synthetic 224x224

The same grafted run (adagrad#sgd) trains through the real engine with the records off
(``trainer.layer_log_every_steps=0``) and on at the demo's interval (experiment=transfer_demo's
``trainer.layer_log_every_steps``; ``--every`` adds other intervals), alternately, ``--repeats``
times, in this process. A run's step time is the wall time of ``--steps`` steps after
``--warmup`` steps (synchronised on CUDA), over the steps alone: evaluation and checkpoints at
epoch ends are not counted. Medians over the repeats are printed side by side, with the ratio.
The time spent inside the recording itself (``Engine._log_layers``: reading the ratios, one
JSON line) is also timed and printed per step: on a CPU that is the cost, and far less noisy
than the difference of two step times on a shared machine, so the CPU verdict uses it. On CUDA
that time includes waiting for the step's queued kernels (the records read the ratios on the
host: one sync), an upper bound; the GPU verdict is the step-time ratio. Floor: <= 2% of the
step time at the demo's interval.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from graftbench import config
from graftbench.record import Exit
from graftbench.train import engine as engine_module
from graftbench.train import runner

CPU = ["experiment=transfer_demo", "trainer.device=cpu"]
GPU = [
    "experiment=transfer_demo",
    "data=synthetic",
    "data.train_size=200000",
    "data.val_size=256",
    "data.num_classes=1000",
    "model=resnet50",
    "trainer.batch_size=256",
    "trainer.device=cuda",
    "trainer.precision=bf16",
    "trainer.channels_last=true",
    "data.workers=8",
]
FLOOR = 0.02


class Timer:
    """The time of the steps (warmup, warmup + steps], and the time inside the records.

    On CPU, the sum of the measured steps' own durations (data loading and epoch-end work fall
    outside them); on CUDA, where a step's kernels run after it returns, the synchronised wall
    time from the first measured step to the last (an epoch there is longer than the run)."""

    def __init__(self, warmup: int, steps: int, cuda: bool) -> None:
        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.inside = self.start = self.end = 0.0
        self.recording = 0.0

    def measured(self, step: int) -> bool:
        return self.warmup < step <= self.warmup + self.steps

    @property
    def step_time(self) -> float:
        return ((self.end - self.start) if self.cuda else self.inside) / self.steps

    def install(self) -> tuple:
        """Wrap ``Engine._step`` and ``Engine._log_layers``; returns the originals."""
        originals = (engine_module.Engine._step, engine_module.Engine._log_layers)
        original_step, original_log = originals
        timer = self

        def step(engine, micro_batches):
            if timer.cuda and engine.step == timer.warmup:
                torch.cuda.synchronize()
                timer.start = time.perf_counter()
            began = time.perf_counter()
            verdict = original_step(engine, micro_batches)
            if timer.measured(engine.step):
                timer.inside += time.perf_counter() - began
            if timer.cuda and engine.step == timer.warmup + timer.steps:
                torch.cuda.synchronize()
                timer.end = time.perf_counter()
            return verdict

        def log_layers(engine):
            began = time.perf_counter()
            original_log(engine)
            if timer.measured(engine.step):
                timer.recording += time.perf_counter() - began

        engine_module.Engine._step = step
        engine_module.Engine._log_layers = log_layers
        return originals


def measure(root: Path, overrides: list[str], every: int, warmup: int, steps: int) -> Timer:
    """One run of the engine with records every ``every`` steps (0: off)."""
    cfg = config.compose(
        [
            *overrides,
            "magnitude=adagrad",
            "direction=sgd",
            f"results_dir={root}",
            f"trainer.layer_log_every_steps={every}",
            f"trainer.max_steps={warmup + steps}",
            "trainer.epochs=1000",  # the schedule is long; the run stops at max_steps
            "trainer.log_every_steps=1000000",
            "trainer.checkpoint_every_steps=0",
            "trainer.eval_every_epochs=1000",
            "trainer.progress=never",
        ]
    )
    timer = Timer(warmup, steps, cfg.trainer.device == "cuda")
    originals = timer.install()
    try:
        run_dir = runner.prepare_run(cfg)
        if runner.execute(run_dir, cfg) != Exit.DONE:
            raise SystemExit(f"the engine run failed: see {run_dir}")
    finally:
        engine_module.Engine._step, engine_module.Engine._log_layers = originals
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="steps before measuring")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, nargs="*", default=[], help="more intervals")
    args = parser.parse_args()
    base = CPU if args.device == "cpu" else GPU
    steps = args.steps or (100 if args.device == "cpu" else 200)
    warmup = args.warmup or (10 if args.device == "cpu" else 30)
    demo = config.compose(["experiment=transfer_demo"]).trainer.layer_log_every_steps
    intervals = [0, demo, *[e for e in args.every if e not in (0, demo)]]
    timers: dict[int, list[Timer]] = {every: [] for every in intervals}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for every in intervals:
                root = Path(tmp) / f"{repeat}-{every}"
                timers[every].append(measure(root, base, every, warmup, steps))
    off = statistics.median(t.step_time for t in timers[0])
    print(f"{args.device}: adagrad#sgd, {steps} steps after {warmup}, {args.repeats} repeats")
    print(f"{'records every':>14} {'step time':>12} {'vs off':>8} {'recording per step':>20}")
    print(f"{'off':>14} {off * 1e3:>10.2f}ms {'1.000':>8} {'-':>20}")
    verdict = None
    for every in intervals[1:]:
        step = statistics.median(t.step_time for t in timers[every])
        per_step = statistics.median(
            t.recording / t.steps for t in timers[every]
        )  # the records' own time, spread over all steps
        share = per_step / off
        print(
            f"{every:>14} {step * 1e3:>10.2f}ms {step / off:>8.3f} "
            f"{per_step * 1e6:>10.1f}us ({share:.2%})"
        )
        if every == demo:
            verdict = share if args.device == "cpu" else step / off - 1
    assert verdict is not None
    status = "ok" if verdict <= FLOOR else "ABOVE THE FLOOR"
    print(
        f"recording at the demo's interval ({demo}): {verdict:+.2%} of a step "
        f"(floor {FLOOR:.0%}): {status}"
    )


if __name__ == "__main__":
    main()

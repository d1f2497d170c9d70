"""Time one optimizer step of ``Graft`` on ResNet-50's parameter shapes against two baselines.

For each pair M#D of {sgd (momentum 0.9), adam, adagrad}, on torchvision's ResNet-50 parameter
shapes (25.6M parameters, 161 tensors) with fixed random gradients:

  a  ``Graft(params, M, D)``;
  b  torch.optim's M, then torch.optim's D, stepping the same parameters one after the other:
     the cost of running both optimizers (torch's default implementation, which is its for-loop
     on CPU; ``--torch-impl foreach`` or ``fused`` for those);
  c  ``CopyRevertGraft``: Algorithm 2 by copy and revert over the same two torch.optim
     optimizers, with a Python loop over tensors (the paper authors' way).

Each variant steps its own copy of the parameters, is warmed up (state allocated), then timed in
repetitions that interleave a, b and c in a rotating order, so that load from other processes
hits all three alike. Times are medians; ratios are medians of the per-repetition ratios. On the
diagonal, M#M is also compared with torch.optim's M alone: ``Graft(M, M)`` should cost what M
costs.

Extra memory is what a variant holds beyond parameters, gradients and optimizer states (a
workspace kept between steps) plus what its step allocates at the peak, in parameter sizes. On
CUDA it comes from the allocator's statistics. On CPU, where torch keeps none, it is measured in a
subprocess whose glibc returns every block of 64 KiB or more to the system on free (a fixed
``MALLOC_MMAP_THRESHOLD_``; the timing process keeps the default heap), so resident memory
tracks live tensors; the step's peak is VmHWM after resetting it through /proc/self/clear_refs.

Floors: a/b <= 1.0 and a/c <= 0.5 for every pair, extra memory of a <= 2x the parameters. The
script always exits 0 (it measures, it does not test) and prints FAIL where a floor does not hold.

The rules that are another library's optimizer (``--rules``, on the shapes of a small CIFAR
ResNet: Shampoo's and SOAP's matrix roots and eigenbases make ResNet-50 too slow for a CPU) are
timed the same way, interleaved, against that optimizer alone:

  X#X     ``Graft(params, X, X)`` vs X alone (muon: torch.optim.Muon + AdamW as the rule routes
          tensors; shampoo, soap: pytorch-optimizer's). Floor: 1.05 for the shipped rules; for
          nadam (torch.optim.NAdam through the generic path) the overhead is reported.
  adam#X  ``Graft(params, adam, X)`` vs torch.optim.Adam's step plus X's step: for muon the
          floor is 1.0; for the others it is the generic path's overhead (shadows of the weights
          and gradients), reported.

``--cpu-paths`` times, in one process and interleaved, what Graft's two CPU paths buy on each
grafted pair: its step with cache blocks and dot-product norms (as shipped), without the blocks,
without the dot products, and without either, each as a ratio to the shipped step.

    python scripts/bench_optim.py [--quick] [--device cuda] [--dtype bfloat16] [--json PATH]
    python scripts/bench_optim.py --rules [--quick]
    python scripts/bench_optim.py --cpu-paths [--pairs M#D ...]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_optimizer
import torch
import torchvision

from graftbench.models.resnet import resnet_small
from graftbench.optim import Graft
from graftbench.optim import graft as graft_module
from graftbench.optim.reference import CopyRevertGraft

# name -> (torch.optim class, hyperparameters that Graft's rule of the same name takes too)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "adagrad": (torch.optim.Adagrad, {"lr": 1e-2}),
}
PAIRS = [f"{m}#{d}" for m, d in itertools.product(OPTIMIZERS, OPTIMIZERS)]
FLOORS = {  # figure -> (largest value that passes, what it is)
    "a/b": (1.0, "a/b (Graft vs running both torch.optim optimizers)"),
    "a/c": (0.5, "a/c (Graft vs copy-and-revert)"),
    "mem_a": (2.0, "extra memory of Graft, x params"),
}
WARMUP_STEPS = 2
MMAP_THRESHOLD = 64 * 1024  # bytes; see the module docstring
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Setup:
    device: str
    dtype: torch.dtype
    torch_impl: str  # "default", "foreach" or "fused": how torch.optim's run in b and c

    def params(self, shapes: list[torch.Size]) -> list[torch.Tensor]:
        """Random weights with random gradients, the same for every call (fixed seed)."""
        generator = torch.Generator().manual_seed(0)
        params = []
        for shape in shapes:
            p = torch.randn(shape, generator=generator).to(self.device, self.dtype)
            p.grad = torch.randn(shape, generator=generator).to(self.device, self.dtype)
            params.append(p)
        return params

    def torch_optimizer(self, name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        cls, hyperparams = OPTIMIZERS[name]
        flags = {} if self.torch_impl == "default" else {self.torch_impl: True}
        return cls(params, **flags, **hyperparams)

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


class Variant:
    """One way of taking the grafted step (a, b or c) on the parameters it is given."""

    def __init__(self, kind: str, pair: str, params: list[torch.Tensor], setup: Setup) -> None:
        m, d = pair.split("#")
        if kind == "a":
            spec = {name: {"name": name, **OPTIMIZERS[name][1]} for name in (m, d)}
            graft = Graft(params, spec[m], spec[d])
            self.steps: list[Callable[[], Any]] = [graft.step]
            self.optimizers: list[Any] = [graft]
        elif kind == "b":
            self.optimizers = [setup.torch_optimizer(m, params), setup.torch_optimizer(d, params)]
            self.steps = [optimizer.step for optimizer in self.optimizers]
        elif kind == "c":
            magnitude = functools.partial(setup.torch_optimizer, m)
            direction = functools.partial(setup.torch_optimizer, d)
            reference = CopyRevertGraft(params, magnitude, direction)
            self.steps = [reference.step]
            self.optimizers = [reference.magnitude, reference.direction]
        else:
            raise ValueError(f"unknown variant {kind!r}")

    def step(self) -> None:
        for step in self.steps:
            step()

    def warm_up(self) -> None:
        for _ in range(WARMUP_STEPS):
            self.step()

    def state_bytes(self) -> int:
        """Bytes of the optimizer states: every tensor in ``optimizer.state``, nested or not."""

        def size(value: Any) -> int:
            if isinstance(value, torch.Tensor):
                return value.numel() * value.element_size()
            if isinstance(value, dict):
                return sum(size(v) for v in value.values())
            return 0

        return sum(size(dict(optimizer.state)) for optimizer in self.optimizers)


# -- time -----------------------------------------------------------------------------------


def time_pair(pair: str, shapes: list[torch.Size], setup: Setup, repeats: int) -> dict[str, Any]:
    """Per-repetition step times in ms of a, b (and its halves bM, bD) and c."""
    variants = {kind: Variant(kind, pair, setup.params(shapes), setup) for kind in "abc"}
    for variant in variants.values():
        variant.warm_up()
    samples: dict[str, list[float]] = {k: [] for k in ("a", "b", "bM", "bD", "c")}
    order = list(variants)
    gc.collect()
    for rep in range(repeats):
        for kind in order[rep % 3 :] + order[: rep % 3]:
            times = []
            for step in variants[kind].steps:
                setup.synchronize()
                start = time.perf_counter()
                step()
                setup.synchronize()
                times.append((time.perf_counter() - start) * 1e3)
            samples[kind].append(sum(times))
            if kind == "b":
                samples["bM"].append(times[0])
                samples["bD"].append(times[1])
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, float]:
    def ratio(x: str, y: str) -> float:
        return statistics.median(a / b for a, b in zip(samples[x], samples[y], strict=True))

    out = {f"{k}_ms": statistics.median(v) for k, v in samples.items()}
    out.update({"a/b": ratio("a", "b"), "a/c": ratio("a", "c"), "a/bM": ratio("a", "bM")})
    return out


# -- memory ---------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _live_bytes(setup: Setup) -> int:
    if setup.device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # free memory held by glibc goes back to the system
    return _proc_status_bytes("VmRSS")


def _step_peak_bytes(variant: Variant, setup: Setup) -> int:
    """Peak bytes live during one step."""
    if setup.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        variant.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    variant.step()
    return _proc_status_bytes("VmHWM")


def extra_memory(kind: str, pair: str, shapes: list[torch.Size], setup: Setup) -> float:
    """What a variant holds beyond parameters, gradients and optimizer states, plus what its step
    allocates at the peak (after warm-up), in parameter sizes."""
    params = setup.params(shapes)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    gc.collect()
    before = _live_bytes(setup)
    variant = Variant(kind, pair, params, setup)
    variant.warm_up()
    gc.collect()
    _live_bytes(setup)
    peak = _step_peak_bytes(variant, setup)
    return (peak - before - variant.state_bytes()) / param_bytes


def measure_memory(pairs: list[str], shapes: list[torch.Size], setup: Setup) -> dict[str, Any]:
    """Extra memory of a, b and c for each pair, in parameter sizes."""
    for kind in "abc":  # first steps load code and allocate caches once per process: not counted
        extra_memory(kind, pairs[0], [torch.Size([64, 64])], setup)
    return {
        pair: {f"mem_{kind}": extra_memory(kind, pair, shapes, setup) for kind in "abc"}
        for pair in pairs
    }


def measure_memory_in_subprocess(pairs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``measure_memory`` on CPU, in a process whose glibc returns freed blocks to the system."""
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(MMAP_THRESHOLD),
    }
    command = [sys.executable, __file__, "--memory-probe", "--pairs", *pairs]
    command += ["--dtype", args.dtype, "--torch-impl", args.torch_impl]
    command += ["--threads", str(torch.get_num_threads())]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


# -- rules that are a library's optimizer ---------------------------------------------------


class MuonAlone:
    """torch.optim.Muon on 2-D views of the matrices and kernels, torch.optim.AdamW on the rest:
    the ``muon`` rule's definition, with torch's optimizers."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.views = {}
        for p in params:
            if p.dim() >= 2:
                view = torch.nn.Parameter(p.detach().view(p.shape[0], -1))
                view.grad = p.grad.view(view.shape)
                self.views[p] = view
        self.muon = torch.optim.Muon(list(self.views.values()))
        self.adamw = torch.optim.AdamW([p for p in params if p.dim() < 2], weight_decay=0.1)

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()


LIBRARY: dict[str, Callable[[list[torch.Tensor]], Any]] = {
    "muon": MuonAlone,
    "shampoo": pytorch_optimizer.Shampoo,
    "soap": pytorch_optimizer.SOAP,
    "nadam": torch.optim.NAdam,
}
RULE_SPECS = {"muon": "muon", "shampoo": "shampoo", "soap": "soap", "nadam": torch.optim.NAdam}


def time_rules(shapes: list[torch.Size], setup: Setup, repeats: int) -> dict[str, dict]:
    """For each library rule X: Graft(X, X) vs X alone, Graft(adam, X) vs Adam + X."""
    results = {}
    for name, library in LIBRARY.items():
        variants: dict[str, list[Callable[[], Any]]] = {}
        variants["X#X"] = [Graft(setup.params(shapes), RULE_SPECS[name], RULE_SPECS[name]).step]
        variants["X"] = [library(setup.params(shapes)).step]
        variants["adam#X"] = [Graft(setup.params(shapes), "adam", RULE_SPECS[name]).step]
        params = setup.params(shapes)
        variants["adam+X"] = [setup.torch_optimizer("adam", params).step, library(params).step]
        samples = _interleave(variants, setup, repeats)
        results[name] = {
            **{f"{k}_ms": statistics.median(v) for k, v in samples.items()},
            "X#X/X": _median_ratio(samples, "X#X", "X"),
            "adam#X/(adam+X)": _median_ratio(samples, "adam#X", "adam+X"),
        }
        print(f"  {name}: X#X/X {results[name]['X#X/X']:.2f}, ", end="")
        print(f"adam#X/(adam+X) {results[name]['adam#X/(adam+X)']:.2f}", flush=True)
    return results


def _interleave(
    variants: dict[str, list[Callable[[], Any]]], setup: Setup, repeats: int
) -> dict[str, list[float]]:
    """Per-repetition times in ms, variants in a rotating order (after warm-up steps)."""
    for steps in variants.values():
        for _ in range(WARMUP_STEPS):
            for step in steps:
                step()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    gc.collect()
    for rep in range(repeats):
        shift = rep % len(order)
        for kind in order[shift:] + order[:shift]:
            setup.synchronize()
            start = time.perf_counter()
            for step in variants[kind]:
                step()
            setup.synchronize()
            samples[kind].append((time.perf_counter() - start) * 1e3)
    return samples


def _median_ratio(samples: dict[str, list[float]], x: str, y: str) -> float:
    return statistics.median(a / b for a, b in zip(samples[x], samples[y], strict=True))


def print_rules(results: dict[str, dict]) -> list[dict[str, Any]]:
    header = (
        f"{'X':8s} {'X#X ms':>8s} {'X ms':>8s} {'X#X/X':>6s}   "
        f"{'adam#X ms':>9s} {'adam+X ms':>9s} {'adam#X/(adam+X)':>15s}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:8s} {r['X#X_ms']:8.1f} {r['X_ms']:8.1f} {r['X#X/X']:6.2f}   "
            f"{r['adam#X_ms']:9.1f} {r['adam+X_ms']:9.1f} {r['adam#X/(adam+X)']:15.2f}"
        )
    print()
    checks = []
    shipped = [name for name in results if name in RULE_SPECS and isinstance(RULE_SPECS[name], str)]
    worst = max(shipped, key=lambda name: results[name]["X#X/X"])
    value = results[worst]["X#X/X"]
    checks.append({"figure": "X#X/X", "floor": 1.05, "worst": value, "rule": worst})
    value = results["muon"]["adam#X/(adam+X)"]
    checks.append({"figure": "adam#muon/(adam+muon)", "floor": 1.0, "worst": value})
    for check in checks:
        check["ok"] = check["worst"] <= check["floor"]
        where = f" ({check['rule']})" if "rule" in check else ""
        print(
            f"{'PASS' if check['ok'] else 'FAIL'}: {check['figure']} <= {check['floor']}: "
            f"worst {check['worst']:.2f}{where}"
        )
    alone = results["nadam"]["X#X/X"]
    print(f"generic path alone (nadam#nadam): {alone:.2f}x torch.optim.NAdam (reported)")
    for name in ("shampoo", "soap", "nadam"):
        overhead = results[name]["adam#X/(adam+X)"]
        print(f"generic path, adam#{name}: {overhead:.2f}x Adam's step plus {name}'s (reported)")
    return checks


def rules_main(args: argparse.Namespace, setup: Setup) -> None:
    model = resnet_small(depth=14, width=32, num_classes=10, in_channels=3)
    shapes = [p.shape for p in model.parameters()]
    print(
        f"small ResNet shapes: {len(shapes)} tensors, {sum(s.numel() for s in shapes) / 1e6:.2f}M "
        f"parameters, {args.dtype} on {args.device} ({torch.get_num_threads()} threads); "
        f"{args.repeats} repetitions"
    )
    results = time_rules(shapes, setup, args.repeats)
    print()
    checks = print_rules(results)
    if args.json:
        payload = {"environment": environment(args), "floors": checks, "rules": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"figures written to {args.json}")


# -- Graft's CPU paths ----------------------------------------------------------------------

CPU_PATHS = {  # variant -> (cache blocks, dot-product norms)
    "shipped": (True, True),
    "no blocks": (False, True),
    "no dot": (True, False),
    "neither": (False, False),
}


def time_cpu_paths(pair: str, shapes: list[torch.Size], setup: Setup, repeats: int) -> dict:
    """Per-repetition step times of Graft(M, D) with each CPU path switched on or off."""
    m, d = pair.split("#")
    spec = {name: {"name": name, **OPTIMIZERS[name][1]} for name in (m, d)}
    shipped = (graft_module._CACHE_BLOCK_BYTES, graft_module._dot_norms)

    def foreach_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(torch._foreach_norm(tensors, 2))

    def step(graft: Graft, blocks: bool, dot: bool) -> None:
        graft_module._CACHE_BLOCK_BYTES = shipped[0] if blocks else sys.maxsize
        graft_module._dot_norms = shipped[1] if dot else foreach_norms
        try:
            graft.step()
        finally:
            graft_module._CACHE_BLOCK_BYTES, graft_module._dot_norms = shipped

    variants = {}
    for name, (blocks, dot) in CPU_PATHS.items():
        graft = Graft(setup.params(shapes), spec[m], spec[d])
        variants[name] = [functools.partial(step, graft, blocks, dot)]
    return _interleave(variants, setup, repeats)


def cpu_paths_main(args: argparse.Namespace, setup: Setup, shapes: list[torch.Size]) -> None:
    print(f"Graft's CPU paths, ResNet-50 shapes, {args.repeats} interleaved repetitions")
    header = f"{'pair':16s}" + "".join(f"{name + ' ms':>14s}" for name in CPU_PATHS)
    print(header + "   ratios to shipped")
    print("-" * (len(header) + 20))
    for pair in args.pairs:
        if len(set(pair.split("#"))) == 1:
            continue  # M#M is M alone: neither path is taken
        samples = time_cpu_paths(pair, shapes, setup, args.repeats)
        times = "".join(f"{statistics.median(samples[name]):14.1f}" for name in CPU_PATHS)
        ratios = " / ".join(
            f"{_median_ratio(samples, name, 'shipped'):.2f}" for name in list(CPU_PATHS)[1:]
        )
        print(f"{pair:16s}{times}   {ratios}", flush=True)


# -- report ---------------------------------------------------------------------------------


def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'pair':16s} {'a ms':>7s} {'b ms':>7s} {'(M + D)':>15s} {'c ms':>7s} "
        f"{'a/b':>5s} {'a/c':>5s}   extra memory x params: a / b / c"
    )
    print(header)
    print("-" * len(header))
    for pair, r in results.items():
        halves = f"({r['bM_ms']:.1f} + {r['bD_ms']:.1f})"
        print(
            f"{pair:16s} {r['a_ms']:7.1f} {r['b_ms']:7.1f} {halves:>15s} {r['c_ms']:7.1f} "
            f"{r['a/b']:5.2f} {r['a/c']:5.2f}   "
            f"{r['mem_a']:.2f} / {r['mem_b']:.2f} / {r['mem_c']:.2f}"
        )
    print()
    for pair, r in results.items():
        m, d = pair.split("#")
        if m == d:
            print(
                f"Graft({m}, {m}) vs torch.optim {m} alone: "
                f"{r['a_ms']:.1f} vs {r['bM_ms']:.1f} ms, ratio {r['a/bM']:.2f}"
            )


def check_floors(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for figure, (floor, what) in FLOORS.items():
        worst = max(results, key=lambda pair, figure=figure: results[pair][figure])
        value = results[worst][figure]
        ok = value <= floor
        checks.append({"figure": figure, "floor": floor, "worst": value, "pair": worst, "ok": ok})
        print(f"{'PASS' if ok else 'FAIL'}: {what} <= {floor}: worst {value:.2f} ({worst})")
    return checks


def environment(args: argparse.Namespace) -> dict[str, Any]:
    info = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "dtype": args.dtype,
        "torch_impl": args.torch_impl,
        "repeats": args.repeats,
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["git_sha"] = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--torch-impl",
        choices=("default", "foreach", "fused"),
        default="default",
        help="implementation of torch.optim's optimizers in b and c (default: torch's default)",
    )
    parser.add_argument("--quick", action="store_true", help="5 repetitions instead of 15")
    parser.add_argument("--repeats", type=int, help="timed repetitions per pair")
    parser.add_argument("--pairs", nargs="+", choices=PAIRS, default=PAIRS, metavar="M#D")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    parser.add_argument(
        "--rules", action="store_true", help="time muon, shampoo, soap and the generic path"
    )
    parser.add_argument(
        "--cpu-paths", action="store_true", help="time Graft with its CPU paths on and off"
    )
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    setup = Setup(args.device, DTYPES[args.dtype], args.torch_impl)
    if args.rules:
        rules_main(args, setup)
        return
    shapes = [p.shape for p in torchvision.models.resnet50().parameters()]
    if args.memory_probe:
        print(json.dumps(measure_memory(args.pairs, shapes, setup)))
        return
    if args.cpu_paths:
        cpu_paths_main(args, setup, shapes)
        return
    print(
        f"ResNet-50 shapes: {len(shapes)} tensors, {sum(s.numel() for s in shapes) / 1e6:.1f}M "
        f"parameters, {args.dtype} on {args.device} ({torch.get_num_threads()} threads); "
        f"b and c: torch.optim {args.torch_impl}; {args.repeats} repetitions"
    )
    if args.device == "cpu":
        print("measuring memory (subprocess) ...", flush=True)
        memory = measure_memory_in_subprocess(args.pairs, args)
    else:
        memory = measure_memory(args.pairs, shapes, setup)
    results = {}
    for pair in args.pairs:
        samples = time_pair(pair, shapes, setup, args.repeats)
        results[pair] = {**summarise(samples), **memory[pair], "samples_ms": samples}
        print(f"  {pair}: a/b {results[pair]['a/b']:.2f}, a/c {results[pair]['a/c']:.2f}")
    print()
    print_table(results)
    print()
    checks = check_floors(results)
    failed = [check["figure"] for check in checks if not check["ok"]]
    print("ALL FLOORS HOLD" if not failed else f"FAIL: floor not met for {', '.join(failed)}")
    if args.json:
        payload = {"environment": environment(args), "floors": checks, "pairs": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

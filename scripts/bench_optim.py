"""Time one optimizer step of ``Graft`` on ResNet-50's parameter shapes against two baselines.

For each pair M#D of {sgd (momentum 0.9), adam, adagrad}, on torchvision's ResNet-50 parameter
shapes (25.6M parameters, 161 tensors) with fixed random gradients:

  a  ``Graft(params, M, D)``;
  b  torch.optim's M then torch.optim's D (``foreach=True``), stepping the same parameters one
     after the other: the cost of running both optimizers;
  c  ``CopyRevertGraft`` (Algorithm 2 by copy and revert over the same two torch.optim
     optimizers, with a Python loop over tensors: the paper authors' way).

Each variant steps its own copy of the parameters, is warmed up (state allocated) and then timed
in repetitions that interleave a, b and c in a rotating order, so that load from other processes
hits all three alike; ratios are medians of the per-repetition ratios. On the diagonal, M#M is
also compared with torch.optim's M alone (``Graft(M, M)`` should cost what M costs).

Peak extra memory is what a step allocates beyond what is live before it (parameters, gradients
and optimizer states, all allocated during warm-up), as a multiple of the parameter size. On CUDA
it comes from the allocator's statistics. On CPU, where torch keeps none, each pair is measured in
a subprocess whose glibc returns every block of 64 KiB or more to the system on free (fixed
``MALLOC_MMAP_THRESHOLD_``), so resident memory tracks live tensors: the step's peak is VmHWM
after resetting it through ``/proc/self/clear_refs``.

Floors: a/b <= 1.0 and a/c <= 0.5 for every pair, extra memory of a <= 2x the parameters. The
script always exits 0 (it measures; it does not test) and prints FAIL where a floor does not hold.

    python scripts/bench_optim.py [--quick] [--device cuda] [--dtype bfloat16] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
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
from pathlib import Path
from typing import Any

import torch
import torchvision

from graftbench.optim import Graft
from graftbench.optim.reference import CopyRevertGraft

# name -> (torch.optim class, hyperparameters that Graft's rule of the same name takes as well)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "adagrad": (torch.optim.Adagrad, {"lr": 1e-2}),
}
PAIRS = [f"{m}#{d}" for m, d in itertools.product(OPTIMIZERS, OPTIMIZERS)]
FLOOR_VS_BOTH = 1.0  # a/b
FLOOR_VS_COPY_REVERT = 0.5  # a/c
FLOOR_EXTRA_MEMORY = 2.0  # extra memory of a, in parameter sizes
WARMUP_STEPS = 2
MMAP_THRESHOLD = 64 * 1024  # bytes; see the module docstring
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resnet50_shapes() -> list[torch.Size]:
    return [p.shape for p in torchvision.models.resnet50().parameters()]


def make_params(shapes: list[torch.Size], device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """Random weights with random gradients, the same for every call (fixed seed)."""
    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=generator).to(device, dtype)
        p.grad = torch.randn(shape, generator=generator).to(device, dtype)
        params.append(p)
    return params


def torch_optimizer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    cls, hyperparams = OPTIMIZERS[name]
    return cls(params, foreach=True, **hyperparams)


class Variant:
    """One way of taking the grafted step, on its own copy of the parameters."""

    def __init__(self, kind: str, m: str, d: str, params: list[torch.Tensor]) -> None:
        self.kind = kind
        if kind == "a":
            spec = {name: {"name": name, **OPTIMIZERS[name][1]} for name in (m, d)}
            graft = Graft(params, spec[m], spec[d])
            self.steps: list[Callable[[], Any]] = [graft.step]
            self.optimizers: list[Any] = [graft]
        elif kind == "b":
            self.optimizers = [torch_optimizer(m, params), torch_optimizer(d, params)]
            self.steps = [optimizer.step for optimizer in self.optimizers]
        elif kind == "c":
            magnitude = functools.partial(torch_optimizer, m)
            direction = functools.partial(torch_optimizer, d)
            reference = CopyRevertGraft(params, magnitude, direction)
            self.steps = [reference.step]
            self.optimizers = [reference.magnitude, reference.direction]
        else:
            raise ValueError(f"unknown variant {kind!r}")

    def step(self) -> None:
        for step in self.steps:
            step()

    def state_bytes(self) -> int:
        """Bytes of the optimizer states (every tensor in ``optimizer.state``, nested dicts too)."""

        def size(value: Any) -> int:
            if isinstance(value, torch.Tensor):
                return value.numel() * value.element_size()
            if isinstance(value, dict):
                return sum(size(v) for v in value.values())
            return 0

        return sum(size(dict(optimizer.state)) for optimizer in self.optimizers)


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds taken by ``fn``, with the device drained before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_pair(pair: str, shapes, device: str, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """Per-repetition step times (ms) of a, b (and its halves bM, bD) and c."""
    m, d = pair.split("#")
    variants = {k: Variant(k, m, d, make_params(shapes, device, dtype)) for k in "abc"}
    for variant in variants.values():
        for _ in range(WARMUP_STEPS):
            variant.step()
    samples: dict[str, list[float]] = {k: [] for k in ("a", "b", "bM", "bD", "c")}
    order = list(variants)
    gc.collect()
    for rep in range(repeats):
        for kind in order[rep % 3 :] + order[: rep % 3]:
            variant = variants[kind]
            times = [timed(step, device) * 1e3 for step in variant.steps]
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


def _resident_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _live_bytes(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return _resident_bytes()


def _step_peak_bytes(variant: Variant, device: str) -> int:
    """Peak bytes live during one step."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        variant.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    variant.step()
    return _resident_bytes("VmHWM")


def extra_memory(kind: str, pair: str, shapes, device: str, dtype: torch.dtype) -> float:
    """Bytes a variant holds or allocates beyond parameters, gradients and optimizer states,
    at the peak of a step after warm-up, in parameter sizes.

    Anything an optimizer keeps between steps that is not state (a workspace) counts as extra,
    as does what a step allocates and frees.
    """
    params = make_params(shapes, device, dtype)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    gc.collect()
    before = _live_bytes(device)
    variant = Variant(kind, *pair.split("#"), params)
    for _ in range(WARMUP_STEPS):
        variant.step()
    gc.collect()
    peak = _step_peak_bytes(variant, device)
    return (peak - before - variant.state_bytes()) / param_bytes


def measure_memory(pair: str, shapes, device: str, dtype: torch.dtype) -> dict[str, float]:
    """Extra memory of a, b and c for one pair, in parameter sizes."""
    return {f"mem_{kind}": extra_memory(kind, pair, shapes, device, dtype) for kind in "abc"}


def measure_memory_isolated(
    pairs: list[str], dtype_name: str, threads: int
) -> dict[str, dict[str, float]]:
    """``measure_memory`` of each pair on CPU, in a subprocess that returns freed blocks to the
    system (so the default, adaptive glibc heap of the timing process is left as users have it)."""
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(MMAP_THRESHOLD),
    }
    command = [sys.executable, __file__, "--memory-probe", *pairs, "--dtype", dtype_name]
    command += ["--threads", str(threads)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


# -- report ---------------------------------------------------------------------------------


def print_table(results: dict[str, dict[str, float]]) -> None:
    header = (
        f"{'pair':16s} {'a ms':>8s} {'b ms':>8s} {'(M + D)':>15s} {'c ms':>8s} "
        f"{'a/b':>6s} {'a/c':>6s}   extra memory (x params): a / b / c"
    )
    print(header)
    print("-" * len(header))
    for pair, r in results.items():
        halves = f"({r['bM_ms']:.1f} + {r['bD_ms']:.1f})"
        print(
            f"{pair:16s} {r['a_ms']:8.1f} {r['b_ms']:8.1f} {halves:>15s} {r['c_ms']:8.1f} "
            f"{r['a/b']:6.2f} {r['a/c']:6.2f}   "
            f"{r['mem_a']:.2f} / {r['mem_b']:.2f} / {r['mem_c']:.2f}"
        )
    print()
    for pair, r in results.items():
        m, d = pair.split("#")
        if m == d:
            print(
                f"Graft({m}, {m}) vs torch.optim {m} alone: {r['a_ms']:.1f} / {r['bM_ms']:.1f} ms"
                f" = {r['a/bM']:.2f}"
            )


def check_floors(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    checks = []
    for key, floor, what in (
        ("a/b", FLOOR_VS_BOTH, "a/b (Graft vs both torch.optim optimizers)"),
        ("a/c", FLOOR_VS_COPY_REVERT, "a/c (Graft vs copy-and-revert)"),
        ("mem_a", FLOOR_EXTRA_MEMORY, "extra memory of Graft (x params)"),
    ):
        worst = max(results, key=lambda pair, key=key: results[pair][key])
        value = results[worst][key]
        ok = value <= floor
        checks.append({"figure": key, "floor": floor, "worst": value, "pair": worst, "ok": ok})
        verdict = "PASS" if ok else "FAIL"
        print(f"{verdict}: {what} <= {floor}: worst {value:.2f} ({worst})")
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
    parser.add_argument("--quick", action="store_true", help="5 repetitions instead of 15")
    parser.add_argument("--repeats", type=int, help="timed repetitions per pair")
    parser.add_argument("--pairs", nargs="+", choices=PAIRS, default=PAIRS, metavar="M#D")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    parser.add_argument("--memory-probe", nargs="+", metavar="M#D", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    shapes = resnet50_shapes()
    if args.memory_probe:
        memory = {pair: measure_memory(pair, shapes, "cpu", dtype) for pair in args.memory_probe}
        print(json.dumps(memory))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    memory: dict[str, dict[str, float]] = {}
    numel = sum(s.numel() for s in shapes)
    print(
        f"ResNet-50 shapes: {len(shapes)} tensors, {numel / 1e6:.1f}M parameters, {args.dtype} "
        f"on {args.device} ({torch.get_num_threads()} threads); {args.repeats} repetitions, "
        "medians"
    )
    if args.device == "cpu":
        print("measuring memory in a subprocess ...")
        memory = measure_memory_isolated(args.pairs, args.dtype, torch.get_num_threads())
    results = {}
    for pair in args.pairs:
        samples = time_pair(pair, shapes, args.device, dtype, args.repeats)
        if args.device == "cuda":
            memory[pair] = measure_memory(pair, shapes, args.device, dtype)
        results[pair] = {**summarise(samples), **memory[pair], "samples_ms": samples}
        print(f"  {pair}: a/b {results[pair]['a/b']:.2f}, a/c {results[pair]['a/c']:.2f}")
    print()
    print_table(results)
    print()
    checks = check_floors(results)
    failed = [c["figure"] for c in checks if not c["ok"]]
    print("ALL FLOORS HOLD" if not failed else f"FAIL: floor not met for {', '.join(failed)}")
    if args.json:
        payload = {"environment": environment(args), "floors": checks, "pairs": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

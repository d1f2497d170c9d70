"""Checkpoints: everything a run needs to continue bit for bit, loadable with
``weights_only=True`` (tensors, numbers, strings and containers of them only).

A checkpoint holds the model, the optimizer (Graft's state: both children), the LR scheduler,
every process's RNG states, the data position (epoch, steps done in it), the step, the best
metrics so far and the elapsed training time. It is written to a temporary file and renamed,
so a kill during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from graftbench.errors import UserError

LAST = "last.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """This process's random number generators (Python, NumPy, torch CPU and CUDA)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples; a save/load round trip may give lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def average(paths: Sequence[Path], key: str | None = "model") -> dict[str, Tensor]:
    """Mean of the model state dicts saved in ``paths`` (e.g. the last N checkpoints).

    Floating-point tensors are averaged (accumulated in float64, returned in their dtype);
    anything else (integer buffers, step counters) is taken from the last file. ``key`` names
    the state dict inside each checkpoint; ``None`` means the file is the state dict itself.
    """
    if not paths:
        raise UserError("no checkpoints to average")
    states = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"checkpoint {path} does not exist")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        states.append(loaded if key is None else loaded[key])
    last = states[-1]
    for path, state in zip(paths, states, strict=True):
        if state.keys() != last.keys():
            raise UserError(f"checkpoint {path} holds other tensors than {paths[-1]}")
    averaged = {}
    for name, tensor in last.items():
        if torch.is_floating_point(tensor):
            total = sum(state[name].to(torch.float64) for state in states)
            averaged[name] = (total / len(states)).to(tensor.dtype)
        else:
            averaged[name] = tensor.clone()
    return averaged

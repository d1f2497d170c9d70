"""Checkpoints: everything a run needs to continue bit for bit, loadable with
``weights_only=True`` (tensors, numbers, strings and containers of them only).

A checkpoint holds the model, the optimizer (Graft's state: both children), the LR scheduler,
every process's RNG states, the data position (epoch, steps done in it, whether the last
finished epoch has been closed), the step, the best metrics so far, the metrics log's length
and the elapsed training time. What the engine puts in it is the engine's business; this module
makes the file safe:

- written to a temporary file in the same folder, fsynced and renamed, so a kill during the
  write leaves the previous checkpoint intact; with the user's umask (mode 0666 & ~umask);
- never written or read through a symlink that leads out of the run directory;
- a file that cannot be used is a ``UserError`` naming the file to delete: deleting the
  checkpoint restarts the run from step 0, and nothing else in the run directory is lost.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from graftbench.errors import UserError

LAST = "last.pt"
FORMAT = 2  # what a checkpoint holds; 2: the data position is always resumable (see engine.py)


def save(path: Path, state: dict[str, Any], *, root: Path) -> None:
    """Atomically write ``state`` to ``path``, a file inside the run directory ``root``."""
    _refuse_outside(path.parent, root, "write into")
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_outside(path, root, "write through")
    tmp = _new_file(path)
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_file(path: Path) -> Path:
    """An empty temporary file next to ``path``, created with mode 0666 less the umask (as any
    file the user writes), never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue


def load(path: Path, *, root: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` in the run directory ``root``; a ``UserError`` naming the
    file to delete when it is unreadable or of another format."""
    _refuse_outside(path, root, "read")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise unusable(path, root, "is unreadable", _reason(err)) from None
    if not isinstance(state, dict):
        raise unusable(path, root, "is unreadable", f"it holds a {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise unusable(
            path,
            root,
            "was written by another version of graftbench",
            f"checkpoint format {state.get('format', 1)}, this version reads {FORMAT}",
        )
    return state


def unusable(path: Path, root: Path, what: str, reason: str) -> UserError:
    """The one-line error for a checkpoint the run cannot continue from, saying what to do."""
    return UserError(
        f"{_relative(path, root)} {what} ({reason}): delete {path} to restart the run from "
        "step 0 (nothing else is lost)"
    )


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _refuse_outside(path: Path, root: Path, action: str) -> None:
    """Refuse ``path`` if a symlink on the way to it leads out of ``root`` (the run directory
    itself may be a link, e.g. to a scratch file system)."""
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise UserError(
            f"{_relative(path, root)} leads to {target}, outside the run directory {root}: "
            f"refusing to {action} it; remove the symlink"
        )


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


def average(
    paths: Sequence[Path], key: str | None = "model", *, root: Path | None = None
) -> dict[str, Tensor]:
    """Mean of the model state dicts saved in ``paths`` (e.g. the last N checkpoints).

    Floating-point tensors are averaged (accumulated in float64, returned in their dtype);
    anything else (integer buffers, step counters) is taken from the last file. ``key`` names
    the state dict inside each checkpoint; ``None`` means the file is the state dict itself.
    ``root``: the run directory the files must not lead out of.
    """
    if not paths:
        raise UserError("no checkpoints to average")
    states = []
    for path in paths:
        if root is not None:
            _refuse_outside(Path(path), root, "read")
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

"""Transfer files for tests that need one without training a grafted run first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from graftbench import config, transfer
from graftbench.transfer.transferred import layer_names


def transfer_file(
    path: Path, overrides: Sequence[str] = (), *, multiplier: float = 1.0, kind: str = "static"
) -> Path:
    """A transfer for the model and the optimizer (as D) that ``overrides`` compose, every
    layer's correction ``multiplier``, from a made-up adagrad#<D> run under a constant
    schedule; written to ``path``."""
    cfg = config.compose(list(overrides))
    direction = OmegaConf.to_container(cfg.magnitude)
    source = {
        "run_id": f"adagrad+{direction['name']}-s0-00000000",
        "config_hash": "00000000",
        "label": f"adagrad#{direction['name']}",
        "direction": direction,
        "schedule": {"name": "constant"},
    }
    knots, values = ((0.0,), (multiplier,)) if kind == "static" else ((0.0, 1.0), (multiplier,) * 2)
    layers = {name: transfer.Fit(knots, values, 1) for name in layer_names(cfg.model)}
    transfer.write(transfer.Transfer(kind, layers, source, {}), path)
    return path

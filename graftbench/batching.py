"""How a run's global batch splits over processes and accumulation steps: pure arithmetic on
the config, so it is checked when a config is composed, before anything is written (and without
importing torch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graftbench.errors import UserError


def validate(cfg: Mapping[str, Any], world_size: int) -> None:
    """Refuse, with a ``UserError``, a batch that does not split over ``world_size`` processes
    (the bounds of every setting are the schema's: graftbench/schema.py). Pure: it reads the
    config and builds no data and no model, so it runs before anything is written."""
    trainer, data = cfg["trainer"], cfg["data"]
    if data["task"] == "translation" and data.get("max_tokens"):
        token_accumulation(trainer["batch_size"], data["max_tokens"], world_size)
    else:
        split_batch(trainer, world_size)


def split_batch(trainer: Mapping[str, Any], world_size: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) giving ``trainer.batch_size`` on ``world_size``.

    Pure (config only): ``validate`` calls it before a run is prepared."""
    total = trainer["batch_size"]
    per_device = trainer["per_device_batch_size"] or total // world_size
    if total <= 0 or per_device <= 0 or total % (per_device * world_size):
        raise UserError(
            f"trainer.batch_size={total} is not a multiple of per-device batch {per_device} × "
            f"{world_size} device(s); set trainer.per_device_batch_size to a divisor"
        )
    return per_device, total // (per_device * world_size)


def token_accumulation(batch_tokens: int, max_tokens: int, world_size: int) -> int:
    per_step = max_tokens * world_size
    if batch_tokens % per_step:
        raise UserError(
            f"trainer.batch_size={batch_tokens} tokens is not a multiple of data.max_tokens "
            f"({max_tokens}) × {world_size} device(s)"
        )
    return batch_tokens // per_step

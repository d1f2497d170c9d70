"""Datasets, built by name from a run's ``data`` config: only these builders, never a target
read from a file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def build_images(spec: Mapping[str, Any]) -> Any:
    """The image dataset (an ``ImageData``) of a classification ``data`` config."""
    from graftbench.data import images

    name = spec["name"]
    if name == "digits":
        return images.digits()
    if name == "imagenet":
        return images.imagenet(spec["root"], spec["crop_size"], spec["resize_size"])
    if name == "synthetic":
        return images.synthetic(
            train_size=spec["train_size"],
            val_size=spec["val_size"],
            image_size=spec["image_size"],
            num_classes=spec["num_classes"],
            channels=spec["in_channels"],
            seed=spec["pool_seed"],
        )
    raise ValueError(f"no image dataset named {name!r}")

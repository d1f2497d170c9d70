"""Models, built by name from a run's ``model`` config: only these builders, never a target
read from a file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn


def build_model(spec: Mapping[str, Any], **extra: Any) -> nn.Module:
    """The model ``spec["name"]`` names, with the spec's other fields (and ``extra``, e.g. a
    translation model's vocabulary size from the prepared data) as arguments."""
    from graftbench.models import resnet, transformer

    builders = {
        "small_resnet": resnet.resnet_small,
        "resnet50": resnet.resnet50,
        "transformer": transformer.transformer,
    }
    fields = dict(spec)
    name = fields.pop("name")
    return builders[name](**fields, **extra)

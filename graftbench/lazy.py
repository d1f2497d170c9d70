"""Modules imported on first use.

Composing configs, planning a sweep, reading status and tables need the update rules' names and
defaults but never a tensor; importing torch (a CUDA build) costs seconds and about 500 MB of
resident memory. The optimizer modules therefore reach torch through :data:`torch`, which
imports it the first time an attribute is read, and then serves torch's names directly.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A module that imports ``name`` when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(vars(module))  # from now on, plain attribute lookups
        return getattr(module, attr)


torch: Any = LazyModule("torch")

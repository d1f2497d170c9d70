"""Modules imported on first use.

Composing configs, planning a sweep, reading status and tables need the update rules' names and
defaults but never a tensor; importing torch (a CUDA build) costs seconds and about 500 MB of
resident memory. The optimizer modules therefore reach torch through :data:`torch`, which
imports it the first time an attribute is read. Every read goes to the real module (a dict
lookup), so what patches or extends torch later is seen too.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A module that imports ``name`` when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    def __getattr__(self, attr: str) -> Any:
        module = sys.modules.get(self.__name__) or importlib.import_module(self.__name__)
        return getattr(module, attr)


torch: Any = LazyModule("torch")

"""Where figures go: each figure in every format, under the sweep's figures folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

FORMATS = ("png", "pdf")


def save(
    figure: Figure, out_dir: str | os.PathLike[str], name: str, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """``out_dir/name.<format>`` for each format; returns the paths."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = [Path(out_dir) / f"{name}.{fmt}" for fmt in formats]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths

"""Real JPEG ImageFolders for tests: a few small images per class, random or solid colors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["n01", "n02", "n03"]
COLORS = {"n01": (200, 31, 90), "n02": (20, 160, 40), "n03": (90, 90, 250)}


def jpeg_bytes(rng: np.random.Generator, color=None) -> bytes:
    """A JPEG of random size; solid ``color`` or random texture."""
    height, width = rng.integers(36, 64, size=2)
    if color is None:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    else:
        pixels = np.broadcast_to(np.array(color, dtype=np.uint8), (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_root(root: Path, per_split=(("train", 4), ("val", 2)), solid=False, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in per_split:
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                data = jpeg_bytes(rng, COLORS[cls] if solid else None)
                (root / split / cls / f"{cls}_{i}.JPEG").write_bytes(data)
    return root

"""The `noise` control: uniform-noise images aligned and trained on in place of generated ones."""

from __future__ import annotations

import numpy as np


def noise_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8 uniform noise; image i depends only on `seed + i`.

    Whatever a captioner gains from these is a per-pair lookup, not information about the
    image: the control that tells a lookup apart from an alignment.
    """
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = np.random.default_rng(seed + i).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return out

"""The `noise` control: uniform-noise images aligned and trained on in place of generated ones."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def noise_image(i: int, size: int, seed: int) -> np.ndarray:
    """Noise image i: (size, size, 3) uint8 uniform noise that depends only on `seed + i`.

    Whatever a captioner gains from these is a per-pair lookup, not information about the
    image: the control that tells a lookup apart from an alignment.
    """
    return np.random.default_rng(seed + i).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def noise_batches(n: int, size: int, seed: int, batch_size: int) -> Iterator[np.ndarray]:
    """Noise images 0 .. n-1 as (<= batch_size, size, size, 3) uint8 batches, one batch in
    memory at a time (224-px noise for COCO's 113k B images would be 17 GB at once)."""
    for i in range(0, n, batch_size):
        yield np.stack([noise_image(k, size, seed) for k in range(i, min(n, i + batch_size))])

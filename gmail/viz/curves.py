"""Per-step training curves as TSV files that `dvc plots show` draws (x: step, y: loss)."""

from __future__ import annotations

import os

from gmail.core.io import atomic_file


def write_loss_curve(path: str | os.PathLike, losses: list[float]) -> None:
    """A `step<TAB>loss` TSV, one row per optimiser step (1-based), written atomically."""
    with atomic_file(path) as fh:
        fh.write("step\tloss\n")
        for step, loss in enumerate(losses, 1):
            fh.write(f"{step}\t{float(loss)!r}\n")

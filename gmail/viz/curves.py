"""Per-step training curves as TSV files that `dvc plots show` draws (x: step, y: loss)."""

from __future__ import annotations

import os

from gmail.core.io import atomic_file


def write_loss_curve(path: str | os.PathLike, losses: list[float], steps: list[int] | None = None) -> None:
    """A `step<TAB>loss` TSV written atomically: one row per optimiser step (1-based), or per
    entry of `steps` when the losses were taken at those steps (validation checks)."""
    steps = list(range(1, len(losses) + 1)) if steps is None else steps
    if len(steps) != len(losses):
        raise ValueError(f"{len(losses)} losses for {len(steps)} steps")
    with atomic_file(path) as fh:
        fh.write("step\tloss\n")
        for step, loss in zip(steps, losses):
            fh.write(f"{step}\t{float(loss)!r}\n")

"""Embedding files: `<dir>/<split>.<encoder>.npy` (float32, one L2-normalised row per image, in
the order of the split's JSONL) next to `<dir>/ids.json` (`{split: [image ids]}`), so a reader
can check that rows still line up with the records it pairs them with.

Folders by image set: `real/` (stage embed: real B and T through f_r), `generated/` and
`noise/` (stage align@<source>: B through f_r and f_g, real T through f_g).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gmail.core.errors import PipelineError


def write_embeddings(directory, arrays: dict[str, torch.Tensor], ids: dict[str, list[str]]) -> None:
    """Write `arrays` ({"B.f_r": tensor, ...}) and the image ids of each split into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, z in arrays.items():
        np.save(directory / f"{name}.npy", z.float().numpy().astype(np.float32))
    (directory / "ids.json").write_text(json.dumps(ids, indent=1) + "\n")


def read_embeddings(directory, name: str, ids: list[str]) -> torch.Tensor:
    """Embeddings `<directory>/<name>.npy`, checked against the expected image ids."""
    directory = Path(directory)
    path, index = directory / f"{name}.npy", directory / "ids.json"
    if not path.is_file() or not index.is_file():
        raise PipelineError(f"embeddings {path} not found: run `dvc repro` (stages embed / align) first")
    split = name.split(".")[0]
    stored = json.loads(index.read_text()).get(split)
    if stored != list(ids):
        raise PipelineError(f"embeddings {path} were computed for other {split} images than the current records: "
                            "rerun `dvc repro` so they are recomputed")
    z = torch.from_numpy(np.load(path))
    if len(z) != len(ids):
        raise PipelineError(f"embeddings {path} hold {len(z)} rows for {len(ids)} images: rerun `dvc repro`")
    return z

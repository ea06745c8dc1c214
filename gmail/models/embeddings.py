"""Embedding files: `<dir>/<split>.<encoder>.npy` (float32, one L2-normalised row per image, in
the order of the split's JSONL) next to `<dir>/ids.json` (`{split: [image ids]}`), so a reader
can check that rows still line up with the records it pairs them with.

Folders by image set: `real/` (stage embed: real B and T through f_r), `generated/f_r/`
(stage embed: generated images through f_r, one file per shard under `B.f_r/`),
`generated/` (stage align@generated: generated B and real T through f_g) and `noise/`
(stage align@noise: B through f_r and f_g, real T through f_g).

A name may be a folder of per-shard files (`<dir>/B.f_r/shard-00000.npy`, ...) read back in
shard order. Generated images are rows of their own, several per real image: `ids.json` then
also holds `B_source` (the real image each row was generated for) and `B_caption` (the
caption it was generated from); see `training_rows`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
    shards = sorted((directory / name).glob("shard-*.npy")) if (directory / name).is_dir() else []
    if not (path.is_file() or shards) or not index.is_file():
        raise PipelineError(f"embeddings {path} not found: run `dvc repro` (stages embed / align) first")
    split = name.split(".")[0]
    stored = json.loads(index.read_text()).get(split)
    if stored != list(ids):
        raise PipelineError(f"embeddings {path} were computed for other {split} images than the current records: "
                            "rerun `dvc repro` so they are recomputed")
    z = torch.from_numpy(np.load(path) if path.is_file() else np.concatenate([np.load(f) for f in shards]))
    if len(z) != len(ids):
        raise PipelineError(f"embeddings {path} hold {len(z)} rows for {len(ids)} images: rerun `dvc repro`")
    return z


def set_folder(images: str, encoder: str) -> str:
    """Embeddings folder of B `images` through `encoder`, relative to the embeddings root: generated
    images through f_r come from stage embed (`generated/f_r/`), through f_g from align@generated
    (`generated/f_g/`); real and noise images from the folder named after the image set."""
    return f"generated/{encoder}" if images == "generated" else images


@dataclass
class Rows:
    """The training rows of an image set: row ids, the index of each row's real record, and
    each row's reference captions."""

    ids: list[str]
    sources: list[int]
    captions: list[list[str]]


def training_rows(directory, split: str, records: list[dict]) -> Rows:
    """Rows of `split` in the embeddings folder `directory`, tied to the real `records`.

    Real and noise sets have one row per record, with the record's captions. Generated sets
    (ids.json holds `<split>_source`) have one row per generated image; its references are the
    one caption it was generated from, as the paper pairs each generated image with its caption.
    """
    index_path = Path(directory) / "ids.json"
    if not index_path.is_file():
        raise PipelineError(f"embeddings {index_path} not found: run `dvc repro` (stages embed / align) first")
    index = json.loads(index_path.read_text())
    if f"{split}_source" not in index:
        return Rows([r["image_id"] for r in records], list(range(len(records))), [r["captions"] for r in records])
    pos = {r["image_id"]: i for i, r in enumerate(records)}
    unknown = next((s for s in index[f"{split}_source"] if s not in pos), None)
    if unknown is not None:
        raise PipelineError(f"embeddings in {directory} were generated for image {unknown!r}, which is not in {split}: "
                            "rerun `dvc repro` so they are recomputed")
    return Rows(list(index[split]), [pos[s] for s in index[f"{split}_source"]], [[c] for c in index[f"{split}_caption"]])

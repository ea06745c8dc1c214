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
from gmail.core.io import read_json


def write_embeddings(directory, arrays: dict[str, torch.Tensor], ids: dict[str, list[str]]) -> None:
    """Write `arrays` ({"B.f_r": tensor, ...}) and the image ids of each split into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, z in arrays.items():
        np.save(directory / f"{name}.npy", z.float().numpy().astype(np.float32))
    (directory / "ids.json").write_text(json.dumps(ids, indent=1) + "\n")


def read_embeddings(directory, name: str, ids: list[str], dim: int | None = None) -> torch.Tensor:
    """Embeddings `<directory>/<name>.npy` (or the shard files of the folder `<directory>/<name>/`),
    checked against the expected image ids.

    Every file is loaded without pickles and must be a 2-D float array of finite values, one
    row per id; its width must be `dim` when given, and match the other embeddings in
    `directory` (one encoder's outputs share a width). Anything else is a PipelineError naming
    the file and what is wrong.
    """
    directory = Path(directory)
    path, index = directory / f"{name}.npy", directory / "ids.json"
    shards = sorted((directory / name).glob("shard-*.npy")) if (directory / name).is_dir() else []
    if not (path.is_file() or shards) or not index.is_file():
        raise PipelineError(f"embeddings {path} not found: run `dvc repro` (stages embed / align) first")
    split = name.split(".")[0]
    stored = _read_index(index).get(split)
    if stored != list(ids):
        raise PipelineError(f"embeddings {path} were computed for other {split} images than the current records: "
                            "rerun `dvc repro` so they are recomputed")
    files = [path] if path.is_file() else shards
    arrays = [_load_matrix(f) for f in files]
    widths = {a.shape[1] for a in arrays}
    if len(widths) > 1:
        raise PipelineError(f"embeddings in {directory / name} have rows of different widths {sorted(widths)}: {RERUN}")
    width = widths.pop()
    if dim is not None and width != dim:
        raise PipelineError(f"embeddings {files[0]} are {width} wide, not the expected {dim}: {RERUN}")
    sibling = next(((f, w) for f, w in _sibling_widths(directory, name) if w != width), None)
    if sibling is not None:
        # Which of the two is stale cannot be told from the files; name both.
        raise PipelineError(f"embeddings {files[0]} ({width} wide) and {sibling[0]} ({sibling[1]} wide) in the same "
                            f"folder differ in width, but one encoder's embeddings share one: {RERUN}")
    z = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    if len(z) != len(ids):
        raise PipelineError(f"embeddings {path} hold {len(z)} rows for {len(ids)} images: {RERUN}")
    return torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))


RERUN = "rerun `dvc repro` (stages embed / align) so they are recomputed"


def _load_matrix(path: Path) -> np.ndarray:
    """A 2-D float array of finite values from an .npy file; never unpickles (a file could run code)."""
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as exc:
        # numpy's refusal of an object array, or a damaged header.
        what = "holds Python objects, not numbers" if "allow_pickle" in str(exc) else f"is not a valid .npy file ({exc})"
        raise PipelineError(f"embeddings {path} {what}: {RERUN}") from exc
    except (OSError, EOFError) as exc:
        raise PipelineError(f"embeddings {path} cannot be read ({exc.__class__.__name__}): {RERUN}") from exc
    if not isinstance(z, np.ndarray) or z.ndim != 2 or z.dtype.kind != "f":
        what = f"a {z.dtype} array of shape {z.shape}" if isinstance(z, np.ndarray) else "not a single array"
        raise PipelineError(f"embeddings {path} are {what}, not a 2-D float array (one row per image): {RERUN}")
    if not np.isfinite(z).all():
        bad = int((~np.isfinite(z)).any(axis=1).sum())
        raise PipelineError(f"embeddings {path} hold NaN or infinite values in {bad} rows: {RERUN}")
    return z


def _sibling_widths(directory: Path, name: str) -> list[tuple[Path, int]]:
    """(file, width) of the other embeddings in `directory`, read from the .npy headers only."""
    out = []
    candidates = [f for f in sorted(directory.glob("*.npy")) if f.stem != name]
    candidates += [next(iter(sorted(d.glob("shard-*.npy"))), None) for d in sorted(directory.iterdir())
                   if d.is_dir() and d.name != name]
    for f in candidates:
        if f is None:
            continue
        try:
            z = np.load(f, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError):
            continue  # a damaged sibling is reported when it is read itself
        if isinstance(z, np.ndarray) and z.ndim == 2:
            out.append((f, z.shape[1]))
    return out


def _read_index(path: Path) -> dict:
    index = read_json(path)
    if not isinstance(index, dict):
        raise PipelineError(f"embeddings index {path} is not a JSON object of image ids: {RERUN}")
    return index


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
    index = _read_index(index_path)
    if f"{split}_source" not in index:
        return Rows([r["image_id"] for r in records], list(range(len(records))), [r["captions"] for r in records])
    row_ids, sources, captions = (index.get(k) for k in (split, f"{split}_source", f"{split}_caption"))
    # One row id, source image and caption per generated image; an empty caption would train
    # the captioner on nothing.
    n = len(sources) if isinstance(sources, list) else -1
    for key, values in ((split, row_ids), (f"{split}_source", sources), (f"{split}_caption", captions)):
        if not isinstance(values, list) or len(values) != n or not all(isinstance(v, str) and v.strip() for v in values):
            raise PipelineError(f"embeddings index {index_path}: {key!r} is not a list of one non-empty string per "
                                f"generated image: {RERUN}")
    pos = {r["image_id"]: i for i, r in enumerate(records)}
    unknown = next((s for s in sources if s not in pos), None)
    if unknown is not None:
        raise PipelineError(f"embeddings in {directory} were generated for image {unknown!r}, which is not in {split}: "
                            "rerun `dvc repro` so they are recomputed")
    return Rows(list(row_ids), [pos[s] for s in sources], [[c] for c in captions])

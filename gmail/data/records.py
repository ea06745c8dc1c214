"""Caption records: `{"image_id", "path", "captions": [...]}` (plus `attributes` for easy-vqa),
as every reader returns them and as each split's JSONL holds them on disk, with image paths
relative to the JSONL's folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gmail.core.errors import PipelineError
from gmail.core.io import load_image, read_jsonl


def validate_records(records: list[dict], source: str) -> list[dict]:
    """Check reader output and return it unchanged.

    Raises PipelineError when there are no records, a record has no captions or an empty
    caption, or an image id appears twice; `source` names the dataset in the message.
    """
    if not records:
        raise PipelineError(f"no images with captions in {source}: check the path, split or filters")
    seen: set[str] = set()
    for rec in records:
        image_id = rec["image_id"]
        if image_id in seen:
            raise PipelineError(
                f"duplicate image id {image_id!r} in {source}: remove the repeated entry or merge its captions"
            )
        seen.add(image_id)
        captions = rec["captions"]
        if not captions:
            raise PipelineError(f"image {image_id!r} in {source} has no captions: remove the image or add a caption")
        for caption in captions:
            if not isinstance(caption, str):
                raise PipelineError(
                    f"image {image_id!r} in {source} has a non-text caption {caption!r}: fix or remove it"
                )
            if not caption.strip():
                raise PipelineError(f"image {image_id!r} in {source} has an empty caption: remove it or fill it in")
    return records


def read_split(jsonl: str | os.PathLike) -> list[dict]:
    """Records of one split with `path` resolved to an absolute path; validated."""
    jsonl = Path(jsonl)
    records = read_jsonl(jsonl)
    for rec in records:
        missing = [k for k in ("image_id", "path", "captions") if k not in rec]
        if missing:
            raise PipelineError(f"{jsonl}: record {rec.get('image_id', '?')} lacks {missing[0]!r}: regenerate it with the captions stage")
        rec["path"] = str((jsonl.parent / rec["path"]).resolve()) if not os.path.isabs(rec["path"]) else rec["path"]
    validate_records(records, str(jsonl))
    return records


def load_split_images(records: list[dict], size: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 array of the records' images, resized to `size` if given."""
    return np.stack([np.asarray(load_image(r["path"], size)) for r in records])


def check_pairs(real: list[dict], generated: list[dict]) -> list[dict]:
    """`generated` unchanged if it pairs one to one, in order, with the `real` records by image id.

    Generated image i was sampled from real image i's caption; any other order would pair an
    image with the wrong caption, so a mismatch is an error rather than something to re-sort.
    """
    if [r["image_id"] for r in real] != [g["image_id"] for g in generated]:
        raise PipelineError(f"{len(generated)} generated images do not pair with {len(real)} real B images by id: "
                            "rerun `dvc repro generate`")
    return generated

"""Caption records: `{"image_id", "path", "captions": [...]}` (plus `attributes` for easy-vqa),
as every reader returns them and as each split's JSONL holds them on disk, with image paths
relative to the JSONL's folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gmail.core.errors import PipelineError
from gmail.core.io import iter_jsonl, load_image


def validate_records(records: list[dict], source: str, lines: list[int] | None = None) -> list[dict]:
    """Check reader output and return it unchanged.

    Raises PipelineError when there are no records, an image id is not a non-empty string or
    appears twice, or `captions` is not a non-empty list of non-empty strings (a bare string
    would otherwise be read one letter a caption). `source` names the dataset in the message;
    `lines`, the line of each record in a JSONL `source`, makes it `source:line`.
    """
    if not records:
        raise PipelineError(f"no images with captions in {source}: check the path, split or filters")
    seen: set[str] = set()
    for i, rec in enumerate(records):
        where = f"{source}:{lines[i]}" if lines is not None else source
        image_id = rec["image_id"]
        if not isinstance(image_id, str) or not image_id:
            raise PipelineError(f"{where}: image id {image_id!r} is not a non-empty string: fix or remove that record")
        if image_id in seen:
            raise PipelineError(
                f"duplicate image id {image_id!r} in {where}: remove the repeated entry or merge its captions"
            )
        seen.add(image_id)
        captions = rec["captions"]
        if not isinstance(captions, list):
            raise PipelineError(f"image {image_id!r} in {where} has captions {_short(captions)}, "
                                f"{_json_kind(captions)}, not a list of captions: write them as [\"caption\", ...]")
        if not captions:
            raise PipelineError(f"image {image_id!r} in {where} has no captions: remove the image or add a caption")
        for caption in captions:
            if not isinstance(caption, str):
                raise PipelineError(
                    f"image {image_id!r} in {where} has a non-text caption {_short(caption)}: fix or remove it"
                )
            if not caption.strip():
                raise PipelineError(f"image {image_id!r} in {where} has an empty caption: remove it or fill it in")
    return records


def _json_kind(value) -> str:
    return {str: "a string", dict: "an object", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_split(jsonl: str | os.PathLike) -> list[dict]:
    """Records of one split with `path` resolved to an absolute path; validated, and a bad
    record named by its line."""
    jsonl = Path(jsonl)
    lines, records = [], []
    for lineno, rec in iter_jsonl(jsonl):
        missing = [k for k in ("image_id", "path", "captions") if k not in rec]
        if missing:
            raise PipelineError(f"{jsonl}:{lineno}: record {rec.get('image_id', '?')} lacks {missing[0]!r}: "
                                "regenerate it with the captions stage")
        if not isinstance(rec["path"], str) or not rec["path"]:
            raise PipelineError(f"{jsonl}:{lineno}: record {rec['image_id']!r} has path {_short(rec['path'])}, "
                                "not a file name: regenerate it with the captions stage")
        rec["path"] = str((jsonl.parent / rec["path"]).resolve()) if not os.path.isabs(rec["path"]) else rec["path"]
        lines.append(lineno)
        records.append(rec)
    validate_records(records, str(jsonl), lines)
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

"""COCO caption files: results (`[{"image_id", "caption"}]`, what the caption server scores) and
references (`{"images": [...], "annotations": [...]}`), written by the captioner stages and read
by `eval_caption`, so both sides agree on one format."""

from __future__ import annotations

import os

from gmail.core.errors import PipelineError
from gmail.core.io import read_json, write_json


def write_results(path: str | os.PathLike, image_ids: list[str], captions: list[str]) -> None:
    """One caption per image in COCO results format, atomically."""
    if len(image_ids) != len(captions):
        raise PipelineError(f"{len(captions)} captions for {len(image_ids)} images: caption every image once")
    write_json(path, [{"image_id": i, "caption": c} for i, c in zip(image_ids, captions)])


def read_results(path: str | os.PathLike, image_ids: list[str]) -> dict[str, str]:
    """{image_id: caption} from a COCO results file, which must caption every image in `image_ids` once."""
    rows = read_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "image_id" in r and "caption" in r for r in rows):
        raise PipelineError(f"{path} is not in COCO results format ([{{'image_id': ..., 'caption': ...}}]): rerun its caption stage")
    preds = {str(r["image_id"]): str(r["caption"]) for r in rows}
    if len(preds) != len(rows) or set(preds) != set(image_ids):
        raise PipelineError(f"{path} does not caption each of the {len(image_ids)} T images exactly once: rerun its caption stage")
    return preds


def write_references(path: str | os.PathLike, records: list[dict]) -> None:
    """The reference captions of `records` as a COCO annotations file (ids numbered in record order)."""
    pairs = [(r["image_id"], c) for r in records for c in r["captions"]]
    write_json(path, {"images": [{"id": r["image_id"]} for r in records],
                      "annotations": [{"image_id": i, "id": n, "caption": c} for n, (i, c) in enumerate(pairs)]})


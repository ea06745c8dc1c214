"""Caption records on disk: one JSONL per split, image paths relative to the JSONL's folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gmail.errors import PipelineError
from gmail.io import load_image, read_jsonl
from gmail.readers import validate_records


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

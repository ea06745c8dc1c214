"""Readers for the paper's long-caption retrieval sets (its T5, after Long-CLIP): Urban-1k and
ShareGPT4V-1k, returning the usual record shape with one long caption per image::

    {"image_id": str, "path": str, "captions": [long caption]}

- Urban-1k: `<root>/image/X.jpg` with `<root>/caption/X.txt`.
- ShareGPT4V-1k: the first `limit` (1,000) entries of the ShareGPT4V caption json (Long-CLIP
  uses `share-captioner_coco_lcs_sam_1246k_1107.json`); each entry has `image` (a path under
  `image_root`) and `conversations`, whose first turn `from: gpt` holds the caption.

Whitespace runs (ShareGPT4V captions contain newlines) become single spaces. A missing image
file, an empty caption or a malformed entry is a one-line PipelineError naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gmail.core.errors import PipelineError
from gmail.data.records import validate_records

PathLike = str | os.PathLike
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _clean(text: str) -> str:
    return " ".join(text.split())


def _numeric_first(stem: str):
    # Urban-1k names its files 1.jpg .. 1000.jpg: as strings 10 would sort before 9.
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def read_urban1k(root: PathLike) -> list[dict]:
    """Urban-1k records: one per `<root>/caption/X.txt`, paired with `<root>/image/X.<ext>`
    (jpg, jpeg, png or webp), sorted by X (numerically where X is a number)."""
    root = Path(root)
    caption_dir, image_dir = root / "caption", root / "image"
    for d in (caption_dir, image_dir):
        if not d.is_dir():
            raise PipelineError(f"Urban-1k folder {d} not found: point the reader's root at the folder holding image/ and caption/")
    records = []
    for txt in sorted(caption_dir.glob("*.txt"), key=lambda p: _numeric_first(p.stem)):
        try:
            caption = _clean(txt.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise PipelineError(f"Urban-1k caption {txt} is not UTF-8 text: re-download it") from exc
        if not caption:
            raise PipelineError(f"Urban-1k caption {txt} is empty: restore it from the dataset or delete the pair")
        images = [image_dir / f"{txt.stem}{ext}" for ext in IMAGE_EXTENSIONS if (image_dir / f"{txt.stem}{ext}").is_file()]
        if not images:
            raise PipelineError(f"Urban-1k image {image_dir / txt.stem}.jpg for caption {txt.name} is missing: "
                                "restore it or delete the caption")
        records.append({"image_id": txt.stem, "path": str(images[0]), "captions": [caption]})
    return validate_records(records, f"Urban-1k {root}")


def read_sharegpt4v(json_path: PathLike, image_root: PathLike, limit: int = 1000) -> list[dict]:
    """ShareGPT4V-1k records: the first `limit` entries of the caption json, `path` =
    `image_root/<entry image>`, `image_id` = the entry's `id` (else its image path)."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise PipelineError(f"ShareGPT4V caption file {json_path} not found: download it or fix the path in params.yaml")
    if limit < 1:
        raise PipelineError(f"ShareGPT4V limit {limit} must be positive: Long-CLIP uses the first 1000 entries")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{json_path} is not valid UTF-8 JSON ({exc.__class__.__name__}): re-download it") from exc
    if not isinstance(data, list):
        raise PipelineError(f"{json_path} holds a {type(data).__name__}, not a list of entries: use the ShareGPT4V caption json")
    root = Path(image_root)
    records = []
    for i, entry in enumerate(data[:limit]):
        where = f"{json_path} entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("conversations"), list):
            raise PipelineError(f"{where} lacks 'image' or 'conversations': use an unmodified ShareGPT4V caption json")
        answers = [turn.get("value") for turn in entry["conversations"] if isinstance(turn, dict) and turn.get("from") == "gpt"]
        caption = _clean(answers[0]) if answers and isinstance(answers[0], str) else ""
        if not caption:
            raise PipelineError(f"{where} ({entry['image']}) has an empty long caption: fix or drop the entry")
        path = root / entry["image"]
        if not path.is_file():
            raise PipelineError(f"ShareGPT4V image {path} ({where}) is missing: download it or fix image_root")
        records.append({"image_id": str(entry.get("id") or entry["image"]), "path": str(path), "captions": [caption]})
    return validate_records(records, f"ShareGPT4V {json_path}")


LONG_READERS = {"urban1k": read_urban1k, "sharegpt4v": read_sharegpt4v}


def read_long_source(source: str, **kwargs) -> list[dict]:
    """Records of long-caption set `source` (urban1k | sharegpt4v), `kwargs` passed to its reader."""
    import inspect

    reader = LONG_READERS.get(source)
    if reader is None:
        raise PipelineError(f"unknown long-caption source {source!r}: use one of {', '.join(LONG_READERS)}")
    try:
        inspect.signature(reader).bind(**kwargs)
    except TypeError as exc:
        raise PipelineError(f"bad parameters for long-caption source {source!r} ({exc}): "
                            f"it takes {', '.join(inspect.signature(reader).parameters)}") from exc
    return reader(**kwargs)

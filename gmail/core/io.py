"""Atomic file and directory writes, JSON/JSONL helpers and image loading with clear errors.

Every output is written under a temporary name next to its final path and renamed into
place only when complete, so a failed or interrupted stage never leaves a file that a later
run could mistake for finished work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from gmail.core.errors import PipelineError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get normal permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file that replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.replace(tmp, final)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write flat, sorted, indented JSON atomically (the metrics format)."""
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_json(path: str | os.PathLike):
    """Read a JSON file; a missing or malformed file is a PipelineError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found: rerun the stage that writes it (dvc repro)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON (line {exc.lineno}): rerun the stage that writes it") from exc


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write one JSON object per line atomically."""
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a missing file or a bad line is a PipelineError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"missing file {path}: run the stage that writes it (dvc repro)")
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PipelineError(f"{path}:{lineno} is not valid JSON ({exc.msg}): regenerate the file") from exc
    return rows


def load_image(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """Open an image as RGB (optionally resized); a missing or corrupt file is a PipelineError."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"missing image {path}: rerun the stage that writes it (dvc repro)")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise PipelineError(f"corrupt image {path} ({exc.__class__.__name__}): replace or delete it and rerun") from exc
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return im


def load_images_uint8(paths: Iterable[str | os.PathLike], size: int | None = None) -> np.ndarray:
    """Load images into an (N, H, W, 3) uint8 array."""
    return np.stack([np.asarray(load_image(p, size)) for p in paths])

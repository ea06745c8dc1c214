"""Atomic file and directory writes, JSON/JSONL helpers and image loading with clear errors.

Every output is written under a temporary name next to its final path and renamed into
place only when complete, so a failed or interrupted stage never leaves a file that a later
run could mistake for finished work.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from gmail.core.errors import PipelineError

# Repository machinery: never an output, nor a folder inside one.
PROTECTED_DIRS = (".git", ".dvc", ".venv")
# Errors only a write raises: reported as `cannot write` even when they come from the caller's block
# (a disk that fills up while a stage writes into the temporary folder).
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike, what: str | None = None, outside_ok: bool = False,
                      follow_last: bool = True) -> Path:
    """`path` resolved (symlinks followed); a PipelineError unless it lies strictly inside the
    working directory and outside `.git`, `.dvc` and `.venv`.

    Stages run with the repository root as working directory (DVC runs them so), and an output
    folder is replaced as a whole: this keeps `.`, `..`, `.git`, a folder elsewhere or a link
    pointing elsewhere from being replaced. `what` names the path in the message (default: the
    path); `outside_ok` allows paths outside the working directory (single files, which replace
    nothing but themselves); `follow_last=False` resolves only the parent, for a file that
    replaces a link rather than writing through it (DVC's symlink cache links outputs into .dvc/).
    """
    name = what or str(path)
    cwd = Path.cwd().resolve()
    path = cwd / path
    resolved = path.resolve() if follow_last or path.name in ("", ".", "..") else path.parent.resolve() / path.name
    if resolved == cwd or cwd.is_relative_to(resolved):
        where = "the working directory (the repository) itself" if resolved == cwd else f"{resolved}, a parent of the working directory"
        raise PipelineError(f"{name} is {where}, which an output would replace: point it at a folder inside the repository, "
                            "e.g. data/<name>")
    if not resolved.is_relative_to(cwd):
        if outside_ok:
            return resolved
        raise PipelineError(f"{name} resolves to {resolved}, outside the working directory {cwd}: outputs must stay inside "
                            "the repository; use a relative path such as data/<name>")
    inside = next((part for part in resolved.relative_to(cwd).parts if part in PROTECTED_DIRS), None)
    if inside:
        raise PipelineError(f"{name} lies inside {inside}/, which the pipeline never writes: point it at a folder such as "
                            "data/<name>")
    return resolved


def _owner_alive(pid: str) -> bool:
    """Whether process `pid` (the id part of a temp name) still runs; an unreadable id counts as dead."""
    if not pid.isdigit() or int(pid) == 0:  # kill(0, 0) would probe our own process group
        return False
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # alive, but another user's
    except (ProcessLookupError, OverflowError):
        return False
    return True


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree, whatever it is; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temps(final: str | os.PathLike) -> list[Path]:
    """Delete the `.<name>.tmp-<pid>-*` and `.<name>.old-<pid>-*` siblings of `final` whose owner
    process no longer runs; returns them.

    A stage killed mid-write (SIGKILL, out of memory, power loss) cannot clean up after itself, so
    the next write of the same output does. The owner's process id is part of every temp name, so
    a run going on at the same time (dvc exp run --temp, a queue worker) keeps its temps.
    """
    final = Path(final)
    stale = []
    for kind in ("tmp", "old"):
        prefix = f".{final.name}.{kind}-"
        for path in final.parent.glob(f"{glob.escape(prefix)}*"):
            if not _owner_alive(path.name[len(prefix):].split("-", 1)[0]):
                _remove(path)
                stale.append(path)
    return stale


def _temp_prefix(final: Path, kind: str) -> str:
    return f".{final.name}.{kind}-{os.getpid()}-"


def _cannot_write(final: Path, exc: OSError) -> PipelineError:
    return PipelineError(f"cannot write {final}: {exc.strerror or exc}")


def _swap_in(new: Path, final: Path) -> None:
    """Rename `new` to `final`. An old `final` is renamed aside first and deleted last, so at every
    instant one complete output exists; if the rename fails, the old one is put back."""
    aside = None
    if os.path.lexists(final):
        aside = final.with_name(f"{_temp_prefix(final, 'old')}{secrets.token_hex(4)}")
        os.rename(final, aside)
    try:
        os.rename(new, final)
    except BaseException:
        if aside is not None:
            with contextlib.suppress(OSError):
                os.rename(aside, final)
        raise
    if aside is not None:
        _remove(aside)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `final` only if the block succeeds.

    `final` must pass `check_output_path` (inside the working directory, not `.git` ...). Stale
    temps of killed runs are removed first. The old output is renamed aside, the new one renamed
    in, the old one deleted, so a failure at any step leaves the old or the new output complete.
    A file-system error (disk full, read-only, a file where a folder should be) is a
    PipelineError `cannot write <final>: <reason>`.
    """
    final = Path(final)
    check_output_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final, "tmp"), dir=final.parent))
    except OSError as exc:
        raise _cannot_write(final, exc) from exc
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get normal permissions
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _cannot_write(final, exc) from exc
        raise
    try:
        _swap_in(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _cannot_write(final, exc) from exc
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file that replaces `final` only if the block succeeds.

    As `atomic_dir`, except that `final` may lie outside the working directory (a file replaces
    nothing but itself); it still may not be `.git/...` or the like inside it.
    """
    final = Path(final)
    check_output_path(final, outside_ok=True, follow_last=False)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(final, "tmp"), dir=final.parent)
    except OSError as exc:
        raise _cannot_write(final, exc) from exc
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
        with os.fdopen(fd, mode) as fh:
            yield fh
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _cannot_write(final, exc) from exc
        raise
    try:
        os.replace(tmp, final)  # atomic for a file: no moment without one
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(final, exc) from exc
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write flat, sorted, indented JSON atomically (the metrics format); a write error is a
    PipelineError `cannot write <path>: <reason>` (see atomic_file)."""
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_json(path: str | os.PathLike):
    """Read a UTF-8 JSON file; a missing, non-UTF-8 or malformed file is a PipelineError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found: rerun the stage that writes it (dvc repro)")
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise PipelineError(f"{path}:{line} is not UTF-8 text (byte 0x{data[exc.start]:02x}): "
                            "rerun the stage that writes it") from exc
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON (line {exc.lineno}): rerun the stage that writes it") from exc


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write one JSON object per line atomically."""
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a UTF-8 file of one JSON object a line (blank lines skipped).

    A missing file, or a line that is not UTF-8, not JSON or not an object, is a PipelineError
    naming the file and the line (`path:line`).
    """
    return [row for _, row in iter_jsonl(path)]


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file, checked as `read_jsonl` does,
    so a caller can name the line of a record it rejects."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"missing file {path}: run the stage that writes it (dvc repro)")
    # Bytes, decoded line by line: text mode would report a bad byte with no line number.
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PipelineError(f"{path}:{lineno} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                    f"{exc.start + 1}): fix that line or regenerate the file") from exc
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PipelineError(f"{path}:{lineno} is not valid JSON ({exc.msg}): regenerate the file") from exc
            if not isinstance(row, dict):
                kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(row), "a number")
                raise PipelineError(f"{path}:{lineno} is {kind}, not a JSON object: fix that line or regenerate the file")
            yield lineno, row


class CropSize(int):
    """An image size meaning "resize the short side to it, then centre-crop a square", the
    standard CLIP protocol (open_clip's `resize_mode="shortest"` transform, CLIP_benchmark). A
    plain int size squashes the image to the square instead (mini scale, whose images are
    square, where both agree). The paper-scale tower's `load_size` is one of these, so every
    loader that passes it on (`load_image`, `fit_image`) follows the tower's own preprocessing."""

    def __repr__(self) -> str:
        return f"CropSize({int(self)})"


def fit_image(im: Image.Image, size: int | None) -> Image.Image:
    """`im` brought to `size` x `size`: squashed (bicubic) for a plain int, short side resized and
    centre-cropped for a `CropSize`, untouched for None.

    The crop follows torchvision's `Resize(size)` + `CenterCrop(size)` on a PIL image (what
    open_clip's `preprocess` runs), step for step, so the pixels are the same: long side
    int(size * long / short), PIL bicubic, crop offsets rounded."""
    if size is None or im.size == (size, size):
        return im
    if not isinstance(size, CropSize):
        return im.resize((size, size), Image.BICUBIC)
    w, h = im.size
    if min(w, h) != size:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        im = im.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
    w, h = im.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """Open an image as RGB, brought to `size` by `fit_image` (squashed for an int, short side
    and centre crop for a `CropSize`); a missing or corrupt file is a PipelineError."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"missing image {path}: rerun the stage that writes it (dvc repro)")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise PipelineError(f"corrupt image {path} ({exc.__class__.__name__}): replace or delete it and rerun") from exc
    return fit_image(im, size)


def load_images_uint8(paths: Iterable[str | os.PathLike], size: int | None = None) -> np.ndarray:
    """Load images into an (N, H, W, 3) uint8 array."""
    return np.stack([np.asarray(load_image(p, size)) for p in paths])

"""A stage's data dep follows its source: the files a params-chosen source reads must lie in
the one path dvc.yaml lists for it (`${<section>.data}`), so that a change to them reruns the
stage and DVC's cache never serves results computed from other data."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from gmail.core.errors import PipelineError

# Reader arguments that name a file or folder a source reads (read_karpathy, read_sharegpt4v,
# read_urban1k, read_webdataset); the others (split, limit, ...) are values, tracked as params.
PATH_ARGUMENTS = ("json_path", "image_root", "root", "tar_paths", "parquet_path")


def reader_paths(arguments: dict) -> list[str]:
    """The file and folder paths among a reader's `arguments` (a list value gives each item)."""
    out = []
    for key in PATH_ARGUMENTS:
        value = arguments.get(key)
        if isinstance(value, (str, os.PathLike)):
            out.append(os.fspath(value))
        elif isinstance(value, (list, tuple)):
            out.extend(os.fspath(v) for v in value)
    return out


def _inside(path: Path, dep: Path) -> bool:
    return path == dep or dep in path.parents


def check_data_dep(reads: Iterable[str | os.PathLike], dep: str, key: str, source: str) -> None:
    """PipelineError unless every path in `reads` is `dep` or lies under it (both resolved, so
    `./x`, `x/../x` and symlinks compare as the files they are). `key` names the dep's params key
    (`eval_long_retrieval.data`), `source` the source that reads them."""
    if not isinstance(dep, str) or not dep.strip():
        raise PipelineError(f"params key {key} must be a path (a file or folder dvc.yaml lists as a dep), got {dep!r}: fix params.yaml")
    root = Path(dep).resolve()
    for read in reads:
        if not _inside(Path(read).resolve(), root):
            raise PipelineError(f"{key}={dep!r} does not hold {os.fspath(read)!r}, which source {source} reads, so DVC would not "
                                f"rerun the stage when it changes: set {key} to a folder holding every file the source reads")

"""Readers for the paper-scale caption datasets: COCO, Karpathy splits, img2dataset output.

Every reader returns the same record shape so later stages never care where captions came
from::

    {"image_id": str, "path": str, "captions": [str, ...]}

`path` is the image file (not opened here; `gmail.core.io.load_image` reports a missing or corrupt
image when a stage needs it), captions are stripped, and every record has at least one
non-empty caption with no image id repeated: each reader ends with `validate_records`, so a
bad dataset fails at the reading stage with the file named rather than deep inside training.
"""

from __future__ import annotations

import inspect
import json
import os
import posixpath
import tarfile
from collections.abc import Iterable
from pathlib import Path

from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir
from gmail.data.records import validate_records

KARPATHY_SPLITS = ("train", "val", "test", "restval")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- helpers


def _load_json(path: PathLike, what: str):
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"missing {what} file {path}: download it or fix the path in params.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise PipelineError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): re-download the {what} file"
        ) from exc
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path} is not UTF-8 text: re-download the {what} file") from exc


def _field(obj, key: str, path: PathLike, where: str, what: str):
    """Return obj[key], or a PipelineError naming the file, the entry and the key."""
    if not isinstance(obj, dict):
        raise PipelineError(
            f"{path}: {where} is a {type(obj).__name__}, not an object: use an unmodified {what} file"
        )
    if key not in obj:
        raise PipelineError(f"{path}: {where} has no '{key}' key: use an unmodified {what} file")
    return obj[key]


def _list_field(obj, key: str, path: PathLike, where: str, what: str) -> list:
    value = _field(obj, key, path, where, what)
    if not isinstance(value, list):
        raise PipelineError(
            f"{path}: '{key}' in {where} is a {type(value).__name__}, not a list: use an unmodified {what} file"
        )
    return value


def _caption(value, path: PathLike, where: str) -> str:
    # Non-strings are rejected rather than str()-ed: "None" or "123" as a caption would train
    # silently on garbage.
    if not isinstance(value, str):
        raise PipelineError(
            f"{path}: caption in {where} is a {type(value).__name__}, not text: fix or remove that caption"
        )
    return value.strip()


def _id_sort_key(image_id):
    # COCO ids are ints; sorting them as strings would put 10 before 9.
    return (0, image_id, "") if isinstance(image_id, int) else (1, 0, str(image_id))


# --------------------------------------------------------------------------- COCO


def read_coco_captions(json_path: PathLike, image_root: PathLike) -> list[dict]:
    """Read a COCO captions file (e.g. `captions_train2014.json`).

    Captions from `annotations` are grouped under their image, records are sorted by image id
    and `path` is `image_root/file_name`. An annotation pointing at an unknown image, a missing
    key or an image without captions is a PipelineError.
    """
    what = "COCO captions"
    data = _load_json(json_path, what)
    images = _list_field(data, "images", json_path, "the top level", what)
    annotations = _list_field(data, "annotations", json_path, "the top level", what)

    file_names: dict = {}
    for i, image in enumerate(images):
        image_id = _field(image, "id", json_path, f"images[{i}]", what)
        file_name = _field(image, "file_name", json_path, f"images[{i}]", what)
        if image_id in file_names:
            raise PipelineError(
                f"{json_path}: image id {image_id} is listed twice in 'images': remove the repeated entry"
            )
        file_names[image_id] = file_name

    captions: dict = {image_id: [] for image_id in file_names}
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        image_id = _field(ann, "image_id", json_path, where, what)
        caption = _field(ann, "caption", json_path, where, what)
        if image_id not in captions:
            raise PipelineError(
                f"{json_path}: {where} refers to image_id {image_id}, which is not in 'images': "
                "use the images and annotations from the same COCO file"
            )
        captions[image_id].append(_caption(caption, json_path, where))

    root = Path(image_root)
    records = [
        {"image_id": str(image_id), "path": str(root / file_names[image_id]), "captions": captions[image_id]}
        for image_id in sorted(file_names, key=_id_sort_key)
    ]
    return validate_records(records, f"COCO captions {json_path}")


# --------------------------------------------------------------------------- Karpathy


def _karpathy_splits(split) -> set[str] | None:
    if split is None:
        return None
    wanted = {split} if isinstance(split, str) else set(split)
    unknown = sorted(str(s) for s in wanted - set(KARPATHY_SPLITS))
    if unknown or not wanted:
        raise PipelineError(
            f"unknown Karpathy split {', '.join(unknown) or '(empty list)'}: "
            f"use one or more of {', '.join(KARPATHY_SPLITS)}"
        )
    return wanted


def read_karpathy(json_path: PathLike, image_root: PathLike, split: str | Iterable[str] | None = None) -> list[dict]:
    """Read a Karpathy split file (`dataset_coco.json`, `dataset_flickr30k.json`, ...).

    `split` keeps only images in that split, or in any of a list of splits (the usual COCO
    training set is `["train", "restval"]`); None keeps every image. `path` is
    `image_root/filepath/filename` (`filepath`, e.g. "val2014", only exists for COCO) and
    `image_id` is `cocoid`, else `imgid`, else the filename stem. Each caption is the
    sentence's `raw` text, or its `tokens` joined by spaces when `raw` is absent.
    Records keep the file's order.
    """
    what = "Karpathy split"
    wanted = _karpathy_splits(split)
    data = _load_json(json_path, what)
    images = _list_field(data, "images", json_path, "the top level", what)

    root = Path(image_root)
    records = []
    for i, image in enumerate(images):
        where = f"images[{i}]"
        if wanted is not None and _field(image, "split", json_path, where, what) not in wanted:
            continue
        filename = _field(image, "filename", json_path, where, what)
        sentences = _list_field(image, "sentences", json_path, where, what)
        captions = []
        for j, sentence in enumerate(sentences):
            s_where = f"{where}.sentences[{j}]"
            if isinstance(sentence, dict) and "raw" not in sentence and "tokens" in sentence:
                tokens = _list_field(sentence, "tokens", json_path, s_where, what)
                captions.append(_caption(" ".join(map(str, tokens)), json_path, s_where))
            else:
                captions.append(_caption(_field(sentence, "raw", json_path, s_where, what), json_path, s_where))
        if image.get("cocoid") is not None:
            image_id = str(image["cocoid"])
        elif image.get("imgid") is not None:
            image_id = str(image["imgid"])
        else:
            image_id = Path(filename).stem
        subdir = image.get("filepath") or ""
        records.append({"image_id": image_id, "path": str(root / subdir / filename), "captions": captions})

    label = f"Karpathy split {json_path}" + ("" if wanted is None else f" (split {', '.join(sorted(wanted))})")
    return validate_records(records, label)


# --------------------------------------------------------------------------- webdataset


def _shard_list(tar_paths) -> list[Path]:
    if isinstance(tar_paths, (str, os.PathLike)):
        tar_paths = [tar_paths]
    shards: list[Path] = []
    for p in map(Path, tar_paths):
        if p.is_dir():
            # img2dataset writes its shards (plus parquet/json stats) into one folder.
            found = sorted(p.glob("*.tar"))
            if not found:
                raise PipelineError(f"no .tar shards in {p}: run img2dataset with output_format webdataset")
            shards.extend(found)
        elif p.is_file():
            shards.append(p)
        else:
            raise PipelineError(f"missing webdataset shard {p}: download it or fix the path in params.yaml")
    if not shards:
        raise PipelineError("no webdataset shards given: list the .tar files (or their folder) in params.yaml")
    return shards


def _split_member_name(shard: Path, name: str) -> tuple[str, str] | None:
    """Return (key, extension) of a tar member, or None for names that are not sample files."""
    name = posixpath.normpath(name)
    if name.startswith("/") or name == ".." or name.startswith("../"):
        # The key becomes an output file name, so a hostile shard must not escape out_image_dir.
        raise PipelineError(f"{shard} has an unsafe member name {name!r}: rebuild the shard with img2dataset")
    dirname, base = posixpath.split(name)
    # webdataset convention: the key ends at the first dot of the basename, so "x.seg.png" is
    # key "x" with extension "seg.png"; dotfiles (".DS_Store") belong to no sample.
    if base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return posixpath.join(dirname, stem), ext.lower()


def _read_shard(shard: Path, tmp_dir: Path, out_dir: Path) -> list[dict]:
    images: dict[str, str] = {}  # key -> final image path, in shard order
    texts: dict[str, str] = {}
    jsons: dict[str, object] = {}
    try:
        # Streaming mode ("r|*") reads the shard once front to back, so a multi-GB shard never
        # needs random access or an in-memory index of its members.
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parsed = _split_member_name(shard, member.name)
                if parsed is None:
                    continue
                key, ext = parsed
                if ext not in IMAGE_EXTENSIONS and ext not in ("txt", "json"):
                    continue
                payload = tar.extractfile(member).read()
                if ext in IMAGE_EXTENSIONS:
                    if key in images:
                        raise PipelineError(
                            f"{shard}: sample {key!r} has more than one image: keep one image per key in the shard"
                        )
                    # Nested keys are flattened so every image lands directly in out_image_dir.
                    file_name = f"{key.replace('/', '_')}.{ext}"
                    (tmp_dir / file_name).write_bytes(payload)
                    images[key] = str(out_dir / file_name)
                elif ext == "txt":
                    try:
                        texts[key] = payload.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise PipelineError(
                            f"{shard}: {member.name} is not UTF-8 text: fix or remove sample {key!r}"
                        ) from exc
                else:
                    try:
                        jsons[key] = json.loads(payload)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise PipelineError(
                            f"{shard}: {member.name} is not valid JSON: fix or remove sample {key!r}"
                        ) from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PipelineError(f"{shard} is not a readable tar file ({exc}): re-download or rebuild the shard") from exc

    records = []
    # Keys without an image are skipped: img2dataset records failed downloads in its parquet,
    # not in the tar, but a stray caption file must not stop the run.
    for key, path in images.items():
        if key in texts:
            caption = texts[key]
        else:
            meta = jsons.get(key)
            caption = meta.get("caption") if isinstance(meta, dict) else None
            if caption is None:
                raise PipelineError(
                    f"{shard}: sample {key!r} has an image but no caption (.txt or json 'caption'): "
                    "add a caption or remove the sample"
                )
        records.append({"image_id": key, "path": path, "captions": [_caption(caption, shard, f"sample {key!r}")]})
    return records


def read_webdataset(tar_paths: PathLike | Iterable[PathLike], out_image_dir: PathLike) -> list[dict]:
    """Read img2dataset webdataset shards and extract their images into `out_image_dir`.

    `tar_paths` is one shard, a list of shards, or a folder whose `*.tar` files are all read.
    Members sharing a key prefix form one sample (`000000001.jpg`, `.txt`, `.json`); the
    caption is the `.txt` file, else the json `caption` field. Images (jpg/jpeg/png/webp) are
    written as `out_image_dir/<key>.<ext>`, which is replaced as a whole and only if every
    shard reads cleanly. Samples without an image are skipped; an image without a caption is
    a PipelineError naming shard and key. `image_id` is the key.
    """
    # Plain tarfile instead of the `webdataset` package: grouping members by key prefix is all
    # these shards need, and opening each file by path means a name such as `pipe:cmd` is only
    # ever a file name (webdataset would run it as a shell command).
    shards = _shard_list(tar_paths)
    out_dir = Path(out_image_dir)
    records: list[dict] = []
    with atomic_dir(out_dir) as tmp_dir:
        for shard in shards:
            records.extend(_read_shard(shard, tmp_dir, out_dir))
        # Validate before the directory is renamed into place, so a bad dataset leaves no
        # half-extracted image folder behind.
        validate_records(records, f"webdataset shards {', '.join(map(str, shards))}")
    return records


# --------------------------------------------------------------------------- parquet


def read_parquet(
    parquet_path: PathLike,
    image_root: PathLike,
    caption_column: str = "caption",
    path_column: str | None = None,
    key_column: str = "key",
) -> list[dict]:
    """Read captions from a parquet file (img2dataset output or any table with a caption column).

    When img2dataset's `status` column exists only rows with status "success" are kept.
    `path` is `image_root/<key>.jpg`, or `image_root/<path_column value>` when `path_column`
    is given (absolute values are used as they are). `image_id` is the key column's value, or
    the path's stem when there is no key column and `path_column` is given. A caption cell may
    be text or a list of texts. Records keep the file's row order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(parquet_path)
    if not path.is_file():
        raise PipelineError(f"missing parquet file {path}: download it or fix the path in params.yaml")
    try:
        columns = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"{path} is not a readable parquet file ({exc}): re-download or regenerate it") from exc

    have_key = key_column in columns
    required = [caption_column, path_column] if path_column is not None else [caption_column, key_column]
    for column in required:
        if column not in columns:
            raise PipelineError(
                f"{path} has no column '{column}' (columns: {', '.join(sorted(columns))}): "
                "set caption_column/path_column/key_column to an existing column"
            )
    wanted = [caption_column] + ([key_column] if have_key else []) + ([path_column] if path_column else [])
    if "status" in columns:
        wanted.append("status")
    try:
        table = pq.read_table(path, columns=list(dict.fromkeys(wanted)))
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"{path} is not a readable parquet file ({exc}): re-download or regenerate it") from exc

    data = table.to_pydict()
    root = Path(image_root)
    records = []
    for row in range(table.num_rows):
        # img2dataset keeps failed downloads in its parquet with no image on disk.
        if "status" in data and data["status"][row] != "success":
            continue
        where = f"row {row}"
        if path_column is not None:
            rel = data[path_column][row]
            if not rel:
                raise PipelineError(f"{path}: {where} has no '{path_column}' value: fill it in or drop the row")
            image_path = root / str(rel)
        key = data[key_column][row] if have_key else None
        if key is None:
            if path_column is None:
                raise PipelineError(f"{path}: {where} has no '{key_column}' value: fill it in or drop the row")
            key = image_path.stem
        key = str(key)
        if path_column is None:
            image_path = root / f"{key}.jpg"
        cell = data[caption_column][row]
        # A null caption becomes "" so validate_records reports it with the image id.
        cells = cell if isinstance(cell, list) else ["" if cell is None else cell]
        captions = [_caption(c, path, f"{where} column '{caption_column}'") for c in cells]
        records.append({"image_id": key, "path": str(image_path), "captions": captions})
    return validate_records(records, f"parquet {path}")


# --------------------------------------------------------------------------- dispatch

READERS = {
    "coco": read_coco_captions,
    "karpathy": read_karpathy,
    "webdataset": read_webdataset,
    "parquet": read_parquet,
}


def read_source(source: str, **kwargs) -> list[dict]:
    """Read captions with the reader named `source` ("coco", "karpathy", "webdataset", "parquet").

    `kwargs` are passed to that reader; an unknown source or a parameter the reader does not
    take is a PipelineError listing the valid choices.
    """
    reader = READERS.get(source)
    if reader is None:
        raise PipelineError(f"unknown caption source {source!r}: use one of {', '.join(READERS)}")
    signature = inspect.signature(reader)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise PipelineError(
            f"bad parameters for caption source {source!r} ({exc}): it takes {', '.join(signature.parameters)}"
        ) from exc
    return reader(**kwargs)

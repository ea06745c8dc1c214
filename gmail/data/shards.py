"""Generated images as webdataset tar shards: the generation manifest, the shard format, and
reading shards back with bounded memory.

Manifest: one item per (real B image, caption k) for k < per_real, in B order, with
`index` its position: item i is sampled from its caption with seed `seed + i`, so an image
never depends on which shard, batch or process produced it. Shard k holds the fixed index
range [k * shard_size, (k + 1) * shard_size).

A shard `shard-00007.tar` holds, per item, `<id>.png`, `<id>.txt` (the caption) and
`<id>.json` (id, source_id, index, seed, model, steps, guidance). It is written under a
temporary name and renamed when complete, with fixed tar metadata (mtime, owner, mode), so
the same images give a byte-identical shard and a half-written shard never looks finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from gmail.core.errors import PipelineError

SHARD_PATTERN = "shard-{:05d}.tar"
TAR_MTIME = 946684800  # 2000-01-01: fixed, so identical images give identical tar bytes


def build_manifest(records: list[dict], per_real: int, seed: int) -> list[dict]:
    """Generation items for real `records`: `per_real` per image, caption k mod its caption count.

    Each item: `{"id": "<image_id>_<k>", "source_id", "caption", "index", "seed"}`; COCO's five
    captions per image with per_real=5 give the paper's one generated image per caption.
    """
    if per_real < 1:
        raise PipelineError(f"gen.per_real={per_real}: generate at least one image per real image")
    items = []
    for rec in records:
        for k in range(per_real):
            i = len(items)
            items.append({"id": f"{rec['image_id']}_{k}", "source_id": rec["image_id"],
                          "caption": rec["captions"][k % len(rec["captions"])], "index": i, "seed": seed + i})
    return items


def shard_ranges(n: int, shard_size: int) -> list[range]:
    """Item index range of every shard: shard k holds [k * shard_size, min(n, (k + 1) * shard_size))."""
    if shard_size < 1:
        raise PipelineError(f"shard size {shard_size} must be positive: fix gen.shard_size in params.yaml")
    return [range(s, min(n, s + shard_size)) for s in range(0, n, shard_size)]


def shard_name(k: int) -> str:
    return SHARD_PATTERN.format(k)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an (H, W, 3) uint8 image (PIL's encoder is deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path: str | os.PathLike, samples: Iterable[tuple[dict, np.ndarray]]) -> int:
    """Write (item metadata, uint8 image) pairs to the tar shard `path` atomically; returns the count."""
    import webdataset as wds

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as fh:
            # encoder=False: we encode every field ourselves so the bytes do not depend on the
            # writer's defaults; fixed user/group/mtime make the tar headers reproducible.
            writer = wds.TarWriter(fh, user="gmail", group="gmail", mode=0o444, encoder=False, mtime=TAR_MTIME)
            for meta, image in samples:
                writer.write({"__key__": meta["id"], "png": png_bytes(image), "txt": meta["caption"].encode(),
                              "json": json.dumps(meta, sort_keys=True).encode()})
                count += 1
            writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """The finished shards in `directory`, in shard order (temporary files are not listed)."""
    return sorted(p for p in Path(directory).glob("shard-*.tar"))


def read_shards(shards: Iterable[str | os.PathLike], size: int | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """(metadata, (H, W, 3) uint8 image) for every item of `shards`, in order, one at a time.

    Each shard is read front to back as a stream, so memory stays at one item's files however
    many shards there are; `size` resizes each image (bicubic) as `gmail.core.io.load_image` does.
    A shard that is missing, empty, not a tar file or holds an item without a readable PNG or
    JSON object is a PipelineError naming the shard.
    """
    shards = [Path(s) for s in shards]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise PipelineError(f"shard {missing[0]} not found: rerun `dvc repro generate`")
    for shard in shards:
        for key, files in _shard_items(shard):
            yield _decode_item(shard, key, files, size)


def _shard_items(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each item of a tar shard, grouping consecutive members by key.

    The file is opened here, by path, rather than handed to webdataset: webdataset treats a
    name starting with `pipe:` as a shell command, and a folder may be called anything.
    """
    key, files = None, {}
    try:
        # "r|": a stream, read once front to back; never random access or a member index.
        with open(shard, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                # write_shard names members `<id>.<ext>` with ext png/txt/json; splitting at the
                # last dot keeps ids that contain dots whole.
                stem, dot, ext = member.name.rpartition(".")
                if not dot:
                    continue
                if stem != key:
                    if key is not None:
                        yield key, files
                    key, files = stem, {}
                files[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PipelineError(f"shard {shard} is not a readable tar file ({exc or exc.__class__.__name__}): "
                            "delete it and rerun `dvc repro generate`") from exc
    if key is not None:
        yield key, files


def _decode_item(shard: Path, key: str, files: dict[str, bytes], size: int | None) -> tuple[dict, np.ndarray]:
    """(metadata, image) of one shard item, each checked."""
    fix = "delete the shard and rerun `dvc repro generate`"
    if "png" not in files or "json" not in files:
        raise PipelineError(f"shard {shard}: item {key} lacks its png or json: {fix}")
    try:
        meta = json.loads(files["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"shard {shard}: {key}.json is not valid UTF-8 JSON ({exc.__class__.__name__}): {fix}") from exc
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("id", "caption")):
        raise PipelineError(f"shard {shard}: {key}.json is not an object with text 'id' and 'caption': {fix}")
    try:
        with Image.open(io.BytesIO(files["png"])) as im:
            image = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise PipelineError(f"shard {shard}: item {key} is not a readable PNG ({exc.__class__.__name__}): {fix}") from exc
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return meta, np.asarray(image)


def batched(samples: Iterable[tuple[dict, np.ndarray]], batch_size: int) -> Iterator[tuple[list[dict], np.ndarray]]:
    """Group (metadata, image) pairs into (metadata list, (B, H, W, 3) array) batches."""
    metas, images = [], []
    for meta, image in samples:
        metas.append(meta)
        images.append(image)
        if len(metas) == batch_size:
            yield metas, np.stack(images)
            metas, images = [], []
    if metas:
        yield metas, np.stack(images)


def fingerprint(*parts) -> str:
    """Short sha256 of JSON-serialisable parts (resume-state keys)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]

"""Embedding and feature extraction over image streams: records read from disk in batches, or
webdataset shards read item by item, so memory holds one batch of pixels at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from gmail.core.errors import PipelineError
from gmail.core.io import iter_jsonl, load_image
from gmail.data.shards import batched, read_shards
from gmail.models.image_tower import head_embeddings, images_to_tensor, trunk_features


def record_batches(records: list[dict], batch_size: int, size: int | None = None) -> Iterator[np.ndarray]:
    """(B, H, W, 3) uint8 batches of the records' images, loaded one batch at a time."""
    for i in range(0, len(records), batch_size):
        yield np.stack([np.asarray(load_image(r["path"], size)) for r in records[i:i + batch_size]])


def features_of(tower: nn.Module, batches: Iterable[np.ndarray], batch_size: int = 256, device: str = "cpu",
                head=None, total: int | None = None, desc: str | None = None) -> torch.Tensor:
    """Concatenated per-batch outputs: the frozen trunk's features of each uint8 batch, or, with
    `head`, the L2-normalised embeddings `head(trunk(batch))`. Only the outputs are kept."""
    out = []
    with tqdm(total=total, desc=desc, unit="img", disable=desc is None) as bar:
        for images in batches:
            feats = trunk_features(tower, images_to_tensor(images), batch_size, device)
            out.append(head_embeddings(head, feats, batch_size, device) if head is not None else feats.cpu())
            bar.update(len(images))
    return torch.cat(out)


def embed_records(tower: nn.Module, records: list[dict], batch_size: int = 256, device: str = "cpu",
                  desc: str | None = None) -> torch.Tensor:
    """f_r embeddings (N, D) of the records' images, read from disk a batch at a time."""
    return features_of(tower, record_batches(records, batch_size, tower.load_size), batch_size, device, head=tower.head,
                       total=len(records), desc=desc)


def embed_shard(tower: nn.Module, shard, batch_size: int = 256, device: str = "cpu") -> tuple[torch.Tensor, list[dict]]:
    """(f_r embeddings, item metadata) of one webdataset shard, in shard order."""
    metas: list[dict] = []

    def images():
        for batch_metas, batch in batched(read_shards([shard], tower.load_size), batch_size):
            metas.extend(batch_metas)
            yield batch

    return features_of(tower, images(), batch_size, device, head=tower.head), metas


def read_manifest(generated_dir, real_ids) -> list[dict]:
    """Stage generate's `manifest.jsonl`, checked: every item has text `id`, `source_id` and
    `caption`, and was generated for one of `real_ids`."""
    path = Path(generated_dir) / "manifest.jsonl"
    manifest = []
    for lineno, item in iter_jsonl(path):
        bad = next((k for k in ("id", "source_id", "caption") if not isinstance(item.get(k), str)), None)
        if bad is not None:
            raise PipelineError(f"{path}:{lineno}: item has no text {bad!r}: rerun `dvc repro generate`")
        manifest.append(item)
    known = set(real_ids)
    stray = next((m["source_id"] for m in manifest if m["source_id"] not in known), None)
    if stray is not None:
        raise PipelineError(f"{generated_dir} holds images generated for {stray!r}, which is not in B: rerun `dvc repro generate`")
    return manifest


def check_shard_order(metas: list[dict], manifest: list[dict], generated_dir) -> None:
    """The items read from the shards must be the manifest's, in its order, each with the
    manifest's source image and caption (what the stages pair it with)."""
    def key(m):
        return m.get("id"), m.get("source_id"), m.get("caption")

    if [key(m) for m in metas] != [key(m) for m in manifest]:
        raise PipelineError(f"the shards in {generated_dir} do not hold the manifest's images in order: "
                            "rerun `dvc repro generate`")

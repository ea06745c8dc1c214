"""Zero-shot image-text retrieval (paper T2/T3, and T5 with long captions), CLIP_benchmark's
protocol on precomputed embeddings.

Every reference caption of every test image is one text row with `texts_image_index` (as
CLIP_benchmark's `zeroshot_retrieval.evaluate` flattens them); scores are `texts @ images.T` of
L2-normalised embeddings; a query hits at k when at least one positive is among its top k, and
R@k is the share of queries that hit. The recall itself is CLIP_benchmark's
`recall_at_k`, run through its `batchify`.

Positives: `index` is CLIP_benchmark's (a text is positive for the image it belongs to);
`text` adds every image whose references contain the same text. The mini captions are
templated, so one text describes many images, and counting only its own image would call a
correct retrieval wrong. Identical texts then have identical embeddings *and* identical
positives, so the order `topk` breaks their ties in cannot change a score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError

POSITIVES = ("text", "index")
RECALL_KS = (1, 5, 10)


@dataclass
class RetrievalParams:
    """The params section of a retrieval stage (eval_retrieval, eval_long_retrieval); each
    subclass names the `source` values its stage reads in SOURCES."""

    SOURCES: ClassVar[tuple[str, ...]] = ()
    source: str         # T (mini: real T, stage embed's f_r embeddings) | a paper data set named in SOURCES
    paper: dict         # the paper source's reader arguments
    positives: str      # text | index
    batch_size: int     # queries per recall_at_k call

    def validate(self, name):
        if self.source not in self.SOURCES:
            raise PipelineError(f"{name}.source={self.source!r} is not one of {', '.join(self.SOURCES)}: fix params.yaml")
        if self.positives not in POSITIVES:
            raise PipelineError(f"{name}.positives={self.positives!r} is not one of {', '.join(POSITIVES)}: fix params.yaml")
        if self.batch_size < 1:
            raise PipelineError(f"{name}.batch_size must be positive: fix params.yaml")


def retrieval_texts(records: list[dict]) -> tuple[list[str], list[int]]:
    """(texts, texts_image_index): every caption of every record, flattened in record order."""
    texts, index = [], []
    for i, rec in enumerate(records):
        for caption in rec["captions"]:
            texts.append(caption)
            index.append(i)
    return texts, index


def positive_pairs(texts: list[str], texts_image_index: list[int], image_captions: list[list[str]],
                   positives: str = "text") -> torch.Tensor:
    """(n_texts, n_images) bool: is text t a correct match for image i?

    `index`: only the image each text belongs to (CLIP_benchmark). `text`: also every image
    whose reference captions include the same text (exact string match).
    """
    if positives not in POSITIVES:
        raise PipelineError(f"unknown positives rule {positives!r}: use one of {', '.join(POSITIVES)}")
    if len(texts) != len(texts_image_index):
        raise PipelineError(f"{len(texts)} texts for {len(texts_image_index)} image indices: they must pair one to one")
    pairs = torch.zeros(len(texts), len(image_captions), dtype=torch.bool)
    pairs[torch.arange(len(texts)), torch.as_tensor(texts_image_index, dtype=torch.long)] = True
    if positives == "text":
        images_of: dict[str, list[int]] = {}
        for i, caps in enumerate(image_captions):
            for c in set(caps):
                images_of.setdefault(c, []).append(i)
        for t, text in enumerate(texts):
            pairs[t, images_of.get(text, [])] = True
    return pairs


def retrieval_recalls(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, positives: torch.Tensor,
                      ks=RECALL_KS, batch_size: int = 256, device: str = "cpu") -> dict[str, float]:
    """{i2t_r<k>, t2i_r<k>} in percent: CLIP_benchmark's recall@k on precomputed embeddings.

    i2t (text retrieval) queries with each image over all texts, t2i (image retrieval) with
    each text over all images. `k` larger than the number of candidates is clamped to it
    (`torch.topk` would fail; every candidate is then retrieved).
    """
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    n_texts, n_images = positives.shape
    if image_embeddings.shape[0] != n_images or text_embeddings.shape[0] != n_texts:
        raise PipelineError(f"{image_embeddings.shape[0]} image and {text_embeddings.shape[0]} text embeddings for a "
                            f"{n_texts} x {n_images} positives matrix: embed every test image and text once")
    if image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise PipelineError(f"image embeddings have {image_embeddings.shape[1]} dims, text embeddings "
                            f"{text_embeddings.shape[1]}: use the text tower of the CLIP that embedded the images")
    images = F.normalize(image_embeddings.float(), dim=-1)
    texts = F.normalize(text_embeddings.float(), dim=-1)
    scores = texts @ images.t()
    out = {}
    for k in ks:
        t2i = batchify(recall_at_k, scores, positives, batch_size, device, k=min(k, n_images)) > 0
        i2t = batchify(recall_at_k, scores.t(), positives.t(), batch_size, device, k=min(k, n_texts)) > 0
        out[f"i2t_r{k}"] = 100.0 * i2t.double().mean().item()
        out[f"t2i_r{k}"] = 100.0 * t2i.double().mean().item()
    return out


def embed_record_images(records: list[dict], tower, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """L2-normalised `f_r` embeddings of the records' images (paper-scale test sets that stage
    `embed` did not cover), loaded at the tower's input size as stage `embed` loads them."""
    from gmail.data.records import load_split_images
    from gmail.models.image_tower import encode_images

    size = getattr(tower, "load_size", None)
    if size is None:  # the mini CLIP resizes inside; images only need one common size to stack
        size = tower.config.image_size
    return encode_images(tower, load_split_images(records, size), batch_size, device)


def real_test_set(captions_dir, embeddings_dir) -> tuple[list[dict], torch.Tensor]:
    """(real T records, their `f_r` embeddings): the test set every row is scored on, with the
    embeddings stage `embed` wrote (`<embeddings>/real/T.f_r.npy`, checked against the ids)."""
    from pathlib import Path

    from gmail.data.records import read_split
    from gmail.models.embeddings import read_embeddings

    records = read_split(Path(captions_dir) / "T.jsonl")
    return records, read_embeddings(Path(embeddings_dir) / "real", "T.f_r", [r["image_id"] for r in records])

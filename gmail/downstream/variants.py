"""Captioner variants (params.yaml `variants`): which B images a downstream model trains on and
through which encoder, and how it reads the real test images.

A variant is `{images: real | generated | noise, encoder: f_r | f_g, heldout_only: bool}`:
`generated` through `f_r` is the paper's "without alignment", through `f_g` is GMAIL,
`real` through `f_r` the real-data reference; `heldout_only` keeps only the pairs alignment
never saw (the last `align.heldout` B images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gmail.core.errors import PipelineError
from gmail.models.embeddings import read_embeddings, set_folder, training_rows

IMAGE_SETS = ("real", "generated", "noise")
READINGS = ("f_r", "f_g")


@dataclass
class VariantParams:
    images: str                 # real | generated | noise
    encoder: str                # f_r | f_g (f_g only for generated or noise images)
    heldout_only: bool = False  # optional in params.yaml: most variants train on every B pair

    def validate(self, name):
        if self.images not in IMAGE_SETS:
            raise PipelineError(f"{name}.images={self.images!r} is not one of {', '.join(IMAGE_SETS)}: fix params.yaml")
        if self.encoder not in READINGS or (self.images == "real" and self.encoder == "f_g"):
            raise PipelineError(f"{name}.encoder={self.encoder!r} must be f_r, or f_g for generated/noise images: fix params.yaml")


@dataclass
class TrainingSet:
    """A variant's training rows: embeddings (N, D), each row's reference captions, the index of
    its real B record (questions and attributes live there) and its id."""

    embeddings: torch.Tensor
    captions: list[list[str]]
    sources: list[int]
    ids: list[str]


def training_set(records: list[dict], embeddings_dir, variant: VariantParams, heldout: int) -> TrainingSet:
    """The rows the variant trains on, in B order (several per real image for generated sets).

    `records` are the real B records; `embeddings_dir` holds one folder per image set
    (`real/`, `generated/f_r/`, `generated/f_g/`, `noise/`). `heldout_only` keeps the rows of the last
    `heldout` real B images, the pairs alignment never saw.
    """
    folder = Path(embeddings_dir) / set_folder(variant.images, variant.encoder)
    rows = training_rows(folder, "B", records)
    z = read_embeddings(folder, f"B.{variant.encoder}", rows.ids)
    keep = list(range(len(rows.ids)))
    if variant.heldout_only:
        if not 0 < heldout < len(records):
            raise PipelineError(f"align.heldout={heldout} leaves no held-out pairs among {len(records)}: raise it or drop heldout_only")
        keep = [i for i, src in enumerate(rows.sources) if src >= len(records) - heldout]
    return TrainingSet(z[keep], [rows.captions[i] for i in keep], [rows.sources[i] for i in keep], [rows.ids[i] for i in keep])


def real_test_embeddings(test_records: list[dict], embeddings_dir, variant: VariantParams,
                    test_reading: str) -> tuple[torch.Tensor, str, str]:
    """(embeddings of real T, the reading used, the file they came from, relative to `embeddings_dir`).

    `test_reading: f_g` reads T through the variant's LoRA model (paper Section 3.2); a
    variant trained on `f_r` embeddings has no LoRA model and reads T through `f_r` (the
    paper's Algorithm 1), as does every variant with `test_reading: f_r`.
    """
    reading = "f_g" if test_reading == "f_g" and variant.encoder == "f_g" else "f_r"
    folder = set_folder(variant.images, "f_g") if reading == "f_g" else "real"
    z = read_embeddings(Path(embeddings_dir) / folder, f"T.{reading}", [r["image_id"] for r in test_records])
    return z, reading, f"{folder}/T.{reading}.npy"


def validation_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training indices, validation indices) of `n` images: a seeded random `fraction` of them
    (at least one) held out for early stopping, both lists sorted.

    The split depends only on (`n`, `fraction`, `seed`), so every seed of a variant, and every
    variant trained on the same images, stops on the same validation images.
    """
    if not 0 < fraction < 1:
        raise PipelineError(f"validation fraction {fraction} must be between 0 and 1: fix params.yaml")
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise PipelineError(f"{n} training images are too few to hold out {n_val} for validation: lower the fraction")
    import numpy as np

    val = sorted(np.random.default_rng(seed).choice(n, size=n_val, replace=False).tolist())
    keep = set(val)
    return [i for i in range(n) if i not in keep], val

"""Pretrain stage `clip`: the mini CLIP f_r, trained contrastively on real split A."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from gmail import clip as mc
from gmail.cli import offline, run, stage_parser
from gmail.config import get_seed, load_params, pick_device, section, set_seed
from gmail.io import atomic_dir, write_json
from gmail.records import load_split_images, read_split
from gmail.text import encode_texts


@dataclass
class ClipParams:
    image_size: int = 64
    embed_dim: int = 256
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-3
    device: str = "auto"
    out: str = "pretrain/models/clip"


def embed_references(records, device):
    """(N, K, 384) MiniLM embeddings of each record's first K references."""
    k = min(len(r["captions"]) for r in records)
    flat = [c for r in records for c in r["captions"][:k]]
    return encode_texts(flat, device).reshape(len(records), k, -1)


def evaluate(model, records_t, records_a, device) -> dict:
    """Zero-shot retrieval R@1 and colour/shape accuracy on real T; prototypes from A's captions."""
    img = mc.encode_images(model.visual, load_split_images(records_t), device=device)
    caps = [c for r in records_t for c in r["captions"]]
    txt = mc.encode_sentences(model, encode_texts(caps, device), device)
    metrics = mc.caption_retrieval_r1(img, txt, caps, [set(r["captions"]) for r in records_t])
    metrics.update(attribute_accuracy(model, img, records_t, records_a, device))
    return metrics


def attribute_accuracy(model, image_features, records_t, records_a, device) -> dict:
    out = {}
    emb_a = encode_texts([c for r in records_a for c in r["captions"]], device)
    for attr in ("colour", "shape"):
        classes, protos = mc.attribute_classifier(model, records_a, attr, emb_a, device)
        out[f"{attr}_acc"] = mc.zero_shot_accuracy(image_features, [r["attributes"][attr] for r in records_t], classes, protos)
    return out


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("clip", {}), ClipParams, "clip")
    device = pick_device(p.device)
    captions = Path(params.get("captions", "data/captions"))

    records_a, records_t = read_split(captions / "A.jsonl"), read_split(captions / "T.jsonl")
    model = mc.MiniClip(mc.MiniClipConfig(image_size=p.image_size, embed_dim=p.embed_dim))
    losses = mc.train_mini_clip(model, load_split_images(records_a), embed_references(records_a, device),
                                steps=p.steps, batch_size=p.batch_size, lr=p.lr, seed=seed, device=device)
    metrics = evaluate(model, records_t, records_a, device)
    metrics["final_loss"] = sum(losses[-20:]) / len(losses[-20:])
    with atomic_dir(p.out) as tmp:
        mc.save_mini_clip(model.cpu(), tmp)
    write_json("metrics/pretrain/clip.json", metrics)
    print("mini CLIP on real T: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    sys.exit(run(main))

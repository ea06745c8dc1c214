"""Pretrain stage `clip`: the mini CLIP f_r, trained contrastively on real split A."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import check_lr, check_param, get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.io import atomic_dir, write_json
from gmail.data.records import load_split_images, read_split
from gmail.eval.zeroshot import attribute_accuracies, caption_retrieval_r1
from gmail.models import mini_clip as mc
from gmail.models.image_tower import encode_images
from gmail.models.text import encode_texts


@dataclass
class ClipParams:
    image_size: int
    embed_dim: int
    steps: int
    batch_size: int
    lr: float
    device: str

    def validate(self, name):
        file = "pretrain/params.yaml"
        for key in ("image_size", "embed_dim", "steps"):
            check_param(getattr(self, key) >= 1, f"{name}.{key}", getattr(self, key), "positive", file)
        check_param(self.batch_size >= 2, f"{name}.batch_size", self.batch_size, "at least 2 (a contrastive batch)", file)
        check_lr(f"{name}.lr", self.lr, file)


def embed_references(records, device):
    """(N, K, 384) MiniLM embeddings of each record's first K references."""
    k = min(len(r["captions"]) for r in records)
    flat = [c for r in records for c in r["captions"][:k]]
    return encode_texts(flat, device).reshape(len(records), k, -1)


def evaluate(model, records_t, records_a, device) -> dict:
    """Zero-shot retrieval R@1 and colour/shape accuracy on real T; prototypes from A's captions."""
    img = encode_images(model.visual, load_split_images(records_t), device=device)
    caps = [c for r in records_t for c in r["captions"]]
    txt = mc.encode_sentences(model, encode_texts(caps, device), device)
    metrics = caption_retrieval_r1(img, txt, caps, [set(r["captions"]) for r in records_t])
    for attr, acc in attribute_accuracies(model, {"real": img}, records_t, records_a, device=device).items():
        metrics[f"{attr}_acc"] = acc["real"]
    return metrics


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("clip"), ClipParams, "clip")
    paths = get_paths(params, "captions", "models", "metrics")
    device = pick_device(p.device)

    records_a, records_t = read_split(paths.captions / "A.jsonl"), read_split(paths.captions / "T.jsonl")
    model = mc.MiniClip(mc.MiniClipConfig(image_size=p.image_size, embed_dim=p.embed_dim))
    losses = mc.train_mini_clip(model, load_split_images(records_a), embed_references(records_a, device),
                                steps=p.steps, batch_size=p.batch_size, lr=p.lr, seed=seed, device=device)
    metrics = evaluate(model, records_t, records_a, device)
    metrics["final_loss"] = sum(losses[-20:]) / len(losses[-20:])
    with atomic_dir(paths.models / "clip") as tmp:
        mc.save_mini_clip(model.cpu(), tmp)
    write_json(paths.metrics / "clip.json", metrics)
    print("mini CLIP on real T: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    sys.exit(run(main))

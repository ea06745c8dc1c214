"""Pretrain stage `generator@<family>`: a small text-to-image model trained on real split A."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gmail import diffusion
from gmail.cli import offline, run, stage_parser
from gmail.config import get_seed, load_params, pick_device, section, set_seed
from gmail.errors import PipelineError
from gmail.io import atomic_dir, write_json
from gmail.records import load_split_images, read_split
from gmail.text import encode_texts_cached


@dataclass
class TrainParams:
    steps: int = 6000
    batch_size: int = 128
    lr: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    device: str = "auto"
    max_minutes: float = 0.0
    out: str = "pretrain/models"

    def validate(self, name):
        if self.steps < 1 or self.batch_size < 1:
            raise PipelineError(f"{name}.steps and {name}.batch_size must be positive: fix pretrain/params.yaml")


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--family", required=True, help="generator family: sd2 | flux")
    parser.add_argument("--text-cache", default=None,
                        help="MiniLM embeddings (.npz from gmail.text.write_text_cache) for machines without the packaged model")
    args = parser.parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    if args.family not in diffusion.FAMILIES:
        raise PipelineError(f"unknown generator family {args.family!r}: use one of {', '.join(diffusion.FAMILIES)}")
    config = section(params.get(args.family, {}), diffusion.GeneratorConfig, args.family)
    if config.family != args.family:
        raise PipelineError(f"section {args.family} says family {config.family!r}: make them agree in pretrain/params.yaml")
    p = section(params.get("generator", {}), TrainParams, "generator")
    device = pick_device(p.device)

    records = read_split(Path(params.get("captions", "data/captions")) / "A.jsonl")
    k = min(len(r["captions"]) for r in records)
    emb = encode_texts_cached([c for r in records for c in r["captions"][:k]], args.text_cache)
    images = load_split_images(records, size=config.resolution)
    start = time.time()
    model, scheduler, losses, done = diffusion.train_generator(
        config, images, emb.reshape(len(records), k, -1), steps=p.steps, batch_size=p.batch_size, lr=p.lr,
        warmup=p.warmup, ema_decay=p.ema_decay, p_uncond=p.p_uncond, seed=seed, device=device,
        max_minutes=p.max_minutes)
    minutes = (time.time() - start) / 60
    info = {"steps_done": done, "train_minutes": round(minutes, 2), "device": device,
            "final_loss": sum(losses[-100:]) / len(losses[-100:]), "train": asdict(p)}
    with atomic_dir(Path(p.out) / args.family) as tmp:
        diffusion.save_generator(model, scheduler, config, tmp, extra={"training": info})
    write_json(f"metrics/pretrain/train-{args.family}.json",
               {k: v for k, v in info.items() if k != "train"})
    print(f"{args.family}: {done} steps in {minutes:.1f} min on {device}, final loss {info['final_loss']:.4f}")


if __name__ == "__main__":
    sys.exit(run(main))

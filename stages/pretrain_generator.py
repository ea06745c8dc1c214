"""Pretrain stage `generator@<family>`: a small text-to-image model trained on real split A."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import check_lr, check_param, get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json
from gmail.data.records import load_split_images, read_split
from gmail.generation import mini_diffusion as diffusion
from gmail.models.text import encode_texts_cached


@dataclass
class TrainParams:
    steps: int
    batch_size: int
    lr: float
    warmup: int
    ema_decay: float
    p_uncond: float
    device: str
    max_minutes: float      # > 0 stops early after this many minutes

    def validate(self, name):
        if self.steps < 1 or self.batch_size < 1:
            raise PipelineError(f"{name}.steps and {name}.batch_size must be positive: fix pretrain/params.yaml")
        file = "pretrain/params.yaml"
        check_lr(f"{name}.lr", self.lr, file)
        check_param(self.warmup >= 1, f"{name}.warmup", self.warmup, "a positive number of steps (the lr ramps up over them)", file)
        check_param(0 <= self.ema_decay < 1, f"{name}.ema_decay", self.ema_decay, "in [0, 1) (e.g. 0.999)", file)
        check_param(0 <= self.p_uncond < 1, f"{name}.p_uncond", self.p_uncond, "in [0, 1) (a caption-dropout probability)", file)
        check_param(self.max_minutes >= 0, f"{name}.max_minutes", self.max_minutes, ">= 0 (0 = no time limit)", file)


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--family", required=True, help="generator family: sd2 | flux")
    parser.add_argument("--text-cache", default=None,
                        help="MiniLM embeddings (.npz from gmail.models.text.write_text_cache) for machines without the packaged model")
    args = parser.parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    if args.family not in diffusion.FAMILIES:
        raise PipelineError(f"unknown generator family {args.family!r}: use one of {', '.join(diffusion.FAMILIES)}")
    config = section(params.get(args.family), diffusion.GeneratorConfig, args.family)
    if config.family != args.family:
        raise PipelineError(f"section {args.family} says family {config.family!r}: make them agree in pretrain/params.yaml")
    p = section(params.get("generator"), TrainParams, "generator")
    paths = get_paths(params, "captions", "models", "metrics", "stats")
    device = pick_device(p.device)

    records = read_split(paths.captions / "A.jsonl")
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
    with atomic_dir(paths.models / args.family) as tmp:
        diffusion.save_generator(model, scheduler, config, tmp, extra={"training": info})
    # Metrics hold results only; wall-clock minutes and the device go to stats (and generator.json).
    write_json(paths.metrics / f"train-{args.family}.json", {"steps_done": done, "final_loss": info["final_loss"]})
    write_json(paths.stats / f"train-{args.family}.json", {"train_minutes": info["train_minutes"], "device": device})
    print(f"{args.family}: {done} steps in {minutes:.1f} min on {device}, final loss {info['final_loss']:.4f}")


if __name__ == "__main__":
    sys.exit(run(main))

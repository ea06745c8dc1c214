"""Pretrain stage `fidelity@<family>`: does the mini CLIP read generated images like real ones?

Images are generated from the first reference caption of every real T image; the ratio of
f_r's zero-shot colour (shape) accuracy on them to its accuracy on the real T images is the
fidelity bar the rest of the pipeline needs (>= 0.7).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gmail import clip as mc
from gmail.cli import offline, run, stage_parser
from gmail.config import get_seed, load_params, pick_device, section, set_seed
from gmail.diffusion import load_generator
from gmail.io import atomic_file, write_json
from gmail.plots import image_grid
from gmail.records import load_split_images, read_split
from gmail.sampling import sample
from gmail.text import encode_texts


@dataclass
class FidelityParams:
    steps: int = 20
    guidance: float = 3.0
    batch_size: int = 250
    device: str = "auto"


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--family", required=True, help="generator family: sd2 | flux")
    args = parser.parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("fidelity", {}), FidelityParams, "fidelity")
    device = pick_device(p.device)
    out_root = params.get("generator", {}).get("out", "pretrain/models")
    clip_dir = params.get("clip", {}).get("out", "pretrain/models/clip")
    captions = Path(params.get("captions", "data/captions"))

    # 1. Generate one image per T caption (first reference), per-image seeds.
    records_t, records_a = read_split(captions / "T.jsonl"), read_split(captions / "A.jsonl")
    model, scheduler, config = load_generator(Path(out_root) / args.family, device)
    cond = torch.from_numpy(encode_texts([r["captions"][0] for r in records_t]))
    generated = []
    for i in tqdm(range(0, len(records_t), p.batch_size), desc=f"sample {args.family}"):
        seeds = [seed + j for j in range(i, min(i + p.batch_size, len(records_t)))]
        generated.append(sample(model, scheduler, config, cond[i:i + len(seeds)], seeds, p.steps, p.guidance, device))
    generated = np.concatenate(generated)

    # 2. Zero-shot colour and shape accuracy of f_r on real and on generated T.
    clip = mc.load_mini_clip(clip_dir, device)
    emb_a = encode_texts([c for r in records_a for c in r["captions"]])
    real = load_split_images(records_t)
    feats = {"real": mc.encode_images(clip.visual, real, device=device),
             "generated": mc.encode_images(clip.visual, generated, device=device)}
    metrics = {}
    for attr in ("colour", "shape"):
        classes, protos = mc.attribute_classifier(clip, records_a, attr, emb_a, device)
        labels = [r["attributes"][attr] for r in records_t]
        for kind, f in feats.items():
            metrics[f"{attr}_acc_{kind}"] = mc.zero_shot_accuracy(f, labels, classes, protos)
        metrics[f"{attr}_ratio"] = metrics[f"{attr}_acc_generated"] / max(metrics[f"{attr}_acc_real"], 1e-9)
    metrics["paired_cosine"] = float((feats["real"] * feats["generated"]).sum(1).mean())
    metrics["resolution"] = config.resolution

    # 3. Real-vs-generated grid: real row above generated row, same captions.
    with atomic_file(f"plots/pretrain/grid-{args.family}.png", "wb") as fh:
        image_grid(real[:12], generated[:12], [r["captions"][0] for r in records_t[:12]],
                   title=f"{args.family}: real T (top) vs generated from the same caption (bottom)").save(fh, format="PNG")
    write_json(f"metrics/pretrain/generator-{args.family}.json", metrics)
    print(f"{args.family} fidelity: colour {metrics['colour_ratio']:.3f}, shape {metrics['shape_ratio']:.3f}")


if __name__ == "__main__":
    sys.exit(run(main))

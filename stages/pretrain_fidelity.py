"""Pretrain stage `fidelity@<family>`: does the mini CLIP read generated images like real ones?

Images are generated from the first reference caption of every real T image; the ratio of
f_r's zero-shot colour (shape) accuracy on them to its accuracy on the real T images is the
fidelity bar the rest of the pipeline needs (>= 0.7).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import check_param, get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_file, write_json
from gmail.data.records import load_split_images, read_split
from gmail.eval.zeroshot import attribute_accuracies
from gmail.generation.mini_diffusion import FAMILIES, TRAIN_TIMESTEPS
from gmail.generation.mini_sampling import mini_images
from gmail.models.image_tower import encode_images
from gmail.models.mini_clip import load_mini_clip
from gmail.viz.grids import image_grid


@dataclass
class FidelityParams:
    steps: int
    guidance: float
    batch_size: int
    device: str

    def validate(self, name):
        file = "pretrain/params.yaml"
        # The models' schedulers have TRAIN_TIMESTEPS timesteps; DDIM takes no more steps than that.
        check_param(1 <= self.steps <= TRAIN_TIMESTEPS, f"{name}.steps", self.steps, f"in [1, {TRAIN_TIMESTEPS}]", file)
        check_param(0 <= self.guidance <= 50, f"{name}.guidance", self.guidance, "in [0, 50] (as gen.guidance)", file)
        check_param(self.batch_size >= 1, f"{name}.batch_size", self.batch_size, "positive", file)


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--family", required=True, help="generator family: sd2 | flux")
    args = parser.parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    if args.family not in FAMILIES:
        raise PipelineError(f"unknown generator family {args.family!r}: use one of {', '.join(FAMILIES)}")
    p = section(params.get("fidelity"), FidelityParams, "fidelity")
    paths = get_paths(params, "captions", "models", "metrics", "plots")
    device = pick_device(p.device)

    # 1. Generate one image per T caption (first reference), per-image seeds.
    records_t, records_a = read_split(paths.captions / "T.jsonl"), read_split(paths.captions / "A.jsonl")
    prompts = [r["captions"][0] for r in records_t]
    images = mini_images(paths.models / args.family, prompts, [seed + i for i in range(len(prompts))], p.steps,
                         p.guidance, p.batch_size, device)
    generated = np.stack([img for _, img in tqdm(images, total=len(prompts), desc=f"sample {args.family}", unit="img")])

    # 2. Zero-shot colour and shape accuracy of f_r on real and on generated T.
    clip = load_mini_clip(paths.models / "clip", device)
    real = load_split_images(records_t)
    feats = {"real": encode_images(clip.visual, real, device=device),
             "generated": encode_images(clip.visual, generated, device=device)}
    metrics = {}
    for attr, acc in attribute_accuracies(clip, feats, records_t, records_a, device=device).items():
        metrics.update({f"{attr}_acc_{kind}": a for kind, a in acc.items()})
        metrics[f"{attr}_ratio"] = acc["generated"] / max(acc["real"], 1e-9)
    metrics["paired_cosine"] = float((feats["real"] * feats["generated"]).sum(1).mean())
    metrics["resolution"] = int(generated.shape[1])

    # 3. Real-vs-generated grid: real row above generated row, same captions.
    with atomic_file(paths.plots / f"grid-{args.family}.png", "wb") as fh:
        image_grid(real[:12], generated[:12], prompts[:12],
                   title=f"{args.family}: real T (top) vs generated from the same caption (bottom)").save(fh, format="PNG")
    write_json(paths.metrics / f"generator-{args.family}.json", metrics)
    print(f"{args.family} fidelity: colour {metrics['colour_ratio']:.3f}, shape {metrics['shape_ratio']:.3f}")


if __name__ == "__main__":
    sys.exit(run(main))

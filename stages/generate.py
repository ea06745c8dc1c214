"""Stage `generate`: one image per B image, sampled from its first reference caption.

Mini scale samples the committed stand-in generator (gen.scale=mini); paper scale loads
StableDiffusionPipeline / FluxPipeline with from_pretrained (gen.scale=paper). Image i is
seeded with seed + i, so it does not depend on batch size or on how the work is split.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from gmail.cli import offline, run, stage_parser
from gmail.config import get_seed, load_params, pick_device, section, set_seed, torch_dtype
from gmail.errors import PipelineError
from gmail.io import atomic_dir, write_json, write_jsonl
from gmail.records import read_split

MODELS = ("sd2", "flux")
SCALES = ("mini", "paper")


@dataclass
class GenParams:
    model: str = "sd2"
    sd2: str = "pretrain/models/sd2"
    flux: str = "pretrain/models/flux"
    scale: str = "mini"
    steps: int = 20
    guidance: float = 3.0
    resolution: int = 0
    batch_size: int = 64
    dtype: str = "float32"
    device: str = "auto"
    out: str = "data/generated"
    captions: str = "data/captions"

    def validate(self, name):
        if self.model not in MODELS:
            raise PipelineError(f"unknown {name}.model {self.model!r}: use one of {', '.join(MODELS)} (e.g. dvc exp run -S gen.model=flux)")
        if self.scale not in SCALES:
            raise PipelineError(f"unknown {name}.scale {self.scale!r}: use one of {', '.join(SCALES)}")
        if self.steps < 1 or self.batch_size < 1 or self.resolution < 0:
            raise PipelineError(f"{name}.steps and {name}.batch_size must be positive and {name}.resolution >= 0: fix params.yaml")
        torch_dtype(self.dtype)


def mini_images(p: GenParams, prompts: list[str], seeds: list[int], device: str):
    """Iterator of (index, uint8 image) from the committed mini generator (loaded up front)."""
    from gmail.diffusion import load_generator
    from gmail.sampling import sample
    from gmail.text import encode_texts

    model, scheduler, config = load_generator(getattr(p, p.model), device, torch_dtype(p.dtype))
    cond = torch.from_numpy(encode_texts(prompts))

    def images():
        for i in range(0, len(prompts), p.batch_size):
            batch = sample(model, scheduler, config, cond[i:i + p.batch_size], seeds[i:i + p.batch_size],
                           p.steps, p.guidance, device, torch_dtype(p.dtype))
            yield from ((i + j, img) for j, img in enumerate(batch))

    return images()


def paper_images(p: GenParams, prompts: list[str], seeds: list[int], device: str):
    """Iterator of (index, uint8 image) from the paper's SD2 / FLUX pipelines (loaded up front)."""
    from gmail.paper_generation import generate_paper_images, load_paper_pipeline

    pipe = load_paper_pipeline(p.model, getattr(p, p.model), p.dtype, device)
    size = p.resolution or 512
    return ((i, np.asarray(img.convert("RGB")))
            for i, img in generate_paper_images(pipe, prompts, seeds, p.steps, p.guidance, size, size, p.batch_size))


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("gen", {}), GenParams, "gen")
    if p.scale == "mini":
        offline()
    device = pick_device(p.device)

    records = read_split(Path(p.captions) / "B.jsonl")
    prompts = [r["captions"][0] for r in records]
    seeds = [seed + i for i in range(len(records))]
    images = (mini_images if p.scale == "mini" else paper_images)(p, prompts, seeds, device)

    start = time.time()
    with atomic_dir(p.out) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for i, img in tqdm(images, total=len(records), desc=f"generate ({p.model})", unit="img"):
            if p.resolution and img.shape[0] != p.resolution:
                img = np.asarray(Image.fromarray(img).resize((p.resolution, p.resolution), Image.BICUBIC))
            rel = f"images/{records[i]['image_id']}.png"
            Image.fromarray(img).save(tmp / rel)
            rows.append({"image_id": records[i]["image_id"], "path": rel, "prompt": prompts[i],
                         "seed": seeds[i], "captions": records[i]["captions"],
                         **({"attributes": records[i]["attributes"]} if "attributes" in records[i] else {})})
        write_jsonl(tmp / "generated.jsonl", rows)
        elapsed = time.time() - start
    write_json("metrics/generate.json", {
        "count": len(rows), "images_per_s": round(len(rows) / max(elapsed, 1e-9), 3), "model": p.model,
        "scale": p.scale, "steps": p.steps, "guidance": p.guidance, "resolution": int(img.shape[0]),
    })
    print(f"generated {len(rows)} images with {p.model} in {elapsed:.0f} s -> {p.out}")


if __name__ == "__main__":
    sys.exit(run(main))

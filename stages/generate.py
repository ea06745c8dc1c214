"""Stage `generate`: one image per B image, sampled from its first reference caption.

Mini scale samples the committed stand-in generator (gen.scale=mini); paper scale loads
StableDiffusionPipeline / FluxPipeline with from_pretrained (gen.scale=paper). Image i is
seeded with seed + i, so it does not depend on batch size or on how the work is split.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed, torch_dtype
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json, write_jsonl
from gmail.data.records import read_split

MODELS = ("sd2", "flux")
SCALES = ("mini", "paper")


@dataclass
class GenParams:
    model: str
    sd2: str
    flux: str
    scale: str
    steps: int
    guidance: float
    resolution: int
    batch_size: int
    dtype: str
    device: str

    def validate(self, name):
        if self.model not in MODELS:
            raise PipelineError(f"unknown {name}.model {self.model!r}: use one of {', '.join(MODELS)} (e.g. dvc exp run -S gen.model=flux)")
        if self.scale not in SCALES:
            raise PipelineError(f"unknown {name}.scale {self.scale!r}: use one of {', '.join(SCALES)}")
        if self.steps < 1 or self.batch_size < 1 or self.resolution < 0:
            raise PipelineError(f"{name}.steps and {name}.batch_size must be positive and {name}.resolution >= 0: fix params.yaml")
        torch_dtype(self.dtype)


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("gen"), GenParams, "gen")
    paths = get_paths(params, "captions", "generated", "metrics", "stats")
    if p.scale == "mini":
        offline()
    device = pick_device(p.device)

    # 1. Prompts and per-image seeds; the model loads before the progress bar starts.
    records = read_split(paths.captions / "B.jsonl")
    prompts = [r["captions"][0] for r in records]
    seeds = [seed + i for i in range(len(records))]
    if p.scale == "mini":
        from gmail.generation.mini_sampling import mini_images

        images = mini_images(getattr(p, p.model), prompts, seeds, p.steps, p.guidance, p.batch_size, device, torch_dtype(p.dtype))
    else:
        from gmail.generation.paper_pipelines import paper_images

        images = paper_images(p.model, getattr(p, p.model), prompts, seeds, p.steps, p.guidance, p.resolution or 512,
                              p.batch_size, p.dtype, device)

    # 2. Sample and write, one PNG per image plus generated.jsonl (B's ids and captions).
    start = time.time()
    with atomic_dir(paths.generated) as tmp:
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

    # 3. Metrics hold results only; the timing goes to stats (it differs between identical runs).
    write_json(paths.metrics / "generate.json", {
        "count": len(rows), "model": p.model, "scale": p.scale, "steps": p.steps, "guidance": p.guidance,
        "resolution": int(img.shape[0])})
    write_json(paths.stats / "generate.json", {
        "images_per_s": round(len(rows) / max(elapsed, 1e-9), 3), "seconds": round(elapsed, 1), "device": device})
    print(f"generated {len(rows)} images with {p.model} in {elapsed:.0f} s -> {paths.generated}")


if __name__ == "__main__":
    sys.exit(run(main))

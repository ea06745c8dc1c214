"""Benchmark: mini generator training s/step and sampling ms/image on this machine.

    python benchmarks/generator_speed.py [--train-steps 3] [--images 32]

Prints one line per family. Uses the committed generator configs (pretrain/params.yaml) and,
for sampling, the committed weights with the main pipeline's gen.steps and gen.guidance.
"""

import argparse
import time

import numpy as np
import torch

from gmail.core.config import load_params, section
from gmail.generation.mini_diffusion import GeneratorConfig, load_generator, train_generator
from gmail.generation.mini_sampling import sample


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args()
    pre, main_p = load_params("pretrain/params.yaml"), load_params("params.yaml")
    rng = np.random.default_rng(0)
    for family in ("sd2", "flux"):
        cfg = section(pre[family], GeneratorConfig, family)
        imgs = rng.integers(0, 255, (256, cfg.resolution, cfg.resolution, 3), dtype=np.uint8)
        emb = rng.standard_normal((256, 5, 384)).astype(np.float32)
        train_generator(cfg, imgs, emb, steps=1, batch_size=args.batch_size, progress=False)  # warm-up
        t = time.time()
        train_generator(cfg, imgs, emb, steps=args.train_steps, batch_size=args.batch_size, progress=False)
        train_s = (time.time() - t) / args.train_steps
        model, sched, cfg2 = load_generator(f"{pre['paths']['models']}/{family}")  # both families' committed weights
        cond = torch.from_numpy(emb[: args.images, 0])
        t = time.time()
        sample(model, sched, cfg2, cond, list(range(args.images)), main_p["gen"]["steps"], main_p["gen"]["guidance"])
        ms = (time.time() - t) / args.images * 1000
        print(f"{family}: train {train_s:.2f} s/step at batch {args.batch_size}, {cfg.resolution} px; "
              f"sampling {ms:.0f} ms/image ({main_p['gen']['steps']} steps, CFG) on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()

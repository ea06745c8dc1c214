"""Benchmark: GMAIL alignment pairs/s at paper shapes, through the align stage's own code.

    python benchmarks/align_throughput.py                 # --scale gpu on CUDA, cpu otherwise
    python benchmarks/align_throughput.py --scale cpu --steps 3 --runs device:fp32

Builds `f_r` with `gmail.models.image_tower.load_image_tower("paper", ...)`: open_clip ViT-B-32
with random weights (no pretrained tag, so nothing is downloaded; compute does not depend on the
weights), and `f_g` with `gmail.align.train.Alignment` (peft LoRA r4 on every residual block's
attention and MLP, as params.paper.yaml). Then times `gmail.align.train.train_alignment` (Eq. 1
loss, AdamW, cosine restarts, gradient clipping, one loss `.item()` per step) at batch 256 on
224-px images, in each of the `--runs`, written `inputs:precision`:

  inputs    device  training inputs held on the accelerator (in-memory sampler): the compute
                    alone, comparable with DESIGN.md section 6's anchor (5,316 pairs/s on one H200)
            stream  the align stage's paper-scale path: uint8 images through the seeded shuffle
                    buffer (`shuffled_batches`) and `streamed_inputs` (to float on the CPU, copied
                    to the device every step); reading and decoding the PNG shards is not timed
  precision fp32    as the align stage runs today (no autocast)
            bf16    under torch.autocast(bfloat16), the anchor's setting

--scale gpu is the paper setting; --scale cpu is a tiny open_clip ViT of the same classes
(tools.paper_fixtures) that runs in seconds (what the tests run). Prints a table and writes JSON
to --out (default stats/benchmarks/align_throughput.json).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs here

import numpy as np
import torch
import torch.nn.functional as F

from gmail.align.train import Alignment, shuffled_batches, streamed_inputs, train_alignment
from gmail.core.io import write_json
from gmail.models.image_tower import load_image_tower

COCO_PAIRS = 566_435  # Karpathy train + restval x 5 generated images each (README "GPU-hours")
COCO_EPOCHS = 5  # params.paper.yaml align.steps: 5 epochs at batch 256


@dataclass
class Workload:
    """One scale's benchmark setting."""
    model: str  # open_clip model name, or "tiny" (tools.paper_fixtures' local-dir ViT)
    batch_size: int  # pairs per step (align.batch_size)
    rank: int  # LoRA rank (align.rank)
    layers: str  # align.layers (paper: "head" = every block for the open_clip tower)
    steps: int  # timed optimiser steps per run
    warmup_steps: int  # untimed steps first, same run
    images: int  # distinct images held (device inputs; the stream's pool)
    stream_items: int  # items per streamed epoch (the pool repeated)
    shuffle_buffer: int  # align.shuffle_buffer
    lr: float = 1e-4


WORKLOADS = {
    "gpu": Workload("ViT-B-32", 256, 4, "head", steps=20, warmup_steps=3, images=512, stream_items=8192, shuffle_buffer=4096),
    "cpu": Workload("tiny", 8, 4, "head", steps=3, warmup_steps=1, images=16, stream_items=32, shuffle_buffer=16),
}
RUNS = {"gpu": "device:bf16,device:fp32,stream:bf16,stream:fp32", "cpu": "device:fp32,stream:fp32"}
INPUTS, PRECISIONS = ("device", "stream"), ("fp32", "bf16")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(precision: str, device: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def build_tower(wl: Workload, device: str, folder: Path):
    """`f_r` through the align stage's loader: open_clip `wl.model` with random weights."""
    if wl.model == "tiny":
        from tools.paper_fixtures import save_tiny_open_clip

        save_tiny_open_clip(folder / "open_clip")
        return load_image_tower("paper", "", f"local-dir:{folder / 'open_clip'}", "", device)
    return load_image_tower("paper", "", wl.model, "", device)  # pretrained "" -> None: random init


def parse_runs(text: str) -> list[tuple[str, str]]:
    runs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        inputs, _, precision = item.partition(":")
        if inputs not in INPUTS or precision not in PRECISIONS:
            raise SystemExit(f"bad run {item!r} in --runs: use inputs:precision with inputs in {INPUTS}, precision in {PRECISIONS}")
        runs.append((inputs, precision))
    return runs


def time_run(aligned: Alignment, pool: np.ndarray, z_real: torch.Tensor, wl: Workload, inputs: str, precision: str,
             device: str) -> dict:
    """Warm-up then timed `train_alignment` steps of one (inputs, precision) setting."""
    kw = dict(batch_size=wl.batch_size, lr=wl.lr, device=device, progress=False, forward=aligned.forward)
    if inputs == "device":
        held = aligned.inputs(pool, wl.batch_size, device).to(device)  # what the in-memory sampler draws from
        z = z_real[: len(pool)]

        def run(steps, seed):
            return train_alignment(aligned.f_g, held, z, steps, seed=seed, **kw)
    else:
        n = wl.stream_items

        def epoch():
            # (row, group, payload): each item its own real image; payloads are views of the pool.
            return ((i, i, pool[i % len(pool)]) for i in range(n))

        batches = streamed_inputs(aligned, shuffled_batches(epoch, n, wl.batch_size, wl.shuffle_buffer,
                                                            torch.Generator().manual_seed(0)),
                                  z_real, 0, 1, wl.batch_size, device)

        def run(steps, seed):
            return train_alignment(aligned.f_g, None, None, steps, seed=seed, batches=batches, **kw)

    with _autocast(precision, device):
        run(wl.warmup_steps, 0)
        _sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        losses = run(wl.steps, 1)
        _sync(device)
        seconds = time.perf_counter() - start
    pairs = wl.steps * wl.batch_size
    out = {"inputs": inputs, "precision": precision, "steps": wl.steps, "pairs": pairs, "seconds": seconds,
           "pairs_per_s": pairs / seconds, "steps_per_s": wl.steps / seconds,
           "coco_5_epochs_seconds": COCO_PAIRS * COCO_EPOCHS / (pairs / seconds), "last_loss": losses[-1]}
    if device.startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(WORKLOADS), help="gpu: paper shapes (default on CUDA); cpu: tiny ViT")
    ap.add_argument("--device", help="default: cuda for --scale gpu, cpu for --scale cpu")
    ap.add_argument("--runs", help=f"comma-separated inputs:precision (gpu default {RUNS['gpu']})")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--steps", type=int, help="timed steps per run")
    ap.add_argument("--warmup-steps", type=int)
    ap.add_argument("--rank", type=int, help="LoRA rank (default 4)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (cpu default 1)")
    ap.add_argument("--out", default="stats/benchmarks/align_throughput.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    scale = args.scale or ("gpu" if torch.cuda.is_available() else "cpu")
    device = args.device or ("cuda" if scale == "gpu" else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device} but CUDA is not available: use --scale cpu")
    threads = args.threads or (1 if scale == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    overrides = {"batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup_steps, "rank": args.rank}
    wl = replace(WORKLOADS[scale], **{k: v for k, v in overrides.items() if v is not None})
    runs = parse_runs(args.runs or RUNS[scale])

    import open_clip
    import peft

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-align-") as tmp:
        tower = build_tower(wl, device, Path(tmp))
    aligned = Alignment(tower, wl.rank, wl.layers)
    trainable = sum(p.numel() for p in aligned.f_g.parameters() if p.requires_grad)
    size = int(tower.load_size or 224)  # the stage loads images at the tower's input size (224 for ViT-B-32)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (wl.images, size, size, 3), dtype=np.uint8)
    dim = aligned.embed_f_r(aligned.inputs(pool[:2], 2, device), 2, device).shape[1]
    z_real = F.normalize(torch.randn(max(wl.images, wl.stream_items), dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    build_seconds = time.perf_counter() - t0

    result = {"scale": scale, "device": device_name(device), "torch": torch.__version__, "open_clip": open_clip.__version__,
              "peft": peft.__version__,
              "settings": {**asdict(wl), "image_size": size, "embed_dim": dim, "lora_trainable_params": trainable,
                           "tower_params_m": round(sum(p.numel() for p in tower.parameters()) / 1e6, 2),
                           "build_seconds": build_seconds},
              "runs": []}
    for inputs, precision in runs:
        result["runs"].append(time_run(aligned, pool, z_real, wl, inputs, precision, device))
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"device: {result['device']}  (scale {scale}, torch {result['torch']}, open_clip {result['open_clip']}, "
          f"{wl.model} LoRA r{wl.rank}, batch {wl.batch_size}, {size} px)")
    print(f"{'inputs':<8}{'prec':<6}{'steps':>6}{'seconds':>10}{'pairs/s':>10}{'COCO 5 ep. s':>14}")
    for r in result["runs"]:
        print(f"{r['inputs']:<8}{r['precision']:<6}{r['steps']:>6}{r['seconds']:>10.2f}{r['pairs_per_s']:>10.1f}"
              f"{r['coco_5_epochs_seconds']:>14.0f}")
    write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

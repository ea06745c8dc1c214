"""Benchmark: ClipCap captioner training steps/s at paper shapes, through the caption stage's own code.

    python benchmarks/caption_throughput.py                 # --scale gpu on CUDA, cpu otherwise
    python benchmarks/caption_throughput.py --scale cpu --steps 3 --runs fp32:coco

Builds a GPT-2-size `GPT2LMHeadModel` (12 layers, 768 wide, GPT-2's 50,257-token vocabulary) from
its config with random weights (nothing is downloaded; compute does not depend on the weights),
saves it with `save_pretrained` and loads it as the paper scale does: `gmail.downstream.clipcap.
build_clipcap` with `decoder` set to that folder (`from_pretrained`), GPT-2's BPE tokenizer from
`gpt2_tokenizer`. Then times `train_clipcap` (mapping MLP + GPT-2 fine-tuning, AdamW, warm-up and
cosine, clipping, one loss `.item()` per step) at params.paper.yaml's shapes: prefix_length 10,
prefix_hidden 3840, max_length 40, batch 40, on random 512-d image embeddings (ViT-B-32's width)
with five captions each. Each of `--runs` is `precision:captions`:

  precision fp32  as the caption stage runs today (no autocast)
            bf16  under torch.autocast(bfloat16)
  captions  coco  COCO-like captions (about 12 GPT-2 tokens; each step trims to its longest)
            max   every caption cut at max_length: 10 prefix + 41 caption tokens, the largest step

A timed run includes tokenising the captions and building AdamW once (`train_clipcap` does both);
with --scale gpu's image count that is a few milliseconds. --scale cpu is a 2-layer, 32-wide
GPT-2 of the same class (what the tests run). Prints a table and writes JSON to --out (default
stats/benchmarks/caption_throughput.json).
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

import torch
import torch.nn.functional as F

from gmail.core.io import write_json
from gmail.downstream.clipcap import ClipCapConfig, build_clipcap, gpt2_tokenizer, train_clipcap

COCO_CAPTIONS = 566_435  # Karpathy train + restval captions: one ClipCap epoch (params.paper.yaml caption.steps)

CAPTIONS = [
    "a man riding a wave on top of a surfboard",
    "two dogs playing with a frisbee in a grassy park",
    "a plate of food with broccoli, rice and a fork",
    "a red double decker bus driving down a city street",
    "a kitchen with white cabinets and a stainless steel refrigerator",
    "a giraffe standing next to a tree in a zoo enclosure",
    "a person holding an umbrella on a rainy sidewalk at night",
    "an airplane flying over the mountains under a clear blue sky",
    "a cat sitting on a laptop keyboard on a wooden desk",
    "a group of people standing around a table with pizza",
    "a baseball player swinging a bat at a ball during a game",
    "a bathroom with a white toilet next to a sink and a mirror",
]
# Longer than any max_length used here: every caption is cut (train_clipcap says how many, once per run).
LONG_CAPTION = " and ".join(CAPTIONS)


@dataclass
class Workload:
    """One scale's benchmark setting."""
    n_layer: int  # the GPT-2 decoder built from its config (GPT-2 small: 12 x 768, 12 heads)
    n_embd: int
    n_head: int
    prefix_length: int  # caption.model
    prefix_hidden: int
    max_length: int
    batch_size: int  # caption.batch_size
    steps: int  # timed steps per run
    warmup_steps: int  # untimed steps first, a separate call
    images: int  # training images, five captions each
    embed_dim: int = 512  # ViT-B-32's embedding width
    lr: float = 2e-5  # caption.lr (fine-tuning GPT-2)


WORKLOADS = {
    "gpu": Workload(12, 768, 12, prefix_length=10, prefix_hidden=3840, max_length=40, batch_size=40, steps=40,
                    warmup_steps=3, images=400),
    "cpu": Workload(2, 32, 2, prefix_length=10, prefix_hidden=64, max_length=40, batch_size=4, steps=3,
                    warmup_steps=1, images=16),
}
RUNS = {"gpu": "fp32:coco,bf16:coco,fp32:max,bf16:max", "cpu": "fp32:coco,bf16:max"}
PRECISIONS, CAPTION_SETS = ("fp32", "bf16"), ("coco", "max")


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


def parse_runs(text: str) -> list[tuple[str, str]]:
    runs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        precision, _, captions = item.partition(":")
        if precision not in PRECISIONS or captions not in CAPTION_SETS:
            raise SystemExit(f"bad run {item!r} in --runs: use precision:captions with precision in {PRECISIONS}, "
                             f"captions in {CAPTION_SETS}")
        runs.append((precision, captions))
    return runs


def build_model(wl: Workload, tokenizer, folder: Path):
    """A ClipCap over a random GPT-2 of `wl`'s size, saved and loaded as paper scale loads `gpt2`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        decoder = GPT2LMHeadModel(GPT2Config(n_layer=wl.n_layer, n_embd=wl.n_embd, n_head=wl.n_head, n_positions=1024,
                                             vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos))
    decoder.save_pretrained(folder / "gpt2")
    del decoder
    config = ClipCapConfig(prefix_length=wl.prefix_length, prefix_hidden=wl.prefix_hidden, decoder=str(folder / "gpt2"),
                           n_layer=1, n_embd=64, n_head=4, max_length=wl.max_length, compact_vocab=False, dropout=0.0)
    return build_clipcap(config, wl.embed_dim, tokenizer, [], seed=0)


def caption_lists(kind: str, images: int) -> list[list[str]]:
    if kind == "max":
        return [[LONG_CAPTION] * 5 for _ in range(images)]
    return [[CAPTIONS[(i + k) % len(CAPTIONS)] for k in range(5)] for i in range(images)]


def time_run(model, embeddings, tokenizer, wl: Workload, precision: str, kind: str, device: str) -> dict:
    """A warm-up `train_clipcap` call, then a timed one, for one (precision, captions) setting."""
    captions = caption_lists(kind, len(embeddings))
    tokens = [len(row) for row in model.encode([c for caps in captions for c in caps], tokenizer)]  # + end-of-text
    kw = dict(batch_size=wl.batch_size, lr=wl.lr, device=device, progress=False)
    cast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())
    with cast:
        train_clipcap(model, embeddings, captions, tokenizer, wl.warmup_steps, seed=0, **kw)
        _sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        log = train_clipcap(model, embeddings, captions, tokenizer, wl.steps, seed=1, **kw)
        _sync(device)
        seconds = time.perf_counter() - start
    steps_per_s = log.steps_run / seconds
    out = {"precision": precision, "captions": kind, "steps": log.steps_run, "seconds": seconds, "steps_per_s": steps_per_s,
           "captions_per_s": steps_per_s * wl.batch_size, "mean_caption_tokens": sum(tokens) / len(tokens),
           "coco_epoch_seconds": COCO_CAPTIONS / (steps_per_s * wl.batch_size), "last_loss": log.losses[-1]}
    if device.startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(WORKLOADS), help="gpu: paper shapes (default on CUDA); cpu: tiny GPT-2")
    ap.add_argument("--device", help="default: cuda for --scale gpu, cpu for --scale cpu")
    ap.add_argument("--runs", help=f"comma-separated precision:captions (gpu default {RUNS['gpu']})")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--steps", type=int, help="timed steps per run")
    ap.add_argument("--warmup-steps", type=int)
    ap.add_argument("--threads", type=int, help="torch CPU threads (cpu default 1)")
    ap.add_argument("--out", default="stats/benchmarks/caption_throughput.json")
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
    overrides = {"batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup_steps}
    wl = replace(WORKLOADS[scale], **{k: v for k, v in overrides.items() if v is not None})
    runs = parse_runs(args.runs or RUNS[scale])

    import transformers

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-caption-") as tmp:
        tokenizer = gpt2_tokenizer(Path(tmp) / "tokenizer")
        model = build_model(wl, tokenizer, Path(tmp))
    params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    embeddings = F.normalize(torch.randn(wl.images, wl.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    build_seconds = time.perf_counter() - t0

    result = {"scale": scale, "device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
              "settings": {**asdict(wl), "params_m": params_m, "build_seconds": build_seconds,
                           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32},
              "runs": []}
    for precision, kind in runs:
        result["runs"].append(time_run(model, embeddings, tokenizer, wl, precision, kind, device))
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"device: {result['device']}  (scale {scale}, torch {result['torch']}, transformers {result['transformers']}, "
          f"ClipCap {params_m}M params, batch {wl.batch_size}, prefix {wl.prefix_length})")
    print(f"{'prec':<6}{'captions':<9}{'steps':>6}{'seconds':>10}{'steps/s':>9}{'tokens':>8}{'COCO epoch s':>14}")
    for r in result["runs"]:
        print(f"{r['precision']:<6}{r['captions']:<9}{r['steps']:>6}{r['seconds']:>10.2f}{r['steps_per_s']:>9.2f}"
              f"{r['mean_caption_tokens']:>8.1f}{r['coco_epoch_seconds']:>14.0f}")
    write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

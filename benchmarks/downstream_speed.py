"""Benchmark: alignment and captioner cost on this machine, with the main params.

    python benchmarks/downstream_speed.py [--steps 20]

Prints align s/step (LoRA on the mini CLIP head over cached trunk features, align.batch_size)
and ClipCap s/step (caption.batch_size) plus caption generation ms/image, on random inputs
shaped like the pipeline's. Needs the committed mini CLIP (pretrain/models/clip).
"""

import argparse
import time

import torch
import torch.nn.functional as F

from gmail.align.lora import add_lora, base_model
from gmail.align.train import train_alignment
from gmail.core.config import load_params, section
from gmail.downstream.clipcap import ClipCapConfig, build_clipcap, generate_captions, gpt2_tokenizer, train_clipcap
from gmail.models.image_tower import EncoderParams, load_tower_from_params, trunk_features


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    params = load_params("params.yaml")
    a, c = params["align"], params["caption"]
    g = torch.Generator().manual_seed(0)

    tower = load_tower_from_params(section(params["encoder"], EncoderParams, "encoder"), "cpu")
    feats = trunk_features(tower, torch.rand(a["batch_size"] * 2, 3, 32, 32, generator=g))
    z_real = F.normalize(torch.randn(len(feats), 256, generator=g), dim=-1)
    f_g = add_lora(tower, a["rank"], tower.lora_targets)
    head = base_model(f_g).head
    train_alignment(f_g, feats, z_real, 2, a["batch_size"], progress=False, forward=head)  # warm-up
    t = time.time()
    train_alignment(f_g, feats, z_real, args.steps, a["batch_size"], progress=False, forward=head)
    print(f"align: {(time.time() - t) / args.steps:.3f} s/step at batch {a['batch_size']}, rank {a['rank']}")

    import tempfile

    words = "a small medium large red green blue yellow black gray circle rectangle triangle on the left right top bottom".split()
    caps = [[" ".join(words[int(i)] for i in torch.randint(0, len(words), (10,), generator=g)) for _ in range(5)] for _ in range(512)]
    with tempfile.TemporaryDirectory() as tmp:
        tok = gpt2_tokenizer(tmp)
        model = build_clipcap(section(c["model"], ClipCapConfig, "caption.model"), 256, tok, [x for cs in caps for x in cs])
        emb = F.normalize(torch.randn(len(caps), 256, generator=g), dim=-1)
        train_clipcap(model, emb, caps, tok, 2, c["batch_size"], progress=False)
        t = time.time()
        train_clipcap(model, emb, caps, tok, args.steps, c["batch_size"], progress=False)
        step = (time.time() - t) / args.steps
        t = time.time()
        generate_captions(model, emb, tok)
        gen_ms = (time.time() - t) / len(emb) * 1000
    print(f"captioner: {step:.3f} s/step at batch {c['batch_size']}; generation {gen_ms:.2f} ms/image")


if __name__ == "__main__":
    main()

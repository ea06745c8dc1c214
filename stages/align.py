"""Stage `align@<source>`: GMAIL alignment of a LoRA copy f_g of f_r's image tower (Eq. 1).

Pairs are (B image from `source`, real B image with the same caption); `source` is
`generated` (the method) or `noise` (a control: uniform-noise images in place of generated
ones). The last `align.heldout` pairs are held out of alignment, so cosine before/after on
them tells alignment apart from a per-pair lookup. Writes the adapter, the embeddings of the
source images through f_r and f_g and of the real T images through f_g, metrics and a t-SNE
plot.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from gmail import alignment
from gmail.cli import offline, run, stage_parser
from gmail.clip import images_to_tensor
from gmail.config import get_seed, load_params, pick_device, section, set_seed
from gmail.encoders import (EncoderParams, head_embeddings, load_tower_from_params, read_embeddings, trunk_features,
                            write_embeddings)
from gmail.errors import PipelineError
from gmail.io import atomic_dir, atomic_file, write_json
from gmail.records import load_split_images, read_split

SOURCES = ("generated", "noise")


@dataclass
class AlignParams:
    rank: Union[int, str] = 4
    layers: str = "head"
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    tau: float = 0.07
    restart_steps: int = 150
    heldout: int = 300
    noise_size: int = 32
    captions: str = "data/captions"
    generated: str = "data/generated"
    real_embeddings: str = "data/embeddings/real"
    embeddings: str = "data/embeddings"
    out: str = "data/align"

    def validate(self, name):
        self.rank = alignment.parse_rank(self.rank)
        if self.layers not in ("head", "all"):
            raise PipelineError(f"{name}.layers={self.layers!r} is not one of head, all: fix params.yaml")
        if self.steps < 0 or self.batch_size < 1 or self.restart_steps < 1 or self.heldout < 0 or self.tau <= 0 or self.noise_size < 1:
            raise PipelineError(f"{name}: steps must be >= 0 (0 = alignment off), batch_size, restart_steps and "
                                "noise_size positive, heldout >= 0 and tau > 0: fix params.yaml")


def pairs(p: AlignParams, source: str, seed: int):
    """Real B records and the source's images in the same order; any mismatch is an error."""
    real = read_split(Path(p.captions) / "B.jsonl")
    if p.heldout >= len(real):
        raise PipelineError(f"align.heldout={p.heldout} leaves no pairs to align out of {len(real)}: lower it")
    if source == "noise":
        return real, alignment.noise_images(len(real), p.noise_size, seed)
    gen = read_split(Path(p.generated) / "generated.jsonl")
    if len(real) != len(gen) or [r["image_id"] for r in real] != [g["image_id"] for g in gen]:
        raise PipelineError(f"{len(gen)} generated images do not pair with {len(real)} real B images by id: rerun `dvc repro generate`")
    return real, None


def tsne_plot(z_real, z_gen_before, z_gen_after, path, seed, max_points: int = 600):
    """Paper Figure 3: t-SNE of real (f_r) and generated embeddings, before and after alignment.

    At most `max_points` pairs (a fixed random subset) are drawn: t-SNE's cost grows
    quadratically and 600 pairs show the picture as well as all of them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    if len(z_real) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(z_real), max_points, replace=False))
        z_real, z_gen_before, z_gen_after = z_real[keep], z_gen_before[keep], z_gen_after[keep]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, z_gen, title in ((axes[0], z_gen_before, "before (f_r on generated)"), (axes[1], z_gen_after, "after (f_g on generated)")):
        pts = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(z_real) - 1)).fit_transform(
            np.concatenate([z_real, z_gen]))
        ax.scatter(*pts[: len(z_real)].T, s=5, label="real (f_r)")
        ax.scatter(*pts[len(z_real):].T, s=5, label="generated")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--source", default="generated", help="images aligned to real B: generated | noise")
    parser.add_argument("--metrics", default="metrics/align.json", help="metrics JSON to write")
    parser.add_argument("--plot", default="", help="t-SNE plot PNG to write (empty: none)")
    args = parser.parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    if args.source not in SOURCES:
        raise PipelineError(f"unknown alignment source {args.source!r}: use one of {', '.join(SOURCES)}")
    enc = section(params.get("encoder", {}), EncoderParams, "encoder")
    p = section(params.get("align", {}), AlignParams, "align")
    device = pick_device(enc.device)

    # 1. Pairs; f_r's embeddings of real B (stage embed) and of the source images.
    real, noise = pairs(p, args.source, seed)
    ids = [r["image_id"] for r in real]
    test = read_split(Path(p.captions) / "T.jsonl")
    t_ids = [r["image_id"] for r in test]
    z_real = read_embeddings(p.real_embeddings, "B.f_r", ids)
    tower = load_tower_from_params(enc, device)
    if noise is None:
        images = load_split_images(read_split(Path(p.generated) / "generated.jsonl"), tower.load_size)
    else:
        images = noise
    # layers "head": LoRA only after the frozen trunk, whose features are computed once;
    # layers "all": LoRA in every block, so the inputs are the images themselves.
    cached = p.layers == "head"
    inputs = trunk_features(tower, images_to_tensor(images), enc.batch_size, device) if cached else images_to_tensor(images)
    z_before = head_embeddings(tower.head if cached else tower, inputs, enc.batch_size, device)
    n_align = len(real) - p.heldout
    parts = {"aligned": slice(0, n_align), "heldout": slice(n_align, len(real))}

    # 2. Alignment on the aligned part only.
    f_g = alignment.add_lora(tower, p.rank, tower.lora_targets if cached else tower.lora_targets_all)
    # With rank "full" every weight is trainable; with a cached trunk only the head's get gradients.
    forward = alignment.base_model(f_g).head if cached else alignment.base_model(f_g)
    losses = alignment.train_alignment(
        f_g, inputs[:n_align], z_real[:n_align], p.steps, p.batch_size, p.lr, p.weight_decay, p.tau,
        p.restart_steps, seed=seed, device=device, forward=forward) if p.steps else []
    z_after = head_embeddings(forward, inputs, enc.batch_size, device)
    t_images = images_to_tensor(load_split_images(test, tower.load_size))
    t_inputs = trunk_features(tower, t_images, enc.batch_size, device) if cached else t_images
    z_t = head_embeddings(forward, t_inputs, enc.batch_size, device)

    # 3. Outputs: adapter (or full weights), embeddings, metrics, t-SNE plot.
    metrics = {"source": args.source, "rank": str(p.rank), "layers": p.layers, "steps": p.steps, "pairs_aligned": n_align,
               "pairs_heldout": p.heldout, "cos_before": {}, "cos_after": {},
               "final_loss": float(np.mean(losses[-20:])) if losses else None}
    for name, sl in parts.items():
        if sl.stop > sl.start:
            metrics["cos_before"][name] = alignment.paired_cosine(z_before[sl], z_real[sl])
            metrics["cos_after"][name] = alignment.paired_cosine(z_after[sl], z_real[sl])
    with atomic_dir(Path(p.out) / args.source) as tmp:
        if p.rank == "full":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in f_g.state_dict().items()}, str(tmp / "f_g.safetensors"))
        else:
            f_g.save_pretrained(str(tmp / "adapter"))
    with atomic_dir(Path(p.embeddings) / args.source) as tmp:
        write_embeddings(tmp, {"B.f_r": z_before, "B.f_g": z_after, "T.f_g": z_t}, {"B": ids, "T": t_ids})
    write_json(args.metrics, metrics)
    if args.plot:
        tsne_plot(z_real.numpy(), z_before.numpy(), z_after.numpy(), args.plot, seed)
    print(f"{args.source}: paired cosine before -> after: " + ", ".join(
        f"{k} {metrics['cos_before'][k]:.3f} -> {metrics['cos_after'][k]:.3f}" for k in metrics["cos_before"]))


if __name__ == "__main__":
    sys.exit(run(main))

"""Stage `align`: GMAIL alignment of a LoRA copy f_g of the mini CLIP image tower (Eq. 1).

Pairs are (generated B image, real B image with the same caption). The last `align.heldout`
pairs are held out of alignment, so cosine before/after on them tells alignment apart from a
per-pair lookup.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch

from gmail import alignment
from gmail.cli import offline, run, stage_parser
from gmail.clip import encode_images, images_to_tensor, load_mini_clip
from gmail.config import get_seed, load_params, pick_device, section, set_seed
from gmail.errors import PipelineError
from gmail.io import atomic_dir, atomic_file, write_json
from gmail.records import load_split_images, read_split


@dataclass
class AlignParams:
    rank: Union[int, str] = 4
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    tau: float = 0.07
    restart_steps: int = 100
    heldout: int = 300
    clip: str = "pretrain/models/clip"
    captions: str = "data/captions"
    generated: str = "data/generated"
    device: str = "auto"
    out: str = "data/align"

    def validate(self, name):
        self.rank = alignment.parse_rank(self.rank)
        if self.steps < 1 or self.batch_size < 1 or self.heldout < 0 or self.tau <= 0:
            raise PipelineError(f"{name}.steps/batch_size must be positive, heldout >= 0 and tau > 0: fix params.yaml")


def pairs(p: AlignParams):
    """Real B and generated records matched by image id; any mismatch is an error."""
    real = read_split(Path(p.captions) / "B.jsonl")
    gen = read_split(Path(p.generated) / "generated.jsonl")
    if len(real) != len(gen) or [r["image_id"] for r in real] != [g["image_id"] for g in gen]:
        raise PipelineError(f"{len(gen)} generated images do not pair with {len(real)} real B images by id: rerun `dvc repro generate`")
    if p.heldout >= len(real):
        raise PipelineError(f"align.heldout={p.heldout} leaves no pairs to align out of {len(real)}: lower it")
    return real, gen


def tsne_plot(z_real, z_gen_before, z_gen_after, path, seed):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

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
    args = stage_parser(__doc__).parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("align", {}), AlignParams, "align")
    device = pick_device(p.device)

    # 1. Pairs, images, frozen f_r embeddings of the real images.
    real, gen = pairs(p)
    f_r = load_mini_clip(p.clip, device).visual
    for q in f_r.parameters():
        q.requires_grad_(False)
    real_img, gen_img = load_split_images(real), load_split_images(gen)
    z_real = encode_images(f_r, real_img, device=device)
    n_align = len(real) - p.heldout
    parts = {"aligned": slice(0, n_align), "heldout": slice(n_align, len(real))}

    # 2. Alignment on the aligned part only.
    z_before = encode_images(f_r, gen_img, device=device)
    f_g = alignment.add_lora(f_r, p.rank)
    losses = alignment.train_alignment(
        f_g, images_to_tensor(gen_img[:n_align]), z_real[:n_align], p.steps, p.batch_size, p.lr,
        p.weight_decay, p.tau, p.restart_steps, seed=seed, device=device)
    z_after = encode_images(f_g, gen_img, device=device)

    # 3. Outputs: adapter (or full weights), metrics, t-SNE plot.
    metrics = {"cos_before": {}, "cos_after": {}, "rank": str(p.rank), "final_loss": float(np.mean(losses[-20:]))}
    for name, sl in parts.items():
        if sl.stop > sl.start:
            metrics["cos_before"][name] = alignment.paired_cosine(z_before[sl], z_real[sl])
            metrics["cos_after"][name] = alignment.paired_cosine(z_after[sl], z_real[sl])
    with atomic_dir(p.out) as tmp:
        if p.rank == "full":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in f_g.state_dict().items()}, str(tmp / "f_g.safetensors"))
        else:
            f_g.save_pretrained(str(tmp / "adapter"))
    write_json("metrics/align.json", metrics)
    tsne_plot(z_real.numpy(), z_before.numpy(), z_after.numpy(), "plots/align_tsne.png", seed)
    print("paired cosine before -> after: " + ", ".join(
        f"{k} {metrics['cos_before'][k]:.3f} -> {metrics['cos_after'][k]:.3f}" for k in metrics["cos_before"]))


if __name__ == "__main__":
    sys.exit(run(main))

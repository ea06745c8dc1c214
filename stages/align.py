"""Stage `align@<source>`: GMAIL alignment of a LoRA copy f_g of f_r's image tower (Eq. 1).

Pairs are (B image from `source`, real B image with the same caption); `source` is
`generated` (the method) or `noise` (a control: uniform-noise images in place of generated
ones). The last `align.heldout` pairs are held out of alignment, so cosine before/after on
them tells alignment apart from a per-pair lookup. Writes f_g, the embeddings of the source
images through f_r and f_g and of the real T images through f_g, metrics, the loss curve and
a t-SNE plot.
"""

from __future__ import annotations

import sys

import numpy as np

from gmail.align.lora import save_f_g
from gmail.align.loss import paired_cosine
from gmail.align.noise_control import noise_images
from gmail.align.params import AlignParams
from gmail.align.train import Alignment, train_alignment
from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json
from gmail.data.records import check_pairs, load_split_images, read_split
from gmail.models.embeddings import read_embeddings, write_embeddings
from gmail.models.image_tower import EncoderParams, load_tower_from_params
from gmail.viz.curves import write_loss_curve
from gmail.viz.tsne import tsne_plot

SOURCES = ("generated", "noise")


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--source", required=True, help="images aligned to real B: generated | noise")
    args = parser.parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    if args.source not in SOURCES:
        raise PipelineError(f"unknown alignment source {args.source!r}: use one of {', '.join(SOURCES)}")
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    p = section(params.get("align"), AlignParams, "align")
    paths = get_paths(params, "captions", "generated", "embeddings", "align", "metrics", "plots")
    device = pick_device(enc.device)

    # 1. Pairs: real B (f_r embeddings from stage embed) and the source images in the same order.
    real, test = read_split(paths.captions / "B.jsonl"), read_split(paths.captions / "T.jsonl")
    if p.heldout >= len(real):
        raise PipelineError(f"align.heldout={p.heldout} leaves no pairs to align out of {len(real)}: lower it")
    ids, t_ids = [r["image_id"] for r in real], [r["image_id"] for r in test]
    z_real = read_embeddings(paths.embeddings / "real", "B.f_r", ids)
    tower = load_tower_from_params(enc, device)
    if args.source == "noise":
        images = noise_images(len(real), p.noise_size, seed)
    else:
        images = load_split_images(check_pairs(real, read_split(paths.generated / "generated.jsonl")), tower.load_size)
    n_align = len(real) - p.heldout

    # 2. Alignment on the first n_align pairs only; f_r and f_g views of every source image and f_g's of real T.
    aligned = Alignment(tower, p.rank, p.layers)
    inputs = aligned.inputs(images, enc.batch_size, device)
    z_before = aligned.embed_f_r(inputs, enc.batch_size, device)
    losses = train_alignment(aligned.f_g, inputs[:n_align], z_real[:n_align], p.steps, p.batch_size, p.lr, p.weight_decay,
                             p.tau, p.restart_steps, seed=seed, device=device, forward=aligned.forward) if p.steps else []
    z_after = aligned.embed_f_g(inputs, enc.batch_size, device)
    z_t = aligned.embed_f_g(aligned.inputs(load_split_images(test, tower.load_size), enc.batch_size, device),
                            enc.batch_size, device)

    # 3. Outputs: f_g, embeddings, metrics, loss curve, t-SNE.
    metrics = {"source": args.source, "rank": str(p.rank), "layers": p.layers, "steps": p.steps, "pairs_aligned": n_align,
               "pairs_heldout": p.heldout, "cos_before": {}, "cos_after": {},
               "final_loss": float(np.mean(losses[-20:])) if losses else None}
    for name, part in {"aligned": slice(0, n_align), "heldout": slice(n_align, len(real))}.items():
        if part.stop > part.start:
            metrics["cos_before"][name] = paired_cosine(z_before[part], z_real[part])
            metrics["cos_after"][name] = paired_cosine(z_after[part], z_real[part])
    with atomic_dir(paths.align / args.source) as tmp:
        save_f_g(aligned.f_g, tmp)
    with atomic_dir(paths.embeddings / args.source) as tmp:
        write_embeddings(tmp, {"B.f_r": z_before, "B.f_g": z_after, "T.f_g": z_t}, {"B": ids, "T": t_ids})
    write_json(paths.metrics / "align" / f"{args.source}.json", metrics)
    write_loss_curve(paths.plots / "align" / f"loss-{args.source}.tsv", losses)
    tsne_plot(z_real.numpy(), z_before.numpy(), z_after.numpy(), paths.plots / "align" / f"tsne-{args.source}.png", seed)
    print(f"{args.source}: paired cosine before -> after: " + ", ".join(
        f"{k} {metrics['cos_before'][k]:.3f} -> {metrics['cos_after'][k]:.3f}" for k in metrics["cos_before"]))


if __name__ == "__main__":
    sys.exit(run(main))

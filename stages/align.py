"""Stage `align@<source>`: GMAIL alignment of a LoRA copy f_g of f_r's image tower (Eq. 1).

Pairs are (image from `source`, the real B image whose caption it was made from); `source`
is `generated` (the method: `gen.per_real` images per real one, streamed from stage
generate's shards) or `noise` (a control: one uniform-noise image per real one). Pairs of the
last `align.heldout` real images are held out of alignment, so cosine before/after on them
tells alignment apart from a per-pair lookup. Writes f_g, the embeddings of the source
images through f_r and f_g and of the real T images through f_g, metrics, the loss curve and
a t-SNE plot.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from accelerate import PartialState

from gmail.align.lora import save_f_g
from gmail.align.loss import paired_cosine
from gmail.align.noise_control import noise_images
from gmail.align.params import AlignParams
from gmail.align.train import Alignment, train_alignment
from gmail.core.cli import offline, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json
from gmail.core.launch import launch
from gmail.data.records import read_split
from gmail.data.shards import batched, list_shards, read_shards
from gmail.models.embeddings import Rows, read_embeddings, set_folder, write_embeddings
from gmail.models.image_tower import EncoderParams, load_tower_from_params
from gmail.models.streaming import check_shard_order, read_manifest, record_batches
from gmail.viz.curves import write_loss_curve
from gmail.viz.tsne import tsne_plot

SOURCES = ("generated", "noise")


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_stage_key("--source", help="images aligned to real B: generated | noise")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    if args.source not in SOURCES:
        raise PipelineError(f"unknown alignment source {args.source!r}: use one of {', '.join(SOURCES)}")
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    offline(enc.scale)  # mini: never the network; paper: as the environment says
    p = section(params.get("align"), AlignParams, "align")
    paths = get_paths(params, "captions", "generated", "embeddings", "align", "metrics", "plots")
    device = pick_device(enc.device)
    # One process per GPU under `accelerate launch` (params `launcher`); a plain run is a world of one.
    state = PartialState(cpu=device == "cpu")
    if state.device.type == "cuda":
        device = str(state.device)

    # 1. Pairs: real B (f_r embeddings from stage embed) and the source images: noise, one per
    # real image, or the generated images streamed from their shards, several per real image.
    real, test = read_split(paths.captions / "B.jsonl"), read_split(paths.captions / "T.jsonl")
    if p.heldout >= len(real):
        raise PipelineError(f"align.heldout={p.heldout} leaves no pairs to align out of {len(real)}: lower it")
    ids, t_ids = [r["image_id"] for r in real], [r["image_id"] for r in test]
    z_real = read_embeddings(paths.embeddings / "real", "B.f_r", ids)
    tower = load_tower_from_params(enc, device)
    aligned = Alignment(tower, p.rank, p.layers)
    if args.source == "noise":
        noise = noise_images(len(real), p.noise_size, seed)
        inputs = aligned.inputs_from(noise[i:i + enc.batch_size] for i in range(0, len(noise), enc.batch_size))
        rows = Rows(ids, list(range(len(real))), [r["captions"] for r in real])
    else:
        inputs, rows = generated_inputs(aligned, paths.generated, real, enc.batch_size, device)
    src = torch.tensor(rows.sources)
    n_align = len(real) - p.heldout
    train_rows = torch.nonzero(src < n_align).squeeze(1)

    # 2. Alignment on the rows of the first n_align real images only (DDP when launched on several
    # processes); f_r and f_g views of every source image and f_g's of real T.
    z_before = aligned.embed_f_r(inputs, enc.batch_size, device)
    forward = state_forward(aligned, state)
    losses = train_alignment(aligned.f_g, inputs[train_rows], z_real[src[train_rows]], p.steps, p.batch_size, p.lr,
                             p.weight_decay, p.tau, p.restart_steps, seed=seed, device=device, forward=forward,
                             groups=src[train_rows], rank=state.process_index, world=state.num_processes) if p.steps else []
    if not state.is_main_process:
        return
    z_after = aligned.embed_f_g(inputs, enc.batch_size, device)
    z_t = aligned.embed_f_g(aligned.inputs_from(record_batches(test, enc.batch_size, tower.load_size)), enc.batch_size, device)

    # 3. Outputs: f_g, embeddings, metrics, loss curve, t-SNE.
    metrics = {"source": args.source, "rank": str(p.rank), "layers": p.layers, "steps": p.steps,
               "pairs_aligned": len(train_rows), "pairs_heldout": len(src) - len(train_rows),
               "real_aligned": n_align, "real_heldout": p.heldout, "cos_before": {}, "cos_after": {},
               "final_loss": float(np.mean(losses[-20:])) if losses else None}
    z_pair = z_real[src]
    for name, part in {"aligned": src < n_align, "heldout": src >= n_align}.items():
        if part.any():
            metrics["cos_before"][name] = paired_cosine(z_before[part], z_pair[part])
            metrics["cos_after"][name] = paired_cosine(z_after[part], z_pair[part])
    with atomic_dir(paths.align / args.source) as tmp:
        save_f_g(aligned.f_g, tmp)
    arrays = {"B.f_g": z_after, "T.f_g": z_t}
    index = {"B": rows.ids, "T": t_ids}
    if args.source == "noise":
        arrays["B.f_r"] = z_before  # generated images' f_r comes from stage embed (generated/f_r/)
    else:
        index.update(B_source=[ids[i] for i in rows.sources], B_caption=[c[0] for c in rows.captions])
    with atomic_dir(paths.embeddings / set_folder(args.source, "f_g")) as tmp:
        write_embeddings(tmp, arrays, index)
    write_json(paths.metrics / "align" / f"{args.source}.json", metrics)
    write_loss_curve(paths.plots / "align" / f"loss-{args.source}.tsv", losses)
    tsne_plot(z_pair.numpy(), z_before.numpy(), z_after.numpy(), paths.plots / "align" / f"tsne-{args.source}.png", seed)
    print(f"{args.source}: paired cosine before -> after: " + ", ".join(
        f"{k} {metrics['cos_before'][k]:.3f} -> {metrics['cos_after'][k]:.3f}" for k in metrics["cos_before"]))


def generated_inputs(aligned: Alignment, generated_dir, real: list[dict], batch_size: int, device: str):
    """(inputs, rows) of the generated images, streamed from stage generate's shards in manifest order."""
    pos = {r["image_id"]: i for i, r in enumerate(real)}
    manifest = read_manifest(generated_dir, pos)
    metas = []

    def batches():
        for batch_metas, images in batched(read_shards(list_shards(generated_dir / "shards"), aligned.tower.load_size),
                                           batch_size):
            metas.extend(batch_metas)
            yield images

    inputs = aligned.inputs_from(batches(), batch_size, device)
    check_shard_order(metas, manifest, generated_dir)
    return inputs, Rows([m["id"] for m in metas], [pos[m["source_id"]] for m in metas], [[m["caption"]] for m in metas])


def state_forward(aligned: Alignment, state):
    """The trainable forward pass, wrapped in DistributedDataParallel when several processes run."""
    if state.num_processes == 1:
        return aligned.forward
    from accelerate import Accelerator

    return Accelerator(cpu=state.device.type == "cpu").prepare_model(aligned.forward_module)


if __name__ == "__main__":
    sys.exit(launch(main, "stages.align"))  # params `launcher`: one process, or one per GPU

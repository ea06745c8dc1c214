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
from gmail.align.noise_control import noise_batches, noise_image
from gmail.align.params import AlignParams
from gmail.align.train import Alignment, shuffled_batches, streamed_inputs, train_alignment
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
    n_align = len(real) - p.heldout
    if p.streams(on_images=not aligned.cached or enc.scale == "paper"):
        # Streaming: the images are read again for each pass (f_r before, training epochs, f_g
        # after) and never held; memory is the shuffle buffer plus one batch.
        source = ImageSource(args.source, paths.generated, real, p.noise_size, seed, tower.load_size)
        z_before, rows = source.embed(aligned.embed_f_r, aligned, enc.batch_size, device, check=True)
        src = torch.tensor(rows.sources)
        train_rows = torch.nonzero(src < n_align).squeeze(1)
        batches = streamed_inputs(aligned, shuffled_batches(lambda: source.items(n_align), len(train_rows), p.batch_size,
                                                            p.shuffle_buffer, torch.Generator().manual_seed(seed)),
                                  z_real, state.process_index, state.num_processes, enc.batch_size, device)
        inputs = None
    else:
        # In memory (mini `layers: head`): the trunk features of every image, ~3 KB each.
        if args.source == "noise":
            inputs = aligned.inputs_from(noise_batches(len(real), p.noise_size, seed, enc.batch_size))
            rows = Rows(ids, list(range(len(real))), [r["captions"] for r in real])
        else:
            inputs, rows = generated_inputs(aligned, paths.generated, real, enc.batch_size, device)
        src = torch.tensor(rows.sources)
        train_rows = torch.nonzero(src < n_align).squeeze(1)
        z_before, batches = aligned.embed_f_r(inputs, enc.batch_size, device), None

    # 2. Alignment on the rows of the first n_align real images only (DDP when launched on several
    # processes); f_r and f_g views of every source image and f_g's of real T.
    forward = state_forward(aligned, state)
    losses = train_alignment(aligned.f_g, inputs[train_rows] if batches is None else None,
                             z_real[src[train_rows]] if batches is None else None, p.steps, p.batch_size, p.lr,
                             p.weight_decay, p.tau, p.restart_steps, seed=seed, device=device, forward=forward,
                             groups=src[train_rows], rank=state.process_index, world=state.num_processes,
                             batches=batches) if p.steps else []
    if not state.is_main_process:
        return
    if inputs is None:
        z_after = source.embed(aligned.embed_f_g, aligned, enc.batch_size, device)[0]
    else:
        z_after = aligned.embed_f_g(inputs, enc.batch_size, device)
    del inputs
    z_t = embed_stream(aligned.embed_f_g, aligned, record_batches(test, enc.batch_size, tower.load_size),
                       enc.batch_size, device)

    # 3. Outputs: f_g, embeddings, metrics, loss curve, t-SNE.
    metrics = {"source": args.source, "scale": enc.scale, "rank": str(p.rank), "layers": p.layers, "steps": p.steps,
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


class ImageSource:
    """The images aligned to real B, read afresh for every pass so that none is held: stage
    generate's shards in manifest order, or the noise control's images (one per real image)."""

    def __init__(self, source: str, generated_dir, real: list[dict], noise_size: int, seed: int, load_size):
        self.source, self.generated_dir, self.real = source, generated_dir, real
        self.noise_size, self.seed, self.load_size = noise_size, seed, load_size
        self.pos = {r["image_id"]: i for i, r in enumerate(real)}
        self.manifest = read_manifest(generated_dir, self.pos) if source == "generated" else None

    def _stream(self, n: int | None = None):
        """(metadata, uint8 image) of every source image (noise: the first `n`), in row order."""
        if self.source == "noise":
            for i in range(len(self.real) if n is None else n):
                yield {"source": i}, noise_image(i, self.noise_size, self.seed)
        else:
            yield from read_shards(list_shards(self.generated_dir / "shards"), self.load_size)

    def items(self, n_align: int):
        """(row, real image index, uint8 image) of the rows paired with the first `n_align` real images."""
        for row, (meta, image) in enumerate(self._stream(n_align)):
            group = meta["source"] if self.source == "noise" else self.pos[meta["source_id"]]
            if group < n_align:
                yield row, group, image

    def embed(self, embed, aligned: Alignment, batch_size: int, device: str, check: bool = False):
        """(embeddings `embed` of every source image, a batch at a time; its Rows). With
        `check`, the shards must hold the manifest's items in order."""
        metas = []

        def batches():
            for batch_metas, images in batched(self._stream(), batch_size):
                metas.extend(batch_metas)
                yield images

        z = embed_stream(embed, aligned, batches(), batch_size, device)
        if self.source == "noise":
            return z, Rows([r["image_id"] for r in self.real], list(range(len(self.real))), [r["captions"] for r in self.real])
        if check:
            check_shard_order(metas, self.manifest, self.generated_dir)
        return z, Rows([m["id"] for m in metas], [self.pos[m["source_id"]] for m in metas], [[m["caption"]] for m in metas])


def embed_stream(embed, aligned: Alignment, batches, batch_size: int, device: str) -> torch.Tensor:
    """`embed` (aligned.embed_f_r or embed_f_g) of a stream of uint8 batches; only embeddings are kept."""
    return torch.cat([embed(aligned.inputs(images, batch_size, device), batch_size, device) for images in batches])


def state_forward(aligned: Alignment, state):
    """The trainable forward pass, wrapped in DistributedDataParallel when several processes run."""
    if state.num_processes == 1:
        return aligned.forward
    from accelerate import Accelerator

    return Accelerator(cpu=state.device.type == "cpu").prepare_model(aligned.forward_module)


if __name__ == "__main__":
    sys.exit(launch(main, "stages.align"))  # params `launcher`: one process, or one per GPU

"""Stage `embed`: the frozen encoder f_r's embeddings of the real and the generated images.

Writes `<embeddings>/real/B.f_r.npy` (real B: alignment targets and the `real` captioner's
training set), `<embeddings>/real/T.f_r.npy` (real T: what every captioner is tested on) and
`<embeddings>/generated/f_r/B.f_r/shard-<k>.npy` (generated images, one file per shard of
stage generate: the `synthetic` variants' training set), each folder with its `ids.json`.
Images stream through in batches, so memory holds one batch of pixels, not the data set.
"""

from __future__ import annotations

import sys

import numpy as np

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.io import atomic_dir, write_json
from gmail.data.records import read_split
from gmail.data.shards import list_shards
from gmail.models.embeddings import write_embeddings
from gmail.models.image_tower import EncoderParams, load_tower_from_params
from gmail.models.streaming import check_shard_order, embed_records, embed_shard, read_manifest


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    set_seed(get_seed(params))
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    offline(enc.scale)  # mini: never the network; paper: as the environment says
    paths = get_paths(params, "captions", "generated", "embeddings")
    device = pick_device(enc.device)
    tower = load_tower_from_params(enc, device)

    # 1. Real B and T, read in batches.
    arrays, ids, records = {}, {}, {}
    for split in ("B", "T"):
        records[split] = read_split(paths.captions / f"{split}.jsonl")
        arrays[f"{split}.f_r"] = embed_records(tower, records[split], enc.batch_size, device, desc=f"embed real {split}")
        ids[split] = [r["image_id"] for r in records[split]]

    # 2. Generated images, shard by shard, each shard's embeddings written as soon as they exist.
    manifest = read_manifest(paths.generated, ids["B"])
    shards = list_shards(paths.generated / "shards")
    with atomic_dir(paths.embeddings / "generated/f_r") as tmp:
        (tmp / "B.f_r").mkdir()
        rows = []
        for shard in shards:
            z, metas = embed_shard(tower, shard, enc.batch_size, device)
            np.save(tmp / "B.f_r" / f"{shard.stem}.npy", z.numpy().astype(np.float32))
            rows.extend(metas)
        check_shard_order(rows, manifest, paths.generated)
        write_json(tmp / "ids.json", {"scale": enc.scale, "B": [m["id"] for m in rows], "B_source": [m["source_id"] for m in rows],
                                      "B_caption": [m["caption"] for m in rows]})
    with atomic_dir(paths.embeddings / "real") as tmp:
        write_embeddings(tmp, arrays, {"scale": enc.scale, **ids})
    print(f"f_r embeddings: B {tuple(arrays['B.f_r'].shape)}, T {tuple(arrays['T.f_r'].shape)} -> {paths.embeddings / 'real'}; "
          f"{len(rows)} generated images in {len(shards)} shards -> {paths.embeddings / 'generated/f_r'}")


if __name__ == "__main__":
    sys.exit(run(main))

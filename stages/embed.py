"""Stage `embed`: the frozen encoder f_r's embeddings of the real images, computed once.

Writes `<embeddings>/real/B.f_r.npy` (real B: alignment targets and the `real` captioner's
training set) and `<embeddings>/real/T.f_r.npy` (real T: what every captioner is tested on),
plus `ids.json`.
"""

from __future__ import annotations

import sys

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.io import atomic_dir
from gmail.data.records import load_split_images, read_split
from gmail.models.embeddings import write_embeddings
from gmail.models.image_tower import EncoderParams, head_embeddings, images_to_tensor, load_tower_from_params, trunk_features


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    offline()
    params = load_params(args.params)
    set_seed(get_seed(params))
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    paths = get_paths(params, "captions", "embeddings")
    device = pick_device(enc.device)

    tower = load_tower_from_params(enc, device)
    arrays, ids = {}, {}
    for split in ("B", "T"):
        records = read_split(paths.captions / f"{split}.jsonl")
        feats = trunk_features(tower, images_to_tensor(load_split_images(records, tower.load_size)), enc.batch_size, device)
        arrays[f"{split}.f_r"] = head_embeddings(tower.head, feats, enc.batch_size, device)
        ids[split] = [r["image_id"] for r in records]
    with atomic_dir(paths.embeddings / "real") as tmp:
        write_embeddings(tmp, arrays, ids)
    print(f"f_r embeddings: B {tuple(arrays['B.f_r'].shape)}, T {tuple(arrays['T.f_r'].shape)} -> {paths.embeddings / 'real'}")


if __name__ == "__main__":
    sys.exit(run(main))

"""Utility (not a DVC stage): embed your own images with f_r or with an aligned f_g.

    python -m stages.encode --images DIR [--adapter data/align/generated] --out emb.npy

Every image file in DIR (sorted by name), or every image of the webdataset shards in DIR
(stage generate's `shards/`, in shard order, named by item id), goes through the encoder of params.yaml `encoder`,
plus the LoRA adapter (or full weights) that `align` saved in --adapter, if given. Writes
L2-normalised float32 embeddings, one row per image, and `<out>.json` with the file names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from gmail.align.lora import load_f_g
from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import load_params, pick_device, section
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_file, load_images_uint8
from gmail.data.shards import list_shards, read_shards
from gmail.models.image_tower import EncoderParams, encode_images, load_tower_from_params

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--images", required=True, help="folder of image files")
    parser.add_argument("--adapter", default="", help="an align output folder (holds adapter/ or f_g.safetensors); empty: f_r")
    parser.add_argument("--out", required=True, help="output .npy file")
    args = parser.parse_args(argv)
    enc = section(load_params(args.params).get("encoder"), EncoderParams, "encoder")
    offline(enc.scale)  # mini: never the network; paper: as the environment says
    files = sorted(f for f in Path(args.images).glob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if Path(args.images).is_dir() else []
    shards = list_shards(args.images) if Path(args.images).is_dir() else []
    if not files and not shards:
        raise PipelineError(f"no image files or shards in {args.images}: pass --images a folder of .png/.jpg files or of "
                            "stage generate's shard-*.tar")
    device = pick_device(enc.device)
    tower = load_tower_from_params(enc, device)
    encoder = load_f_g(tower, args.adapter) if args.adapter else tower
    if shards:  # generated images: streamed shard by shard, rows named by item id
        metas, images = zip(*read_shards(shards, tower.load_size))
        names, z = [m["id"] for m in metas], encode_images(encoder, np.stack(images), enc.batch_size, device)
    else:
        names, z = [f.name for f in files], encode_files(tower, encoder, files, enc.batch_size, device)
    with atomic_file(args.out, "wb") as fh:
        np.save(fh, z.numpy().astype(np.float32))
    with atomic_file(f"{args.out}.json") as fh:
        json.dump(names, fh, indent=1)
    print(f"{len(names)} images -> {args.out} ({'f_g from ' + args.adapter if args.adapter else 'f_r'})")


def encode_files(tower, encoder, files, batch_size, device):
    # Images must share a size to stack: mixed sizes are resized to the encoder's input size
    # (the mini CLIP resizes same-size images itself, exactly as in the pipeline).
    from PIL import Image

    sizes = set()
    for f in files:
        with Image.open(f) as im:
            sizes.add(im.size)
    size = tower.load_size or (None if len(sizes) == 1 else tower.config.image_size)
    return encode_images(encoder, load_images_uint8(files, size), batch_size, device)


if __name__ == "__main__":
    sys.exit(run(main))

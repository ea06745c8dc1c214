"""Stage `caption@<variant>`: train ClipCap captioners on one variant's image embeddings
(several seeds) and caption the real test images T.

A variant (params.yaml `variants`) names its training embeddings: which B images (`real`,
`generated` or `noise`) through which encoder (`f_r`, or `f_g`, the LoRA copy aligned on
those images), optionally only the pairs held out of alignment. Real T images are read as
`caption.test_reading` says: through f_r (the paper's Algorithm 1) or through the variant's
f_g (its Section 3.2; variants trained on f_r embeddings have no f_g and use f_r).
Predictions go to `<predictions>/<variant>/seed<k>.json` in COCO results format, next to
`references.json`, the T references they are scored against.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from gmail.captioner import ClipCapConfig, build_clipcap, generate_captions, gpt2_tokenizer, save_clipcap, train_clipcap
from gmail.cli import offline, run, stage_parser
from gmail.config import get_seed, load_params, pick_device, section, set_seed
from gmail.encoders import read_embeddings
from gmail.errors import PipelineError
from gmail.io import atomic_dir, write_json
from gmail.records import read_split

IMAGE_SETS = ("real", "generated", "noise")
READINGS = ("f_r", "f_g")


@dataclass
class VariantParams:
    images: str = "generated"
    encoder: str = "f_r"
    heldout_only: bool = False

    def validate(self, name):
        if self.images not in IMAGE_SETS:
            raise PipelineError(f"{name}.images={self.images!r} is not one of {', '.join(IMAGE_SETS)}: fix params.yaml")
        if self.encoder not in READINGS or (self.images == "real" and self.encoder == "f_g"):
            raise PipelineError(f"{name}.encoder={self.encoder!r} must be f_r, or f_g for generated/noise images: fix params.yaml")


@dataclass
class CaptionParams:
    seeds: int = 3
    steps: int = 250
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    test_reading: str = "f_r"
    model: ClipCapConfig = field(default_factory=ClipCapConfig)
    device: str = "auto"
    captions: str = "data/captions"
    embeddings: str = "data/embeddings"
    models: str = "data/captioner"
    predictions: str = "data/predictions/caption"

    def validate(self, name):
        if self.seeds < 1 or self.steps < 1 or self.batch_size < 1:
            raise PipelineError(f"{name}.seeds, steps and batch_size must be positive: fix params.yaml")
        if self.test_reading not in READINGS:
            raise PipelineError(f"{name}.test_reading={self.test_reading!r} is not one of f_r, f_g: fix params.yaml")


def training_set(p: CaptionParams, v: VariantParams, heldout: int):
    """(embeddings, reference-caption lists) the variant trains on, in B order."""
    real = read_split(Path(p.captions) / "B.jsonl")
    ids = [r["image_id"] for r in real]
    z = read_embeddings(Path(p.embeddings) / v.images, f"B.{v.encoder}", ids)
    caps = [r["captions"] for r in real]
    if v.heldout_only:
        if not 0 < heldout < len(real):
            raise PipelineError(f"align.heldout={heldout} leaves no held-out pairs among {len(real)}: raise it or drop heldout_only")
        z, caps = z[len(real) - heldout:], caps[len(real) - heldout:]
    return z, caps


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--variant", required=True, help="a key of params.yaml `variants`")
    args = parser.parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    variants = params.get("variants") or {}
    if args.variant not in variants:
        raise PipelineError(f"unknown captioner variant {args.variant!r}: use one of {', '.join(variants) or '(none defined)'} "
                            "or add it under `variants` in params.yaml")
    v = section(variants[args.variant], VariantParams, f"variants.{args.variant}")
    p = section(params.get("caption", {}), CaptionParams, "caption")
    heldout = int((params.get("align") or {}).get("heldout", 0))
    device = pick_device(p.device)

    # 1. Training embeddings and captions; real T through the chosen reading.
    z_train, caps = training_set(p, v, heldout)
    test = read_split(Path(p.captions) / "T.jsonl")
    t_ids = [r["image_id"] for r in test]
    reading = "f_g" if p.test_reading == "f_g" and v.encoder == "f_g" else "f_r"
    t_dir = Path(p.embeddings) / (v.images if reading == "f_g" else "real")
    z_test = read_embeddings(t_dir, f"T.{reading}", t_ids)

    # 2. One captioner per seed, written with its predictions.
    models, preds = Path(p.models) / args.variant, Path(p.predictions) / args.variant
    with atomic_dir(models) as model_tmp, atomic_dir(preds) as pred_tmp:
        tokenizer = gpt2_tokenizer(model_tmp / "tokenizer")
        flat = [c for cs in caps for c in cs]
        losses = {}
        for k in range(p.seeds):
            s = seed + k
            model = build_clipcap(p.model, z_train.shape[1], tokenizer, flat, seed=s)
            curve = train_clipcap(model, z_train, caps, tokenizer, p.steps, p.batch_size, p.lr, p.weight_decay,
                                  seed=s, device=device)
            losses[f"seed{s}"] = float(sum(curve[-20:]) / len(curve[-20:]))
            save_clipcap(model, model_tmp / f"seed{s}")
            texts = generate_captions(model, z_test, tokenizer, device=device)
            write_json(pred_tmp / f"seed{s}.json", [{"image_id": i, "caption": t} for i, t in zip(t_ids, texts)])
            print(f"{args.variant} seed {s}: final loss {losses[f'seed{s}']:.3f}; e.g. {texts[0]!r}")
        write_json(pred_tmp / "references.json", {
            "images": [{"id": i} for i in t_ids],
            "annotations": [{"image_id": r["image_id"], "id": n, "caption": c}
                            for n, (r, c) in enumerate((r, c) for r in test for c in r["captions"])]})
        write_json(pred_tmp / "info.json", {
            "variant": args.variant, "train_images": v.images, "train_encoder": v.encoder,
            "heldout_only": v.heldout_only, "train_size": len(caps), "steps": p.steps,
            "test_reading": reading, "test_embeddings": str(t_dir / f"T.{reading}.npy"), "final_loss": losses})


if __name__ == "__main__":
    sys.exit(run(main))

"""Stage `caption@<variant>`: train ClipCap captioners on one variant's image embeddings
(several seeds) and caption the real test images T.

A variant (params.yaml `variants`, see gmail.downstream.variants) names its training
embeddings: which B images through which encoder, optionally only the pairs held out of
alignment. Real T is read as `caption.test_reading` says. Predictions go to
`<predictions>/<variant>/seed<k>.json` in COCO results format, next to `references.json`
(the T references they are scored against) and `info.json` (what the variant trained on).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gmail.align.params import AlignParams
from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json
from gmail.data.coco_format import write_references, write_results
from gmail.data.records import read_split
from gmail.downstream.clipcap import ClipCapConfig, build_clipcap, generate_captions, gpt2_tokenizer, save_clipcap, train_clipcap
from gmail.downstream.variants import READINGS, VariantParams, real_test_embeddings, training_set
from gmail.viz.curves import write_loss_curve


@dataclass
class CaptionParams:
    seeds: int
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    test_reading: str
    model: ClipCapConfig
    device: str

    def validate(self, name):
        if self.seeds < 1 or self.steps < 1 or self.batch_size < 1:
            raise PipelineError(f"{name}.seeds, steps and batch_size must be positive: fix params.yaml")
        if self.test_reading not in READINGS:
            raise PipelineError(f"{name}.test_reading={self.test_reading!r} is not one of {', '.join(READINGS)}: fix params.yaml")


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
    p = section(params.get("caption"), CaptionParams, "caption")
    heldout = section(params.get("align"), AlignParams, "align").heldout
    paths = get_paths(params, "captions", "embeddings", "captioner", "predictions", "plots")
    device = pick_device(p.device)

    # 1. Training embeddings and captions; real T through the chosen reading.
    z_train, caps = training_set(read_split(paths.captions / "B.jsonl"), paths.embeddings, v, heldout)
    test = read_split(paths.captions / "T.jsonl")
    t_ids = [r["image_id"] for r in test]
    z_test, reading, t_file = real_test_embeddings(test, paths.embeddings, v, p.test_reading)

    # 2. One captioner per seed, written with its predictions and loss curve.
    models, preds = paths.captioner / args.variant, paths.predictions / args.variant
    with atomic_dir(models) as model_tmp, atomic_dir(preds) as pred_tmp, \
            atomic_dir(paths.plots / "caption" / args.variant) as plot_tmp:
        tokenizer = gpt2_tokenizer(model_tmp / "tokenizer")
        flat = [c for cs in caps for c in cs]
        losses = {}
        for s in range(seed, seed + p.seeds):
            model = build_clipcap(p.model, z_train.shape[1], tokenizer, flat, seed=s)
            curve = train_clipcap(model, z_train, caps, tokenizer, p.steps, p.batch_size, p.lr, p.weight_decay,
                                  seed=s, device=device)
            losses[f"seed{s}"] = float(sum(curve[-20:]) / len(curve[-20:]))
            save_clipcap(model, model_tmp / f"seed{s}")
            write_loss_curve(plot_tmp / f"loss-seed{s}.tsv", curve)
            texts = generate_captions(model, z_test, tokenizer, device=device)
            write_results(pred_tmp / f"seed{s}.json", t_ids, texts)
            print(f"{args.variant} seed {s}: final loss {losses[f'seed{s}']:.3f}; e.g. {texts[0]!r}")
        write_references(pred_tmp / "references.json", test)
        write_json(pred_tmp / "info.json", {
            "variant": args.variant, "train_images": v.images, "train_encoder": v.encoder,
            "heldout_only": v.heldout_only, "train_size": len(caps), "steps": p.steps,
            "test_reading": reading, "test_embeddings": str(paths.embeddings / t_file), "final_loss": losses})


if __name__ == "__main__":
    sys.exit(run(main))

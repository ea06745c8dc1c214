"""Stage `caption@<variant>`: train ClipCap captioners on one variant's image embeddings
(several seeds) and caption the real test images T.

A variant (params.yaml `variants`, see gmail.downstream.variants) names its training
embeddings: which B images through which encoder, optionally only the pairs held out of
alignment. Real T is read as `caption.test_reading` says. Predictions go to
`<predictions>/<variant>/seed<k>.json` in COCO results format, next to `references.json`
(the T references they are scored against) and `info.json` (what the variant trained on).

Under `accelerate launch` (params `launcher`) every process trains each captioner with DDP
(gmail.downstream.clipcap `train_clipcap`); only the main process writes.
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState

from gmail.align.params import AlignParams
from gmail.core.cli import offline, stage_parser
from gmail.core.config import check_lr, check_param, get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json
from gmail.core.launch import launch
from gmail.data.coco_format import write_references, write_results
from gmail.data.records import read_split
from gmail.downstream.clipcap import ClipCapConfig, build_clipcap, generate_captions, gpt2_tokenizer, save_clipcap, train_clipcap
from gmail.downstream.variants import READINGS, VariantParams, real_test_embeddings, training_set, validation_split
from gmail.viz.curves import write_loss_curve

SCHEDULES = ("converge", "equal_steps")


@dataclass
class CaptionParams:
    seeds: int
    schedule: str           # converge (early stopping, capped at max_steps) | equal_steps (exactly `steps`)
    steps: int
    max_steps: int
    val_fraction: float
    eval_every: int
    patience: int
    batch_size: int
    lr: float
    weight_decay: float
    test_reading: str
    model: ClipCapConfig
    device: str

    def validate(self, name):
        if self.seeds < 1 or self.steps < 1 or self.max_steps < 1 or self.batch_size < 1:
            raise PipelineError(f"{name}.seeds, steps, max_steps and batch_size must be positive: fix params.yaml")
        if self.schedule not in SCHEDULES:
            raise PipelineError(f"{name}.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}: fix params.yaml")
        if self.test_reading not in READINGS:
            raise PipelineError(f"{name}.test_reading={self.test_reading!r} is not one of {', '.join(READINGS)}: fix params.yaml")
        check_lr(f"{name}.lr", self.lr)
        check_param(self.weight_decay >= 0, f"{name}.weight_decay", self.weight_decay, ">= 0")
        check_param(0 < self.val_fraction < 1, f"{name}.val_fraction", self.val_fraction, "in (0, 1) (a share of the images)")
        check_param(self.eval_every >= 1, f"{name}.eval_every", self.eval_every, "a positive number of steps")
        check_param(self.patience >= 1, f"{name}.patience", self.patience, "a positive number of checks")


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_stage_key("--variant", help="a key of params.yaml `variants`")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    variants = params.get("variants") or {}
    if args.variant not in variants:
        raise PipelineError(f"unknown captioner variant {args.variant!r}: use one of {', '.join(variants) or '(none defined)'} "
                            "or add it under `variants` in params.yaml")
    v = section(variants[args.variant], VariantParams, f"variants.{args.variant}")
    p = section(params.get("caption"), CaptionParams, "caption")
    scale = offline("mini" if p.model.decoder == "scratch" else "paper")  # mini: never the network; a hub decoder: as the environment says
    heldout = section(params.get("align"), AlignParams, "align").heldout
    paths = get_paths(params, "captions", "embeddings", "captioner", "predictions", "plots")
    device = pick_device(p.device)
    # One process per GPU under `accelerate launch` (params `launcher`); a plain run is a world of one.
    state = PartialState(cpu=device == "cpu")
    if state.device.type == "cuda":
        device = str(state.device)
    main_process = state.is_main_process

    # 1. Training embeddings and captions; real T through the chosen reading.
    train = training_set(read_split(paths.captions / "B.jsonl"), paths.embeddings, v, heldout)
    z_train, caps = train.embeddings, train.captions
    test = read_split(paths.captions / "T.jsonl")
    t_ids = [r["image_id"] for r in test]
    z_test, reading, t_file = real_test_embeddings(test, paths.embeddings, v, p.test_reading)

    # 2. Early stopping holds out a fixed part of the variant's images; equal steps trains on all.
    flat = [c for cs in caps for c in cs]  # the compact vocabulary covers every image's captions
    validation, steps = None, p.steps
    if p.schedule == "converge":
        train_idx, val_idx = validation_split(len(caps), p.val_fraction, seed)
        validation = (z_train[val_idx], [caps[i] for i in val_idx])
        z_train, caps, steps = z_train[train_idx], [caps[i] for i in train_idx], p.max_steps

    # 3. One captioner per seed, written with its predictions and loss curves.
    models, preds = paths.captioner / args.variant, paths.predictions / args.variant
    with ExitStack() as stack:
        if main_process:
            model_tmp, pred_tmp, plot_tmp = (stack.enter_context(atomic_dir(d)) for d in
                                             (models, preds, paths.plots / "caption" / args.variant))
            tokenizer = gpt2_tokenizer(model_tmp / "tokenizer")
        else:  # the other processes only train: their tokenizer files go to a private scratch folder
            tokenizer = gpt2_tokenizer(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        runs = {}
        for s in range(seed, seed + p.seeds):
            model = build_clipcap(p.model, z_train.shape[1], tokenizer, flat, seed=s)
            log = train_clipcap(model, z_train, caps, tokenizer, steps, p.batch_size, p.lr, p.weight_decay, seed=s,
                                device=device, validation=validation, eval_every=p.eval_every, patience=p.patience,
                                rank=state.process_index, world=state.num_processes)
            if not main_process:
                continue
            runs[f"seed{s}"] = {"final_loss": float(sum(log.losses[-20:]) / len(log.losses[-20:])),
                                "steps_run": log.steps_run, "best_step": log.best_step,
                                "best_val_loss": min(log.val_losses) if log.val_losses else None}
            save_clipcap(model, model_tmp / f"seed{s}")
            write_loss_curve(plot_tmp / f"loss-seed{s}.tsv", log.losses)
            if log.val_losses:
                write_loss_curve(plot_tmp / f"val-loss-seed{s}.tsv", log.val_losses, log.val_steps)
            texts = generate_captions(model, z_test, tokenizer, device=device)
            write_results(pred_tmp / f"seed{s}.json", t_ids, texts)
            print(f"{args.variant} seed {s}: {log.steps_run} steps (best {log.best_step}); e.g. {texts[0]!r}")
        if not main_process:
            return
        write_references(pred_tmp / "references.json", test)
        write_json(pred_tmp / "info.json", {
            "variant": args.variant, "scale": scale, "train_images": v.images, "train_encoder": v.encoder,
            "heldout_only": v.heldout_only, "train_size": len(caps), "val_size": len(validation[1]) if validation else 0,
            "schedule": p.schedule, "steps": steps, "test_reading": reading,
            "test_embeddings": str(paths.embeddings / t_file), "runs": runs})


if __name__ == "__main__":
    sys.exit(launch(main, "stages.caption"))  # params `launcher`: one process, or one per GPU

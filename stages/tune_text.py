"""Stage `tune_text@<row>`: CLIP + GMAIL for retrieval and zero-shot classification (our reading
of the paper's T2-T5): CLIP's text tower fine-tuned contrastively on B pairs whose image
embeddings stay fixed at the row's variant (`synthetic`: f_r(generated), `gmail`:
f_g(generated), `real`: f_r(real)), one tower per seed.

Writes `<text_towers>/<row>/seed<k>/text.safetensors` + `text.json` and the loss per step in
`<plots>/tune_text/<row>/loss-seed<k>.tsv`; the seconds it took go to `<stats>/tune_text/<row>.json`.
"""

from __future__ import annotations

import copy
import sys
import time

from accelerate import PartialState

from gmail.align.params import AlignParams
from gmail.core.cli import offline, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.io import atomic_dir, write_json
from gmail.core.launch import launch
from gmail.data.records import read_split
from gmail.downstream.text_tuning import TuneTextParams, check_rows, load_text_tower, save_text_tower, tokenize_captions, tune_text_tower
from gmail.downstream.variants import VariantParams, training_set
from gmail.models.image_tower import EncoderParams
from gmail.viz.curves import write_loss_curve


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_stage_key("--row", help="a key of params.yaml `variants` (e.g. synthetic, gmail, real)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    variants = params.get("variants") or {}
    check_rows([args.row], variants)
    v = section(variants[args.row], VariantParams, f"variants.{args.row}")
    p = section(params.get("tune_text"), TuneTextParams, "tune_text")
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    offline(enc.scale)  # mini: never the network; paper: as the environment says
    heldout = section(params.get("align"), AlignParams, "align").heldout
    paths = get_paths(params, "captions", "embeddings", "text_towers", "plots", "stats")
    device = pick_device(p.device)
    # One process per GPU under `accelerate launch` (params `launcher`): DDP, only the main process writes.
    state = PartialState(cpu=device == "cpu")
    if state.device.type == "cuda":
        device = str(state.device)

    # 1. The row's fixed B image embeddings and their reference captions, tokenized once.
    train = training_set(read_split(paths.captions / "B.jsonl"), paths.embeddings, v, heldout)
    z_train, caps = train.embeddings, train.captions
    base = load_text_tower(enc.scale, enc.weights, enc.name, enc.pretrained, device)
    tokens = tokenize_captions(base, caps)

    # 2. One tuned tower per seed, each from the pretrained text tower.
    if not state.is_main_process:
        for s in p.seed_list(seed):
            tune_text_tower(copy.deepcopy(base), z_train, tokens, p.steps, p.batch_size, p.lr, p.weight_decay, seed=s,
                            device=device, rank=state.process_index, world=state.num_processes)
        return
    runs = {}
    with atomic_dir(paths.text_towers / args.row) as tower_tmp, atomic_dir(paths.plots / "tune_text" / args.row) as plot_tmp:
        for s in p.seed_list(seed):
            tower = copy.deepcopy(base)
            losses = tune_text_tower(tower, z_train, tokens, p.steps, p.batch_size, p.lr, p.weight_decay, seed=s, device=device,
                                     rank=state.process_index, world=state.num_processes)
            save_text_tower(tower, tower_tmp / f"seed{s}", {
                "row": args.row, "train_images": v.images, "train_encoder": v.encoder, "heldout_only": v.heldout_only,
                "train_size": len(caps), "seed": s, "steps": p.steps, "final_loss": losses[-1],
                "logit_scale": float(tower.logit_scale.detach().exp())})
            write_loss_curve(plot_tmp / f"loss-seed{s}.tsv", losses)
            runs[f"seed{s}"] = losses[-1]
            print(f"tune_text@{args.row} seed {s}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    write_json(paths.stats / "tune_text" / f"{args.row}.json",
               {"seconds": round(time.perf_counter() - start, 1), "device": device, "final_loss": runs})


if __name__ == "__main__":
    sys.exit(launch(main, "stages.tune_text"))  # params `launcher`: one process, or one per GPU

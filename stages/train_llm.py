"""Stage `train_llm@<variant>` (llm/dvc.yaml): train the LLaVA-style model (LLM + LoRA + mlp2x_gelu
connectors, gmail.downstream.llava) on one variant's B embeddings, with B's captions and (mini
scale) B's easy-vqa questions as instructions, for `llm.seeds` seeds; then caption real T and
answer a seeded subsample of T's questions.

`llm.reading` picks the paper's reading: `abstract` trains on the variant's images only;
`algorithm1` adds f_r(real B) through the real connector (dual) or the one connector
(single). Real T always goes through f_r and the real (or single) connector. In `abstract`, a
dual model's real connector never sees a real image: it is set to a copy of the trained
generated connector. Outputs: `<llm>/models/<variant>/seed<k>/`, `<llm>/predictions/<variant>/`
(`seed<k>.json` COCO results, `vqa-seed<k>.json`, `references.json`, `info.json`).

Under `accelerate launch` (params `launcher`) every process trains each seed's model with DDP
(gmail.downstream.llava `train_llava`); only the main process captions, answers and writes.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from datetime import timedelta

import numpy as np
from accelerate import PartialState

from gmail.core.cli import offline, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed, torch_dtype
from gmail.core.io import atomic_dir, write_json
from gmail.core.launch import launch
from gmail.data.coco_format import write_references, write_results
from gmail.data.records import read_split
from gmail.downstream import llava
from gmail.downstream.llava import ImageSet, LlmParams, projection_for
from gmail.models.embeddings import read_embeddings, set_folder, training_rows
from gmail.models.llm import load_llm
from gmail.viz.curves import write_loss_curve

WAIT_FOR_MAIN = timedelta(hours=2)  # process-group timeout (a wait at a collective)


def _questions_per_image(records: list[dict], split: str) -> list[list[tuple[str, str]]]:
    """easy-vqa's (question, answer) pairs about each record's image, validated, in record order."""
    from gmail.data.easy_vqa_questions import load_split_questions  # mini only (llm.vqa: true)

    per_image = {r["image_id"]: [] for r in records}
    for row in load_split_questions(records, split):
        per_image[row["image_id"]].append((row["question"], row["answer"]))
    return [per_image[r["image_id"]] for r in records]


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_stage_key("--variant", help="a key of params.yaml `llm.variants`")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("llm"), LlmParams, "llm")
    scale = offline("mini" if p.model.llm == "smollm2" else "paper")  # mini: never the network; a hub LLM: as the environment says
    v = p.variant(args.variant)
    paths = get_paths(params, "captions", "embeddings", "llm", "plots", "stats")
    device, dtype = pick_device(p.device), torch_dtype(p.dtype)
    # One process per GPU under `accelerate launch` (params `launcher`); a plain run is a world of one.
    # The main process captions and answers T alone after each seed while the others wait in the
    # next seed's DDP set-up: give that wait hours, not NCCL's default 10 minutes.
    state = PartialState(cpu=device == "cpu", timeout=WAIT_FOR_MAIN)
    if state.device.type == "cuda":
        device = str(state.device)
    main_process = state.is_main_process

    # 1. Training sets: the variant's B embeddings (+ real B in reading algorithm1), each with
    # B's references and questions; real T through f_r; T questions, a seeded subsample.
    train, test = read_split(paths.captions / "B.jsonl"), read_split(paths.captions / "T.jsonl")
    b_ids, t_ids = [r["image_id"] for r in train], [r["image_id"] for r in test]
    caps = [r["captions"] for r in train]
    questions = _questions_per_image(train, "B") if p.vqa else [[] for _ in train]
    # Generated sets have several rows per real image, each with its own caption and its image's questions.
    folder = paths.embeddings / set_folder(v.images, v.encoder)
    rows = training_rows(folder, "B", train)
    sets = [ImageSet(projection_for(v.projection, v.images), read_embeddings(folder, f"B.{v.encoder}", rows.ids),
                     rows.captions, [questions[i] for i in rows.sources])]
    if p.reading == "algorithm1" and v.images != "real":
        sets.append(ImageSet(projection_for(v.projection, "real"),
                             read_embeddings(paths.embeddings / "real", "B.f_r", b_ids), caps, questions))
    z_test, test_projection = read_embeddings(paths.embeddings / "real", "T.f_r", t_ids), projection_for(v.projection, "real")
    t_questions = [(i, q, a) for i, qa in enumerate(_questions_per_image(test, "T")) for q, a in qa] if p.vqa else []
    if p.vqa_test_questions and len(t_questions) > p.vqa_test_questions:
        keep = np.sort(np.random.default_rng(seed).choice(len(t_questions), p.vqa_test_questions, replace=False))
        t_questions = [t_questions[k] for k in keep]
    if v.projection == "single":
        real_connector = "single connector for every image"
    elif len(sets) > 1:
        real_connector = "trained on f_r(real B)"
    else:
        real_connector = "copy of the trained generated connector (never sees a real training image)"

    # 2. The LLM, before anything is written: a bad model path or LoRA target fails here.
    llm, tokenizer = load_llm(p.model.llm, p.dtype)  # weights in llm.dtype (bfloat16: half the memory)
    llava.check_lora_targets(llm, p.model)

    # 3. One model per seed, saved with its predictions and loss curve.
    runs = {}
    with ExitStack() as stack:
        if main_process:
            model_tmp, pred_tmp, plot_tmp = (stack.enter_context(atomic_dir(d)) for d in (
                paths.llm / "models" / args.variant, paths.llm / "predictions" / args.variant, paths.plots / "llm" / args.variant))
        for s in range(seed, seed + p.seeds):
            started = time.perf_counter()
            model = llava.build_llava(p.model, llm, tokenizer, sets[0].embeddings.shape[1], v.projection, seed=s)
            log = llava.train_llava(model, tokenizer, sets, p.steps, p.batch_size, p.lr, p.lr_projection, p.weight_decay,
                                    p.vqa_fraction, seed=s, device=device, dtype=dtype,
                                    rank=state.process_index, world=state.num_processes)
            if not main_process:  # the other processes only train; they wait in the next seed's DDP set-up
                llm = llava.release_llm(model)
                continue
            if v.projection == "dual" and len(sets) == 1:
                llava.copy_projection(model, "generated", "real")
            trained = time.perf_counter()
            llava.save_llava(model, model_tmp / f"seed{s}", {"variant": args.variant, "reading": p.reading})
            write_loss_curve(plot_tmp / f"loss-seed{s}.tsv", log.losses)
            kw = {"batch_size": p.generate_batch_size, "device": device, "dtype": dtype}
            texts = llava.caption_images(model, tokenizer, z_test, test_projection, **kw)
            write_results(pred_tmp / f"seed{s}.json", t_ids, texts)
            captioned = time.perf_counter()
            if t_questions:
                idx = [i for i, _, _ in t_questions]
                got = llava.answer_questions(model, tokenizer, z_test[idx], test_projection, [q for _, q, _ in t_questions], **kw)
                from gmail.data.easy_vqa_questions import question_type

                write_json(pred_tmp / f"vqa-seed{s}.json", [
                    {"image_id": t_ids[i], "question": q, "answer": a, "prediction": g, "type": question_type(a)}
                    for (i, q, a), g in zip(t_questions, got)])
            runs[f"seed{s}"] = {"final_loss": float(np.mean(log.losses[-20:])), "steps": len(log.losses),
                                "train_s": trained - started, "caption_s": captioned - trained,
                                "vqa_s": time.perf_counter() - captioned}
            print(f"{args.variant} seed {s}: loss {runs[f'seed{s}']['final_loss']:.3f}; e.g. {texts[0]!r}")
            llm = llava.release_llm(model)
        if not main_process:
            return
        write_references(pred_tmp / "references.json", test)
        write_json(pred_tmp / "info.json", {
            "variant": args.variant, "scale": scale, "train_images": v.images, "train_encoder": v.encoder, "projection": v.projection,
            "reading": p.reading, "train_sets": [f"{s.projection}: {n}" for s, n in
                                                 zip(sets, [f"{v.images}/B.{v.encoder}", "real/B.f_r"])],
            "real_connector": real_connector, "test_reading": "f_r", "test_connector": test_projection,
            "test_embeddings": "real/T.f_r.npy", "vqa_test_questions": len(t_questions), "steps": p.steps,
            "llm": p.model.llm, "runs": {k: {"final_loss": r["final_loss"], "steps": r["steps"]} for k, r in runs.items()}})
    write_json(paths.stats / f"train_llm-{args.variant}.json", {"device": device, "dtype": p.dtype, "runs": runs})


if __name__ == "__main__":
    sys.exit(launch(main, "stages.train_llm"))  # params `launcher`: one process, or one per GPU

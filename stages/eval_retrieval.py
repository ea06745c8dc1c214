"""Stage `eval_retrieval` (paper T2/T3): zero-shot image->text and text->image R@1/5/10 of every
row, CLIP_benchmark's protocol and recall code on precomputed embeddings.

Rows: `clip` (the text tower as it comes) and each `tune_text.rows` entry (its tuned towers,
mean and population std over seeds). Test images: real T through `f_r` for every row (the
paper's Algorithm 1), from stage embed; `source: karpathy` reads a Karpathy split file instead
(COCO 5k / Flickr30k 1k test) and embeds its images here. Every reference caption is one text;
`positives` says whether identical texts count for every image they describe. Recalls are
percentages; `<metrics>/retrieval.json` = {row: {i2t_r1 ... t2i_r10: {mean, std}}}.

`data` is the stage's data dep in dvc.yaml: it must hold what the source reads (T: real T's
captions file; karpathy: `paper`'s json_path and image_root), checked before anything is read.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import ClassVar

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.deps import check_data_dep, reader_paths
from gmail.core.io import write_json
from gmail.data.readers import read_source
from gmail.downstream.text_tuning import TuneTextParams, check_rows, encode_tokens, evaluate_rows, load_text_tower, row_tower_dirs
from gmail.eval.retrieval import RECALL_KS, RetrievalParams, embed_record_images, positive_pairs, real_test_set, retrieval_recalls, retrieval_texts
from gmail.models.image_tower import EncoderParams, load_tower_from_params

SOURCES = ("T", "karpathy")


@dataclass
class EvalRetrievalParams(RetrievalParams):
    """source: T | karpathy (a Karpathy split file, embedded here); paper: read_karpathy
    arguments {json_path, image_root, split}; data: the dvc dep holding what the source reads."""

    SOURCES: ClassVar[tuple[str, ...]] = SOURCES
    data: str


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    start = time.perf_counter()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("eval_retrieval"), EvalRetrievalParams, "eval_retrieval")
    tune = section(params.get("tune_text"), TuneTextParams, "tune_text")
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    offline(enc.scale)  # mini: never the network; paper: as the environment says
    check_rows(tune.rows, params.get("variants") or {})
    paths = get_paths(params, "captions", "embeddings", "text_towers", "metrics", "stats")
    device = pick_device(enc.device)
    check_data_dep([paths.captions / "T.jsonl"] if p.source == "T" else reader_paths(p.paper), p.data,
                   "eval_retrieval.data", p.source)
    towers = row_tower_dirs(paths.text_towers, tune.rows, tune.seed_list(seed))

    # 1. Test images through f_r; every reference caption a text row, positives per `positives`.
    if p.source == "T":
        records, z_img = real_test_set(paths.captions, paths.embeddings)
    else:
        records = read_source("karpathy", **p.paper)
        z_img = embed_record_images(records, load_tower_from_params(enc, device), enc.batch_size, device)
    texts, index = retrieval_texts(records)
    positives = positive_pairs(texts, index, [r["captions"] for r in records], p.positives)

    # 2. Every row's towers score the same texts, tokenized once.
    base = load_text_tower(enc.scale, enc.weights, enc.name, enc.pretrained, device)
    tokens = base.tokenize(texts)
    metrics = evaluate_rows(base, towers, lambda tower: retrieval_recalls(
        z_img, encode_tokens(tower, tokens, device=device), positives, RECALL_KS, p.batch_size, device), device)
    write_json(paths.metrics / "retrieval.json", {**metrics, "scale": enc.scale})
    write_json(paths.stats / "eval_retrieval.json", {"seconds": round(time.perf_counter() - start, 1), "device": device,
                                                      "images": len(records), "texts": len(texts)})
    for row, m in metrics.items():
        print(f"{row:>10}: " + "  ".join(f"{k} {m[k]['mean']:.1f}±{m[k]['std']:.1f}" for k in sorted(m)))


if __name__ == "__main__":
    sys.exit(run(main))

"""Stage `eval_long_retrieval` (paper T5): long-caption retrieval R@1 image->text and
text->image of every row, one long caption per image, CLIP_benchmark's recall code.

Rows as in eval_retrieval (`clip` + `tune_text.rows`, mean and population std over seeds).
`source: T` gives each real T image a multi-sentence description built from its attributes
and pixels (`gmail.data.long_captions`) and uses stage embed's f_r embeddings; `urban1k` and
`sharegpt4v` read the paper's sets (`gmail.data.paper_long_captions`) and embed their images
here by f_r. Percentages; `<metrics>/long_retrieval.json` = {row: {i2t_r1, t2i_r1: {mean, std}}}.
`data` is the stage's data dep in dvc.yaml: it must hold what the source reads (T: real T's
images; urban1k: `paper.root`; sharegpt4v: `paper.json_path` and `image_root`), checked first.

A stage of its own rather than part of eval_retrieval: it reads other data (long descriptions,
Urban-1k, ShareGPT4V) and other code, so editing the description builder reruns it alone.
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
from gmail.data.long_captions import long_caption_records
from gmail.data.paper_long_captions import LONG_READERS, read_long_source
from gmail.data.records import load_split_images
from gmail.downstream.text_tuning import TuneTextParams, check_rows, encode_tokens, evaluate_rows, load_text_tower, row_tower_dirs
from gmail.eval.retrieval import RetrievalParams, embed_record_images, positive_pairs, real_test_set, retrieval_recalls, retrieval_texts
from gmail.models.image_tower import EncoderParams, load_tower_from_params

SOURCES = ("T", *LONG_READERS)


@dataclass
class EvalLongRetrievalParams(RetrievalParams):
    """source: T (mini: long descriptions of real T) | urban1k | sharegpt4v (paper); paper:
    urban1k {root}, sharegpt4v {json_path, image_root, limit}; data: the dvc dep holding what
    the source reads."""

    SOURCES: ClassVar[tuple[str, ...]] = SOURCES
    data: str


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    start = time.perf_counter()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("eval_long_retrieval"), EvalLongRetrievalParams, "eval_long_retrieval")
    tune = section(params.get("tune_text"), TuneTextParams, "tune_text")
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    offline(enc.scale)  # mini: never the network; paper: as the environment says
    check_rows(tune.rows, params.get("variants") or {})
    paths = get_paths(params, "captions", "embeddings", "text_towers", "metrics", "stats")
    device = pick_device(enc.device)
    check_data_dep([paths.captions / "images" / "T"] if p.source == "T" else reader_paths(p.paper), p.data,
                   "eval_long_retrieval.data", p.source)
    towers = row_tower_dirs(paths.text_towers, tune.rows, tune.seed_list(seed))

    # 1. One long caption per test image; images through f_r.
    if p.source == "T":
        test, z_img = real_test_set(paths.captions, paths.embeddings)
        records = long_caption_records(test, load_split_images(test))
    else:
        records = read_long_source(p.source, **p.paper)
        z_img = embed_record_images(records, load_tower_from_params(enc, device), enc.batch_size, device)
    texts, index = retrieval_texts(records)
    positives = positive_pairs(texts, index, [r["captions"] for r in records], p.positives)

    # 2. R@1 both ways for every row's towers, the texts tokenized once.
    base = load_text_tower(enc.scale, enc.weights, enc.name, enc.pretrained, device)
    tokens = base.tokenize(texts)
    metrics = evaluate_rows(base, towers, lambda tower: retrieval_recalls(
        z_img, encode_tokens(tower, tokens, device=device), positives, (1,), p.batch_size, device), device)
    write_json(paths.metrics / "long_retrieval.json", {**metrics, "scale": enc.scale})
    write_json(paths.stats / "eval_long_retrieval.json", {"seconds": round(time.perf_counter() - start, 1), "device": device,
                                                           "images": len(records)})
    for row, m in metrics.items():
        print(f"{row:>10}: " + "  ".join(f"{k} {m[k]['mean']:.1f}±{m[k]['std']:.1f}" for k in sorted(m)))


if __name__ == "__main__":
    sys.exit(run(main))

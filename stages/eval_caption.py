"""Stage `eval_caption`: score every captioner variant's predictions on real T with
pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE when its CoreNLP jars are present)
and WMD, x100 as the paper prints them, plus attribute accuracy where T records carry
attributes (mini scale: does the caption state the right colour, shape, size, position?);
mean and std over seeds per variant.

All variants are scored in one process so the Java tokenizer and METEOR start once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gmail.core.cli import declare_scale, offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, read_json, write_json
from gmail.data.coco_format import read_results
from gmail.data.records import read_split
from gmail.downstream.variants import VariantParams
from gmail.eval.caption_metrics import METRICS, score_caption_sets
from gmail.eval.seeds import summarise_seeds


@dataclass
class EvalCaptionParams:
    wmd: bool


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    offline()
    params = load_params(args.params)
    set_seed(get_seed(params))
    p = section(params.get("eval_caption"), EvalCaptionParams, "eval_caption")
    paths = get_paths(params, "captions", "predictions", "caption_scores", "metrics")
    variants = list(params.get("variants") or {})
    if not variants:
        raise PipelineError("params.yaml defines no captioner `variants`: add them (see README)")
    for v in variants:
        section(params["variants"][v], VariantParams, f"variants.{v}")

    # 1. References and every variant's per-seed predictions.
    test = read_split(paths.captions / "T.jsonl")
    t_ids = [r["image_id"] for r in test]
    references = {r["image_id"]: r["captions"] for r in test}
    sets, info = {}, {}
    for v in variants:
        folder = paths.predictions / v
        files = sorted(folder.glob("seed*.json"), key=lambda f: int(f.stem[4:]))
        if not files:
            raise PipelineError(f"no predictions in {folder}: run `dvc repro caption@{v}` first")
        info[v] = read_json(folder / "info.json") if (folder / "info.json").is_file() else {}
        for f in files:
            sets[f"{v}/{f.stem}"] = read_results(f, t_ids)
    # The scale of what it scores: paper only when every captioner was trained at paper scale.
    declare_scale("paper" if {i.get("scale") for i in info.values()} == {"paper"} else "mini")

    # 2. Score all sets at once; one metrics file per variant (means and stds, what
    # `dvc metrics show` lists) and one per-seed scores file per variant.
    scores = score_caption_sets(sets, references, wmd=p.wmd)
    keys = METRICS
    if all("attributes" in r for r in test):  # mini scale: T's true attribute values are known
        from gmail.eval.caption_attributes import attribute_accuracy  # easy-vqa's attribute words: mini only

        attributes = {r["image_id"]: r["attributes"] for r in test}
        for name, preds in sets.items():
            scores[name].update(attribute_accuracy(preds, attributes))
        keys = METRICS + tuple(k for k in next(iter(scores.values())) if k.startswith("attr_"))
    rows, details = {}, {}
    for v in variants:
        per_seed = {name.split("/")[1]: s for name, s in scores.items() if name.split("/")[0] == v}
        row = summarise_seeds(list(per_seed.values()), keys)
        first = next(iter(per_seed.values()))
        row.update({"seeds": len(per_seed), "scale": info[v].get("scale"), "test_reading": info[v].get("test_reading")})
        row.update({k: first[k] for k in ("spice_skipped", "wmd_skipped") if k in first})
        rows[v] = row
        details[v] = {"per_seed": {k: {m: s[m] for m in keys} for k, s in per_seed.items()}, "info": info[v]}
    with atomic_dir(paths.caption_scores) as tmp:
        for v in variants:
            write_json(tmp / f"{v}.json", details[v])
    for v, row in rows.items():
        write_json(paths.metrics / "caption" / f"{v}.json", row)
    for v, row in rows.items():
        print(f"{v:>17}: " + "  ".join(f"{m} {row[m]['mean']:.2f}±{row[m]['std']:.2f}"
                                       for m in ("bleu4", "cider", "wmd", "attr_colour", "attr_shape") if row.get(m)))


if __name__ == "__main__":
    sys.exit(run(main))

"""Stage `eval_llm` (llm/dvc.yaml): score every LLM variant's captions of real T (pycocoevalcap +
WMD, x100, plus attribute accuracy at mini scale: the keys of `metrics/caption/<variant>.json`)
and its easy-vqa answers (exact match after normalising case, whitespace and punctuation, x100,
overall and per question type); mean and std over seeds.

Writes `<metrics>/llm/caption/<variant>.json`, `<metrics>/llm/vqa.json` and per-seed scores in
`<llm>/scores/<variant>.json`. (The main pipeline's `eval_caption` owns `<metrics>/caption/`.) With
`llm.vqa: false` (paper scale) vqa.json is `{}`.
"""

from __future__ import annotations

import sys

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, read_json, write_json
from gmail.data.coco_format import read_results
from gmail.data.records import read_split
from gmail.downstream.llava import LlmParams
from gmail.eval.caption_metrics import METRICS, score_caption_sets
from gmail.eval.multiple_choice import short_answer_accuracy
from gmail.eval.seeds import summarise_seeds
from gmail.eval.vqa import KEYS as VQA_KEYS


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    set_seed(get_seed(params))
    p = section(params.get("llm"), LlmParams, "llm")
    offline("mini" if p.model.llm == "smollm2" else "paper")  # mini: never the network; a hub LLM: as the environment says
    paths = get_paths(params, "captions", "llm", "metrics")

    # 1. References and every variant's per-seed captions and answers.
    test = read_split(paths.captions / "T.jsonl")
    t_ids = [r["image_id"] for r in test]
    references = {r["image_id"]: r["captions"] for r in test}
    sets, answers, info = {}, {}, {}
    for v in p.variants:
        folder = paths.llm / "predictions" / v
        files = sorted(folder.glob("seed*.json"), key=lambda f: int(f.stem[4:]))
        if not files:
            raise PipelineError(f"no LLM predictions in {folder}: run `dvc repro llm/dvc.yaml:train_llm@{v}` first")
        info[v] = read_json(folder / "info.json")
        for f in files:
            sets[f"{v}/{f.stem}"] = read_results(f, t_ids)
            if (folder / f"vqa-{f.stem}.json").is_file():
                answers[f"{v}/{f.stem}"] = read_json(folder / f"vqa-{f.stem}.json")

    # 2. Captions: every set in one pycocoevalcap run (one JVM), attribute accuracy where T has attributes.
    scores = score_caption_sets(sets, references, wmd=p.wmd)
    keys = METRICS
    if all("attributes" in r for r in test):
        from gmail.eval.caption_attributes import attribute_accuracy  # easy-vqa's attribute words: mini only

        attributes = {r["image_id"]: r["attributes"] for r in test}
        for name, preds in sets.items():
            scores[name].update(attribute_accuracy(preds, attributes))
        keys = METRICS + tuple(k for k in next(iter(scores.values())) if k.startswith("attr_"))
    for name, rows in answers.items():
        scores[name]["vqa"] = short_answer_accuracy([r["prediction"] for r in rows], [r["answer"] for r in rows],
                                                    [r["type"] for r in rows])

    # 3. Mean and std over seeds per variant.
    vqa, details = {}, {}
    with atomic_dir(paths.llm / "scores") as tmp:
        for v in p.variants:
            per_seed = {name.split("/")[1]: s for name, s in scores.items() if name.split("/")[0] == v}
            row = summarise_seeds(list(per_seed.values()), keys)
            first = next(iter(per_seed.values()))
            row.update({"seeds": len(per_seed), "scale": info[v].get("scale"), "test_reading": info[v].get("test_reading"),
                        "reading": info[v].get("reading"),
                        "projection": info[v].get("projection")})
            row.update({k: first[k] for k in ("spice_skipped", "wmd_skipped") if k in first})
            write_json(paths.metrics / "llm" / "caption" / f"{v}.json", row)
            if all("vqa" in s for s in per_seed.values()):
                vqa[v] = summarise_seeds([s["vqa"] for s in per_seed.values()], VQA_KEYS)
                vqa[v].update({"seeds": len(per_seed), "questions": info[v].get("vqa_test_questions"),
                               "reading": info[v].get("reading")})
            write_json(tmp / f"{v}.json", {"per_seed": {k: {m: s.get(m) for m in (*keys, "vqa")} for k, s in per_seed.items()},
                                           "info": info[v]})
            details[v] = row
    write_json(paths.metrics / "llm" / "vqa.json", vqa)  # {} when no variant answered questions (llm.vqa: false)
    for v, row in details.items():
        extra = f"  vqa {vqa[v]['overall']['mean']:.1f}" if v in vqa else ""
        print(f"{v:>15}: bleu4 {row['bleu4']['mean']:.2f}  cider {row['cider']['mean']:.2f}{extra}")


if __name__ == "__main__":
    sys.exit(run(main))

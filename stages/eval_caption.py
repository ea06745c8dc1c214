"""Stage `eval_caption`: score every captioner variant's predictions on real T with
pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE when its CoreNLP jars are present)
and WMD, x100 as the paper prints them; mean and std over seeds per variant.

All variants are scored in one process so the Java tokenizer and METEOR start once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gmail.caption_metrics import score_caption_sets
from gmail.cli import offline, run, stage_parser
from gmail.config import get_seed, load_params, section, set_seed
from gmail.errors import PipelineError
from gmail.io import atomic_dir, read_json, write_json
from gmail.records import read_split

REPORTED = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice", "wmd")


@dataclass
class EvalCaptionParams:
    wmd: bool = True
    captions: str = "data/captions"
    predictions: str = "data/predictions/caption"
    metrics: str = "metrics/caption"
    scores: str = "data/eval_caption"


def load_predictions(path: Path, t_ids: list[str]) -> dict[str, str]:
    """{image_id: caption} from a COCO results file, which must caption every T image once."""
    rows = read_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "image_id" in r and "caption" in r for r in rows):
        raise PipelineError(f"{path} is not in COCO results format ([{{'image_id': ..., 'caption': ...}}]): rerun its caption stage")
    preds = {str(r["image_id"]): str(r["caption"]) for r in rows}
    if len(preds) != len(rows) or set(preds) != set(t_ids):
        raise PipelineError(f"{path} does not caption each of the {len(t_ids)} T images exactly once: rerun its caption stage")
    return preds


def summarise(scores: list[dict]) -> dict:
    """{metric: {"mean", "std"}} over seeds (population std); None stays None (skipped metric)."""
    out = {}
    for m in REPORTED:
        values = [s[m] for s in scores]
        out[m] = None if any(v is None for v in values) else {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    offline()
    params = load_params(args.params)
    set_seed(get_seed(params))
    p = section(params.get("eval_caption", {}), EvalCaptionParams, "eval_caption")
    variants = list(params.get("variants") or {})
    if not variants:
        raise PipelineError("params.yaml defines no captioner `variants`: add them (see README)")

    # 1. References and every variant's per-seed predictions.
    test = read_split(Path(p.captions) / "T.jsonl")
    t_ids = [r["image_id"] for r in test]
    references = {r["image_id"]: r["captions"] for r in test}
    sets, info = {}, {}
    for v in variants:
        folder = Path(p.predictions) / v
        files = sorted(folder.glob("seed*.json"), key=lambda f: int(f.stem[4:]))
        if not files:
            raise PipelineError(f"no predictions in {folder}: run `dvc repro caption@{v}` first")
        info[v] = read_json(folder / "info.json") if (folder / "info.json").is_file() else {}
        for f in files:
            sets[f"{v}/{f.stem}"] = load_predictions(f, t_ids)

    # 2. Score all sets at once; one metrics file per variant (means and stds, what
    # `dvc metrics show` lists) and one per-seed scores file per variant.
    scores = score_caption_sets(sets, references, wmd=p.wmd)
    rows, details = {}, {}
    for v in variants:
        per_seed = {name.split("/")[1]: s for name, s in scores.items() if name.split("/")[0] == v}
        row = summarise(list(per_seed.values()))
        first = next(iter(per_seed.values()))
        row.update({"seeds": len(per_seed), "test_reading": info[v].get("test_reading")})
        for skipped in ("spice_skipped", "wmd_skipped"):
            if skipped in first:
                row[skipped] = first[skipped]
        rows[v] = row
        details[v] = {"per_seed": {k: {m: s[m] for m in REPORTED} for k, s in per_seed.items()}, "info": info[v]}
    with atomic_dir(p.scores) as tmp:
        for v in variants:
            write_json(tmp / f"{v}.json", details[v])
    for v, row in rows.items():
        write_json(Path(p.metrics) / f"{v}.json", row)
    for v, row in rows.items():
        print(f"{v:>14}: " + "  ".join(f"{m} {row[m]['mean']:.2f}±{row[m]['std']:.2f}"
                                       for m in ("bleu4", "meteor", "rouge_l", "cider", "wmd") if row[m]))


if __name__ == "__main__":
    sys.exit(run(main))

"""Stage `captions`: split the data into A / B / T and write one caption JSONL per split."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field

from gmail import captions as cap
from gmail.cli import offline, run, stage_parser
from gmail.config import get_seed, load_params, section, set_seed
from gmail.errors import PipelineError
from gmail.io import atomic_dir, write_json, write_jsonl
from gmail.readers import read_source, validate_records

SOURCES = ("easy_vqa", "coco", "karpathy", "webdataset", "parquet")


@dataclass
class DataParams:
    source: str = "easy_vqa"
    n_a: int = 2500
    n_b: int = 1500
    n_t: int = 1000
    out: str = "data/captions"
    paper_b: dict = field(default_factory=dict)
    paper_t: dict = field(default_factory=dict)

    def validate(self, name):
        if self.source not in SOURCES:
            raise PipelineError(f"unknown {name}.source {self.source!r}: use one of {', '.join(SOURCES)}")
        for key in ("n_a", "n_b", "n_t"):
            if getattr(self, key) < (0 if key == "n_a" and self.source != "easy_vqa" else 1):
                raise PipelineError(f"{name}.{key} must be positive, got {getattr(self, key)}: fix params.yaml")


def easy_vqa_splits(p: DataParams, out_dir) -> dict[str, list[dict]]:
    try:
        import easy_vqa
    except ImportError as exc:
        raise PipelineError("package easy-vqa is not installed: run `make repro` or pip install -r requirements.txt") from exc
    train_paths, test_paths = easy_vqa.get_train_image_paths(), easy_vqa.get_test_image_paths()
    ids = cap.split_ids(list(train_paths), list(test_paths), p.n_a, p.n_b, p.n_t)
    splits = {
        "A": cap.build_easy_vqa_records("train", ids["A"], train_paths, easy_vqa.get_train_questions()),
        "B": cap.build_easy_vqa_records("train", ids["B"], train_paths, easy_vqa.get_train_questions()),
        "T": cap.build_easy_vqa_records("test", ids["T"], test_paths, easy_vqa.get_test_questions()),
    }
    for name, records in splits.items():
        (out_dir / "images" / name).mkdir(parents=True)
        for rec in records:
            rel = f"images/{name}/{rec['image_id']}.png"
            shutil.copyfile(rec.pop("source_path"), out_dir / rel)  # byte copy: deterministic outputs
            rec["path"] = rel
    return splits


def paper_splits(p: DataParams) -> dict[str, list[dict]]:
    if not p.paper_b or not p.paper_t:
        raise PipelineError(f"data.source={p.source} needs data.paper_b and data.paper_t (reader arguments): see README 'Paper scale'")
    b = read_source(p.source, **p.paper_b)[: p.n_b]
    t = read_source(p.source, **p.paper_t)[: p.n_t]
    return {"B": b, "T": t}


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    offline()
    params = load_params(args.params)
    set_seed(get_seed(params))
    p = section(params.get("data", {}), DataParams, "data")

    with atomic_dir(p.out) as tmp:
        splits = easy_vqa_splits(p, tmp) if p.source == "easy_vqa" else paper_splits(p)
        for name, records in splits.items():
            validate_records([dict(r) for r in records], f"split {name}")
            write_jsonl(tmp / f"{name}.jsonl", records)
    metrics = {f"n_{k.lower()}": len(v) for k, v in splits.items()}
    metrics["refs_per_image"] = min(len(r["captions"]) for v in splits.values() for r in v)
    metrics["distinct_captions_b"] = len({c for r in splits["B"] for c in r["captions"]})
    write_json("metrics/captions.json", metrics)
    print(f"captions: {', '.join(f'{k}={len(v)}' for k, v in splits.items())} -> {p.out}")


if __name__ == "__main__":
    sys.exit(run(main))

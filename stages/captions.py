"""Stage `captions`: split the data into A / B / T and write one caption JSONL per split."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json, write_jsonl
from gmail.data.easy_vqa_captions import easy_vqa_splits
from gmail.data.readers import read_source
from gmail.data.records import validate_records

SOURCES = ("easy_vqa", "coco", "karpathy", "webdataset", "parquet")


@dataclass
class DataParams:
    source: str
    n_a: int
    n_b: int
    n_t: int
    paper_b: dict
    paper_t: dict

    def validate(self, name):
        if self.source not in SOURCES:
            raise PipelineError(f"unknown {name}.source {self.source!r}: use one of {', '.join(SOURCES)}")
        for key in ("n_a", "n_b", "n_t"):
            if getattr(self, key) < (0 if key == "n_a" and self.source != "easy_vqa" else 1):
                raise PipelineError(f"{name}.{key} must be positive, got {getattr(self, key)}: fix params.yaml")


def paper_splits(p: DataParams) -> dict[str, list[dict]]:
    if not p.paper_b or not p.paper_t:
        raise PipelineError(f"data.source={p.source} needs data.paper_b and data.paper_t (reader arguments): see README 'Paper scale'")
    return {"B": read_source(p.source, **p.paper_b)[: p.n_b], "T": read_source(p.source, **p.paper_t)[: p.n_t]}


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    offline()
    params = load_params(args.params)
    set_seed(get_seed(params))
    p = section(params.get("data"), DataParams, "data")
    paths = get_paths(params, "captions", "metrics")

    with atomic_dir(paths.captions) as tmp:
        splits = easy_vqa_splits(p.n_a, p.n_b, p.n_t, tmp) if p.source == "easy_vqa" else paper_splits(p)
        for name, records in splits.items():
            validate_records([dict(r) for r in records], f"split {name}")
            write_jsonl(tmp / f"{name}.jsonl", records)
    metrics = {f"n_{k.lower()}": len(v) for k, v in splits.items()}
    metrics["refs_per_image"] = min(len(r["captions"]) for v in splits.values() for r in v)
    metrics["distinct_captions_b"] = len({c for r in splits["B"] for c in r["captions"]})
    write_json(paths.metrics / "captions.json", metrics)
    print(f"captions: {', '.join(f'{k}={len(v)}' for k, v in splits.items())} -> {paths.captions}")


if __name__ == "__main__":
    sys.exit(run(main))

"""Stage `captions`: split the data into A / B / T and write one caption JSONL per split.

Mini: A, B and T from easy-vqa (`data.source` and `data.source_t` both `easy_vqa`). Paper: B is
read by `data.source` with the arguments `data.paper_b`, T by `data.source_t` with `data.paper_t`
(T7: B from CC3M webdataset shards, T from the COCO Karpathy test split). A webdataset source's
images are extracted into this stage's output, `<paths.captions>/images/<split>/`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, section, set_seed
from gmail.core.deps import check_data_dep, reader_paths
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json, write_jsonl
from gmail.data.readers import read_source
from gmail.data.records import validate_records

SOURCES = ("easy_vqa", "coco", "karpathy", "webdataset", "parquet")


@dataclass
class DataParams:
    source: str     # B's source (and A's and T's at mini scale: easy_vqa)
    source_t: str   # T's source
    n_a: int
    n_b: int
    n_t: int
    paper_b: dict
    paper_t: dict
    b_data: str     # the dep dvc.yaml lists for what `source` reads (mini: requirements.txt, which pins easy-vqa)
    t_data: str     # the same for `source_t`

    def validate(self, name):
        for key in ("source", "source_t"):
            if getattr(self, key) not in SOURCES:
                raise PipelineError(f"unknown {name}.{key} {getattr(self, key)!r}: use one of {', '.join(SOURCES)}")
        # easy-vqa's splits come as one set (A pretrains the stand-in models; T's questions and
        # attributes belong to its test split), so it is never mixed with a paper source.
        if (self.source == "easy_vqa") != (self.source_t == "easy_vqa"):
            raise PipelineError(f"{name}.source={self.source} with {name}.source_t={self.source_t}: easy_vqa gives B and T "
                                "together, so set both to easy_vqa (mini) or both to paper sources")
        for split in ("b", "t"):
            if "out_image_dir" in getattr(self, f"paper_{split}"):
                raise PipelineError(f"{name}.paper_{split} sets out_image_dir: remove it (the stage extracts webdataset "
                                    f"images into <paths.captions>/images/{split.upper()})")
        if self.source != "easy_vqa":  # checked before anything is written
            check_data_dep(reader_paths(self.paper_b), self.b_data, f"{name}.b_data", self.source)
            check_data_dep(reader_paths(self.paper_t), self.t_data, f"{name}.t_data", self.source_t)
        for key in ("n_a", "n_b", "n_t"):
            if getattr(self, key) < (0 if key == "n_a" and self.source != "easy_vqa" else 1):
                raise PipelineError(f"{name}.{key} must be positive, got {getattr(self, key)}: fix params.yaml")


def read_split_source(source: str, arguments: dict, split: str, out: Path, final: Path) -> list[dict]:
    """One split's records from `source`. A webdataset's images are extracted into
    `out/images/<split>` (`out`: the stage's output folder while it is written), their paths
    relative to the JSONL's folder as the easy-vqa splits' are. Other sources' images stay where
    they are: an absolute path as it is, a relative one (relative to the repository, as params
    paths are) rewritten relative to `final`, the folder the JSONL ends up in, where readers resolve it."""
    if source != "webdataset":
        return [r if Path(r["path"]).is_absolute() else {**r, "path": Path(os.path.relpath(r["path"], final)).as_posix()}
                for r in read_source(source, **arguments)]
    rel = Path("images") / split
    records = read_source(source, **arguments, out_image_dir=out / rel)
    return [{**r, "path": (rel / Path(r["path"]).name).as_posix()} for r in records]


def paper_splits(p: DataParams, out: Path, final: Path) -> dict[str, list[dict]]:
    """B from `p.source` (`paper_b`), T from `p.source_t` (`paper_t`), cut to n_b / n_t."""
    if not p.paper_b or not p.paper_t:
        raise PipelineError(f"data.source={p.source} / data.source_t={p.source_t} need data.paper_b and data.paper_t "
                            "(reader arguments): see README 'Paper scale'")
    return {"B": read_split_source(p.source, p.paper_b, "B", out, final)[: p.n_b],
            "T": read_split_source(p.source_t, p.paper_t, "T", out, final)[: p.n_t]}


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    set_seed(get_seed(params))
    p = section(params.get("data"), DataParams, "data")
    scale = offline("mini" if p.source == "easy_vqa" else "paper")  # mini: never the network
    paths = get_paths(params, "captions", "metrics")

    with atomic_dir(paths.captions) as tmp:
        if p.source == "easy_vqa":
            from gmail.data.easy_vqa_captions import easy_vqa_splits  # mini only: paper scale never imports it

            splits = easy_vqa_splits(p.n_a, p.n_b, p.n_t, tmp)
        else:
            splits = paper_splits(p, tmp, paths.captions)
        for name, records in splits.items():
            validate_records([dict(r) for r in records], f"split {name}")
            write_jsonl(tmp / f"{name}.jsonl", records)
    metrics = {f"n_{k.lower()}": len(v) for k, v in splits.items()}
    metrics["refs_per_image"] = min(len(r["captions"]) for v in splits.values() for r in v)
    metrics["distinct_captions_b"] = len({c for r in splits["B"] for c in r["captions"]})
    metrics["scale"] = scale
    write_json(paths.metrics / "captions.json", metrics)
    print(f"captions: {', '.join(f'{k}={len(v)}' for k, v in splits.items())} -> {paths.captions}")


if __name__ == "__main__":
    sys.exit(run(main))

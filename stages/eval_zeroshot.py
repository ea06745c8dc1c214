"""Stage `eval_zeroshot` (paper T4): zero-shot classification of every row, CLIP's protocol
through CLIP_benchmark's `zero_shot_classifier` (prompt templates averaged per class),
`accuracy` and mean per-class recall.

Rows as in eval_retrieval (`clip` + `tune_text.rows`, mean and population std over seeds).
`source: T` classifies real T (its f_r embeddings from stage embed) by each of `attributes`,
with the templates of `gmail.eval.zeroshot_classification.MINI_TEMPLATES`; `source:
clip_benchmark` classifies the test split of each of `datasets`, built offline by
CLIP_benchmark from `root` with its own class names and templates, embedded here by f_r.
Percentages; `<metrics>/zeroshot.json` = {row: {<task>_acc1, <task>_mean_per_class_recall: {mean, std}}}.

`data` is the stage's data dep in dvc.yaml: it must hold what the source reads (T: real T's
captions file; clip_benchmark: every data set's root), checked before anything is read.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.deps import check_data_dep
from gmail.core.errors import PipelineError
from gmail.core.io import write_json
from gmail.downstream.text_tuning import TuneTextParams, check_rows, evaluate_rows, load_text_tower, row_tower_dirs
from gmail.eval.retrieval import real_test_set
from gmail.eval.zeroshot_classification import (
    MINI_TEMPLATES,
    MemoTokenizer,
    attribute_labels,
    class_weights,
    classify,
    clip_benchmark_dataset,
    mini_classnames,
)
from gmail.models.image_tower import EncoderParams, encode_images, load_tower_from_params

SOURCES = ("T", "clip_benchmark")


@dataclass
class EvalZeroshotParams:
    source: str             # T (mini: real T's attributes) | clip_benchmark (paper: `datasets` under `root`)
    attributes: list[str]   # T: which attributes to classify
    datasets: list[str]     # clip_benchmark: build_dataset names
    root: str               # clip_benchmark: dataset root, "{dataset}" replaced by the name
    data: str               # the dvc dep holding what the source reads (checked by the stage)

    def roots(self) -> dict[str, str]:
        """clip_benchmark: {task name: its dataset root}."""
        return {name.replace("/", "-"): self.root.format(dataset=name.replace("/", "-")) for name in self.datasets}

    def validate(self, name):
        if self.source not in SOURCES:
            raise PipelineError(f"{name}.source={self.source!r} is not one of {', '.join(SOURCES)}: fix params.yaml")
        tasks = self.attributes if self.source == "T" else self.datasets
        if not tasks or len(set(tasks)) != len(tasks):
            which = "attributes" if self.source == "T" else "datasets"
            raise PipelineError(f"{name}.{which} must list at least one task, each once, for source {self.source}: fix params.yaml")
        bad = [a for a in self.attributes if a not in MINI_TEMPLATES]
        if bad:
            raise PipelineError(f"{name}.attributes: no templates for {bad[0]!r}: use {', '.join(MINI_TEMPLATES)}")


def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    start = time.perf_counter()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("eval_zeroshot"), EvalZeroshotParams, "eval_zeroshot")
    tune = section(params.get("tune_text"), TuneTextParams, "tune_text")
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    offline(enc.scale)  # mini: never the network; paper: as the environment says
    check_rows(tune.rows, params.get("variants") or {})
    paths = get_paths(params, "captions", "embeddings", "text_towers", "metrics", "stats")
    device = pick_device(enc.device)
    check_data_dep([paths.captions / "T.jsonl"] if p.source == "T" else list(p.roots().values()), p.data,
                   "eval_zeroshot.data", p.source)
    towers = row_tower_dirs(paths.text_towers, tune.rows, tune.seed_list(seed))

    # 1. Tasks: (class names, templates, f_r image embeddings, labels) each.
    tasks = {}
    if p.source == "T":
        records, z_img = real_test_set(paths.captions, paths.embeddings)
        for attr in p.attributes:
            classes = mini_classnames(attr)
            tasks[attr] = (classes, MINI_TEMPLATES[attr], z_img, attribute_labels(records, attr, classes))
    else:
        image_tower = load_tower_from_params(enc, device)
        size = image_tower.load_size or image_tower.config.image_size
        for name, (task, root) in zip(p.datasets, p.roots().items()):
            classes, templates, images, labels = clip_benchmark_dataset(name, root, size)
            tasks[task] = (classes, templates, encode_images(image_tower, images, enc.batch_size, device), labels)

    # 2. Every row's towers build each task's classifier from its prompts (tokenized once) and classify.
    base = load_text_tower(enc.scale, enc.weights, enc.name, enc.pretrained, device)
    tokenizer = MemoTokenizer(base.tokenize)

    def score(tower):
        out = {}
        for task, (classes, templates, z, labels) in tasks.items():
            for k, value in classify(z, class_weights(tower, classes, templates, tokenizer, device), labels).items():
                out[f"{task}_{k}"] = value
        return out

    metrics = evaluate_rows(base, towers, score, device)
    write_json(paths.metrics / "zeroshot.json", {**metrics, "scale": enc.scale})
    write_json(paths.stats / "eval_zeroshot.json", {"seconds": round(time.perf_counter() - start, 1), "device": device})
    for row, m in metrics.items():
        print(f"{row:>10}: " + "  ".join(f"{k} {m[k]['mean']:.1f}±{m[k]['std']:.1f}" for k in sorted(m) if k.endswith("acc1")))


if __name__ == "__main__":
    sys.exit(run(main))

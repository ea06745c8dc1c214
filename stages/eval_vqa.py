"""Stage `eval_vqa`: visual question answering on real T (paper T10/T15 at mini scale).

For each variant in `eval_vqa.variants` (keys of params.yaml `variants`), an answer classifier
(MLP over [image embedding ; MiniLM question embedding], softmax over easy-vqa's 13 answers)
is trained for `eval_vqa.steps` steps, with `eval_vqa.seeds` seeds, on easy-vqa's questions
about the real B images, each image read as the variant says (generated B through f_r or f_g,
real B through f_r; `heldout_only` keeps the last `align.heldout` B images); it then answers
easy-vqa's test questions about real T, read through `eval_vqa.test_reading` (f_r: the paper's
Algorithm 1). Baselines: the same MLP without the image (question only) and the majority
training answer. Accuracy x100 overall and per question type (colour, shape, yes_no), mean
and population std over seeds.

A foreach stage over `eval_vqa.datasets` (`eval_vqa@easy_vqa`): easy-vqa is the only question
set with questions about B and T, and paper scale sets `datasets: []`, so the stage is absent from
its DAG (paper VQA is the LLM pipeline's `llm.benchmarks`). The set comes from DVC_STAGE.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from gmail.align.params import AlignParams
from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import check_lr, check_param, get_paths, get_seed, load_params, pick_device, section, set_seed
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json
from gmail.data.easy_vqa_questions import ANSWERS, load_split_questions
from gmail.data.records import read_split
from gmail.downstream.variants import READINGS, VariantParams, real_test_embeddings, training_set
from gmail.downstream.vqa import build_vqa_classifier, predict_answers, train_vqa, vqa_set
from gmail.eval.seeds import summarise_seeds
from gmail.eval.vqa import KEYS, majority_answer, vqa_accuracy
from gmail.models.text import encode_texts

# Question sets this classifier can read: each needs questions about the B and T images.
DATASETS = ("easy_vqa",)


@dataclass
class EvalVqaParams:
    datasets: list[str]
    variants: list[str]
    seeds: int
    hidden: int
    layers: int
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    test_reading: str
    device: str

    def validate(self, name):
        bad = [d for d in self.datasets if d not in DATASETS]
        if bad or len(set(self.datasets)) != len(self.datasets):
            what = f"has {bad[0]!r}" if bad else "repeats a set"
            raise PipelineError(f"{name}.datasets {what}: list each of {', '.join(DATASETS)} at most once, or [] for no VQA stage")
        if not self.variants:
            raise PipelineError(f"{name}.variants is empty: list at least one key of `variants`")
        if min(self.seeds, self.hidden, self.layers, self.steps, self.batch_size) < 1:
            raise PipelineError(f"{name}.seeds, hidden, layers, steps and batch_size must be positive: fix params.yaml")
        if self.test_reading not in READINGS:
            raise PipelineError(f"{name}.test_reading={self.test_reading!r} is not one of {', '.join(READINGS)}: fix params.yaml")
        check_lr(f"{name}.lr", self.lr)
        check_param(self.weight_decay >= 0, f"{name}.weight_decay", self.weight_decay, ">= 0")


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_stage_key("--dataset", help="an item of params.yaml `eval_vqa.datasets` (easy_vqa)")
    args = parser.parse_args(argv)
    offline()
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("eval_vqa"), EvalVqaParams, "eval_vqa")
    if args.dataset not in p.datasets:
        raise PipelineError(f"eval_vqa@{args.dataset}: {args.dataset!r} is not in eval_vqa.datasets "
                            f"({', '.join(p.datasets) or 'empty'}): add it there or run a listed set")
    defined = params.get("variants") or {}
    unknown = [v for v in p.variants if v not in defined]
    if unknown:
        raise PipelineError(f"unknown variant {unknown[0]!r} in eval_vqa.variants: use one of {', '.join(defined) or '(none defined)'} "
                            "or add it under `variants` in params.yaml")
    variants = {v: section(defined[v], VariantParams, f"variants.{v}") for v in p.variants}
    heldout = section(params.get("align"), AlignParams, "align").heldout
    paths = get_paths(params, "captions", "embeddings", "vqa_scores", "metrics", "stats")
    device = pick_device(p.device)
    # A 128-wide MLP at batch 128 is too small to split across threads, and on a busy 2-core
    # machine two OpenMP threads spin-wait: measured 619 s for the stage with 2 threads, 98 s with 1.
    torch.set_num_threads(1)
    start = time.perf_counter()

    # 1. Questions of B's and T's images, every embedding read before any training (fail fast).
    train, test = read_split(paths.captions / "B.jsonl"), read_split(paths.captions / "T.jsonl")
    q_train, q_test = load_split_questions(train, "B"), load_split_questions(test, "T")
    texts = sorted({q["question"] for q in q_train + q_test})
    q_emb = dict(zip(texts, torch.from_numpy(encode_texts(texts, device))))
    t_ids = [r["image_id"] for r in test]
    q_of = {r["image_id"]: [] for r in train}
    for q in q_train:
        q_of[q["image_id"]].append(q)
    inputs = {}
    for name, v in variants.items():
        ts = training_set(train, paths.embeddings, v, heldout)
        # A row's questions are those of the real image it stands for (several generated rows per image).
        fit = [{**q, "image_id": row_id} for row_id, src in zip(ts.ids, ts.sources) for q in q_of[train[src]["image_id"]]]
        z_test, reading, t_file = real_test_embeddings(test, paths.embeddings, v, p.test_reading)
        inputs[name] = (vqa_set(fit, ts.ids, ts.embeddings, q_emb, ANSWERS), len(ts.ids),
                        vqa_set(q_test, t_ids, z_test, q_emb, ANSWERS), reading, t_file)
    inputs["question_only"] = (vqa_set(q_train, [r["image_id"] for r in train], None, q_emb, ANSWERS), len(train),
                               vqa_set(q_test, t_ids, None, q_emb, ANSWERS), None, None)
    t_answers, t_types = [q["answer"] for q in q_test], [q["type"] for q in q_test]

    # 2. Per variant and seed: a classifier trained for a fixed step budget on the questions
    # about the variant's B images, then scored on T's questions.
    rows, details = {}, {}
    for name, (fit, n_images, test_set, reading, t_file) in inputs.items():
        per_seed = {}
        for s in range(seed, seed + p.seeds):
            model = build_vqa_classifier(0 if fit.images is None else fit.images.shape[1], fit.questions.shape[1], len(ANSWERS),
                                         p.hidden, p.layers, seed=s)
            losses = train_vqa(model, fit, p.steps, p.batch_size, p.lr, p.weight_decay, seed=s, device=device)
            predicted = [ANSWERS[i] for i in predict_answers(model, test_set, device=device).tolist()]
            per_seed[f"seed{s}"] = {**vqa_accuracy(predicted, t_answers, t_types),
                                    "final_loss": float(sum(losses[-50:]) / len(losses[-50:]))}
        rows[name] = {**summarise_seeds(list(per_seed.values()), KEYS), "seeds": p.seeds, "train_images": n_images,
                      "train_questions": len(fit), "test_reading": reading}
        details[name] = {"per_seed": per_seed, "test_embeddings": t_file}
        print(f"{name:>17}: " + "  ".join(f"{k} {rows[name][k]['mean']:.1f}±{rows[name][k]['std']:.1f}"
                                          for k in ("overall", "colour", "shape", "yes_no")))

    # 3. Majority answer of B's questions; it has no seed, so its std is 0.
    majority = majority_answer([q["answer"] for q in q_train])
    rows["majority"] = {**summarise_seeds([vqa_accuracy([majority] * len(q_test), t_answers, t_types)], KEYS),
                        "answer": majority}
    seconds = time.perf_counter() - start

    # 4. Per-seed details, then the metrics (results only) and the timing (stats).
    with atomic_dir(paths.vqa_scores) as tmp:
        write_json(tmp / "per_seed.json", {"runs": details, "test_questions": len(q_test), "majority_answer": majority})
        write_json(paths.metrics / "vqa.json", rows)
    write_json(paths.stats / "eval_vqa.json", {"seconds": round(seconds, 1), "device": device})
    print(f"eval_vqa: {len(inputs)} classifiers x {p.seeds} seeds in {seconds:.1f} s; majority answer {majority!r}")


if __name__ == "__main__":
    sys.exit(run(main))

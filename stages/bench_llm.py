"""Stage `bench_llm@<benchmark>` (llm/dvc.yaml, paper scale): put ScienceQA's test image questions
(paper T10) or MMMU's validation questions (T15) to every trained LLM variant and seed, and score
the answers by the benchmark's own rules (gmail.eval.multiple_choice).

Each question's image goes through `f_r` (params `encoder`) and the variant's real (or single)
connector, as real test images always do; prompts are LLaVA-1.5's (options lettered, "Answer with
the option's letter from the given choices directly."). An MMMU question whose options are images
has no single image to show and gets MMMU's seeded random letter. `llm.benchmarks` is empty at
mini scale (no benchmark files ship offline), so DVC makes no such stage there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gmail.core.cli import offline, run, stage_parser
from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed, torch_dtype
from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, write_json
from gmail.data.mc_benchmarks import load_benchmark_images, read_mmmu, read_scienceqa
from gmail.downstream import llava
from gmail.downstream.llava import LlmParams
from gmail.eval.multiple_choice import mmmu_prompt, scienceqa_prompt, score_mmmu, score_scienceqa
from gmail.eval.seeds import summarise_seeds
from gmail.models.image_tower import EncoderParams, encode_images, load_tower_from_params
from gmail.models.llm import load_llm

KINDS = ("scienceqa", "mmmu")


@dataclass
class BenchmarkParams:
    kind: str    # scienceqa | mmmu
    root: str    # scienceqa: folder of problems.json, pid_splits.json, images/<split>/; mmmu: folder of the parquet files
    split: str   # scienceqa: test (paper T10); mmmu: validation (T15)

    def validate(self, name):
        if self.kind not in KINDS:
            raise PipelineError(f"{name}.kind={self.kind!r} is not one of {', '.join(KINDS)}: fix params.yaml")


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_stage_key("--benchmark", help="a key of params.yaml `llm.benchmarks`")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    seed = get_seed(params)
    set_seed(seed)
    p = section(params.get("llm"), LlmParams, "llm")
    if args.benchmark not in p.benchmarks:
        raise PipelineError(f"unknown benchmark {args.benchmark!r}: add it under llm.benchmarks (kind, root, split)")
    b = section(p.benchmarks[args.benchmark], BenchmarkParams, f"llm.benchmarks.{args.benchmark}")
    enc = section(params.get("encoder"), EncoderParams, "encoder")
    scale = offline("mini" if p.model.llm == "smollm2" and enc.scale == "mini" else "paper")  # paper: as the environment says
    paths = get_paths(params, "llm", "metrics")
    device, dtype = pick_device(p.device), torch_dtype(p.dtype)

    # 1. Questions, prompts and f_r embeddings of their images.
    if b.kind == "scienceqa":
        rows = read_scienceqa(b.root, b.split)
        prompts = [scienceqa_prompt(r["question"], r["choices"], r["hint"]) for r in rows]
    else:
        rows = read_mmmu(b.root, b.split)
        prompts = [mmmu_prompt(r["question"], r["options"], r["question_type"]) for r in rows]
    shown = [i for i, r in enumerate(rows) if r["image"] is not None]
    tower = load_tower_from_params(enc, device)
    z = encode_images(tower, load_benchmark_images([rows[i] for i in shown], tower.load_size or 224), enc.batch_size, device)
    del tower

    # 2. Every variant's every seed answers; scored by the benchmark's rules.
    llm, tokenizer = load_llm(p.model.llm, p.dtype)  # weights in llm.dtype (bfloat16: half the memory)
    results = {}
    with atomic_dir(paths.llm / "bench" / args.benchmark) as tmp:
        for v in p.variants:
            connector = llava.projection_for(p.variant(v).projection, "real")
            seeds = sorted((paths.llm / "models" / v).glob("seed*"), key=lambda d: int(d.name[4:]))
            if not seeds:
                raise PipelineError(f"no trained models in {paths.llm / 'models' / v}: run `dvc repro llm/dvc.yaml:train_llm@{v}` first")
            scores = []
            for folder in seeds:
                model = llava.load_llava(folder, llm, tokenizer, device)
                got = llava.answer(model, tokenizer, z, connector, [prompts[i] for i in shown], p.model.max_answer_tokens,
                                   batch_size=p.generate_batch_size, device=device, dtype=dtype)
                responses = [None] * len(rows)
                for i, text in zip(shown, got):
                    responses[i] = text
                score = score_scienceqa(responses, rows) if b.kind == "scienceqa" else score_mmmu(responses, rows, seed=42)
                scores.append(score)
                write_json(tmp / f"{v}-{folder.name}.json", {"score": score, "responses": {r["id"]: t for r, t in zip(rows, responses)}})
                llm = llava.release_llm(model)
            results[v] = {**summarise_seeds(scores, ("accuracy",)), "count": len(rows), "seeds": len(scores),
                          "kind": b.kind, "split": b.split, "scale": scale}
    write_json(paths.metrics / "llm" / "bench" / f"{args.benchmark}.json", results)
    for v, r in results.items():
        print(f"{args.benchmark} {v}: accuracy {r['accuracy']['mean']:.2f} ± {r['accuracy']['std']:.2f} over {r['count']} questions")


if __name__ == "__main__":
    sys.exit(run(main))

"""Stages `train_llm@<variant>` and `eval_llm` (llm/dvc.yaml) on the tiny downstream workspace, with a
tiny random Llama saved to a folder and loaded through the same `from_pretrained` call as the paper
scale (SmolLM2's tokenizer saved next to it)."""

import json

import pytest
from helpers import read_jsonl, tmp_inside, write_params

from gmail.core.cli import run
from stages import eval_llm, train_llm

pytestmark = pytest.mark.slow

VARIANTS = ("llm_synthetic", "llm_gmail", "llm_real")


def _llm_section(llm_dir, **overrides):
    section = {
        "variants": {"llm_synthetic": {"images": "generated", "encoder": "f_r", "projection": "single"},
                     "llm_gmail": {"images": "generated", "encoder": "f_g", "projection": "dual"},
                     "llm_real": {"images": "real", "encoder": "f_r", "projection": "single"}},
        "reading": "abstract", "seeds": 2, "steps": 2, "batch_size": 4, "lr": 1e-3, "lr_projection": 1e-3,
        "weight_decay": 0.0, "vqa": True, "vqa_fraction": 0.5, "vqa_test_questions": 5, "generate_batch_size": 2,
        "dtype": "float32", "wmd": False, "benchmarks": {}, "device": "cpu",
        "model": {"llm": str(llm_dir), "image_tokens": 2, "lora_rank": 2, "lora_alpha": 4.0, "lora_dropout": 0.0,
                  "lora_targets": ["q_proj", "v_proj"], "max_answer_tokens": 6, "system_prompt": "Be brief."},
    }
    for key, value in overrides.items():
        section[key] = {**section[key], **value} if isinstance(value, dict) and key != "variants" else value
    return section


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A 2-layer, 32-wide Llama with SmolLM2's tokenizer, saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gmail.models.llm import smollm2_gguf

    root = tmp_path_factory.mktemp("tiny_llm")
    directory, gguf_file = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1, vocab_size=len(tokenizer), tie_word_embeddings=True,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def llm_workspace(aligned_workspace, tiny_llm):
    """The aligned workspace with params `llm.yaml` (its own output folders) after train_llm for every variant."""
    import os

    ws = aligned_workspace
    params = write_params(ws / "llm.yaml", ws / "params.yaml", llm=_llm_section(tiny_llm),
                          paths={"llm": "llmrun/llm", "plots": "llmrun/plots", "stats": "llmrun/stats", "metrics": "llmrun/metrics"})
    old = os.getcwd()
    os.chdir(ws)
    try:
        for v in VARIANTS:
            train_llm.main(["--params", params, "--variant", v])
        eval_llm.main(["--params", params])
    finally:
        os.chdir(old)
    return ws


def test_train_llm_writes_models_captions_and_answers_per_seed(llm_workspace):
    ws = llm_workspace
    t_ids = [r["image_id"] for r in read_jsonl(ws / "data/captions/T.jsonl")]
    for v in VARIANTS:
        preds = ws / "llmrun/llm/predictions" / v
        for seed in (0, 1):
            rows = json.loads((preds / f"seed{seed}.json").read_text())
            assert [r["image_id"] for r in rows] == t_ids and all(isinstance(r["caption"], str) for r in rows)
            answers = json.loads((preds / f"vqa-seed{seed}.json").read_text())
            assert len(answers) == 5 and {r["type"] for r in answers} <= {"colour", "shape", "yes_no"}
            assert all(r["image_id"] in t_ids and isinstance(r["prediction"], str) for r in answers)
            model = ws / "llmrun/llm/models" / v / f"seed{seed}"
            assert (model / "llava.json").is_file() and (model / "adapter/adapter_config.json").is_file()
            curve = (ws / "llmrun/plots/llm" / v / f"loss-seed{seed}.tsv").read_text().splitlines()
            assert curve[0] == "step\tloss" and len(curve) == 1 + 2
        # The same 5 questions for every seed (a seeded subsample fixed by the top-level seed).
        q0 = [(r["image_id"], r["question"]) for r in json.loads((preds / "vqa-seed0.json").read_text())]
        assert q0 == [(r["image_id"], r["question"]) for r in json.loads((preds / "vqa-seed1.json").read_text())]
    stats = json.loads((ws / "llmrun/stats/train_llm-llm_gmail.json").read_text())
    assert set(stats["runs"]) == {"seed0", "seed1"} and stats["runs"]["seed0"]["train_s"] > 0


def test_each_variant_records_what_it_trained_on_and_how_real_t_is_read(llm_workspace):
    info = {v: json.loads((llm_workspace / f"llmrun/llm/predictions/{v}/info.json").read_text()) for v in VARIANTS}
    assert info["llm_gmail"]["train_sets"] == ["generated: generated/B.f_g"]
    assert info["llm_gmail"]["real_connector"].startswith("copy of the trained generated connector")
    assert info["llm_synthetic"]["train_sets"] == ["single: generated/B.f_r"]
    assert info["llm_real"]["train_sets"] == ["single: real/B.f_r"]
    assert all(i["reading"] == "abstract" and i["test_embeddings"] == "real/T.f_r.npy" for i in info.values())
    assert info["llm_gmail"]["test_connector"] == "real" and info["llm_synthetic"]["test_connector"] == "single"


def test_reading_abstract_copies_the_generated_connector_into_the_real_one(llm_workspace):
    from safetensors.torch import load_file

    w = load_file(str(llm_workspace / "llmrun/llm/models/llm_gmail/seed0/projections.safetensors"))
    assert set(w) == {f"{c}.{i}.{p}" for c in ("generated", "real") for i in (0, 2) for p in ("weight", "bias")}
    assert all((w[f"real.{k}"] == w[f"generated.{k}"]).all() for k in ("0.weight", "0.bias", "2.weight", "2.bias"))


def test_reading_algorithm1_trains_the_real_connector_on_real_images(llm_workspace, tiny_llm, monkeypatch):
    from safetensors.torch import load_file

    ws = llm_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "alg1.yaml", ws / "llm.yaml", llm={"reading": "algorithm1", "seeds": 1},
                     paths={"llm": "alg1/llm", "plots": "alg1/plots", "stats": "alg1/stats"})
    train_llm.main(["--params", p, "--variant", "llm_gmail"])
    info = json.loads((ws / "alg1/llm/predictions/llm_gmail/info.json").read_text())
    assert info["reading"] == "algorithm1" and info["real_connector"] == "trained on f_r(real B)"
    assert info["train_sets"] == ["generated: generated/B.f_g", "real: real/B.f_r"]
    w = load_file(str(ws / "alg1/llm/models/llm_gmail/seed0/projections.safetensors"))
    assert not (w["real.0.weight"] == w["generated.0.weight"]).all()


def test_training_is_reproducible_and_seeds_differ(llm_workspace, monkeypatch):
    ws = llm_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "again.yaml", ws / "llm.yaml", llm={"seeds": 1},
                     paths={"llm": "again/llm", "plots": "again/plots", "stats": "again/stats"})
    train_llm.main(["--params", p, "--variant", "llm_synthetic"])
    first = ws / "llmrun/llm/models/llm_synthetic/seed0/projections.safetensors"
    assert (ws / "again/llm/models/llm_synthetic/seed0/projections.safetensors").read_bytes() == first.read_bytes()
    assert (ws / "again/plots/llm/llm_synthetic/loss-seed0.tsv").read_text() == \
        (ws / "llmrun/plots/llm/llm_synthetic/loss-seed0.tsv").read_text()
    assert first.read_bytes() != (ws / "llmrun/llm/models/llm_synthetic/seed1/projections.safetensors").read_bytes()


def test_eval_llm_writes_caption_metrics_like_eval_caption_and_vqa_per_type(llm_workspace):
    import numpy as np

    ws = llm_workspace
    for v in VARIANTS:
        m = json.loads((ws / f"llmrun/metrics/llm/caption/{v}.json").read_text())
        per_seed = json.loads((ws / f"llmrun/llm/scores/{v}.json").read_text())["per_seed"]
        for key in ("bleu1", "bleu4", "meteor", "rouge_l", "cider", "attr_colour", "attr_shape"):
            values = [per_seed[s][key] for s in ("seed0", "seed1")]
            assert m[key]["mean"] == pytest.approx(np.mean(values)) and m[key]["std"] == pytest.approx(np.std(values))
        assert m["spice"] is None and m["wmd"] is None and m["seeds"] == 2
        assert (m["test_reading"], m["reading"]) == ("f_r", "abstract")
    vqa = json.loads((ws / "llmrun/metrics/llm/vqa.json").read_text())
    assert set(vqa) == set(VARIANTS)
    for v, row in vqa.items():
        assert row["questions"] == 5 and row["seeds"] == 2
        assert 0 <= row["overall"]["mean"] <= 100
        assert all(row[k] is None or 0 <= row[k]["mean"] <= 100 for k in ("colour", "shape", "yes_no"))


def test_eval_llm_scores_perfect_answers_and_captions_as_perfect(llm_workspace, tiny_llm, monkeypatch, tmp_path):
    ws = llm_workspace
    monkeypatch.chdir(ws)
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    src = ws / "llmrun/llm/predictions/llm_real"
    dst = tmp_path / "llm/predictions/llm_real"
    dst.mkdir(parents=True)
    test = read_jsonl(ws / "data/captions/T.jsonl")
    (dst / "seed0.json").write_text(json.dumps([{"image_id": r["image_id"], "caption": r["captions"][0]} for r in test]))
    answers = json.loads((src / "vqa-seed0.json").read_text())
    (dst / "vqa-seed0.json").write_text(json.dumps([{**r, "prediction": f" {r['answer'].upper()}. "} for r in answers]))
    (dst / "info.json").write_text((src / "info.json").read_text())
    only_real = {"llm_real": {"images": "real", "encoder": "f_r", "projection": "single"}}
    p = write_params(ws / "perfect.yaml", ws / "llm.yaml", replace=("llm",), llm=_llm_section(tiny_llm, variants=only_real),
                     paths={"llm": str(tmp_path / "llm"), "metrics": str(tmp_path / "m")})
    eval_llm.main(["--params", p])
    assert json.loads((tmp_path / "m/llm/caption/llm_real.json").read_text())["bleu1"]["mean"] == pytest.approx(100, abs=1e-3)
    vqa = json.loads((tmp_path / "m/llm/vqa.json").read_text())["llm_real"]
    assert vqa["overall"] == {"mean": 100.0, "std": 0.0}


def test_bad_input_is_one_line_and_writes_nothing(llm_workspace, tiny_llm, monkeypatch, capsys, tmp_path):
    ws = llm_workspace
    monkeypatch.chdir(ws)
    tmp_path = tmp_inside(ws, tmp_path)  # stages write only inside their working directory
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_llm / "config.json").read_text())
    out = {"llm": str(tmp_path / "o/llm"), "plots": str(tmp_path / "o/plots"), "stats": str(tmp_path / "o/stats")}
    base = ws / "llm.yaml"
    cases = [
        ("llm_gmail", write_params(ws / "b1.yaml", base, paths=out, llm={"model": {"llm": str(no_weights)}}), "has no weights"),
        ("llm_nope", write_params(ws / "b2.yaml", base, paths=out), "unknown LLM variant 'llm_nope'"),
        ("llm_gmail", write_params(ws / "b3.yaml", base, paths=out, llm={"reading": "both"}), "llm.reading='both'"),
        ("llm_gmail", write_params(ws / "b4.yaml", base, paths=out, llm={"model": {"llm": str(tmp_path / "missing")}}),
         "does not exist"),
        ("llm_gmail", write_params(ws / "b5.yaml", base, paths=out, llm={"model": {"lora_targets": ["no_such_layer"]}}),
         "lora_targets"),
        ("llm_gmail", write_params(ws / "b6.yaml", base, paths=out, llm={"variants": {
            "llm_gmail": {"images": "real", "encoder": "f_r", "projection": "dual"}}}), "dual projection"),
    ]
    for variant, params, message in cases:
        assert run(train_llm.main, ["--params", params, "--variant", variant]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()
    # eval_llm before any training: one line, no metrics.
    p = write_params(ws / "b7.yaml", base, paths={"llm": str(tmp_path / "empty"), "metrics": str(tmp_path / "m")})
    assert run(eval_llm.main, ["--params", p]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train_llm@llm_synthetic" in err[0]
    assert not (tmp_path / "m").exists()


def _benchmark_files(root):
    """A 2-question ScienceQA test split and a 2-question MMMU validation file (one with option images)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
        return buf.getvalue()

    sqa = root / "scienceqa"
    problems = {str(i): {"question": f"Which colour is shape {i}?", "choices": ["red", "blue", "green"], "answer": i,
                         "hint": "", "image": "image.png", "split": "test"} for i in (0, 1)}
    (sqa / "images/test/0").mkdir(parents=True)
    (sqa / "images/test/1").mkdir(parents=True)
    (sqa / "images/test/0/image.png").write_bytes(png("red"))
    (sqa / "images/test/1/image.png").write_bytes(png("blue"))
    (sqa / "problems.json").write_text(json.dumps(problems))
    (sqa / "pid_splits.json").write_text(json.dumps({"test": ["0", "1"]}))
    mmmu = root / "mmmu/Art"
    mmmu.mkdir(parents=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({
        "id": ["validation_Art_1", "validation_Art_2"], "question": ["Which style is <image 1>?", "Which is older?"],
        "options": ["['Baroque', 'Cubism']", "[\"<img='1.png'>\", \"<img='2.png'>\"]"], "answer": ["B", "A"],
        "question_type": ["multiple-choice", "multiple-choice"],
        "image_1": [{"bytes": png("green"), "path": "a.png"}, {"bytes": png("red"), "path": "b.png"}],
    }, schema=pa.schema([("id", pa.string()), ("question", pa.string()), ("options", pa.string()), ("answer", pa.string()),
                         ("question_type", pa.string()), ("image_1", image)])), mmmu / "validation-00000-of-00001.parquet")
    return {"sqa": {"kind": "scienceqa", "root": str(sqa), "split": "test"},
            "mmmu": {"kind": "mmmu", "root": str(root / "mmmu"), "split": "validation"}}


def test_bench_llm_answers_scienceqa_and_mmmu_with_every_trained_model(llm_workspace, monkeypatch, capsys, tmp_path):
    from stages import bench_llm

    ws = llm_workspace
    monkeypatch.chdir(ws)
    p = write_params(ws / "bench.yaml", ws / "llm.yaml", llm={"benchmarks": _benchmark_files(tmp_path)})
    for name in ("sqa", "mmmu"):
        bench_llm.main(["--params", p, "--benchmark", name])
        m = json.loads((ws / f"llmrun/metrics/llm/bench/{name}.json").read_text())
        assert set(m) == set(VARIANTS)
        for v, row in m.items():
            assert row["count"] == 2 and row["seeds"] == 2 and 0 <= row["accuracy"]["mean"] <= 100
            out = json.loads((ws / f"llmrun/llm/bench/{name}/{v}-seed1.json").read_text())
            assert set(out["responses"]) == ({"0", "1"} if name == "sqa" else {"validation_Art_1", "validation_Art_2"})
    mmmu = json.loads((ws / "llmrun/llm/bench/mmmu/llm_gmail-seed0.json").read_text())
    assert mmmu["responses"]["validation_Art_2"] is None and mmmu["score"]["fallback"] == 1  # option images: seeded letter
    assert isinstance(mmmu["responses"]["validation_Art_1"], str)
    assert run(bench_llm.main, ["--params", p, "--benchmark", "vqav2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown benchmark 'vqav2'" in err[0]


def test_without_vqa_only_captions_are_trained_and_scored(llm_workspace, tiny_llm, monkeypatch):
    ws = llm_workspace
    monkeypatch.chdir(ws)
    only = {"llm_gmail": {"images": "generated", "encoder": "f_g", "projection": "dual"}}
    p = write_params(ws / "novqa.yaml", ws / "llm.yaml", replace=("llm",),
                     llm=_llm_section(tiny_llm, variants=only, vqa=False, seeds=1, reading="algorithm1"),
                     paths={"llm": "novqa/llm", "plots": "novqa/plots", "stats": "novqa/stats", "metrics": "novqa/metrics"})
    train_llm.main(["--params", p, "--variant", "llm_gmail"])
    eval_llm.main(["--params", p])
    preds = ws / "novqa/llm/predictions/llm_gmail"
    assert (preds / "seed0.json").is_file() and not list(preds.glob("vqa-*.json"))
    assert json.loads((preds / "info.json").read_text())["vqa_test_questions"] == 0
    assert json.loads((ws / "novqa/metrics/llm/vqa.json").read_text()) == {}
    m = json.loads((ws / "novqa/metrics/llm/caption/llm_gmail.json").read_text())
    assert m["reading"] == "algorithm1" and m["seeds"] == 1 and "bleu4" in m


def test_bench_llm_loads_the_llm_in_llm_dtype(llm_workspace, monkeypatch, tmp_path):
    """bench_llm loads the LLM's weights in `llm.dtype`, as train_llm does (a 7-8B model in
    float32 needs ~30 GB for its weights alone), and answers with it."""
    import torch

    from gmail.models import llm as llm_module
    from stages import bench_llm

    loaded = []

    def spy(name, dtype="float32"):
        model, tokenizer = llm_module.load_llm(name, dtype)
        loaded.append({p.dtype for p in model.parameters()})
        return model, tokenizer

    ws = llm_workspace
    monkeypatch.chdir(ws)
    monkeypatch.setattr(bench_llm, "load_llm", spy)
    p = write_params(ws / "bench16.yaml", ws / "llm.yaml", paths={"metrics": "bench16/metrics"},
                     llm={"dtype": "bfloat16", "benchmarks": {"sqa16": _benchmark_files(tmp_path)["sqa"]}})
    bench_llm.main(["--params", p, "--benchmark", "sqa16"])
    assert loaded == [{torch.bfloat16}]
    m = json.loads((ws / "bench16/metrics/llm/bench/sqa16.json").read_text())
    assert set(m) == set(VARIANTS) and all(row["count"] == 2 for row in m.values())

"""benchmarks/caption_throughput.py at --scale cpu: a tiny GPT-2 saved and loaded as paper scale
loads `gpt2`, trained by the caption stage's `train_clipcap` at paper shapes."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
from helpers import ROOT


def _load_benchmark():
    """benchmarks/ is a folder of scripts, not a package: load the file itself."""
    spec = importlib.util.spec_from_file_location("benchmarks_caption_throughput", ROOT / "benchmarks" / "caption_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def test_cpu_benchmark_times_every_run(tmp_path):
    out = tmp_path / "stats" / "caption_throughput.json"
    bench.main(["--scale", "cpu", "--steps", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["scale"] == "cpu" and result["device"] and result["transformers"]
    s = result["settings"]
    assert (s["prefix_length"], s["max_length"], s["batch_size"]) == (10, 40, 4)
    runs = {(r["precision"], r["captions"]): r for r in result["runs"]}
    assert set(runs) == {("fp32", "coco"), ("bf16", "max")}
    for r in runs.values():
        assert r["steps"] == 2 and math.isfinite(r["last_loss"])
        assert r["steps_per_s"] == pytest.approx(2 / r["seconds"])
        assert r["captions_per_s"] == pytest.approx(r["steps_per_s"] * 4)
    # "max" captions are cut at max_length (+ end-of-text); COCO-like ones are a dozen tokens.
    assert runs["bf16", "max"]["mean_caption_tokens"] == 41
    assert 8 < runs["fp32", "coco"]["mean_caption_tokens"] < 20


def test_decoder_is_loaded_like_paper_gpt2(tmp_path):
    from gmail.downstream.clipcap import gpt2_tokenizer

    tokenizer = gpt2_tokenizer(tmp_path / "tok")
    model = bench.build_model(bench.WORKLOADS["cpu"], tokenizer, tmp_path)
    # The from_pretrained branch of build_clipcap: GPT-2's full vocabulary, no compact one.
    assert model.vocab is None and model.decoder.config.vocab_size == len(tokenizer) == 50257
    assert model.config.decoder == str(tmp_path / "gpt2") and model.eos_id == tokenizer.eos_token_id
    gpu = bench.WORKLOADS["gpu"]  # GPT-2 small at params.paper.yaml's caption shapes
    assert (gpu.n_layer, gpu.n_embd, gpu.n_head, gpu.prefix_length, gpu.prefix_hidden, gpu.max_length, gpu.batch_size) == (
        12, 768, 12, 10, 3840, 40, 40)

"""benchmarks/align_throughput.py at --scale cpu: a tiny open_clip ViT through the align stage's
loader, LoRA and training loop, with inputs held on the device and streamed."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
from helpers import ROOT


def _load_benchmark():
    """benchmarks/ is a folder of scripts, not a package: load the file itself."""
    spec = importlib.util.spec_from_file_location("benchmarks_align_throughput", ROOT / "benchmarks" / "align_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def test_cpu_benchmark_times_every_run(tmp_path):
    out = tmp_path / "stats" / "align_throughput.json"
    bench.main(["--scale", "cpu", "--runs", "device:fp32,stream:bf16", "--steps", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["scale"] == "cpu" and result["device"] and result["open_clip"] and result["peft"]
    s = result["settings"]
    assert s["image_size"] == 32 and s["embed_dim"] == 16 and s["rank"] == 4 and s["batch_size"] == 8
    assert s["lora_trainable_params"] > 0
    assert [(r["inputs"], r["precision"]) for r in result["runs"]] == [("device", "fp32"), ("stream", "bf16")]
    for r in result["runs"]:
        assert r["steps"] == 2 and r["pairs"] == 2 * 8 and math.isfinite(r["last_loss"])
        assert r["pairs_per_s"] == pytest.approx(r["pairs"] / r["seconds"])
        assert r["coco_5_epochs_seconds"] == pytest.approx(566_435 * 5 / r["pairs_per_s"])


def test_gpu_scale_is_the_paper_setting_and_runs_are_checked():
    wl = bench.WORKLOADS["gpu"]
    # params.paper.yaml / DESIGN.md section 6: ViT-B-32, LoRA r4, batch 256 (224 px comes from the tower).
    assert (wl.model, wl.rank, wl.batch_size, wl.layers) == ("ViT-B-32", 4, 256, "head")
    assert ("device", "bf16") in bench.parse_runs(bench.RUNS["gpu"])  # the anchor's setting
    with pytest.raises(SystemExit, match="inputs:precision"):
        bench.parse_runs("device:fp16")

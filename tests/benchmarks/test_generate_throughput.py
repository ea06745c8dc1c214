"""benchmarks/generate_throughput.py at --scale cpu (tiny SD2 / FLUX architectures), and the speed
options it times (gmail.generation.paper_pipelines: speed_up_pipeline, pipeline_sampler)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading

import numpy as np
import pytest
import torch
from helpers import ROOT

from gmail.core.errors import PipelineError
from gmail.data.shards import read_shards, write_shard
from gmail.generation.paper_pipelines import _prefetched, load_paper_pipeline, paper_sampler, pipeline_sampler, speed_up_pipeline


def _load_benchmark():
    """benchmarks/ is a folder of scripts, not a package: load the file itself."""
    spec = importlib.util.spec_from_file_location("benchmarks_generate_throughput", ROOT / "benchmarks" / "generate_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()
SIZE, STEPS = 64, 2
PROMPTS = bench.CAPTIONS[:4]
SEEDS = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def sd2_pipe():
    return bench.build_pipeline("sd2", "cpu", "cpu", "float32")


def _stock(pipe, seeds, batch_size=4):
    wl = bench.Workload("sd2", SIZE, STEPS, 7.5, batch_size, batches=1, warmup_batches=0, dtype="float32")
    images = []
    for i in range(0, len(seeds), batch_size):
        images += bench._stock_batch(pipe, wl, PROMPTS[i:i + batch_size], seeds[i:i + batch_size])
    return [np.asarray(img.convert("RGB"), dtype=np.int16) for img in images]


def _ours_through_shard(pipe, seeds, tmp_path, batch_size=4, **options):
    sampler = pipeline_sampler(pipe, STEPS, 7.5, SIZE, batch_size, **options)
    metas = [{"id": f"im{i}", "caption": p, "index": i, "seed": s} for i, (p, s) in enumerate(zip(PROMPTS, seeds))]
    path = tmp_path / "shard-00000.tar"
    assert write_shard(path, zip(metas, sampler(list(PROMPTS), list(seeds)), strict=True)) == len(seeds)
    return [img.astype(np.int16) for _, img in read_shards([path])]


def test_cpu_benchmark_writes_both_paths(tmp_path):
    out = tmp_path / "stats" / "generate_throughput.json"
    bench.main(["--scale", "cpu", "--batches", "2", "--batch-size", "2", "--warmup-batches", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["scale"] == "cpu" and result["families"] == ["sd2", "flux"] and result["device"]
    for family in ("sd2", "flux"):
        r = result[family]
        assert r["stock"]["img_per_s"] > 0 and r["ours"]["img_per_s"] > 0
        assert r["stock"]["images"] == r["ours"]["images"] == 4 and r["same_count"]
        assert r["ours"]["shards"] == 1 and r["ours"]["kib_per_image"] > 0
        assert r["ours_over_stock"] == pytest.approx(r["ours"]["img_per_s"] / r["stock"]["img_per_s"])
        # Same seeds, same batches, no rounding-changing options at cpu scale: identical pixels,
        # and the images are not blank (else equality would prove nothing).
        assert r["max_pixel_diff"] == 0 and r["stock_pixel_std"] > 1


def test_ours_equals_stock_and_seeds_matter(sd2_pipe, tmp_path):
    stock = _stock(sd2_pipe, SEEDS)
    ours = _ours_through_shard(sd2_pipe, SEEDS, tmp_path, prefetch=1)
    assert len(ours) == len(stock) == 4
    for a, b in zip(stock, ours):
        assert np.array_equal(a, b)
    # A batch of a different size changes float rounding only.
    for a, b in zip(stock, _ours_through_shard(sd2_pipe, SEEDS, tmp_path, batch_size=3)):
        assert np.abs(a - b).max() <= 1
    # Other seeds give other images, so the equality above is not vacuous.
    other = _stock(sd2_pipe, [s + 100 for s in SEEDS])
    assert all(np.abs(a - b).max() > 2 for a, b in zip(stock, other))


@pytest.mark.parametrize("family", ["sd2", "flux"])
def test_speed_options_change_rounding_only(family, tmp_path):
    pipe = bench.build_pipeline(family, "cpu", "cpu", "float32", t5_tokens=64)
    wl = bench.Workload(family, SIZE, STEPS, 7.5 if family == "sd2" else 0.0, 4, 1, 0, "float32", t5_tokens=64)
    stock = [np.asarray(img, dtype=np.int16) for img in bench._stock_batch(pipe, wl, list(PROMPTS), SEEDS)]
    speed_up_pipeline(pipe, channels_last=True, fuse_qkv=True)
    denoiser = pipe.transformer if family == "flux" else pipe.unet
    assert any(getattr(m, "fused_projections", False) for m in denoiser.modules())
    sampler = pipeline_sampler(pipe, STEPS, wl.guidance, SIZE, 4, prefetch=2, attention_backend="math")
    ours = [img.astype(np.int16) for img in sampler(list(PROMPTS), SEEDS)]
    # Fused matmuls and NHWC convolutions round differently; a pixel may move by one step
    # (two allowed for other CPUs' kernels), never by more.
    assert len(ours) == 4 and all(np.abs(a - b).max() <= 2 for a, b in zip(stock, ours))


def test_prefetch_passes_items_and_errors_and_stops_early():
    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError("boom at item 3")
            yield i

    assert list(_prefetched(items(7), depth=2)) == list(range(7))
    got = []
    with pytest.raises(ValueError, match="boom"):
        for i in _prefetched(items(7, fail_at=3), depth=2):
            got.append(i)
    assert got == [0, 1, 2]
    # Closing early stops the producer thread instead of leaving it blocked on a full queue.
    it = _prefetched(items(10**6), depth=1)
    assert next(it) == 0
    it.close()
    assert not any(t.name == "paper-sampler-prefetch" for t in threading.enumerate())


def test_bad_speed_options(sd2_pipe):
    with pytest.raises(PipelineError, match="compile mode"):
        speed_up_pipeline(sd2_pipe, compile_mode="reduce-overhead")
    with pytest.raises(PipelineError, match="compile mode"):
        load_paper_pipeline("sd2", "whatever", dtype="float32", device="cpu", compile_mode="fast")
    with pytest.raises(PipelineError, match="attention backend"):
        pipeline_sampler(sd2_pipe, STEPS, 7.5, SIZE, 4, attention_backend="xformers")
    with pytest.raises(PipelineError, match="prefetch"):
        paper_sampler("sd2", "whatever", STEPS, 7.5, SIZE, 4, dtype="float32", device="cpu", prefetch=-1)


def test_real_configs_are_the_published_architectures():
    """The gpu-scale configs build the published sizes (checked on the meta device: no memory)."""
    import diffusers

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**bench.SD2_UNET)
        flux = diffusers.FluxTransformer2DModel(**bench.FLUX_TRANSFORMER)
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(865.9e6, rel=0.01)  # SD2-base UNet
    assert sum(p.numel() for p in flux.parameters()) == pytest.approx(11.9e9, rel=0.01)  # FLUX.1-schnell

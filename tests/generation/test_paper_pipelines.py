"""Tests for the paper-scale generation path, run on tiny randomly initialised pipelines.

Each tiny pipeline uses the same diffusers/transformers classes as the paper checkpoints, is
saved with `save_pretrained` and loaded back through `load_paper_pipeline`, so the exact
`from_pretrained` call used at paper scale is exercised without any download.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in these tests may reach the Hub

import numpy as np
import pytest
import torch

from gmail.core.errors import PipelineError
from gmail.generation.paper_pipelines import generate_paper_images, load_paper_pipeline
from tools.paper_fixtures import tiny_flux_pipeline, tiny_sd2_pipeline

SIZE = 32
STEPS = 2
CAPTIONS = ["a red cube on a table", "two dogs in the snow", "a city at night"]
SEEDS = [11, 22, 33]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Run the tiny models single-threaded: they gain nothing from threads, and on a busy
    2-core machine OpenMP threads competing with another process made a test 50x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sd2_dir(tmp_path_factory):
    """A tiny StableDiffusionPipeline saved to disk."""
    path = tmp_path_factory.mktemp("tiny-sd2")
    tiny_sd2_pipeline(SIZE).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    """A tiny FluxPipeline saved to disk (no guidance embedding, like schnell)."""
    path = tmp_path_factory.mktemp("tiny-flux")
    tiny_flux_pipeline(SIZE).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sd2_pipe(sd2_dir):
    return load_paper_pipeline("sd2", str(sd2_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def flux_pipe(flux_dir):
    return load_paper_pipeline("flux", str(flux_dir), dtype="float32", device="cpu")


def _run(pipe, captions, seeds, batch_size, guidance):
    out = list(
        generate_paper_images(
            pipe, captions, seeds, steps=STEPS, guidance=guidance, height=SIZE, width=SIZE, batch_size=batch_size
        )
    )
    assert [i for i, _ in out] == list(range(len(captions)))
    return [np.asarray(img, dtype=np.int16) for _, img in out]


def _run_size(pipe, height, width):
    return [
        img
        for _, img in generate_paper_images(
            pipe, CAPTIONS[:1], SEEDS[:1], steps=1, guidance=1.0, height=height, width=width, batch_size=1
        )
    ]


def test_sd_loader_uses_ddim_and_no_safety_checker(sd2_pipe):
    from diffusers import DDIMScheduler

    assert isinstance(sd2_pipe.scheduler, DDIMScheduler)
    assert sd2_pipe.safety_checker is None


@pytest.mark.parametrize("family,guidance", [("sd2", 7.5), ("flux", 0.0)])
def test_size_determinism_and_batch_independence(family, guidance, request):
    pipe = request.getfixturevalue(f"{family}_pipe")
    batched = _run(pipe, CAPTIONS, SEEDS, batch_size=3, guidance=guidance)
    assert all(img.shape == (SIZE, SIZE, 3) for img in batched)
    single = _run(pipe, CAPTIONS, SEEDS, batch_size=1, guidance=guidance)
    for a, b in zip(batched, single):
        # Batched and single-prompt forward passes may differ in float rounding only.
        assert np.abs(a - b).max() <= 2
    again = _run(pipe, CAPTIONS[:1], SEEDS[:1], batch_size=1, guidance=guidance)
    assert np.array_equal(again[0], single[0])
    # A different seed must actually change the image, else the checks above prove nothing.
    other = _run(pipe, CAPTIONS[:1], [SEEDS[0] + 1], batch_size=1, guidance=guidance)
    assert np.abs(other[0] - single[0]).max() > 2


@pytest.mark.parametrize("family", ["sd2", "flux"])
def test_non_square_size(family, request):
    (img,) = _run_size(request.getfixturevalue(f"{family}_pipe"), height=16, width=32)
    assert img.size == (32, 16)


def test_dtype_is_applied_to_every_model(sd2_dir):
    pipe = load_paper_pipeline("sd2", str(sd2_dir), dtype="bfloat16", device="cpu")
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16


def test_unknown_family_and_dtype():
    with pytest.raises(PipelineError, match="sd2, flux"):
        load_paper_pipeline("sdxl", "whatever", dtype="float32", device="cpu")
    with pytest.raises(PipelineError, match="float32"):
        load_paper_pipeline("sd2", "whatever", dtype="int8", device="cpu")


def test_bad_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(PipelineError, match="no-such-model"):
        load_paper_pipeline("sd2", str(missing), dtype="float32", device="cpu")
    with pytest.raises(PipelineError, match="no-such-model"):
        load_paper_pipeline("flux", str(missing), dtype="float32", device="cpu")


def test_bad_generation_arguments(sd2_pipe):
    with pytest.raises(PipelineError, match="seed"):
        list(generate_paper_images(sd2_pipe, CAPTIONS, SEEDS[:2], 1, 1.0, SIZE, SIZE, 1))
    with pytest.raises(PipelineError, match="multiple"):
        list(generate_paper_images(sd2_pipe, CAPTIONS[:1], SEEDS[:1], 1, 1.0, SIZE + 1, SIZE, 1))
    with pytest.raises(PipelineError, match="batch"):
        list(generate_paper_images(sd2_pipe, CAPTIONS[:1], SEEDS[:1], 1, 1.0, SIZE, SIZE, 0))


@pytest.mark.parametrize("family", ["sd2", "flux"])
def test_generate_stage_at_paper_scale(family, request, tmp_path, monkeypatch):
    """stages.generate with gen.scale=paper loads the saved pipeline through load_paper_pipeline."""
    import json

    from helpers import write_params

    from gmail.data.shards import list_shards, read_shards
    from stages import generate

    model_dir = request.getfixturevalue(f"{family}_dir")
    monkeypatch.chdir(tmp_path)
    caps = tmp_path / "caps"
    caps.mkdir()
    rows = [{"image_id": f"im{i}", "path": f"images/im{i}.png", "captions": [f"a red shape number {i}"]} for i in range(3)]
    (caps / "B.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = write_params(tmp_path / "p.yaml", seed=3, paths={"captions": str(caps), "generated": str(tmp_path / "gen")},
                          gen={"scale": "paper", "model": family, "per_real": 1, "weights": str(model_dir), "steps": STEPS, "guidance": 2.0,
                               "resolution": SIZE, "batch_size": 2, "dtype": "float32", "device": "cpu"})
    generate.main(["--params", params])
    out = [json.loads(x) for x in (tmp_path / "gen/manifest.jsonl").read_text().splitlines()]
    assert [r["source_id"] for r in out] == ["im0", "im1", "im2"] and [r["seed"] for r in out] == [3, 4, 5]
    images = list(read_shards(list_shards(tmp_path / "gen/shards")))
    assert [m["id"] for m, _ in images] == ["im0_0", "im1_0", "im2_0"]
    assert all(img.shape == (SIZE, SIZE, 3) for _, img in images)
    metrics = json.loads((tmp_path / "metrics/generate.json").read_text())
    assert metrics["scale"] == "paper" and metrics["model"] == family and metrics["count"] == 3


def test_parse_model_takes_families_and_pinned_hub_ids_only():
    from gmail.generation.paper_pipelines import parse_model

    sha = "0123456789abcdef" * 2 + "01234567"
    assert parse_model("sd2") == ("sd2", None) and parse_model("flux") == ("flux", None)
    assert parse_model(f"stabilityai/stable-diffusion-xl-base-1.0@{sha}") == ("stabilityai/stable-diffusion-xl-base-1.0", sha)
    for unpinned in ("PixArt-alpha/PixArt-XL-2-512x512", "org/name@main", f"org/name@{sha.upper()}", f"org/name@{sha[:-1]}"):
        with pytest.raises(PipelineError, match=r"is not pinned to a commit.*org/name@<40-hex commit sha>|is not pinned.*PixArt"):
            parse_model(unpinned)
    for bad in ("dalle", f"-org/name@{sha}", f"org/na me@{sha}", f"org/name/x@{sha}"):
        with pytest.raises(PipelineError, match=r"unknown gen\.model"):
            parse_model(bad)


def test_a_hub_id_loads_through_auto_pipeline_with_ddim_for_stable_diffusion(sd2_dir, tmp_path, monkeypatch):
    """`load_paper_pipeline("org/name@<sha>", None)`: AutoPipelineForText2Image at that commit from the cache."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from huggingface_hub import constants

    from tools.paper_fixtures import write_hub_snapshot

    sha = "c" * 40
    write_hub_snapshot(tmp_path / "hf_home", "gmail-smoke/tiny-sd2", sha, sd2_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    pipe = load_paper_pipeline(f"gmail-smoke/tiny-sd2@{sha}", None, dtype="float32", device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None

"""Pretrain stages (clip, generator@sd2, fidelity@sd2) end to end on a handful of easy-vqa images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gmail.cli import run
from stages import captions, pretrain_clip, pretrain_fidelity, pretrain_generator

PARAMS = {
    "seed": 0,
    "captions": "data/captions",
    "data": {"n_a": 6, "n_b": 1, "n_t": 4, "out": "data/captions"},
    "clip": {"image_size": 64, "embed_dim": 32, "steps": 2, "batch_size": 4, "device": "cpu", "out": "models/clip"},
    "generator": {"steps": 2, "batch_size": 4, "warmup": 1, "device": "cpu", "out": "models"},
    "sd2": {"family": "sd2", "resolution": 8, "channels": [8, 16]},
    "fidelity": {"steps": 2, "batch_size": 4, "device": "cpu"},
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        argv = ["--params", str(params)]
        captions.main(argv)
        pretrain_clip.main(argv)
        pretrain_generator.main(argv + ["--family", "sd2"])
        pretrain_fidelity.main(argv + ["--family", "sd2"])
    return root


def metrics(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / "pretrain" / f"{name}.json").read_text())


def test_clip_model_and_metrics(pipeline):
    assert (pipeline / "models" / "clip" / "config.json").is_file()
    assert (pipeline / "models" / "clip" / "model.safetensors").is_file()
    assert json.loads((pipeline / "models" / "clip" / "config.json").read_text())["embed_dim"] == 32
    m = metrics(pipeline, "clip")
    for key in ("i2t_r1", "t2i_r1", "colour_acc", "shape_acc"):
        assert 0.0 <= m[key] <= 1.0, key
    assert math.isfinite(m["final_loss"])


def test_generator_model_and_metrics(pipeline):
    out = pipeline / "models" / "sd2"
    meta = json.loads((out / "generator.json").read_text())
    assert meta["config"]["family"] == "sd2"
    assert meta["config"]["resolution"] == 8
    assert meta["config"]["channels"] == [8, 16]
    assert meta["training"]["steps_done"] == 2
    assert list((out / "unet").glob("*.safetensors"))
    assert (out / "scheduler").is_dir()
    m = metrics(pipeline, "train-sd2")
    assert m["steps_done"] == 2
    assert math.isfinite(m["final_loss"])
    assert m["device"] == "cpu"


def test_fidelity_metrics_and_grid(pipeline):
    m = metrics(pipeline, "generator-sd2")
    for attr in ("colour", "shape"):
        for kind in ("real", "generated"):
            assert 0.0 <= m[f"{attr}_acc_{kind}"] <= 1.0
        assert m[f"{attr}_ratio"] >= 0.0 and math.isfinite(m[f"{attr}_ratio"])
    assert -1.0 <= m["paired_cosine"] <= 1.0
    assert m["resolution"] == 8
    grid = pipeline / "plots" / "pretrain" / "grid-sd2.png"
    with Image.open(grid) as im:
        im.load()
        assert im.size[0] > 0


@pytest.mark.parametrize("stage", [pretrain_generator, pretrain_fidelity], ids=["generator", "fidelity"])
def test_unknown_family_exits_2(stage, pipeline, monkeypatch, capsys):
    monkeypatch.chdir(pipeline)
    assert run(stage.main, ["--params", str(pipeline / "params.yaml"), "--family", "dalle"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "dalle" in lines[0]
    assert not (pipeline / "models" / "dalle").exists()


def test_family_section_mismatch_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0, "flux": {"family": "sd2", "resolution": 8}}))
    assert run(pretrain_generator.main, ["--params", str(params), "--family", "flux"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")

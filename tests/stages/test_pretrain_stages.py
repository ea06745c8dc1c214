"""Pretrain stages (clip, generator@sd2, fidelity@sd2) end to end on a handful of easy-vqa images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import PRETRAIN_PARAMS, tiny_generator_config, write_params
from PIL import Image

from gmail.core.cli import run
from stages import captions, pretrain_clip, pretrain_fidelity, pretrain_generator

pytestmark = pytest.mark.slow

TINY_SD2 = tiny_generator_config("sd2")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    main = write_params(root / "params.yaml", data={"n_a": 6, "n_b": 1, "n_t": 4})
    pre = write_params(root / "pretrain.yaml", PRETRAIN_PARAMS, paths={"models": "models"},
                       clip={"embed_dim": 32, "steps": 2, "batch_size": 4, "device": "cpu"},
                       generator={"steps": 2, "batch_size": 4, "warmup": 1, "device": "cpu", "max_minutes": 0.0},
                       sd2={k: getattr(TINY_SD2, k) for k in ("family", "resolution", "channels", "layers_per_block")},
                       fidelity={"steps": 2, "batch_size": 4, "device": "cpu"})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        captions.main(["--params", main])
        pretrain_clip.main(["--params", pre])
        pretrain_generator.main(["--params", pre, "--family", "sd2"])
        pretrain_fidelity.main(["--params", pre, "--family", "sd2"])
    return root


def metrics(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / "pretrain" / f"{name}.json").read_text())


def test_clip_metrics_are_those_of_the_saved_model(pipeline, monkeypatch):
    from gmail.data.records import read_split
    from gmail.models.mini_clip import load_mini_clip

    assert json.loads((pipeline / "models/clip/config.json").read_text())["embed_dim"] == 32
    m = metrics(pipeline, "clip")
    assert set(m) == {"i2t_r1", "t2i_r1", "colour_acc", "shape_acc", "final_loss"} and math.isfinite(m["final_loss"])
    # Re-evaluating the model as saved gives the reported numbers: what was measured is what was kept.
    monkeypatch.chdir(pipeline)
    caps = pipeline / "data/captions"
    again = pretrain_clip.evaluate(load_mini_clip(pipeline / "models/clip"), read_split(caps / "T.jsonl"),
                                   read_split(caps / "A.jsonl"), "cpu")
    assert again == pytest.approx({k: v for k, v in m.items() if k != "final_loss"})


def test_generator_saves_the_configured_model_and_keeps_timings_out_of_metrics(pipeline):
    out = pipeline / "models" / "sd2"
    meta = json.loads((out / "generator.json").read_text())
    assert {k: meta["config"][k] for k in ("family", "resolution", "channels")} == {"family": "sd2", "resolution": 8, "channels": [8, 16]}
    assert meta["training"]["steps_done"] == 2 and list((out / "unet").glob("*.safetensors"))
    assert set(metrics(pipeline, "train-sd2")) == {"steps_done", "final_loss"}
    assert metrics(pipeline, "train-sd2")["steps_done"] == 2
    stats = json.loads((pipeline / "stats/train-sd2.json").read_text())
    assert stats["device"] == "cpu" and stats["train_minutes"] >= 0


def test_fidelity_agrees_with_the_clip_stage_on_real_images(pipeline):
    m, clip = metrics(pipeline, "generator-sd2"), metrics(pipeline, "clip")
    # Same mini CLIP, same T images, same prompts from A: the real-image accuracy is the clip stage's.
    for attr in ("colour", "shape"):
        assert m[f"{attr}_acc_real"] == pytest.approx(clip[f"{attr}_acc"])
        assert m[f"{attr}_ratio"] == pytest.approx(m[f"{attr}_acc_generated"] / max(m[f"{attr}_acc_real"], 1e-9))
    assert -1.0 <= m["paired_cosine"] <= 1.0 and m["resolution"] == 8
    with Image.open(pipeline / "plots/pretrain/grid-sd2.png") as im:
        grid = np.asarray(im.convert("RGB"))
    assert grid.shape[1] == 4 * 96  # one column per T image (4), 96 px cells


@pytest.mark.parametrize("stage", [pretrain_generator, pretrain_fidelity], ids=["generator", "fidelity"])
def test_unknown_family_exits_2(stage, pipeline, monkeypatch, capsys):
    monkeypatch.chdir(pipeline)
    assert run(stage.main, ["--params", str(pipeline / "pretrain.yaml"), "--family", "dalle"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "dalle" in lines[0]
    assert not (pipeline / "models" / "dalle").exists()


def test_family_section_mismatch_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "p.yaml", PRETRAIN_PARAMS, flux={"family": "sd2"})
    assert run(pretrain_generator.main, ["--params", params, "--family", "flux"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "flux" in lines[0]

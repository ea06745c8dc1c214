"""Stage `generate` with tiny untrained mini generators: outputs, batch independence, errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_up_to_rounding, read_jsonl, tiny_generator_config, write_params
from PIL import Image

from gmail.core.cli import run
from gmail.generation.mini_diffusion import build_generator, save_generator
from stages import generate

CONFIGS = {
    "sd2": tiny_generator_config("sd2"),
    "flux": tiny_generator_config("flux"),
}

RECORDS = [
    {"image_id": "train-00010", "path": "images/B/train-00010.png", "attributes": {"colour": "red", "shape": "circle"},
     "captions": ["a small red circle in the centre", "a red circle of small size centred", "a picture of a red circle"]},
    {"image_id": "train-00011", "path": "images/B/train-00011.png", "attributes": {"colour": "blue", "shape": "triangle"},
     "captions": ["a large blue triangle at the top", "there is a blue triangle", "a picture of a blue triangle"]},
    {"image_id": "train-00012", "path": "images/B/train-00012.png",
     "captions": ["a green rectangle in the top left corner", "a green rectangle", "a picture of a green rectangle"]},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for family, config in CONFIGS.items():
        torch.manual_seed(0)
        model, scheduler = build_generator(config)
        save_generator(model, scheduler, config, root / family)
    return root


def write_b(captions_dir: Path, records=RECORDS) -> None:
    captions_dir.mkdir(parents=True, exist_ok=True)
    with open(captions_dir / "B.jsonl", "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def gen_params(path: Path, models: Path, **gen) -> str:
    return write_params(path, gen={"sd2": str(models / "sd2"), "flux": str(models / "flux"), "steps": 2, "batch_size": 2,
                                   "device": "cpu", **gen})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_b(tmp_path / "data" / "captions")
    return tmp_path


def generated_pixels(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted((out / "images").glob("*.png"))}


@pytest.mark.parametrize("family", ["sd2", "flux"])
def test_generates_one_image_per_b_record(family, workdir, models):
    params = gen_params(workdir / "params.yaml", models, model=family)
    generate.main(["--params", params])
    out = workdir / "data" / "generated"
    images = generated_pixels(out)
    assert sorted(images) == [r["image_id"] for r in RECORDS]
    for img in images.values():
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    rows = read_jsonl(out / "generated.jsonl")
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in RECORDS]
    for row, rec in zip(rows, RECORDS):
        assert row["captions"] == rec["captions"]
        assert row["prompt"] == rec["captions"][0]
        assert (out / row["path"]).is_file()
        assert row.get("attributes") == rec.get("attributes")
    assert len({r["seed"] for r in rows}) == 3
    metrics = json.loads((workdir / "metrics" / "generate.json").read_text())
    assert metrics == {"count": 3, "model": family, "scale": "mini", "steps": 2, "guidance": 3.0, "resolution": 8}
    # The timing differs between identical runs, so it is a stat, not a metric.
    assert json.loads((workdir / "stats" / "generate.json").read_text())["images_per_s"] > 0


def test_images_do_not_depend_on_batch_size(workdir, models):
    out = workdir / "data" / "generated"
    generate.main(["--params", gen_params(workdir / "p2.yaml", models, batch_size=2)])
    two = generated_pixels(out)
    generate.main(["--params", gen_params(workdir / "p1.yaml", models, batch_size=1)])
    one = generated_pixels(out)
    assert sorted(one) == sorted(two)
    for key in one:
        assert_same_up_to_rounding(one[key], two[key], key)


def test_resolution_resizes_output(workdir, models):
    generate.main(["--params", gen_params(workdir / "params.yaml", models, resolution=16)])
    for img in generated_pixels(workdir / "data" / "generated").values():
        assert img.shape == (16, 16, 3)
    assert json.loads((workdir / "metrics" / "generate.json").read_text())["resolution"] == 16


# --------------------------------------------------------------------------- errors


def empty_caption(workdir: Path):
    bad = [dict(r) for r in RECORDS]
    bad[1] = {**bad[1], "captions": ["", "a blue triangle"]}
    write_b(workdir / "data" / "captions", bad)


def empty_model_dir(workdir: Path) -> dict:
    (workdir / "empty").mkdir()
    return {"sd2": str(workdir / "empty")}


ERRORS = {
    "unknown_model": (None, {"model": "dalle"}, "dalle"),
    "empty_caption": (empty_caption, {}, "empty caption"),
    "missing_b": (lambda w: (w / "data" / "captions" / "B.jsonl").unlink(), {}, "B.jsonl"),
    "empty_model_dir": (empty_model_dir, {}, "generator.json"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_line_and_leave_nothing(case, workdir, models, monkeypatch, capsys):
    # The model loads lazily inside the progress loop, so a load error follows a 0% bar on
    # stderr; the bar is not part of the error report, so it is switched off here.
    monkeypatch.setattr(generate, "tqdm", functools.partial(generate.tqdm, disable=True))
    setup, gen, mentions = ERRORS[case]
    extra = (setup(workdir) or {}) if setup else {}
    params = gen_params(workdir / "params.yaml", models, **gen, **extra)
    assert run(generate.main, ["--params", params]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert mentions in lines[0]
    assert not (workdir / "data" / "generated").exists()
    assert list((workdir / "data").glob(".generated*")) == []
    assert not (workdir / "metrics" / "generate.json").exists()

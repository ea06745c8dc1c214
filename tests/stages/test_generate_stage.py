"""Stage `generate` with tiny untrained mini generators: outputs, batch independence, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_up_to_rounding, read_jsonl, tiny_generator_config, write_params

from gmail.core.cli import run
from gmail.data.shards import list_shards, read_shards
from gmail.generation import sharded
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
    return write_params(path, gen={"weights": str(models / gen.get("model", "sd2")), "steps": 2, "batch_size": 2,
                                   "device": "cpu", **gen})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_b(tmp_path / "data" / "captions")
    return tmp_path


def generated_pixels(out: Path) -> dict[str, np.ndarray]:
    """{item id: image} from the stage's shards, in manifest order."""
    return {meta["id"]: img for meta, img in read_shards(list_shards(out / "shards"))}


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_shards(out / "shards")}


@pytest.mark.parametrize("family", ["sd2", "flux"])
def test_generates_per_real_images_per_b_record_in_shards(family, workdir, models):
    params = gen_params(workdir / "params.yaml", models, model=family, per_real=2, shard_size=4)
    generate.main(["--params", params])
    out = workdir / "data" / "generated"
    images = generated_pixels(out)
    expected = [f"{r['image_id']}_{k}" for r in RECORDS for k in range(2)]
    assert list(images) == expected
    for img in images.values():
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    assert [p.name for p in list_shards(out / "shards")] == ["shard-00000.tar", "shard-00001.tar"]
    rows = read_jsonl(out / "manifest.jsonl")
    assert [r["id"] for r in rows] == expected
    for k, row in enumerate(rows):
        rec = RECORDS[k // 2]
        assert row["source_id"] == rec["image_id"] and row["caption"] == rec["captions"][k % 2]
        assert (row["index"], row["seed"]) == (k, k)  # seed + index, seed 0
        assert row["shard"] == f"shards/shard-0000{k // 4}.tar"
    metas = [m for m, _ in read_shards(list_shards(out / "shards"))]
    row3 = {k: v for k, v in rows[3].items() if k != "shard"}
    assert metas[3] == {**row3, "model": family, "steps": 2, "guidance": 3.0}
    metrics = json.loads((workdir / "metrics" / "generate.json").read_text())
    assert metrics == {"count": 6, "per_real": 2, "shards": 2, "model": family, "scale": "mini", "steps": 2, "guidance": 3.0,
                       "resolution": 0}
    # The timing differs between identical runs, so it is a stat, not a metric.
    assert json.loads((workdir / "stats" / "generate.json").read_text())["images_per_s_main_process"] > 0
    # Resume state is gone once the output is complete.
    assert list((workdir / ".scratch").glob("generate-*")) == []


def test_same_params_give_byte_identical_shards(workdir, models):
    out = workdir / "data" / "generated"
    generate.main(["--params", gen_params(workdir / "p.yaml", models, per_real=2, shard_size=4)])
    first = shard_bytes(out)
    generate.main(["--params", gen_params(workdir / "p.yaml", models, per_real=2, shard_size=4)])
    assert shard_bytes(out) == first


def test_images_do_not_depend_on_batch_or_shard_size(workdir, models):
    out = workdir / "data" / "generated"
    generate.main(["--params", gen_params(workdir / "p2.yaml", models, batch_size=2, shard_size=3)])
    two = generated_pixels(out)
    generate.main(["--params", gen_params(workdir / "p1.yaml", models, batch_size=1, shard_size=1)])
    one = generated_pixels(out)
    assert list(one) == list(two)
    for key in one:
        assert_same_up_to_rounding(one[key], two[key], key)


def test_resume_skips_finished_shards_and_redoes_the_rest(workdir, models, monkeypatch):
    """A run that dies after its first shard leaves that shard in scratch; the rerun keeps it
    (not resampled) and ends with the same bytes as an uninterrupted run."""
    out = workdir / "data" / "generated"
    params = gen_params(workdir / "p.yaml", models, per_real=2, shard_size=2)
    generate.main(["--params", params])
    clean = shard_bytes(out)

    from gmail.data import shards as shards_module

    real_write, calls = shards_module.write_shard, []

    def dying_write(path, samples):
        if calls:
            raise KeyboardInterrupt  # the second shard never finishes
        calls.append(path)
        return real_write(path, samples)

    monkeypatch.setattr(sharded, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        generate.main(["--params", params])
    scratch = list((workdir / ".scratch").glob("generate-*"))
    assert len(scratch) == 1 and [p.name for p in list_shards(scratch[0])] == ["shard-00000.tar"]
    assert not out.exists() or shard_bytes(out) == clean
    monkeypatch.setattr(sharded, "write_shard", real_write)
    sampled = []
    real_sampler = generate.load_sampler

    def counting_sampler(p, device):
        inner = real_sampler(p, device)

        def sampler(prompts, seeds):
            sampled.extend(seeds)
            return inner(prompts, seeds)
        return sampler

    monkeypatch.setattr(generate, "load_sampler", counting_sampler)
    generate.main(["--params", params])
    assert sampled == [2, 3, 4, 5]  # shard 0 (seeds 0, 1) was not sampled again
    assert shard_bytes(out) == clean


def test_changed_params_do_not_reuse_stale_shards(workdir, models, monkeypatch):
    from gmail.data.shards import fingerprint

    base = {"per_real": 1, "shard_size": 1}
    keys = {generate.scratch_key({"steps": 2, **base}, [], "x"), generate.scratch_key({"steps": 3, **base}, [], "x"),
            generate.scratch_key({"steps": 2, **base}, [{"id": "a"}], "x")}
    assert len(keys) == 3 and fingerprint(1) != fingerprint(2)


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
    return {"weights": str(workdir / "empty")}


ERRORS = {
    "unknown_model": (None, {"model": "dalle"}, "dalle"),
    "empty_caption": (empty_caption, {}, "empty caption"),
    "missing_b": (lambda w: (w / "data" / "captions" / "B.jsonl").unlink(), {}, "B.jsonl"),
    "empty_model_dir": (empty_model_dir, {}, "generator.json"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_line_and_leave_nothing(case, workdir, models, monkeypatch, capsys):
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


def test_a_folder_of_families_serves_the_selected_family():
    """The shipped `gen.weights: pretrain/models` holds one subfolder per family, so `-S gen.model=flux`
    alone switches generator; a folder that holds a model is used as it is."""
    from helpers import ROOT, params_dict

    from gmail.core.config import section

    shipped = params_dict()["gen"]
    for family in ("sd2", "flux"):
        p = section({**shipped, "model": family}, generate.GenParams, "gen")
        assert p.model_dir == str(Path(shipped["weights"]) / family)
        assert section({**shipped, "model": family, "weights": str(ROOT / "pretrain/models" / family)},
                       generate.GenParams, "gen").model_dir == str(ROOT / "pretrain/models" / family)

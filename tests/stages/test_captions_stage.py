"""Stage `captions` on a few easy-vqa images: splits, determinism, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import DELETE, read_jsonl, write_params
from PIL import Image

from gmail.core.cli import run
from stages import captions

COUNTS = {"A": 4, "B": 3, "T": 2}


def data_params(path: Path, **data) -> str:
    return write_params(path, data={"n_a": COUNTS["A"], "n_b": COUNTS["B"], "n_t": COUNTS["T"], **data})


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return data_params(tmp_path / "params.yaml")


def test_writes_splits(params, tmp_path):
    captions.main(["--params", params])
    out = tmp_path / "data" / "captions"
    for name, n in COUNTS.items():
        records = read_jsonl(out / f"{name}.jsonl")
        assert len(records) == n
        assert len({r["image_id"] for r in records}) == n
        for rec in records:
            assert len(set(rec["captions"])) >= 3
            assert all(isinstance(c, str) and c.strip() for c in rec["captions"])
            assert {"colour", "shape"} <= set(rec["attributes"])
            assert not Path(rec["path"]).is_absolute()
            image = out / rec["path"]
            assert image.is_file()
            with Image.open(image) as im:
                im.load()
                assert im.size[0] > 0 and im.size[1] > 0
    ids = {name: {r["image_id"] for r in read_jsonl(out / f"{name}.jsonl")} for name in COUNTS}
    assert not ids["A"] & ids["B"]
    assert all(i.startswith("test-") for i in ids["T"])
    metrics = json.loads((tmp_path / "metrics" / "captions.json").read_text())
    assert metrics["n_a"] == 4 and metrics["n_b"] == 3 and metrics["n_t"] == 2
    assert metrics["refs_per_image"] >= 3
    assert metrics["distinct_captions_b"] >= 3


def test_second_run_is_byte_identical(params, tmp_path):
    captions.main(["--params", params])
    first = snapshot(tmp_path / "data")
    first_metrics = (tmp_path / "metrics" / "captions.json").read_bytes()
    captions.main(["--params", params])
    assert snapshot(tmp_path / "data") == first
    assert (tmp_path / "metrics" / "captions.json").read_bytes() == first_metrics


# --------------------------------------------------------------------------- errors


def corrupt_first_train_image(monkeypatch, tmp_path):
    import easy_vqa

    real = easy_vqa.get_train_image_paths()
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not a png \x00\x01\x02" * 10)
    ids = sorted(real)
    paths = {i: real[i] for i in ids}
    paths[ids[0]] = str(bad)
    monkeypatch.setattr(easy_vqa, "get_train_image_paths", lambda: dict(paths))


ERRORS = {
    "easy_vqa_missing": (lambda mp, tmp: mp.setitem(sys.modules, "easy_vqa", None), {}, "easy-vqa"),
    "corrupt_image": (corrupt_first_train_image, {}, "garbage.png"),
    "unknown_source": (None, {"source": "flickr"}, "flickr"),
    "unknown_key": (None, {"n_c": 3}, "data.n_c"),
    "missing_key": (None, {"paper_b": DELETE}, "params key data.paper_b is missing"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_line_and_leave_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    setup, data, mentions = ERRORS[case]
    params = data_params(tmp_path / "params.yaml", **data)
    if setup:
        setup(monkeypatch, tmp_path)
    assert run(captions.main, ["--params", params]) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n")
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert mentions in lines[0]
    assert not (tmp_path / "data" / "captions").exists()
    leftovers = list((tmp_path / "data").glob(".captions*")) if (tmp_path / "data").exists() else []
    assert leftovers == []
    assert not (tmp_path / "metrics" / "captions.json").exists()


# --------------------------------------------------------------------------- paper: B and T from their own sources


@pytest.fixture(scope="module")
def paper_sources(tmp_path_factory):
    """The paper-smoke CC3M webdataset shard (B) and Karpathy COCO file (T), built by tools.paper_fixtures."""
    from tools.paper_fixtures import write_cc3m, write_coco

    root = tmp_path_factory.mktemp("sources")
    write_cc3m(root / "cc3m", seed=0)
    write_coco(root / "coco", seed=0)
    return root


def test_b_from_webdataset_shards_and_t_from_karpathy_test(paper_sources, tmp_path, monkeypatch):
    """T7's layout: B from CC3M shards (images extracted into the stage's output), T from COCO's Karpathy test split."""
    monkeypatch.chdir(tmp_path)
    coco = paper_sources / "coco"
    params = write_params(tmp_path / "params.yaml", data={
        "source": "webdataset", "source_t": "karpathy", "n_b": 20, "n_t": 5,
        "paper_b": {"tar_paths": str(paper_sources / "cc3m")}, "b_data": str(paper_sources / "cc3m"),
        "paper_t": {"json_path": str(coco / "dataset_coco.json"), "image_root": str(coco), "split": "test"}, "t_data": str(coco)})
    captions.main(["--params", params])
    out = tmp_path / "data" / "captions"
    b, t = read_jsonl(out / "B.jsonl"), read_jsonl(out / "T.jsonl")
    assert len(b) == 20 and len(t) == 5 and not (out / "A.jsonl").exists()
    for rec in b:  # webdataset images live in the stage's output, relative to the JSONL as easy-vqa's
        assert rec["path"].startswith("images/B/") and (out / rec["path"]).is_file() and len(rec["captions"]) == 1
    coco_test = [im for im in json.loads((coco / "dataset_coco.json").read_text())["images"] if im["split"] == "test"]
    assert [r["image_id"] for r in t] == [str(im["cocoid"]) for im in coco_test][:5]
    assert all(Path(r["path"]).is_file() and str(coco) in r["path"] and len(r["captions"]) == 5 for r in t)
    metrics = json.loads((tmp_path / "metrics" / "captions.json").read_text())
    assert metrics["n_b"] == 20 and metrics["n_t"] == 5 and metrics["refs_per_image"] == 1 and metrics["scale"] == "paper"


def _karpathy_params(tmp_path, coco, **data):
    args = {"json_path": f"{coco}/dataset_coco.json", "image_root": str(coco)}
    return write_params(tmp_path / "params.yaml", data={
        "source": "karpathy", "source_t": "karpathy", "n_b": 4, "n_t": 2, "b_data": str(coco), "t_data": str(coco),
        "paper_b": {**args, "split": "train"}, "paper_t": {**args, "split": "test"}, **data})


def test_relative_image_paths_are_stored_relative_to_the_jsonl(paper_sources, tmp_path, monkeypatch):
    """Params paths are relative to the repository; the JSONL's are relative to its own folder,
    where every reader resolves them (a relative Karpathy image_root once broke embed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco").symlink_to(paper_sources / "coco")
    captions.main(["--params", _karpathy_params(tmp_path, "coco")])
    out = tmp_path / "data" / "captions"
    for rec in read_jsonl(out / "B.jsonl") + read_jsonl(out / "T.jsonl"):
        assert rec["path"].startswith("../../coco/") and (out / rec["path"]).is_file(), rec["path"]


@pytest.mark.parametrize("key", ["b_data", "t_data"])
def test_a_data_dep_that_does_not_hold_the_source_files_is_a_one_line_error(key, paper_sources, tmp_path, monkeypatch, capsys):
    """data.b_data / t_data are captions' deps on what the sources read: one that misses them would
    let DVC serve captions of old data, so the stage refuses it."""
    monkeypatch.chdir(tmp_path)
    params = _karpathy_params(tmp_path, paper_sources / "coco", **{key: str(paper_sources / "cc3m")})
    assert run(captions.main, ["--params", params]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"data.{key}=" in err[0] and "dataset_coco.json" in err[0], err
    assert not (tmp_path / "data").exists()


def test_the_audit_report_tells_mini_code_from_paper_code(paper_sources, tmp_path):
    """GMAIL_AUDIT_DIR (tools.paper_smoke): a paper-scale run reports its scale and no mini module or
    easy-vqa file; the mini run of the same stage reports the easy-vqa reader and files it used."""
    from helpers import run_stage

    reports = {}
    for scale in ("paper", "mini"):
        ws = tmp_path / scale
        ws.mkdir()
        _karpathy_params(ws, paper_sources / "coco") if scale == "paper" else data_params(ws / "params.yaml")
        proc = run_stage(ws, "stages.captions", env={"GMAIL_AUDIT_DIR": str(ws / "audit")})
        assert proc.returncode == 0, proc.stderr
        reports[scale] = json.loads((ws / "audit" / "captions.json").read_text())
    assert reports["paper"] == {"stage": "captions", "scale": "paper", "mini_modules": [], "easy_vqa_files": []}
    assert reports["mini"]["scale"] == "mini"
    assert "gmail.data.easy_vqa_captions" in reports["mini"]["mini_modules"] and reports["mini"]["easy_vqa_files"]


@pytest.mark.parametrize("data,message", [
    ({"source": "easy_vqa", "source_t": "karpathy"}, "easy_vqa gives B and T together"),
    ({"source": "karpathy", "source_t": "easy_vqa"}, "easy_vqa gives B and T together"),
    ({"source_t": "flickr"}, "unknown data.source_t 'flickr'"),
    ({"source": "webdataset", "source_t": "karpathy", "paper_b": {"tar_paths": "x", "out_image_dir": "y"}, "paper_t": {"json_path": "j"}},
     "data.paper_b sets out_image_dir: remove it"),
])
def test_mismatched_sources_are_one_line_errors(data, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "params.yaml", data=data)
    assert run(captions.main, ["--params", params]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "data").exists()

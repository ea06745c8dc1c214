"""gmail.data.records: split JSONLs with image paths relative to the JSONL's folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gmail.core.errors import PipelineError
from gmail.data.records import load_split_images, read_split


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _image(path: Path, colour, size=16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def test_relative_paths_resolve_against_the_jsonl_folder(tmp_path, monkeypatch):
    split_dir = tmp_path / "data" / "captions"
    _image(split_dir / "images" / "A" / "a.png", (255, 0, 0))
    absolute = _image(tmp_path / "elsewhere" / "b.png", (0, 255, 0))
    jsonl = _write(split_dir / "A.jsonl", [
        {"image_id": "a", "path": "images/A/a.png", "captions": ["a red square"]},
        {"image_id": "b", "path": str(absolute), "captions": ["a green square", "green"]},
    ])
    other = tmp_path / "cwd"
    other.mkdir()
    monkeypatch.chdir(other)  # resolution must not depend on the working directory
    records = read_split(jsonl)
    assert [r["image_id"] for r in records] == ["a", "b"]
    assert Path(records[0]["path"]).is_absolute()
    assert Path(records[0]["path"]) == (split_dir / "images" / "A" / "a.png").resolve()
    assert records[1]["path"] == str(absolute)
    assert records[1]["captions"] == ["a green square", "green"]


def test_relative_jsonl_path_also_resolves(tmp_path, monkeypatch):
    _image(tmp_path / "s" / "img" / "x.png", (0, 0, 255))
    _write(tmp_path / "s" / "T.jsonl", [{"image_id": "x", "path": "img/x.png", "captions": ["blue"]}])
    monkeypatch.chdir(tmp_path)
    (rec,) = read_split("s/T.jsonl")
    assert Path(rec["path"]) == (tmp_path / "s" / "img" / "x.png").resolve()
    assert Path(rec["path"]).is_file()


def test_empty_caption_is_pipeline_error(tmp_path):
    jsonl = _write(tmp_path / "A.jsonl", [{"image_id": "a", "path": "a.png", "captions": ["ok", "  "]}])
    with pytest.raises(PipelineError) as info:
        read_split(jsonl)
    assert "empty caption" in str(info.value) and str(jsonl) in str(info.value)


def test_no_captions_is_pipeline_error(tmp_path):
    jsonl = _write(tmp_path / "A.jsonl", [{"image_id": "a", "path": "a.png", "captions": []}])
    with pytest.raises(PipelineError, match="no captions"):
        read_split(jsonl)


def test_missing_captions_key_is_pipeline_error(tmp_path):
    jsonl = _write(tmp_path / "A.jsonl", [{"image_id": "a", "path": "a.png"}])
    with pytest.raises(PipelineError):
        read_split(jsonl)


@pytest.mark.parametrize("missing", ["path", "image_id"])
def test_missing_path_or_id_key_is_pipeline_error(tmp_path, missing):
    row = {"image_id": "a", "path": "a.png", "captions": ["x"]}
    del row[missing]
    jsonl = _write(tmp_path / "A.jsonl", [row])
    with pytest.raises(PipelineError) as info:
        read_split(jsonl)
    assert f"'{missing}'" in str(info.value) and str(jsonl) in str(info.value)


def test_duplicate_image_id_is_pipeline_error(tmp_path):
    row = {"image_id": "a", "path": "a.png", "captions": ["x"]}
    jsonl = _write(tmp_path / "A.jsonl", [row, row])
    with pytest.raises(PipelineError, match="duplicate"):
        read_split(jsonl)


def test_empty_split_and_missing_file_are_pipeline_errors(tmp_path):
    with pytest.raises(PipelineError, match="no images"):
        read_split(_write(tmp_path / "A.jsonl", []))
    with pytest.raises(PipelineError, match="B.jsonl"):
        read_split(tmp_path / "B.jsonl")


def test_load_split_images(tmp_path):
    _image(tmp_path / "r.png", (255, 0, 0), size=8)
    _image(tmp_path / "g.png", (0, 255, 0), size=16)
    records = read_split(_write(tmp_path / "A.jsonl", [
        {"image_id": "r", "path": "r.png", "captions": ["red"]},
        {"image_id": "g", "path": "g.png", "captions": ["green"]},
    ]))
    arr = load_split_images(records, size=12)
    assert arr.shape == (2, 12, 12, 3) and arr.dtype == np.uint8
    assert arr[0, 6, 6].tolist() == [255, 0, 0] and arr[1, 6, 6].tolist() == [0, 255, 0]
    with pytest.raises(PipelineError, match="r.png"):
        (tmp_path / "r.png").unlink()
        load_split_images(records)


@pytest.mark.parametrize("captions, what", [("redcircle", "captions 'redcircle', a string, not a list"),
                                            ({"a": "b"}, "an object, not a list"), ([["a"]], "non-text caption"),
                                            ([""], "empty caption")])
def test_captions_not_a_list_of_non_empty_strings_names_file_and_line(tmp_path, captions, what):
    good = {"image_id": "a", "path": "a.png", "captions": ["fine"]}
    jsonl = _write(tmp_path / "B.jsonl", [good, {"image_id": "b", "path": "b.png", "captions": captions}])
    with pytest.raises(PipelineError) as info:
        read_split(jsonl)
    msg = str(info.value)
    assert f"{jsonl}:2" in msg and what in msg and "\n" not in msg


@pytest.mark.parametrize("field, value", [("image_id", 7), ("image_id", ""), ("path", None), ("path", ["a.png"])])
def test_image_id_and_path_must_be_strings(tmp_path, field, value):
    row = {"image_id": "a", "path": "a.png", "captions": ["fine"], field: value}
    jsonl = _write(tmp_path / "B.jsonl", [row])
    with pytest.raises(PipelineError, match=r"B\.jsonl:1"):
        read_split(jsonl)

"""Tests for gmail.data.readers on tiny fixtures written to tmp_path."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gmail.core.errors import PipelineError
from gmail.core.io import load_image
from gmail.data.readers import (
    read_coco_captions,
    read_karpathy,
    read_parquet,
    read_source,
    read_webdataset,
    validate_records,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _cwd_tmp_path(tmp_path, monkeypatch):
    # read_webdataset extracts through atomic_dir, which writes only inside the working directory.
    monkeypatch.chdir(tmp_path)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def coco_json(tmp_path: Path) -> Path:
    return write_json(
        tmp_path / "captions_train2014.json",
        {
            "images": [
                {"id": 10, "file_name": "COCO_train2014_000000000010.jpg"},
                {"id": 9, "file_name": "COCO_train2014_000000000009.jpg"},
            ],
            "annotations": [
                {"id": 1, "image_id": 10, "caption": "A dog on a couch. "},
                {"id": 2, "image_id": 9, "caption": "  Two cats."},
                {"id": 3, "image_id": 10, "caption": "A brown dog resting."},
            ],
        },
    )


def karpathy_json(tmp_path: Path) -> Path:
    def image(imgid, filename, split, raws, **extra):
        sentences = [{"raw": r, "tokens": r.lower().split()} for r in raws]
        return {"imgid": imgid, "filename": filename, "split": split, "sentences": sentences, **extra}

    return write_json(
        tmp_path / "dataset_coco.json",
        {
            "dataset": "coco",
            "images": [
                image(0, "a.jpg", "train", ["A train caption."], filepath="train2014", cocoid=111),
                image(1, "b.jpg", "val", ["A val caption."], filepath="val2014", cocoid=222),
                image(2, "c.jpg", "restval", ["A restval caption.", "Another one "], filepath="val2014", cocoid=333),
                image(3, "d.jpg", "test", ["A test caption."], filepath="val2014", cocoid=444),
            ],
        },
    )


def png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_shard(path: Path, prefix: str = "0000") -> Path:
    return write_shard(
        path,
        {
            f"{prefix}00001.png": png_bytes("red"),
            f"{prefix}00001.txt": b" a red square \n",
            f"{prefix}00001.json": json.dumps({"caption": "ignored, txt wins", "status": "success"}).encode(),
            f"{prefix}00002.png": png_bytes("blue"),
            f"{prefix}00002.json": json.dumps({"caption": "a blue square"}).encode(),
            # A caption with no image: skipped, not an error.
            f"{prefix}00003.txt": b"orphan caption",
        },
    )


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


# --------------------------------------------------------------------------- COCO


def test_coco_groups_and_sorts(tmp_path):
    records = read_coco_captions(coco_json(tmp_path), tmp_path / "train2014")
    assert [r["image_id"] for r in records] == ["9", "10"]  # numeric order, not string order
    assert records[0]["captions"] == ["Two cats."]
    assert records[1]["captions"] == ["A dog on a couch.", "A brown dog resting."]
    assert records[1]["path"] == str(tmp_path / "train2014" / "COCO_train2014_000000000010.jpg")


def test_coco_missing_key(tmp_path):
    path = write_json(tmp_path / "c.json", {"images": [{"id": 1}], "annotations": []})
    with pytest.raises(PipelineError, match=r"c\.json.*images\[0\].*'file_name'"):
        read_coco_captions(path, tmp_path)


def test_coco_unknown_image_in_annotation(tmp_path):
    path = write_json(
        tmp_path / "c.json",
        {"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 2, "caption": "hi"}]},
    )
    with pytest.raises(PipelineError, match="image_id 2"):
        read_coco_captions(path, tmp_path)


def test_coco_empty_caption(tmp_path):
    path = write_json(
        tmp_path / "c.json",
        {"images": [{"id": 7, "file_name": "x.jpg"}], "annotations": [{"image_id": 7, "caption": "   "}]},
    )
    with pytest.raises(PipelineError, match=r"image '7'.*empty caption.*remove it or fill it"):
        read_coco_captions(path, tmp_path)


def test_coco_image_without_captions(tmp_path):
    path = write_json(tmp_path / "c.json", {"images": [{"id": 7, "file_name": "x.jpg"}], "annotations": []})
    with pytest.raises(PipelineError, match="no captions"):
        read_coco_captions(path, tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match=r"missing COCO captions file .*nope\.json"):
        read_coco_captions(tmp_path / "nope.json", tmp_path)


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [')
    with pytest.raises(PipelineError, match=r"bad\.json is not valid JSON"):
        read_karpathy(path, tmp_path)


# --------------------------------------------------------------------------- Karpathy


def test_karpathy_all_splits(tmp_path):
    records = read_karpathy(karpathy_json(tmp_path), tmp_path / "coco")
    assert [r["image_id"] for r in records] == ["111", "222", "333", "444"]
    assert records[0]["path"] == str(tmp_path / "coco" / "train2014" / "a.jpg")
    assert records[2]["captions"] == ["A restval caption.", "Another one"]


def test_karpathy_split_filter(tmp_path):
    path = karpathy_json(tmp_path)
    assert [r["image_id"] for r in read_karpathy(path, tmp_path, split="test")] == ["444"]
    train = read_karpathy(path, tmp_path, split=["train", "restval"])
    assert [r["image_id"] for r in train] == ["111", "333"]
    assert train[1]["path"] == str(tmp_path / "val2014" / "c.jpg")


def test_karpathy_unknown_split(tmp_path):
    with pytest.raises(PipelineError, match="unknown Karpathy split bogus: use one or more of train"):
        read_karpathy(karpathy_json(tmp_path), tmp_path, split="bogus")


def test_karpathy_flickr_ids_and_tokens(tmp_path):
    # Flickr30k has no filepath and no cocoid; a sentence without `raw` falls back to tokens.
    path = write_json(
        tmp_path / "dataset_flickr30k.json",
        {
            "images": [
                {"imgid": 5, "filename": "1000.jpg", "split": "train", "sentences": [{"tokens": ["a", "dog"]}]},
                {"filename": "2000.jpg", "split": "train", "sentences": [{"raw": "A cat."}]},
            ]
        },
    )
    records = read_karpathy(path, tmp_path / "flickr")
    assert [r["image_id"] for r in records] == ["5", "2000"]
    assert records[0]["captions"] == ["a dog"]
    assert records[1]["path"] == str(tmp_path / "flickr" / "2000.jpg")


def test_karpathy_missing_sentences(tmp_path):
    path = write_json(tmp_path / "k.json", {"images": [{"filename": "a.jpg", "split": "train"}]})
    with pytest.raises(PipelineError, match=r"k\.json.*images\[0\].*'sentences'"):
        read_karpathy(path, tmp_path)


# --------------------------------------------------------------------------- webdataset


def test_webdataset_reads_and_extracts(tmp_path):
    shards = [good_shard(tmp_path / "00000.tar", "0000"), good_shard(tmp_path / "00001.tar", "0001")]
    out = tmp_path / "images"
    records = read_webdataset(shards, out)
    assert [r["image_id"] for r in records] == ["000000001", "000000002", "000100001", "000100002"]
    assert records[0]["captions"] == ["a red square"]
    assert records[1]["captions"] == ["a blue square"]
    assert records[0]["path"] == str(out / "000000001.png")
    assert load_image(records[0]["path"]).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(records[3]["path"]).getpixel((0, 0)) == (0, 0, 255)
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(r["path"]).name for r in records)


def test_webdataset_folder_of_shards(tmp_path):
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    good_shard(shard_dir / "00000.tar")
    records = read_webdataset(shard_dir, tmp_path / "images")
    assert [r["image_id"] for r in records] == ["000000001", "000000002"]


def test_webdataset_captionless_sample(tmp_path):
    shard = write_shard(
        tmp_path / "00000.tar",
        {"000000001.png": png_bytes("red"), "000000001.json": json.dumps({"url": "http://x"}).encode()},
    )
    out = tmp_path / "images"
    with pytest.raises(PipelineError, match=r"00000\.tar: sample '000000001' has an image but no caption"):
        read_webdataset(shard, out)
    assert not out.exists()  # nothing half-extracted is left behind


def test_webdataset_duplicate_key_across_shards(tmp_path):
    shards = [good_shard(tmp_path / "a.tar"), good_shard(tmp_path / "b.tar")]
    with pytest.raises(PipelineError, match="duplicate image id '000000001'"):
        read_webdataset(shards, tmp_path / "images")


def test_webdataset_missing_and_corrupt_shard(tmp_path):
    with pytest.raises(PipelineError, match=r"missing webdataset shard .*nope\.tar"):
        read_webdataset(tmp_path / "nope.tar", tmp_path / "images")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(PipelineError, match=r"bad\.tar is not a readable tar file"):
        read_webdataset(bad, tmp_path / "images")


def test_webdataset_unsafe_member(tmp_path):
    shard = write_shard(tmp_path / "evil.tar", {"../escape.png": png_bytes("red"), "../escape.txt": b"x"})
    with pytest.raises(PipelineError, match="unsafe member name"):
        read_webdataset(shard, tmp_path / "images")
    assert not (tmp_path / "escape.png").exists()


# --------------------------------------------------------------------------- parquet


def test_parquet_img2dataset_status_filter(tmp_path):
    path = write_parquet(
        tmp_path / "00000.parquet",
        {
            "key": ["000000001", "000000002", "000000003"],
            "caption": [" first ", "second", None],
            "status": ["success", "failed_to_download", "failed_to_download"],
            "url": ["a", "b", "c"],
        },
    )
    records = read_parquet(path, tmp_path / "images")
    assert records == [
        {"image_id": "000000001", "path": str(tmp_path / "images" / "000000001.jpg"), "captions": ["first"]}
    ]


def test_parquet_path_column_and_list_captions(tmp_path):
    path = write_parquet(
        tmp_path / "t.parquet",
        {"file": ["x/a.jpg", "b.png"], "text": [["one", "two"], ["three"]]},
    )
    records = read_parquet(path, tmp_path, caption_column="text", path_column="file")
    assert [r["image_id"] for r in records] == ["a", "b"]
    assert records[0]["path"] == str(tmp_path / "x" / "a.jpg")
    assert records[0]["captions"] == ["one", "two"]


def test_parquet_missing_column(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"key": ["1"], "text": ["hi"]})
    with pytest.raises(PipelineError, match=r"t\.parquet has no column 'caption' \(columns: key, text\)"):
        read_parquet(path, tmp_path)


def test_parquet_null_caption_is_empty(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"key": ["1"], "caption": [None]})
    with pytest.raises(PipelineError, match=r"image '1' in parquet .*t\.parquet has an empty caption"):
        read_parquet(path, tmp_path)


def test_parquet_not_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_text("not parquet")
    with pytest.raises(PipelineError, match="not a readable parquet file"):
        read_parquet(path, tmp_path)


# --------------------------------------------------------------------------- validation and dispatch


def test_validate_records_errors():
    ok = {"image_id": "1", "path": "a.jpg", "captions": ["hi"]}
    assert validate_records([ok], "src") == [ok]
    with pytest.raises(PipelineError, match="no images with captions in src"):
        validate_records([], "src")
    with pytest.raises(PipelineError, match="duplicate image id '1' in src"):
        validate_records([ok, dict(ok)], "src")
    with pytest.raises(PipelineError, match="image '2' in src has an empty caption"):
        validate_records([{"image_id": "2", "path": "b.jpg", "captions": ["ok", ""]}], "src")


def test_read_source_dispatch(tmp_path):
    records = read_source("karpathy", json_path=karpathy_json(tmp_path), image_root=tmp_path, split="val")
    assert [r["image_id"] for r in records] == ["222"]
    valid = "coco, karpathy, webdataset, parquet"
    with pytest.raises(PipelineError, match=f"unknown caption source 'laion': use one of {valid}"):
        read_source("laion")
    with pytest.raises(PipelineError, match="bad parameters for caption source 'coco'"):
        read_source("coco", json_path="x.json", image_root=".", split="train")


def test_webdataset_folder_named_like_a_shell_pipe_is_read_as_a_folder(tmp_path, monkeypatch):
    # The webdataset package would run `touch X;true #/...` for such a path; the reader opens files itself.
    monkeypatch.chdir(tmp_path)
    folder = Path("pipe:touch X;true #")
    folder.mkdir()
    good_shard(folder / "00000.tar")
    records = read_webdataset(folder, "images")
    assert len(records) == 2 and not (tmp_path / "X").exists()


@pytest.mark.parametrize("content", [b"", b"not a tar" * 100], ids=["zero-byte", "not-tar"])
def test_webdataset_zero_byte_or_non_tar_shard_names_it(tmp_path, content):
    bad = tmp_path / "00000.tar"
    bad.write_bytes(content)
    with pytest.raises(PipelineError, match=r"00000\.tar is not a readable tar file"):
        read_webdataset(bad, tmp_path / "images")

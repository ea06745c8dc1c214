"""gmail.data.shards: reading generated-image shards back, and every bad shard as a one-line error."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from gmail.core.errors import PipelineError
from gmail.data.shards import build_manifest, read_shards, write_shard

RECORDS = [{"image_id": "a.1", "captions": ["a red circle"]}, {"image_id": "b", "captions": ["a blue square", "blue"]}]


def _images(n, size=8):
    return [np.full((size, size, 3), 30 * i, dtype=np.uint8) for i in range(n)]


def _shard(path, per_real=2):
    items = build_manifest(RECORDS, per_real=per_real, seed=0)
    write_shard(path, zip(items, _images(len(items))))
    return items


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_round_trip_keeps_order_metadata_pixels_and_dotted_ids(tmp_path):
    items = _shard(tmp_path / "shard-00000.tar")
    out = list(read_shards([tmp_path / "shard-00000.tar"]))
    assert [m for m, _ in out] == items  # "a.1_0": an id with a dot stays whole
    assert all(np.array_equal(img, ref) for (_, img), ref in zip(out, _images(len(items))))
    resized = next(read_shards([tmp_path / "shard-00000.tar"], size=4))[1]
    assert resized.shape == (4, 4, 3) and resized.dtype == np.uint8


def test_a_folder_named_like_a_shell_pipe_is_read_as_a_folder(tmp_path, monkeypatch):
    # webdataset would run `touch X;true #/...` for this relative path; the shard must be read as a file.
    monkeypatch.chdir(tmp_path)
    shard = tmp_path / "pipe:touch X;true #" / "shard-00000.tar"
    items = _shard(shard)
    relative = shard.relative_to(tmp_path)
    assert [m for m, _ in read_shards([relative])] == items
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize("content", [b"", b"not a tar file at all" * 40], ids=["zero-byte", "not-tar"])
def test_unreadable_shard_is_one_line_error_naming_it(tmp_path, content):
    bad = tmp_path / "shard-00000.tar"
    bad.write_bytes(content)
    with pytest.raises(PipelineError) as info:
        list(read_shards([bad]))
    msg = str(info.value)
    assert f"shard {bad} is not a readable tar file" in msg and "\n" not in msg


def test_truncated_shard_is_an_error(tmp_path):
    good = tmp_path / "good.tar"
    _shard(good)
    bad = tmp_path / "shard-00000.tar"
    bad.write_bytes(good.read_bytes()[:700])
    with pytest.raises(PipelineError, match="not a readable tar file"):
        list(read_shards([bad]))


@pytest.mark.parametrize("json_bytes, what", [(b"{not json", "not valid UTF-8 JSON"), (b"\xff\xfe", "not valid UTF-8 JSON"),
                                              (b"[1, 2]", "not an object"), (b'{"id": "k"}', "not an object")])
def test_corrupt_json_member_names_shard_and_member(tmp_path, json_bytes, what):
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (4, 4)).save(png, format="PNG")
    bad = _tar(tmp_path / "shard-00000.tar", {"k.png": png.getvalue(), "k.json": json_bytes})
    with pytest.raises(PipelineError) as info:
        list(read_shards([bad]))
    assert f"shard {bad}: k.json is" in str(info.value) and what in str(info.value)


def test_item_without_png_or_with_a_broken_png(tmp_path):
    meta = b'{"id": "k", "caption": "c"}'
    with pytest.raises(PipelineError, match="item k lacks its png or json"):
        list(read_shards([_tar(tmp_path / "a.tar", {"k.json": meta})]))
    with pytest.raises(PipelineError, match="item k is not a readable PNG"):
        list(read_shards([_tar(tmp_path / "b.tar", {"k.png": b"\x89PNG broken", "k.json": meta})]))


def test_missing_shard_names_it(tmp_path):
    with pytest.raises(PipelineError, match="shard .*nope.tar not found"):
        list(read_shards([tmp_path / "nope.tar"]))

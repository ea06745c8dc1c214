"""gmail.core.io: atomic outputs, JSON/JSONL helpers and image loading with clear errors."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from gmail.core.errors import PipelineError
from gmail.core.io import atomic_dir, atomic_file, load_image, load_images_uint8, read_jsonl, write_json, write_jsonl


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def _cwd_tmp_path(tmp_path, monkeypatch):
    # atomic_dir writes only inside the working directory (stages run in the repository root).
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- atomic_file


def test_atomic_file_writes_content_and_leaves_only_the_output(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # parent is created
    with atomic_file(target) as fh:
        fh.write("hello\n")
        assert not target.exists()  # not in place until the block ends
    assert target.read_text() == "hello\n"
    assert _entries(target.parent) == ["out.txt"]


def test_atomic_file_binary_mode(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_file(target, "wb") as fh:
        fh.write(b"\x00\x01\x02")
    assert target.read_bytes() == b"\x00\x01\x02"


def test_atomic_file_keeps_old_output_when_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_file(target) as fh:
            fh.write("new, half written")
            raise Boom()
    assert target.read_text() == "old"
    assert _entries(tmp_path) == ["out.txt"]


def test_atomic_file_leaves_nothing_when_block_raises_without_old_output(tmp_path):
    with pytest.raises(Boom):
        with atomic_file(tmp_path / "out.txt") as fh:
            fh.write("partial")
            raise Boom()
    assert _entries(tmp_path) == []


def test_atomic_file_gets_normal_permissions(tmp_path, umask_022):
    target = tmp_path / "out.txt"
    with atomic_file(target) as fh:
        fh.write("x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_atomic_file_permissions_follow_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "out.txt") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640


# --------------------------------------------------------------------------- atomic_dir


def test_atomic_dir_replaces_old_directory(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("a")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "b.txt").write_text("b")
        assert (target / "stale.txt").exists()  # old output intact while the block runs
    assert _entries(target) == ["a.txt", "nested"]
    assert (target / "nested" / "b.txt").read_text() == "b"
    assert _entries(tmp_path) == ["out"]


def test_atomic_dir_replaces_a_file_at_the_final_path(tmp_path):
    target = tmp_path / "out"
    target.write_text("was a file")
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
    assert target.is_dir() and _entries(target) == ["a.txt"]


def test_atomic_dir_keeps_old_output_when_block_raises(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise Boom()
    assert _entries(target) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert _entries(tmp_path) == ["out"]  # temporary directory removed


def test_atomic_dir_leaves_nothing_when_block_raises_without_old_output(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # BaseException too (an interrupted stage)
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt()
    assert _entries(tmp_path) == []


def test_atomic_dir_gets_normal_permissions(tmp_path, umask_022):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not mkdtemp's 0700


# --------------------------------------------------------------------------- JSON / JSONL


def test_write_json_is_sorted_indented_and_ends_with_newline(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert text.endswith("\n")
    assert text.index('"a"') < text.index('"b"')
    assert "\n  " in text  # indented
    assert json.loads(text) == {"a": [1, 2], "b": 1}


def test_write_jsonl_read_jsonl_round_trip(tmp_path):
    rows = [{"image_id": "x", "captions": ["a", "b"]}, {"image_id": "y", "n": 3}]
    target = tmp_path / "r.jsonl"
    write_jsonl(target, rows)
    assert len(target.read_text().splitlines()) == 2
    assert read_jsonl(target) == rows


def test_read_jsonl_skips_blank_lines(tmp_path):
    target = tmp_path / "r.jsonl"
    target.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert read_jsonl(target) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_bad_line_names_file_and_line(tmp_path):
    target = tmp_path / "r.jsonl"
    target.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(PipelineError) as info:
        read_jsonl(target)
    msg = str(info.value)
    assert str(target) in msg
    assert f"{target}:2" in msg
    assert "\n" not in msg


def test_read_jsonl_missing_file_names_it(tmp_path):
    target = tmp_path / "nope.jsonl"
    with pytest.raises(PipelineError, match="nope.jsonl") as info:
        read_jsonl(target)
    assert str(target) in str(info.value)


# --------------------------------------------------------------------------- images


def test_load_image_corrupt_file_is_one_line_pipeline_error(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"this is not a png \x00\x01\x02" * 20)
    with pytest.raises(PipelineError) as info:
        load_image(bad)
    msg = str(info.value)
    assert str(bad) in msg
    assert "\n" not in msg


def test_load_image_truncated_png_is_pipeline_error(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "cut.png"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(PipelineError) as info:
        load_image(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_load_image_missing_file_names_it(tmp_path):
    with pytest.raises(PipelineError) as info:
        load_image(tmp_path / "gone.png")
    assert str(tmp_path / "gone.png") in str(info.value)


def test_load_image_converts_to_rgb_and_resizes(tmp_path):
    gray = tmp_path / "g.png"
    Image.new("L", (10, 20), 77).save(gray)
    im = load_image(gray)
    assert im.mode == "RGB" and im.size == (10, 20)
    assert np.asarray(im)[5, 5].tolist() == [77, 77, 77]
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (200, 10, 20, 255)).save(rgba)
    small = load_image(rgba, size=4)
    assert small.mode == "RGB" and small.size == (4, 4)
    assert np.asarray(small)[0, 0].tolist() == [200, 10, 20]


def test_load_images_uint8_stacks(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), colour).save(p)
        paths.append(p)
    arr = load_images_uint8(paths, size=8)
    assert arr.shape == (2, 8, 8, 3) and arr.dtype == np.uint8
    assert arr[0, 3, 3].tolist() == [255, 0, 0]
    assert arr[1, 3, 3].tolist() == [0, 0, 255]


# --------------------------------------------------------------------------- bad JSON / JSONL files


def test_read_jsonl_non_utf8_byte_names_file_and_line(tmp_path):
    target = tmp_path / "r.jsonl"
    target.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(PipelineError) as info:
        read_jsonl(target)
    msg = str(info.value)
    assert f"{target}:2 is not UTF-8 text (byte 0xe9" in msg and "\n" not in msg


@pytest.mark.parametrize("line, kind", [("[1, 2]", "an array"), ('"text"', "a string"), ("3", "a number"),
                                        ("null", "null")])
def test_read_jsonl_line_that_is_not_an_object_names_file_and_line(tmp_path, line, kind):
    target = tmp_path / "r.jsonl"
    target.write_text('{"a": 1}\n\n' + line + "\n")
    with pytest.raises(PipelineError, match=rf"r\.jsonl:3 is {kind}, not a JSON object"):
        read_jsonl(target)


def test_iter_jsonl_gives_line_numbers(tmp_path):
    from gmail.core.io import iter_jsonl

    target = tmp_path / "r.jsonl"
    target.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_jsonl(target)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_read_json_non_utf8_and_malformed_name_the_file(tmp_path):
    from gmail.core.io import read_json

    target = tmp_path / "x.json"
    target.write_bytes(b'{\n"a": "\xff"}')
    with pytest.raises(PipelineError, match=r"x\.json:2 is not UTF-8 text"):
        read_json(target)
    target.write_text('{"a": ')
    with pytest.raises(PipelineError, match=r"x\.json is not valid JSON"):
        read_json(target)

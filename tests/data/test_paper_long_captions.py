"""gmail.data.paper_long_captions: Urban-1k and ShareGPT4V-1k readers on small fixture files."""

import json

import pytest
from PIL import Image

from gmail.core.errors import PipelineError
from gmail.data import paper_long_captions as plc


def urban1k(root, names=("1", "2", "10"), caption=lambda n: f"A long\n description  of  image {n}.  "):
    (root / "image").mkdir(parents=True)
    (root / "caption").mkdir()
    for n in names:
        Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "image" / f"{n}.jpg")
        (root / "caption" / f"{n}.txt").write_text(caption(n))
    return root


def sharegpt4v(tmp_path, n=3, gpt=lambda i: f"The image shows\nthing {i}."):
    entries = []
    for i in range(n):
        rel = f"coco/train2017/{i:012d}.jpg"
        (tmp_path / "img" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / rel)
        entries.append({"id": f"{i:012d}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": gpt(i)}]})
    (tmp_path / "share.json").write_text(json.dumps(entries))
    return tmp_path / "share.json", tmp_path / "img"


def test_urban1k_pairs_captions_with_images_in_numeric_order(tmp_path):
    records = plc.read_urban1k(urban1k(tmp_path / "Urban1k"))
    assert [r["image_id"] for r in records] == ["1", "2", "10"]
    assert records[2] == {"image_id": "10", "path": str(tmp_path / "Urban1k/image/10.jpg"),
                          "captions": ["A long description of image 10."]}


def test_urban1k_missing_image_or_empty_caption_is_a_one_line_error(tmp_path):
    root = urban1k(tmp_path / "a")
    (root / "image/2.jpg").unlink()
    with pytest.raises(PipelineError, match=r"image .*2\.jpg for caption 2\.txt is missing") as err:
        plc.read_urban1k(root)
    assert "\n" not in str(err.value)
    root = urban1k(tmp_path / "b", caption=lambda n: " \n " if n == "2" else "fine")
    with pytest.raises(PipelineError, match=r"caption .*2\.txt is empty"):
        plc.read_urban1k(root)
    with pytest.raises(PipelineError, match="not found"):
        plc.read_urban1k(tmp_path / "nowhere")


def test_sharegpt4v_takes_the_first_entries_and_the_gpt_answer(tmp_path):
    json_path, images = sharegpt4v(tmp_path, n=3)
    records = plc.read_sharegpt4v(json_path, images, limit=2)
    assert [r["image_id"] for r in records] == ["000000000000", "000000000001"]
    assert records[1]["captions"] == ["The image shows thing 1."]
    assert records[1]["path"] == str(images / "coco/train2017/000000000001.jpg")
    assert len(plc.read_sharegpt4v(json_path, images)) == 3  # limit 1000 > entries: all of them


def test_sharegpt4v_bad_entries_are_one_line_errors(tmp_path):
    json_path, images = sharegpt4v(tmp_path / "a", gpt=lambda i: "" if i == 1 else "ok")
    with pytest.raises(PipelineError, match="entry 1 .*empty long caption"):
        plc.read_sharegpt4v(json_path, images)
    json_path, images = sharegpt4v(tmp_path / "b")
    (images / "coco/train2017/000000000002.jpg").unlink()
    with pytest.raises(PipelineError, match=r"image .*000000000002\.jpg .*missing") as err:
        plc.read_sharegpt4v(json_path, images)
    assert "\n" not in str(err.value)
    assert len(plc.read_sharegpt4v(json_path, images, limit=2)) == 2  # entries past the limit are never read
    json_path.write_text(json.dumps([{"image": "x.jpg"}]))
    with pytest.raises(PipelineError, match="lacks 'image' or 'conversations'"):
        plc.read_sharegpt4v(json_path, images)


def test_read_long_source_dispatches_and_checks_arguments(tmp_path):
    assert len(plc.read_long_source("urban1k", root=urban1k(tmp_path / "u"))) == 3
    with pytest.raises(PipelineError, match="unknown long-caption source 'docci'"):
        plc.read_long_source("docci", root=tmp_path)
    with pytest.raises(PipelineError, match="bad parameters .*'sharegpt4v'.*json_path, image_root, limit"):
        plc.read_long_source("sharegpt4v", root=tmp_path)

"""gmail.data.mc_benchmarks: ScienceQA and MMMU readers on small fixtures laid out like the releases."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from gmail.core.errors import PipelineError
from gmail.data.mc_benchmarks import load_benchmark_images, read_mmmu, read_scienceqa


def _png(colour, size=(20, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def scienceqa(tmp_path):
    """problems.json + pid_splits.json + images/test/<pid>/image.png: two image questions in test,
    one text-only test question and one train question."""
    problems = {
        "1": {"question": "Which animal is a mammal?", "choices": ["frog", "whale"], "answer": 1, "hint": "",
              "image": "image.png", "split": "test"},
        "2": {"question": "What is the capital?", "choices": ["Rome", "Oslo", "Bern"], "answer": 0, "hint": "Europe.",
              "image": None, "split": "test"},
        "3": {"question": "Which colour?", "choices": ["red", "blue", "green"], "answer": 2, "hint": "Look closely.",
              "image": "image.png", "split": "test"},
        "4": {"question": "Train question", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png", "split": "train"},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"train": ["4"], "test": ["3", "1", "2"]}))
    for pid, colour in (("1", "red"), ("3", "blue")):
        (tmp_path / "images/test" / pid).mkdir(parents=True)
        (tmp_path / "images/test" / pid / "image.png").write_bytes(_png(colour))
    return tmp_path


def test_read_scienceqa_keeps_image_questions_of_the_split_in_split_order(scienceqa):
    rows = read_scienceqa(scienceqa)
    assert [r["id"] for r in rows] == ["3", "1"]  # pid_splits order; the text-only question dropped
    assert rows[0]["choices"] == ["red", "blue", "green"] and rows[0]["answer"] == 2 and rows[0]["hint"] == "Look closely."
    assert rows[1]["image"].endswith("images/test/1/image.png")
    images = load_benchmark_images(rows, 8)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
    assert tuple(images[0, 4, 4]) == (0, 0, 255) and tuple(images[1, 4, 4]) == (255, 0, 0)


def test_read_scienceqa_errors_name_the_problem(scienceqa):
    with pytest.raises(PipelineError, match="has no split 'minitest'"):
        read_scienceqa(scienceqa, split="minitest")
    (scienceqa / "images/test/1/image.png").unlink()
    with pytest.raises(PipelineError, match="ScienceQA image .*1/image.png not found"):
        read_scienceqa(scienceqa)
    problems = json.loads((scienceqa / "problems.json").read_text())
    problems["3"]["answer"] = 5
    (scienceqa / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(PipelineError, match="answer 5 does not index"):
        read_scienceqa(scienceqa)
    with pytest.raises(PipelineError, match="problems.json not found"):
        read_scienceqa(scienceqa / "nowhere")


def _mmmu_table(rows):
    import pyarrow as pa

    cols = {k: [r[k] for r in rows] for k in ("id", "question", "options", "answer", "question_type")}
    for n in range(1, 8):
        cols[f"image_{n}"] = [r.get(f"image_{n}") for r in rows]
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([(k, pa.string()) for k in ("id", "question", "options", "answer", "question_type")]
                       + [(f"image_{n}", image) for n in range(1, 8)])
    return pa.table(cols, schema=schema)


@pytest.fixture
def mmmu(tmp_path):
    """Two subject folders of validation parquet files, as the hub dataset ships them (and a dev file to skip)."""
    import pyarrow.parquet as pq

    art = [
        {"id": "validation_Art_2", "question": "Which style is <image 1>?", "options": "['Baroque', 'Cubism']", "answer": "B",
         "question_type": "multiple-choice", "image_1": {"bytes": _png("green"), "path": "a.png"}},
        {"id": "validation_Art_1", "question": "Which painting is older?",
         "options": "[\"<img='1.png'>\", \"<img='2.png'>\"]", "answer": "A", "question_type": "multiple-choice",
         "image_1": {"bytes": _png("red"), "path": "b.png"}, "image_2": {"bytes": _png("blue"), "path": "c.png"}},
    ]
    math = [{"id": "validation_Math_1", "question": "What is x in <image 1>?", "options": "[]", "answer": "42",
             "question_type": "open", "image_1": {"bytes": _png("white"), "path": "d.png"}}]
    for subject, rows in (("Art", art), ("Math", math)):
        (tmp_path / subject).mkdir()
        pq.write_table(_mmmu_table(rows), tmp_path / subject / "validation-00000-of-00001.parquet")
    pq.write_table(_mmmu_table(math), tmp_path / "Math" / "dev-00000-of-00001.parquet")
    return tmp_path


def test_read_mmmu_reads_every_subject_and_follows_process_single_sample(mmmu):
    rows = read_mmmu(mmmu)
    assert [r["id"] for r in rows] == ["validation_Art_1", "validation_Art_2", "validation_Math_1"]
    older, style, x = rows
    assert style["options"] == ["Baroque", "Cubism"] and style["subject"] == "Art" and style["answer"] == "B"
    assert older["image"] is None  # two option images: no single image to show, as MMMU's own runner
    assert x["question_type"] == "open" and x["options"] == [] and isinstance(x["image"], bytes)
    images = load_benchmark_images(rows, 4)
    assert images[0].max() == 0 and tuple(images[1, 2, 2]) == (0, 128, 0) and tuple(images[2, 2, 2]) == (255, 255, 255)


def test_read_mmmu_errors_name_the_problem(mmmu, tmp_path):
    with pytest.raises(PipelineError, match="no MMMU test parquet files"):
        read_mmmu(mmmu, split="test")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["x"], "question": ["q"]}), mmmu / "Art" / "validation-00001-of-00002.parquet")
    with pytest.raises(PipelineError, match="lacks MMMU column 'options'"):
        read_mmmu(mmmu)


def test_load_benchmark_images_rejects_corrupt_bytes():
    with pytest.raises(PipelineError, match="question q1 has a corrupt image"):
        load_benchmark_images([{"id": "q1", "image": b"not an image"}], 4)


def test_load_benchmark_images_follow_the_towers_crop_protocol(tmp_path):
    """A wide image (red | green | blue thirds): a `CropSize` (the paper tower's `load_size`)
    resizes the short side and centre-crops, as open_clip's preprocess, so only the green
    centre is left, from bytes (MMMU) and from a file (ScienceQA) alike; a plain int squashes."""
    from gmail.core.io import CropSize, fit_image

    im = Image.new("RGB", (90, 10), "red")
    im.paste((0, 255, 0), (30, 0, 60, 10))
    im.paste((0, 0, 255), (60, 0, 90, 10))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    im.save(tmp_path / "wide.png")
    rows = [{"id": "mmmu", "image": buf.getvalue()}, {"id": "sqa", "image": str(tmp_path / "wide.png")}]
    cropped = load_benchmark_images(rows, CropSize(8))
    assert cropped.shape == (2, 8, 8, 3)
    assert (cropped[0] == cropped[1]).all()  # both sources, one protocol
    assert (cropped[0] == np.asarray(fit_image(im, CropSize(8)))).all()
    assert (cropped[0].argmax(-1) == 1).all()  # every pixel of the crop is from the green third
    squashed = load_benchmark_images(rows, 8)
    assert squashed.shape == (2, 8, 8, 3)
    assert [int(squashed[0, 4, x].argmax()) for x in (0, 4, 7)] == [0, 1, 2]  # squashed: red, green and blue all kept

"""gmail.data.easy_vqa_captions: labels from easy-vqa questions, attributes from pixels, references, splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gmail.core.errors import PipelineError
from gmail.data.easy_vqa_captions import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    attributes_from_pixels,
    build_easy_vqa_records,
    labels_from_questions,
    make_references,
    split_ids,
)

# Pale backgrounds like easy-vqa's, with their hue family.
PALE_BLUE = (200, 220, 255)
PALE_YELLOW = (255, 245, 200)
PALE_PINK = (255, 205, 225)
PALE_GREEN = (210, 255, 210)
PALE_CYAN = (205, 250, 250)
PALE_PURPLE = (235, 205, 255)


def draw(shape: str, box: tuple[int, int, int, int], colour, background, size: int = 64, ss: int = 4) -> np.ndarray:
    """One filled shape on a plain background, drawn 4x larger and box-downsampled
    (anti-aliased edges, as easy-vqa's images have)."""
    im = Image.new("RGB", (size * ss, size * ss), background)
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = (v * ss for v in box)
    if shape == "circle":
        d.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "rectangle":
        d.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        d.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=colour)
    return np.asarray(im.resize((size, size), Image.BOX))


# --------------------------------------------------------------------------- labels_from_questions


def test_open_questions_give_colour_and_shape():
    qs = [("what color is the shape?", "red"), ("what shape is in the image?", "circle")]
    assert labels_from_questions(qs) == {"colour": "red", "shape": "circle"}


def test_open_question_naming_shape_in_the_question():
    assert labels_from_questions([("What color is the triangle?", "blue")]) == {"colour": "blue", "shape": "triangle"}


def test_yes_no_questions():
    assert labels_from_questions([("is there a red shape?", "yes")]) == {"colour": "red"}
    assert labels_from_questions([("is there a red shape?", "no")]) == {}
    assert labels_from_questions([("does the image contain a rectangle?", "yes")]) == {"shape": "rectangle"}
    assert labels_from_questions([("does the image contain a rectangle?", "no")]) == {}


def test_negated_yes_no_questions():
    # "is there not a circle?" -> "no": there is a circle.
    assert labels_from_questions([("is there not a circle?", "no")]) == {"shape": "circle"}
    # "is no triangle present?" -> "yes": there is no triangle; says nothing.
    assert labels_from_questions([("is no triangle present?", "yes")]) == {}
    # "is no triangle present?" -> "no": there is a triangle.
    assert labels_from_questions([("is no triangle present?", "no")]) == {"shape": "triangle"}
    # "is there not a gray shape?" -> "yes": not gray; says nothing.
    assert labels_from_questions([("is there not a gray shape?", "yes")]) == {}


def test_open_answers_win_over_yes_no():
    qs = [
        ("what color is the shape?", "teal"),
        ("is there a green shape?", "yes"),  # contradicts; the open answer is authoritative
        ("is there not a circle?", "no"),
    ]
    assert labels_from_questions(qs) == {"colour": "teal", "shape": "circle"}
    # Order does not matter.
    assert labels_from_questions(qs[::-1]) == {"colour": "teal", "shape": "circle"}


def test_no_questions_no_labels():
    assert labels_from_questions([]) == {}
    assert labels_from_questions([("is the background pink?", "yes")]) == {}


# --------------------------------------------------------------------------- attributes_from_pixels


def test_red_circle_top_left_on_pale_blue():
    img = draw("circle", (4, 4, 26, 26), (255, 0, 0), PALE_BLUE)
    attrs = attributes_from_pixels(img)
    assert attrs["colour"] == "red"
    assert attrs["shape"] == "circle"
    assert attrs["position"] == "top left"
    assert attrs["background"] == "blue"
    assert attrs["size"] == "medium"
    assert set(attrs) == set(ATTRIBUTES)


def test_large_blue_rectangle_in_the_centre():
    attrs = attributes_from_pixels(draw("rectangle", (14, 14, 50, 50), (0, 0, 255), PALE_YELLOW))
    assert attrs == {"colour": "blue", "shape": "rectangle", "size": "large", "position": "centre", "background": "yellow"}


def test_small_triangle_bottom_right():
    attrs = attributes_from_pixels(draw("triangle", (46, 46, 60, 60), (0, 255, 0), PALE_PINK))
    assert attrs == {"colour": "green", "shape": "triangle", "size": "small", "position": "bottom right", "background": "pink"}


@pytest.mark.parametrize(
    "box, position",
    [
        ((26, 2, 38, 14), "top"),
        ((50, 2, 62, 14), "top right"),
        ((2, 26, 14, 38), "left"),
        ((50, 26, 62, 38), "right"),
        ((2, 50, 14, 62), "bottom left"),
        ((26, 50, 38, 62), "bottom"),
    ],
)
def test_positions_on_the_3x3_grid(box, position):
    assert attributes_from_pixels(draw("rectangle", box, (0, 0, 0), PALE_GREEN))["position"] == position


@pytest.mark.parametrize(
    "background, name",
    [(PALE_BLUE, "blue"), (PALE_YELLOW, "yellow"), (PALE_PINK, "pink"), (PALE_GREEN, "green"),
     (PALE_CYAN, "cyan"), (PALE_PURPLE, "purple")],
)
def test_backgrounds(background, name):
    assert attributes_from_pixels(draw("rectangle", (20, 20, 40, 40), (0, 0, 0), background))["background"] == name


@pytest.mark.parametrize("colour", ["black", "blue", "brown", "gray", "green", "red", "teal", "yellow"])
def test_colours(colour):
    from PIL import ImageColor

    rgb = {"gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42), "green": (0, 255, 0),
           "blue": (0, 0, 255)}.get(colour) or ImageColor.getrgb(colour)
    background = PALE_PURPLE if colour != "blue" else PALE_YELLOW
    assert attributes_from_pixels(draw("rectangle", (16, 16, 48, 48), rgb, background))["colour"] == colour


def test_sizes_grow_with_the_shape():
    sizes = [attributes_from_pixels(draw("rectangle", (32 - r, 32 - r, 32 + r, 32 + r), (255, 0, 0), PALE_CYAN))["size"]
             for r in (5, 10, 20)]
    assert sizes == ["small", "medium", "large"]


def test_blank_image_is_pipeline_error():
    img = np.full((64, 64, 3), PALE_BLUE, dtype=np.uint8)
    with pytest.raises(PipelineError, match="no visible shape"):
        attributes_from_pixels(img)


# --------------------------------------------------------------------------- make_references


def test_make_references_five_distinct_captions_naming_colour_and_shape():
    attrs = {"colour": "teal", "shape": "triangle", "size": "small", "position": "bottom right", "background": "pink"}
    refs = make_references(attrs)
    assert len(refs) == 5
    assert len(set(refs)) == 5
    for ref in refs:
        assert "teal" in ref and "triangle" in ref
        assert ref == ref.strip() and "  " not in ref
    joined = " ".join(refs)
    assert "small" in joined and "bottom right" in joined and "pink" in joined


@pytest.mark.parametrize("position", POSITIONS)
def test_make_references_every_position_reads_well(position):
    attrs = {"colour": "red", "shape": "circle", "size": "large", "position": position, "background": "blue"}
    refs = make_references(attrs)
    assert len(set(refs)) == 5
    assert any(position in r for r in refs)


def test_make_references_differ_between_attribute_values():
    base = {"colour": "red", "shape": "circle", "size": "large", "position": "centre", "background": "blue"}
    # Every reference names colour and shape, so changing either changes all five.
    for key, other in (("colour", "blue"), ("shape", "rectangle")):
        assert set(make_references(base)).isdisjoint(make_references({**base, key: other}))
    # Size and background are in some of them only.
    for key, other in (("size", "small"), ("background", "pink"), ("position", "top")):
        assert make_references(base) != make_references({**base, key: other})


def test_vocabularies_are_consistent():
    assert len(set(COLOURS)) == 8 and len(set(SHAPES)) == 3 and len(SIZES) == 3
    assert len(POSITIONS) == 9 and len(BACKGROUNDS) == 6


# --------------------------------------------------------------------------- build_easy_vqa_records


def test_build_easy_vqa_records_questions_override_pixels(tmp_path):
    paths = {}
    for image_id, (shape, box, rgb) in {3: ("circle", (4, 4, 26, 26), (255, 0, 0)),
                                        7: ("rectangle", (14, 14, 50, 50), (0, 0, 255))}.items():
        paths[image_id] = tmp_path / f"{image_id}.png"
        Image.fromarray(draw(shape, box, rgb, PALE_BLUE)).save(paths[image_id])
    questions = (
        ["what color is the shape?", "is there not a triangle?"],
        ["teal", "no"],
        [3, 3],
    )
    records = build_easy_vqa_records("train", [7, 3], paths, questions)
    assert [r["image_id"] for r in records] == ["train-00007", "train-00003"]
    r7, r3 = records
    assert r7["attributes"]["colour"] == "blue" and r7["attributes"]["shape"] == "rectangle"  # pixels only
    assert r3["attributes"]["colour"] == "teal" and r3["attributes"]["shape"] == "triangle"  # from the questions
    assert r3["attributes"]["position"] == "top left"  # pixels still give the rest
    assert r3["source_path"] == str(paths[3])
    assert r3["captions"] == make_references(r3["attributes"])


def test_build_easy_vqa_records_errors(tmp_path):
    with pytest.raises(PipelineError, match="image 9"):
        build_easy_vqa_records("test", [9], {}, ([], [], []))
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), PALE_BLUE).save(blank)
    with pytest.raises(PipelineError) as info:
        build_easy_vqa_records("test", [1], {1: blank}, ([], [], []))
    assert str(blank) in str(info.value)


# --------------------------------------------------------------------------- split_ids


def test_split_ids_disjoint_sorted_and_sized():
    rng = np.random.default_rng(0)
    train = rng.permutation(100).tolist()
    test = rng.permutation(np.arange(1000, 1030)).tolist()
    ids = split_ids(train, test, n_a=40, n_b=25, n_t=10)
    assert (len(ids["A"]), len(ids["B"]), len(ids["T"])) == (40, 25, 10)
    assert set(ids["A"]).isdisjoint(ids["B"])
    assert set(ids["A"]) | set(ids["B"]) <= set(train)
    assert set(ids["T"]) <= set(test)
    assert ids["A"] == sorted(ids["A"]) and ids["B"] == sorted(ids["B"])
    assert max(ids["A"]) < min(ids["B"])  # A then B, in id order
    # Input order does not change the split.
    assert split_ids(sorted(train), test[::-1], 40, 25, 10) == ids


def test_split_ids_can_use_every_image():
    ids = split_ids(list(range(10)), list(range(5)), 6, 4, 5)
    assert sorted(ids["A"] + ids["B"]) == list(range(10)) and ids["T"] == list(range(5))


def test_split_ids_too_large_is_pipeline_error():
    with pytest.raises(PipelineError, match="n_a"):
        split_ids(list(range(10)), list(range(5)), 6, 5, 5)
    with pytest.raises(PipelineError, match="n_t"):
        split_ids(list(range(10)), list(range(5)), 6, 4, 6)

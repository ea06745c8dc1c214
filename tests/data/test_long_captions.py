"""gmail.data.long_captions: multi-sentence descriptions of easy-vqa images, numbers read off the pixels."""

import re

import numpy as np
import pytest

from gmail.core.errors import PipelineError
from gmail.data.easy_vqa_captions import attributes_from_pixels
from gmail.data.long_captions import MIN_WORDS, long_caption_records, long_description, shape_geometry

ATTRS = {"colour": "red", "shape": "rectangle", "size": "medium", "position": "top left", "background": "cyan"}


def canvas(box=(4, 12, 8, 24), size=64, colour=(255, 0, 0), background=(224, 255, 255)):
    """A pale background with one filled rectangle rows y0:y1, columns x0:x1."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = background
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = colour
    return img


def test_geometry_is_read_off_the_pixels():
    g = shape_geometry(canvas(box=(4, 12, 8, 24)))  # 8 rows x 16 columns
    assert g["box_w"] == 16 and g["box_h"] == 8 and (g["width"], g["height"]) == (64, 64)
    assert g["area"] == pytest.approx(128 / 4096)
    assert g["cx"] == pytest.approx(15.5 / 64) and g["cy"] == pytest.approx(7.5 / 64)


def test_geometry_agrees_with_the_short_captions_size_and_position():
    for box in [(4, 12, 8, 24), (20, 44, 20, 44), (40, 62, 2, 30), (10, 30, 40, 63)]:
        img = canvas(box=box)
        attrs = attributes_from_pixels(img)
        g = shape_geometry(img)
        col = "left" if g["cx"] < 0.375 else ("right" if g["cx"] > 0.625 else "")
        row = "top" if g["cy"] < 0.375 else ("bottom" if g["cy"] > 0.625 else "")
        assert (f"{row} {col}".strip() or "centre") == attrs["position"]


def test_description_is_long_names_every_attribute_and_states_the_numbers():
    text = long_description(ATTRS, canvas(box=(4, 12, 8, 24)))
    assert len(text.split()) >= MIN_WORDS and len(re.findall(r"[.:] ", text)) >= 3  # several sentences
    for value in ATTRS.values():
        assert value in text
    assert "top left corner" in text and "24% of the way across" in text and "12% of the way down" in text
    assert "3.1% of the picture" in text and "box of 16 by 8 of the 64 by 64 pixels" in text


def test_descriptions_are_deterministic_and_tell_apart_images_with_the_same_attributes():
    a, b = canvas(box=(4, 12, 8, 24)), canvas(box=(5, 13, 8, 24))
    assert long_description(ATTRS, a) == long_description(ATTRS, a.copy())
    assert long_description(ATTRS, a) != long_description(ATTRS, b)  # same short references, other numbers


def test_records_get_one_long_caption_each_and_keep_everything_else():
    records = [{"image_id": "t0", "path": "p0", "captions": ["a", "b"], "attributes": ATTRS},
               {"image_id": "t1", "path": "p1", "captions": ["c"], "attributes": {**ATTRS, "position": "centre"}}]
    out = long_caption_records(records, np.stack([canvas(), canvas(box=(24, 40, 24, 40))]))
    assert [r["image_id"] for r in out] == ["t0", "t1"] and out[0]["path"] == "p0"
    assert len(out[1]["captions"]) == 1 and "in the centre of the frame" in out[1]["captions"][0]
    assert records[0]["captions"] == ["a", "b"]  # inputs untouched
    with pytest.raises(PipelineError, match="2 records"):
        long_caption_records(records, np.stack([canvas()]))
    with pytest.raises(PipelineError, match="no attributes"):
        long_caption_records([{"image_id": "x", "captions": ["a"]}], np.stack([canvas()]))


def test_an_image_without_a_shape_is_an_error():
    blank = canvas(box=(0, 0, 0, 0))
    with pytest.raises(PipelineError, match="no visible shape"):
        long_description(ATTRS, blank)

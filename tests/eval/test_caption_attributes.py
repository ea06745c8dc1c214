"""gmail.eval.caption_attributes: attribute values read back from captions, and their accuracy."""

from __future__ import annotations

import itertools

import pytest

from gmail.data.easy_vqa_captions import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, make_references
from gmail.eval.caption_attributes import attribute_accuracy, caption_attributes


def test_every_reference_template_is_read_back_without_a_wrong_value():
    stated = {a: 0 for a in ("colour", "shape", "size", "position")}
    for c, s, z, p, b in itertools.product(COLOURS, SHAPES, SIZES, POSITIONS, BACKGROUNDS[:3]):
        truth = {"colour": c, "shape": s, "size": z, "position": p, "background": b}
        for ref in make_references(truth):
            said = caption_attributes(ref)
            for a in stated:
                assert said[a] in (None, truth[a]), (ref, a, said[a])
                stated[a] += said[a] is not None
    n = len(COLOURS) * len(SHAPES) * len(SIZES) * len(POSITIONS) * 3 * 5
    # Colour and shape are in all five templates; size in four, position in four.
    assert stated["colour"] == stated["shape"] == n and stated["size"] == stated["position"] == n * 4 // 5


@pytest.mark.parametrize("caption,expected", [
    ("a small red circle in the centre", {"colour": "red", "shape": "circle", "size": "small", "position": "centre"}),
    ("near the top edge, a teal triangle sits on a yellow background", {"colour": "teal", "shape": "triangle", "size": None, "position": "top"}),
    ("a yellow rectangle on a pale yellow background", {"colour": "yellow", "shape": "rectangle", "size": None, "position": None}),
    ("a shape on a pale blue background", {"colour": None, "shape": None, "size": None, "position": None}),
    ("", {"colour": None, "shape": None, "size": None, "position": None}),
])
def test_background_colour_is_not_the_shapes_colour(caption, expected):
    assert caption_attributes(caption) == expected


def test_accuracy_counts_unstated_as_wrong_and_joint_needs_both():
    truth = {"a": {"colour": "red", "shape": "circle", "size": "small", "position": "top left"},
             "b": {"colour": "blue", "shape": "triangle", "size": "large", "position": "centre"}}
    captions = {"a": "a small red circle in the top left corner", "b": "a picture of a blue circle"}
    acc = attribute_accuracy(captions, truth)
    assert acc == {"attr_colour": 100.0, "attr_shape": 50.0, "attr_size": 50.0, "attr_position": 50.0, "attr_colour_shape": 50.0}

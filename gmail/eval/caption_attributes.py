"""What a caption says: colour, shape, size and position read back from easy-vqa-style captions,
and how often that agrees with the image (mini scale's stand-in for SPICE's semantic tuples,
which need Stanford CoreNLP jars that cannot be fetched offline).

BLEU and CIDEr reward a caption for reproducing the reference template; this asks only whether
the caption states the right attribute values. An attribute the caption does not state counts
as wrong: a caption that never names the colour has not described it.
"""

from __future__ import annotations

import re

import numpy as np

from gmail.data.easy_vqa_captions import COLOURS, SHAPES, SIZES

ATTRIBUTES = ("colour", "shape", "size", "position")
_WORD = re.compile(r"[a-z]+")


def caption_attributes(caption: str) -> dict[str, str | None]:
    """{colour, shape, size, position} stated by `caption`, None where it states none.

    Colour is the first colour word that does not name the background ("... on a pale yellow
    background" is the background's colour, not the shape's); position combines top/bottom
    with left/right ("top left"), else "centre" when the caption says centre or centred.
    """
    words = _WORD.findall(caption.lower())
    colour = next((w for i, w in enumerate(words) if w in COLOURS
                   and words[i + 1: i + 2] != ["background"] and words[i - 1: i] != ["pale"]), None)
    shape = next((w for w in words if w in SHAPES), None)
    size = next((w for w in words if w in SIZES), None)
    row = next((w for w in words if w in ("top", "bottom")), "")
    col = next((w for w in words if w in ("left", "right")), "")
    position = f"{row} {col}".strip() or ("centre" if {"centre", "centred", "center", "centered"} & set(words) else None)
    return {"colour": colour, "shape": shape, "size": size, "position": position}


def attribute_accuracy(captions: dict[str, str], attributes: dict[str, dict[str, str]]) -> dict[str, float]:
    """Share of images (x100) whose caption states each attribute correctly, plus colour and
    shape together (`colour_shape`). `captions` and `attributes` are keyed by image id;
    every captioned image needs its true attributes."""
    hits = {a: [] for a in (*ATTRIBUTES, "colour_shape")}
    for image_id, caption in captions.items():
        said, truth = caption_attributes(caption), attributes[image_id]
        for a in ATTRIBUTES:
            hits[a].append(said[a] is not None and said[a] == truth.get(a))
        hits["colour_shape"].append(hits["colour"][-1] and hits["shape"][-1])
    return {f"attr_{a}": 100.0 * float(np.mean(v)) for a, v in hits.items()}

"""Mini-scale long captions (paper T5, long-caption retrieval): a multi-sentence description of
each easy-vqa test image, the counterpart of Urban-1k's and ShareGPT4V's long captions.

Each description names every attribute (colour, shape, size, position, background) and adds
what the short references leave out: where the shape's centre sits and how much of the frame
it fills, in numbers read off the pixels. It is a pure function of the image and its
attributes, so the descriptions are identical on every run. The short references
(`gmail.data.easy_vqa_captions`) are not touched.
"""

from __future__ import annotations

import numpy as np

from gmail.core.errors import PipelineError

MIN_WORDS = 40  # Long-CLIP's long captions run to paragraphs; ours stay above this


def shape_geometry(image: np.ndarray) -> dict[str, float]:
    """Centroid (fractions of width and height), area fraction and bounding box (pixels) of the
    shape in an (H, W, 3) uint8 easy-vqa image.

    The shape is every pixel that differs from the corner pixel by more than 40 (sum over RGB),
    the rule `easy_vqa_captions.attributes_from_pixels` uses for size and position, so the
    numbers agree with those attributes.
    """
    a = np.asarray(image).astype(np.int32)
    if a.ndim != 3 or a.shape[2] != 3:
        raise PipelineError(f"image of shape {a.shape} is not (H, W, 3) RGB: load it with gmail.core.io.load_image")
    h, w, _ = a.shape
    mask = np.abs(a - a[0, 0]).sum(-1) > 40
    if mask.sum() < 4:
        raise PipelineError("image holds no visible shape: easy-vqa images must show one shape")
    ys, xs = np.nonzero(mask)
    return {"cx": float(xs.mean() / w), "cy": float(ys.mean() / h), "area": float(mask.mean()),
            "box_w": int(xs.max() - xs.min() + 1), "box_h": int(ys.max() - ys.min() + 1), "width": w, "height": h}


def _placement(position: str) -> str:
    if position == "centre":
        return "in the centre of the frame"
    if " " in position:
        return f"in the {position} corner of the frame"
    return f"at the {position} of the frame"


def long_description(attributes: dict[str, str], image: np.ndarray) -> str:
    """A deterministic description of at least MIN_WORDS words in four sentences: the object,
    where it sits, how much it fills, the background."""
    c, s, z, p, b = (attributes[k] for k in ("colour", "shape", "size", "position", "background"))
    g = shape_geometry(image)
    text = (
        f"A single {z} {c} {s} on a plain pale {b} background. "
        f"The {s} sits {_placement(p)}, its centre {round(100 * g['cx'])}% of the way across "
        f"and {round(100 * g['cy'])}% of the way down. "
        f"It fills {100 * g['area']:.1f}% of the picture, inside a box of {g['box_w']} by {g['box_h']} "
        f"of the {g['width']} by {g['height']} pixels. "
        "Nothing else is there: no other shapes, text or texture."
    )
    if len(text.split()) < MIN_WORDS:  # cannot happen with the template above; guards edits to it
        raise PipelineError(f"long description {text!r} has fewer than {MIN_WORDS} words: lengthen the template")
    return text


def long_caption_records(records: list[dict], images: np.ndarray) -> list[dict]:
    """Copies of `records` (easy-vqa records with `attributes`) whose `captions` is the one long
    description of each image; `images` is their (N, H, W, 3) uint8 pixels, in record order."""
    if len(records) != len(images):
        raise PipelineError(f"{len(images)} images for {len(records)} records: load one image per record")
    out = []
    for rec, image in zip(records, images):
        if "attributes" not in rec:
            raise PipelineError(f"record {rec['image_id']!r} has no attributes: long descriptions need the "
                                "easy-vqa captions stage's records")
        out.append({**rec, "captions": [long_description(rec["attributes"], image)]})
    return out

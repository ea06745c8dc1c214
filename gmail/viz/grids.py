"""Figures: real-vs-generated image grids."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def image_grid(top: np.ndarray, bottom: np.ndarray, labels: list[str] | None = None,
               cell: int = 96, title: str = "") -> Image.Image:
    """Two rows of images (uint8 (N, H, W, 3)), each scaled to `cell` px, with small labels."""
    n = len(top)
    label_h = 34 if labels else 0
    title_h = 16 if title else 0
    canvas = Image.new("RGB", (n * cell, title_h + 2 * cell + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black")
    for row, images in enumerate((top, bottom)):
        for i, img in enumerate(images):
            canvas.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (i * cell, title_h + row * cell))
    for i, text in enumerate(labels or []):
        words, lines, line = text.split(), [], ""
        for w in words:
            if len(line) + len(w) + 1 > cell // 6:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        for j, ln in enumerate(lines[:3]):
            draw.text((i * cell + 2, title_h + 2 * cell + 1 + 11 * j), ln, fill="black")
    return canvas

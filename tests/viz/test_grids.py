"""gmail.viz.grids: real-vs-generated image grids."""

from __future__ import annotations

import numpy as np

from gmail.viz.grids import image_grid


def _solid(colours, size=8):
    return np.stack([np.full((size, size, 3), c, dtype=np.uint8) for c in colours])


def test_image_grid_size_and_pasted_pixels():
    top = _solid([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    bottom = _solid([(10, 20, 30), (200, 100, 50), (0, 128, 128)])
    cell = 20
    grid = image_grid(top, bottom, cell=cell)
    assert grid.size == (3 * cell, 2 * cell)
    a = np.asarray(grid)
    for row, images in enumerate((top, bottom)):
        for i, img in enumerate(images):
            block = a[row * cell:(row + 1) * cell, i * cell:(i + 1) * cell]
            assert (block == img[0, 0]).all(), (row, i)


def test_image_grid_scales_a_pattern_with_nearest_neighbour():
    img = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    img[0, 0, 1] = (255, 255, 255)  # top-right pixel white
    grid = np.asarray(image_grid(img, img, cell=10))
    assert (grid[0:5, 5:10] == 255).all()
    assert (grid[0:5, 0:5] == 0).all() and (grid[5:10, :] == 0).all()
    assert (grid[10:15, 5:10] == 255).all()  # bottom row too


def test_image_grid_title_and_labels_add_space_below_and_above():
    top = _solid([(255, 0, 0), (0, 0, 255)], size=4)
    bottom = _solid([(0, 255, 0), (0, 0, 0)], size=4)
    cell = 48
    plain = image_grid(top, bottom, cell=cell)
    grid = image_grid(top, bottom, labels=["a red square on pink", "a blue one"], cell=cell, title="real vs generated")
    assert grid.size[0] == plain.size[0] == 2 * cell
    assert grid.size[1] > plain.size[1]
    a = np.asarray(grid)
    # Images keep their colours; find where the top row starts (below the title).
    red_rows = np.nonzero((a[:, cell // 2] == (255, 0, 0)).all(-1))[0]
    assert len(red_rows) == cell
    offset = red_rows[0]
    assert offset > 0  # title sits above the images
    assert (a[offset:offset + cell, cell:2 * cell] == (0, 0, 255)).all()
    assert (a[offset + cell:offset + 2 * cell, :cell] == (0, 255, 0)).all()
    # Title and labels are drawn in black on white.
    assert (a[:offset] < 128).any()
    label_band = a[offset + 2 * cell:]
    assert label_band.shape[0] > 0 and (label_band < 128).any() and (label_band == 255).any()
    assert (np.asarray(image_grid(top, bottom, labels=["", ""], cell=cell))[2 * cell:] == 255).all()

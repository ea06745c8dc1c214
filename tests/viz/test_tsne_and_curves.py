"""gmail.viz.tsne and gmail.viz.curves: the t-SNE figure and the loss TSVs `dvc plots` reads."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gmail.viz.curves import write_loss_curve
from gmail.viz.tsne import tsne_plot


def test_loss_curve_is_a_step_loss_tsv_that_round_trips(tmp_path):
    losses = [2.5, 1.25, 0.1 + 0.2]
    path = tmp_path / "plots" / "loss.tsv"
    write_loss_curve(path, losses)
    lines = path.read_text().splitlines()
    assert lines[0] == "step\tloss"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(s) for s, _ in rows] == [1, 2, 3]
    assert [float(v) for _, v in rows] == losses  # repr keeps every bit
    assert list(tmp_path.joinpath("plots").iterdir()) == [path]  # no temporary file left behind


def test_empty_curve_has_only_the_header(tmp_path):
    write_loss_curve(tmp_path / "off.tsv", [])
    assert (tmp_path / "off.tsv").read_text() == "step\tloss\n"


def test_tsne_plot_writes_a_png_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    real, before = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    after = real + 0.01 * rng.normal(size=(40, 8))
    tsne_plot(real, before, after, tmp_path / "a.png", seed=3, max_points=30)
    tsne_plot(real, before, after, tmp_path / "b.png", seed=3, max_points=30)
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))

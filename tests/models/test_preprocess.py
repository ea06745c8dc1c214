"""Paper-scale image preprocessing follows the tower's own (open_clip's `preprocess`: short side
resized, centre crop), so non-square images are not squashed; mini keeps squashing."""

import numpy as np
import pytest
import torch
from PIL import Image

from gmail.core.io import CropSize, fit_image, load_images_uint8
from gmail.models.image_tower import images_to_tensor, load_image_tower
from tools.paper_fixtures import save_tiny_open_clip


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_open_clip")
    save_tiny_open_clip(root)
    return root


def _photo(path, w, h, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_paper_scale_non_square_images_match_open_clips_preprocess(tiny_clip_dir, tmp_path):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_dir}")
    tower = load_image_tower("paper", "unused", name=f"local-dir:{tiny_clip_dir}", pretrained="")
    assert isinstance(tower.load_size, CropSize)
    for k, (w, h) in enumerate([(97, 41), (30, 75), (tower.image_size, tower.image_size)]):
        path = _photo(tmp_path / f"im{k}.png", w, h, k)
        expected = preprocess(Image.open(path))
        ours = (images_to_tensor(load_images_uint8([path], tower.load_size)) - tower.mean) / tower.std
        assert ours.shape == (1, 3, tower.image_size, tower.image_size)
        assert torch.allclose(ours[0], expected, atol=1e-6), (w, h, (ours[0] - expected).abs().max())
        with torch.no_grad():
            assert torch.allclose(tower(images_to_tensor(load_images_uint8([path], tower.load_size))),
                                  model.encode_image(expected[None]), atol=1e-5)


def test_plain_sizes_still_squash_and_square_images_agree_both_ways():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(fit_image(im, 32)), np.asarray(im.resize((32, 32), Image.BICUBIC)))  # mini, unchanged
    assert fit_image(im, CropSize(32)).size == (32, 32)
    square = im.crop((0, 0, 40, 40))
    assert np.array_equal(np.asarray(fit_image(square, 32)), np.asarray(fit_image(square, CropSize(32))))

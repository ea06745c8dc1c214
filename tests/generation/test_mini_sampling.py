"""Tests for gmail.generation.mini_sampling: uint8 images, per-image seeds, determinism, both families."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_same_up_to_rounding, tiny_generator_config

from gmail.generation.mini_diffusion import build_generator
from gmail.generation.mini_sampling import initial_noise, sample

CONFIGS = {
    "sd2": tiny_generator_config("sd2"),
    "flux": tiny_generator_config("flux"),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def generator(request):
    config = CONFIGS[request.param]
    torch.manual_seed(0)
    model, scheduler = build_generator(config)
    model.eval()
    cond = torch.nn.functional.normalize(torch.randn(3, config.text_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    return model, scheduler, config, cond


def run(generator, idx, seeds, steps=2):
    model, scheduler, config, cond = generator
    return sample(model, scheduler, config, cond[idx], seeds, steps=steps, guidance=3.0)


def test_images_are_uint8_bhwc(generator):
    images = run(generator, [0, 1, 2], [0, 1, 2])
    assert isinstance(images, np.ndarray)
    assert images.dtype == np.uint8
    assert images.shape == (3, 8, 8, 3)


def test_same_seed_same_image(generator):
    a = run(generator, [0], [42])
    b = run(generator, [0], [42])
    assert np.array_equal(a, b)


def test_image_independent_of_batch(generator):
    batch = run(generator, [0, 1, 2], [10, 11, 12])
    for i in range(3):
        alone = run(generator, [i], [10 + i])
        assert_same_up_to_rounding(alone[0], batch[i], f"image {i} alone vs in its batch")


def test_different_seeds_differ(generator):
    images = run(generator, [0, 0], [0, 1])
    assert not np.array_equal(images[0], images[1])


def test_initial_noise_per_seed():
    noise = initial_noise([3, 4, 3], (3, 8, 8))
    assert noise.shape == (3, 3, 8, 8)
    assert torch.equal(noise[0], noise[2])
    assert not torch.equal(noise[0], noise[1])
    assert torch.equal(initial_noise([4], (3, 8, 8))[0], noise[1])

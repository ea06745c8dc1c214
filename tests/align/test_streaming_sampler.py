"""The streaming alignment sampler (`shuffled_batches`, `streamed_inputs`), the in-memory
sampler it stands beside, and the noise control built a batch at a time."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from gmail.align.noise_control import noise_batches
from gmail.align.train import shuffled_batches, streamed_inputs, train_alignment
from gmail.core.errors import PipelineError


def _epoch(n_real=10, per_real=3, heldout=0):
    """One pass over generated items in manifest order: per_real consecutive rows per real image."""
    def items():
        for row in range(n_real * per_real):
            if row // per_real < n_real - heldout:
                yield row, row // per_real, np.full((2, 2, 3), row, dtype=np.uint8)
    return items


def _take(batches, k):
    return [next(batches) for _ in range(k)]


def test_batches_hold_distinct_real_images_and_cover_every_row():
    batches = shuffled_batches(_epoch(), 30, 4, 12, torch.Generator().manual_seed(0))
    seen = set()
    for rows, groups, images in _take(batches, 60):
        assert len(rows) == 4 and len(set(groups)) == 4  # 12 buffered rows always hold >= 4 real images
        assert groups == [r // 3 for r in rows] and [int(im[0, 0, 0]) for im in images] == rows
        seen.update(rows)
    assert seen == set(range(30))


def test_twins_fill_a_batch_only_when_the_buffer_lacks_real_images():
    # 2 real images x 3 rows, batch 4: 2 distinct real images first, then 2 twins (masked by the loss).
    rows, groups, _ = next(shuffled_batches(_epoch(2, 3), 6, 4, 6, torch.Generator().manual_seed(0)))
    assert len(rows) == len(set(rows)) == 4 and len(set(groups[:2])) == 2 and set(groups[2:]) <= set(groups[:2])


def test_same_seed_same_batches_and_another_seed_others():
    def seq(seed):
        return [(r, g) for r, g, _ in _take(shuffled_batches(_epoch(), 30, 4, 8, torch.Generator().manual_seed(seed)), 20)]
    assert seq(3) == seq(3) and seq(3) != seq(4)


def test_held_out_rows_never_reach_a_batch():
    batches = shuffled_batches(_epoch(heldout=3), 21, 4, 8, torch.Generator().manual_seed(0))
    assert max(g for _, groups, _ in _take(batches, 40) for g in groups) == 6


def test_the_batch_sequence_does_not_depend_on_the_process_count():
    """Every process draws the same batches; process r embeds rows r::N of each, and together
    the shares are the one-process batch, with the same real embeddings and groups."""
    class Identity:
        def inputs(self, images, batch_size, device):
            return torch.from_numpy(images.astype(np.float32))

    z_real = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))

    def run(rank, world):
        batches = shuffled_batches(_epoch(), 30, 5, 9, torch.Generator().manual_seed(7))
        return _take(streamed_inputs(Identity(), batches, z_real, rank, world), 15)

    one, (r0, r1) = run(0, 1), (run(0, 2), run(1, 2))
    for (x, z, g), (x0, z0, g0), (x1, z1, g1) in zip(one, r0, r1):
        assert torch.equal(g, g0) and torch.equal(g, g1) and torch.equal(z, z0) and torch.equal(z, z1)
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)


def test_an_empty_stream_is_an_error():
    with pytest.raises(PipelineError, match="heldout"):
        next(shuffled_batches(_epoch(), 0, 4, 8, torch.Generator()))
    with pytest.raises(PipelineError, match="stream is empty"):
        next(shuffled_batches(lambda: iter(()), 3, 4, 8, torch.Generator()))


def test_streamed_training_runs_and_learns_on_one_process():
    g = torch.Generator().manual_seed(0)
    z_real = torch.nn.functional.normalize(torch.randn(10, 4, generator=g), dim=-1)

    class Flat:
        def inputs(self, images, batch_size, device):
            return torch.from_numpy(images.astype(np.float32)).flatten(1) / 30

    f_g = nn.Linear(12, 4)
    batches = streamed_inputs(Flat(), shuffled_batches(_epoch(), 30, 6, 12, torch.Generator().manual_seed(0)), z_real)
    losses = train_alignment(f_g, None, None, steps=30, batch_size=6, lr=1e-2, progress=False, batches=batches)
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])


def _old_noise_images(n, size, seed):
    """`noise_images` as it was before the noise control went batch-wise (all n images at once)."""
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = np.random.default_rng(seed + i).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return out


def test_noise_batches_are_the_old_noise_images_bit_for_bit():
    batches = list(noise_batches(11, 8, 5, 4))
    assert [len(b) for b in batches] == [4, 4, 3] and all(b.dtype == np.uint8 for b in batches)
    assert np.array_equal(np.concatenate(batches), _old_noise_images(11, 8, 5))

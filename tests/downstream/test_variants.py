"""gmail.downstream.variants: what each variant trains on, and the early-stopping split."""

from __future__ import annotations

import pytest

from gmail.core.errors import PipelineError
from gmail.downstream.variants import validation_split


def test_validation_split_is_seeded_disjoint_and_complete():
    train, val = validation_split(100, 0.1, seed=0)
    assert len(val) == 10 and sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert validation_split(100, 0.1, seed=0) == (train, val)
    assert validation_split(100, 0.1, seed=1)[1] != val
    assert validation_split(3, 0.1, seed=0)[1] != []  # at least one image


@pytest.mark.parametrize("n,fraction", [(1, 0.5), (10, 0.0), (10, 1.0)])
def test_validation_split_rejects_what_leaves_nothing_to_train_or_check(n, fraction):
    with pytest.raises(PipelineError):
        validation_split(n, fraction, seed=0)

"""gmail.eval.seeds: mean and population std over seeds, the one summary every multi-seed stage uses."""

import numpy as np
import pytest

from gmail.eval.seeds import summarise_seeds


def test_summary_is_mean_and_population_std_and_keeps_none():
    scores = [{"overall": 90.0, "colour": None, "shape": 80.0, "yes_no": 70.0},
              {"overall": 94.0, "colour": 60.0, "shape": 80.0, "yes_no": 74.0}]
    out = summarise_seeds(scores)
    assert out["overall"] == {"mean": 92.0, "std": pytest.approx(np.std([90.0, 94.0]))} and out["overall"]["std"] == 2.0
    assert out["shape"] == {"mean": 80.0, "std": 0.0} and out["colour"] is None


def test_summarise_over_seeds_is_mean_and_population_std():
    out = summarise_seeds([{"a": 1.0, "b": 0.0}, {"a": 3.0, "b": 0.0}])
    assert out == {"a": {"mean": 2.0, "std": 1.0}, "b": {"mean": 0.0, "std": 0.0}}

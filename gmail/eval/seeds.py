"""Mean and spread over seeds: how every stage that trains several seeds reports a metric."""

from __future__ import annotations

import numpy as np


def summarise_seeds(scores: list[dict], keys=None) -> dict:
    """{key: {"mean", "std"}} over per-seed score dicts (population std), for `keys` (default:
    the first dict's keys); a key that is None in any seed (a skipped metric such as SPICE
    offline, a question type absent from the test questions) stays None."""
    out = {}
    for k in list(scores[0]) if keys is None else keys:
        values = [s[k] for s in scores]
        out[k] = None if any(v is None for v in values) else {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out

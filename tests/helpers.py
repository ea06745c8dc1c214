"""The one way tests write params files: the shipped file with some sections changed.

Every key a stage reads must be in its params file (no dataclass defaults fill gaps), so a
test starts from the shipped `params.yaml` or `pretrain/params.yaml` and overrides what it
needs. Paths in the shipped files are relative, so a stage run with the test's temporary
folder as working directory writes everything there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MAIN_PARAMS = ROOT / "params.yaml"
PRETRAIN_PARAMS = ROOT / "pretrain" / "params.yaml"
VARIANTS = ("synthetic", "gmail", "real", "gmail_heldout", "synthetic_heldout", "noise")  # the shipped captioner variants
DELETE = object()  # as a value in `params_dict(...)`: remove that key


def params_dict(base: Path | dict = MAIN_PARAMS, replace: tuple = (), **sections) -> dict:
    """`base` (a params file or dict) with `sections` merged in: a mapping updates the section
    (nested mappings one level deep too), other values, and the sections named in `replace`,
    are put in whole."""
    params = copy.deepcopy(base) if isinstance(base, dict) else yaml.safe_load(Path(base).read_text())
    for name, values in sections.items():
        current = params.get(name)
        if name in replace or not isinstance(values, dict) or not isinstance(current, dict):
            params[name] = values
            continue
        for key, value in values.items():
            if value is DELETE:
                current.pop(key, None)
            elif isinstance(value, dict) and isinstance(current.get(key), dict):
                current[key] = {**current[key], **value}
            else:
                current[key] = value
    return params


def write_params(path: Path, base: Path | dict = MAIN_PARAMS, replace: tuple = (), **sections) -> str:
    """Write `params_dict(base, replace, **sections)` to `path`; returns the path as a string."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params_dict(base, replace, **sections), sort_keys=False))
    return str(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def tiny_generator_config(family: str, **overrides):
    """A mini generator config of `family` small enough for a test (8 px, a few thousand weights)."""
    from gmail.generation.mini_diffusion import GeneratorConfig

    base = {"sd2": dict(family="sd2", resolution=8, channels=[8, 16], layers_per_block=1),
            "flux": dict(family="flux", resolution=8, flux_layers=1, flux_single_layers=1, flux_heads=2, flux_head_dim=16,
                         patch=2)}
    return GeneratorConfig(**{**base.get(family, {"family": family, "resolution": 8}), **overrides})


def assert_same_up_to_rounding(a, b, what: str = "image") -> None:
    """uint8 images equal up to float rounding: at most 1 of 255 apart, in at most 1% of values.

    Per-image seeds make an image independent of its batch, but CPU convolution kernels sum
    in a batch-size-dependent order, so a value that lands on .5 can round the other way
    (seen on one 2-core machine: 1 pixel of 64 off by 1). A batch-dependent seed or noise
    would change nearly every value by far more.
    """
    import numpy as np

    a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    diff = np.abs(a - b)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, f"{what} differs beyond rounding: max {diff.max()}, {(diff > 0).mean():.1%} of values"

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


# --- Running a stage the way DVC does (a subprocess) and checking what it touched -------------

def snapshot(root: Path, skip: tuple[str, ...] = (".git", ".dvc/tmp", ".dvc/cache")) -> dict[str, tuple]:
    """{relative path: (size, sha256)} of every file under `root` (folders named in `skip` left out).

    Compare two snapshots with `changed_files` to show that a failed stage touched nothing
    outside its outputs."""
    import hashlib

    root = Path(root)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip) or not path.is_file() or path.is_symlink():
            continue
        out[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def changed_files(before: dict, after: dict, allowed: tuple[str, ...] = ()) -> list[str]:
    """Paths added, removed or changed between two `snapshot`s, except those under a prefix in `allowed`."""
    paths = set(before) | set(after)
    return sorted(p for p in paths if before.get(p) != after.get(p)
                  and not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed))


def run_stage(cwd: Path, module: str, *args: str, env: dict | None = None, timeout: float = 600):
    """Run `python -m <module> --params params.yaml <args>` in `cwd` as DVC would; returns the
    CompletedProcess (text stdout/stderr). `env` entries are added to a copy of os.environ."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, "--params", "params.yaml", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments: str, status: int = 2) -> str:
    """The stage failed with `status` and its stderr ends in one `error: ...` line holding every fragment
    (no traceback); returns that line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == status, f"exit {proc.returncode}, stderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line, stderr:\n{proc.stderr[-3000:]}"
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def tmp_inside(ws: Path, tmp_path: Path) -> Path:
    """A fresh folder for one test's outputs inside the workspace `ws` (use it instead of pytest's
    `tmp_path`): stages write only inside their working directory (`check_output_path`), so a
    stage run in a shared workspace cannot put its outputs in `tmp_path`."""
    path = Path(ws) / "tests-tmp" / tmp_path.name
    path.mkdir(parents=True, exist_ok=True)
    return path

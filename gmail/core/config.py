"""Params files into dataclasses (a misspelled key fails loudly), the `paths` section, seeding
and device choice.

One source of truth: a params dataclass has no default for a key its params file sets, so
`section` fails on a missing key instead of filling in a value that may disagree with the file.
"""

from __future__ import annotations

import dataclasses
import os
import random
import types
import typing
from pathlib import Path

import numpy as np
import yaml

from gmail.core.errors import PipelineError


def load_params(path: str | os.PathLike) -> dict:
    """Read a params YAML file into a dict; a missing or malformed file is a PipelineError."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"params file {path} not found: pass --params with an existing file")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PipelineError(f"params file {path} is not valid YAML ({exc.__class__.__name__}): fix its syntax") from exc
    if not isinstance(params, dict):
        raise PipelineError(f"params file {path} must hold a mapping of sections: see params.yaml")
    return params


def _coerce(value, typ, where: str):
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except PipelineError as exc:
                errors.append(str(exc))
        raise PipelineError(errors[0])
    if origin is list or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise PipelineError(f"params key {where} must be a list, got {value!r}: fix params.yaml")
        (inner,) = typing.get_args(typ)[:1] or (typing.Any,)
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if typ is typing.Any:
        return value
    if typ is dict:
        if not isinstance(value, dict):
            raise PipelineError(f"params key {where} must be a mapping, got {value!r}: fix params.yaml")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise PipelineError(f"params key {where} must be true or false, got {value!r}: fix params.yaml")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineError(f"params key {where} must be an integer, got {value!r}: fix params.yaml")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"params key {where} must be a number, got {value!r}: fix params.yaml")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise PipelineError(f"params key {where} must be a string, got {value!r}: fix params.yaml")
        return value
    if dataclasses.is_dataclass(typ):
        return section(value, typ, where)
    return value


def section(raw, cls, name: str):
    """Build dataclass `cls` from mapping `raw`, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise PipelineError(f"params section {name} must be a mapping, got {raw!r}: see params.yaml")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise PipelineError(f"unknown params key {name}.{unknown[0]}: valid keys are {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, f in fields.items():
        if key in raw:
            kwargs[key] = _coerce(raw[key], hints[key], f"{name}.{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PipelineError(f"params key {name}.{key} is missing: add it (see params.yaml)")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(name)
    return obj


def get_paths(params: dict, *keys: str) -> types.SimpleNamespace:
    """The `paths` entries a stage reads, as `Path`s by attribute (`paths.captions`).

    Every file and folder a pipeline reads or writes is written once, in its params file's
    `paths` section; `dvc.yaml` refers to the same entries as `${paths.<key>}`. A missing or
    non-string entry is a PipelineError naming it.
    """
    raw = params.get("paths")
    if not isinstance(raw, dict):
        raise PipelineError("params section paths is missing or not a mapping: add it (see params.yaml)")
    out = {}
    for key in keys:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise PipelineError(f"params key paths.{key} must be a non-empty path, got {value!r}: fix params.yaml")
        out[key] = Path(value)
    return types.SimpleNamespace(**out)


def get_seed(params: dict) -> int:
    """The top-level `seed` every stage derives its seeds from."""
    seed = params.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PipelineError(f"params key seed must be a non-negative integer, got {seed!r}: fix params.yaml")
    return seed


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # warn_only: a few CUDA kernels have no deterministic variant; CPU runs are exact.
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pick_device(name: str = "auto") -> str:
    """Resolve `auto` to cuda when available, else cpu; validate explicit names."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise PipelineError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {name} requested but CUDA is not available: set device to cpu or auto")
    return name


def torch_dtype(name: str):
    """Map a dtype name from params to a torch dtype."""
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise PipelineError(f"unknown dtype {name!r}: use one of {', '.join(table)}")
    return table[name]

"""Params files into dataclasses (a misspelled key fails loudly), the `paths` section, seeding
and device choice.

One source of truth: a params dataclass has no default for a key its params file sets, so
`section` fails on a missing key instead of filling in a value that may disagree with the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
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
    check_sections(params, path)
    check_keys(params)
    return params


def check_keys(params: dict) -> None:
    """Every params name that dvc.yaml turns into a stage name (`caption@<variant>`), a folder
    name and the stage's key must be letters, digits, `_` and `-` only: `variants` and
    `llm.variants` keys, `tune_text.rows` items, `llm.benchmarks` keys. Anything else (`..`,
    `a;b`, a space) is a one-line PipelineError naming it; malformed sections are left to `section`.
    Also `eval_vqa.datasets` items (stage `eval_vqa@<set>`)."""
    import re

    tune_text, llm, vqa = params.get("tune_text"), params.get("llm"), params.get("eval_vqa")
    named = {"variants": params.get("variants"),
             "eval_vqa.datasets": vqa.get("datasets") if isinstance(vqa, dict) else None,
             "tune_text.rows": tune_text.get("rows") if isinstance(tune_text, dict) else None,
             "llm.variants": llm.get("variants") if isinstance(llm, dict) else None,
             "llm.benchmarks": llm.get("benchmarks") if isinstance(llm, dict) else None}
    for where, entries in named.items():
        if not isinstance(entries, (dict, list)):
            continue
        for name in entries:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise PipelineError(f"params {where} has the name {name!r}, which dvc.yaml makes a stage name and a folder "
                                    "name: rename it with letters, digits, _ and - only")


# The top-level sections each kind of params file may hold: what the stages read (`section`,
# `get_seed`, `get_paths`, `variants` entries) and `launcher` (gmail/core/launch.py). A section
# nobody reads is almost always a misspelling (`aling:`) whose values would be silently ignored.
COMMON_SECTIONS = ("seed", "paths")
MAIN_SECTIONS = ("launcher", "data", "gen", "encoder", "align", "variants", "caption", "eval_caption", "eval_vqa",
                 "tune_text", "eval_retrieval", "eval_zeroshot", "eval_long_retrieval", "llm")  # params.yaml
PRETRAIN_SECTIONS = ("clip", "generator", "sd2", "flux", "fidelity")  # pretrain/params.yaml


def check_sections(params: dict, path: str | os.PathLike = "params.yaml") -> None:
    """Reject a top-level section no stage reads, naming the nearest known one.

    The file's kind (params.yaml or pretrain/params.yaml) is the one whose own sections it holds
    more of; a file holding neither kind's (only `seed` / `paths`, or nothing but misspellings)
    is checked against both.
    """
    main = sum(k in MAIN_SECTIONS for k in params)
    pretrain = sum(k in PRETRAIN_SECTIONS for k in params)
    kinds = {"params.yaml": MAIN_SECTIONS, "pretrain/params.yaml": PRETRAIN_SECTIONS}
    if main > pretrain:
        kinds.pop("pretrain/params.yaml")
    elif pretrain > main:
        kinds.pop("params.yaml")
    known = [*COMMON_SECTIONS, *(s for sections in kinds.values() for s in sections)]
    for name in params:
        if name in known:
            continue
        other = [kind for kind, sections in {"params.yaml": MAIN_SECTIONS, "pretrain/params.yaml": PRETRAIN_SECTIONS}.items()
                 if name in sections]
        if other:
            raise PipelineError(f"params section {name!r} in {path} belongs in {other[0]}, not in this file: move or remove it")
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"remove it or use one of {', '.join(known)}"
        raise PipelineError(f"unknown params section {name!r} in {path}: {hint}")


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
        # YAML's .nan / .inf parse as floats; no setting here means anything by them (a NaN
        # learning rate trains to NaN weights, an infinite guidance gives black images).
        if not math.isfinite(value):
            raise PipelineError(f"params key {where} must be a finite number, got {value!r}: fix params.yaml")
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


# No optimiser in this project trains at a learning rate above 1 (AdamW's here are 1e-5 .. 1e-2);
# a larger value is a typo (1e6 for 1e-6) that would only diverge.
MAX_LR = 1.0


def check_param(ok: bool, key: str, value, rule: str, file: str = "params.yaml") -> None:
    """Unless `ok`: PipelineError `params key <key>=<value> must be <rule>: fix <file>`."""
    if not ok:
        raise PipelineError(f"params key {key}={value!r} must be {rule}: fix {file}")


def check_lr(key: str, value: float, file: str = "params.yaml") -> None:
    """A learning rate in (0, MAX_LR]."""
    check_param(0 < value <= MAX_LR, key, value, f"in (0, {MAX_LR:g}] (AdamW learning rates are ~1e-5 to 1e-2)", file)


def get_paths(params: dict, *keys: str) -> types.SimpleNamespace:
    """The `paths` entries a stage reads, as `Path`s by attribute (`paths.captions`).

    Every file and folder a pipeline reads or writes is written once, in its params file's
    `paths` section; `dvc.yaml` refers to the same entries as `${paths.<key>}`. A missing or
    non-string entry is a PipelineError naming it, and so is one that does not resolve strictly
    inside the working directory (the repository root, where DVC runs stages) or lies in
    `.git`, `.dvc` or `.venv` (`gmail.core.io.check_output_path`).
    """
    from gmail.core.io import check_output_path

    raw = params.get("paths")
    if not isinstance(raw, dict):
        raise PipelineError("params section paths is missing or not a mapping: add it (see params.yaml)")
    out = {}
    for key in keys:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise PipelineError(f"params key paths.{key} must be a non-empty path, got {value!r}: fix params.yaml")
        # Every entry is some stage's output, which is replaced as a whole: `.`, `..` or `.git`
        # here once deleted the workspace.
        check_output_path(value, f"params key paths.{key} ({value!r})")
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

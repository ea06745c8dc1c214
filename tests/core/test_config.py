"""gmail.core.config: params sections into dataclasses, seeds, devices and dtypes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

from gmail.core.config import get_paths, get_seed, load_params, pick_device, section, set_seed, torch_dtype
from gmail.core.errors import PipelineError


@dataclass
class Demo:
    name: str  # required
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    widths: list[int] = field(default_factory=lambda: [1, 2])
    maybe: Optional[int] = None


@dataclass
class Inner:
    size: int = 3


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)


@dataclass
class Checked:
    steps: int = 1

    def validate(self, name):
        if self.steps < 1:
            raise PipelineError(f"{name}.steps must be positive")


# --------------------------------------------------------------------------- section


def test_section_builds_dataclass_with_defaults():
    obj = section({"name": "x", "count": 4}, Demo, "demo")
    assert obj == Demo(name="x", count=4)


def test_section_unknown_key_names_section_and_key():
    with pytest.raises(PipelineError) as info:
        section({"name": "x", "cuont": 3}, Demo, "demo")
    assert "demo.cuont" in str(info.value)


def test_section_wrong_type_names_section_and_key():
    with pytest.raises(PipelineError) as info:
        section({"name": "x", "count": "3"}, Demo, "demo")
    assert "demo.count" in str(info.value)
    with pytest.raises(PipelineError, match=r"demo\.name"):
        section({"name": 5}, Demo, "demo")
    with pytest.raises(PipelineError, match=r"demo\.flag"):
        section({"name": "x", "flag": "yes"}, Demo, "demo")


def test_section_missing_required_key_names_it():
    with pytest.raises(PipelineError) as info:
        section({"count": 2}, Demo, "demo")
    assert "demo.name" in str(info.value)


def test_section_bool_is_not_an_int_or_a_number():
    with pytest.raises(PipelineError, match=r"demo\.count"):
        section({"name": "x", "count": True}, Demo, "demo")
    with pytest.raises(PipelineError, match=r"demo\.rate"):
        section({"name": "x", "rate": False}, Demo, "demo")


def test_section_int_is_accepted_as_float():
    obj = section({"name": "x", "rate": 2}, Demo, "demo")
    assert obj.rate == 2.0 and isinstance(obj.rate, float)


def test_section_lists_are_checked_item_by_item():
    assert section({"name": "x", "widths": [8, 16]}, Demo, "demo").widths == [8, 16]
    with pytest.raises(PipelineError, match=r"demo\.widths\[1\]"):
        section({"name": "x", "widths": [8, "16"]}, Demo, "demo")
    with pytest.raises(PipelineError, match=r"demo\.widths"):
        section({"name": "x", "widths": 8}, Demo, "demo")


def test_section_optional_accepts_none_and_checks_the_type():
    assert section({"name": "x", "maybe": None}, Demo, "demo").maybe is None
    assert section({"name": "x", "maybe": 7}, Demo, "demo").maybe == 7
    with pytest.raises(PipelineError, match=r"demo\.maybe"):
        section({"name": "x", "maybe": "seven"}, Demo, "demo")


def test_section_nested_dataclass_names_the_full_path():
    assert section({"inner": {"size": 5}}, Outer, "outer").inner == Inner(5)
    with pytest.raises(PipelineError, match=r"outer\.inner\.size"):
        section({"inner": {"size": "big"}}, Outer, "outer")


def test_section_not_a_mapping():
    with pytest.raises(PipelineError, match="demo"):
        section(["name"], Demo, "demo")


def test_section_runs_validate_with_the_section_name():
    assert section({"steps": 2}, Checked, "train").steps == 2
    with pytest.raises(PipelineError, match=r"train\.steps"):
        section({"steps": 0}, Checked, "train")


# --------------------------------------------------------------------------- load_params


def test_load_params_errors(tmp_path):
    with pytest.raises(PipelineError, match="missing.yaml"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: {")
    with pytest.raises(PipelineError, match="bad.yaml"):
        load_params(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(PipelineError, match="scalar.yaml"):
        load_params(scalar)


def test_load_params_reads_mapping(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("seed: 3\ndata:\n  n_a: 5\n")
    assert load_params(p) == {"seed": 3, "data": {"n_a": 5}}


# --------------------------------------------------------------------------- seeds, devices, dtypes


def test_get_seed():
    assert get_seed({"seed": 0}) == 0
    assert get_seed({"seed": 42}) == 42
    for bad in ({}, {"seed": -1}, {"seed": True}, {"seed": "1"}, {"seed": 1.5}, {"seed": None}):
        with pytest.raises(PipelineError, match="seed"):
            get_seed(bad)


def test_set_seed_makes_random_draws_repeatable(monkeypatch):
    import random

    import numpy as np

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        set_seed(5)
        first = (random.random(), np.random.rand(), torch.rand(3))
        set_seed(5)
        second = (random.random(), np.random.rand(), torch.rand(3))
        set_seed(6)
        third = torch.rand(3)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])
    assert not torch.equal(first[2], third)


def test_pick_device_auto_and_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu"
    assert pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda"
    assert pick_device("cuda:1") == "cuda:1"


def test_pick_device_cuda_without_cuda_is_pipeline_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(PipelineError, match="CUDA"):
            pick_device(name)


def test_pick_device_unknown_name():
    with pytest.raises(PipelineError, match="tpu"):
        pick_device("tpu")


def test_torch_dtype():
    assert torch_dtype("float32") is torch.float32
    assert torch_dtype("float16") is torch.float16
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(PipelineError, match="float64"):
        torch_dtype("float64")


# --------------------------------------------------------------------------- paths
# (the shipped params files themselves: tests/pipeline/test_params_files.py)


def test_get_paths_returns_paths_by_attribute():
    from pathlib import Path

    paths = get_paths({"paths": {"captions": "data/captions", "metrics": "metrics"}}, "captions")
    assert paths.captions == Path("data/captions") and not hasattr(paths, "metrics")


@pytest.mark.parametrize("value", [None, "", "  ", 3, ["a"]])
def test_get_paths_rejects_missing_or_non_string_entries(value):
    with pytest.raises(PipelineError, match=r"paths\.captions"):
        get_paths({"paths": {"captions": value}}, "captions")


def test_section_dict_field_must_be_a_mapping():
    @dataclass
    class WithDict:
        reader: dict

    assert section({"reader": {"a": 1}}, WithDict, "demo").reader == {"a": 1}
    with pytest.raises(PipelineError, match=r"demo\.reader must be a mapping"):
        section({"reader": None}, WithDict, "demo")

"""Both shipped params files: every section parses into its dataclass with the file's values, and
no dataclass default can stand in for a key the file sets (one source of truth)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from helpers import MAIN_PARAMS, PRETRAIN_PARAMS, params_dict

from gmail.align.params import AlignParams
from gmail.core.config import check_keys, get_paths, get_seed, load_params, section
from gmail.core.errors import PipelineError
from gmail.downstream.llava import LlmParams
from gmail.downstream.text_tuning import TuneTextParams
from gmail.downstream.variants import VariantParams
from gmail.generation.mini_diffusion import GeneratorConfig
from gmail.models.image_tower import EncoderParams
from stages.caption import CaptionParams
from stages.captions import DataParams
from stages.eval_caption import EvalCaptionParams
from stages.eval_long_retrieval import EvalLongRetrievalParams
from stages.eval_retrieval import EvalRetrievalParams
from stages.eval_vqa import EvalVqaParams
from stages.eval_zeroshot import EvalZeroshotParams
from stages.generate import GenParams
from stages.pretrain_clip import ClipParams
from stages.pretrain_fidelity import FidelityParams
from stages.pretrain_generator import TrainParams

# Every top-level key of each file and what parses it. A new section needs an entry here.
MAIN = {"data": DataParams, "gen": GenParams, "encoder": EncoderParams, "align": AlignParams,
        "caption": CaptionParams, "eval_caption": EvalCaptionParams,
        "eval_vqa": EvalVqaParams, "tune_text": TuneTextParams, "eval_retrieval": EvalRetrievalParams,
        "eval_zeroshot": EvalZeroshotParams, "eval_long_retrieval": EvalLongRetrievalParams,
        "llm": LlmParams}
PRETRAIN = {"clip": ClipParams, "generator": TrainParams, "sd2": GeneratorConfig, "flux": GeneratorConfig,
            "fidelity": FidelityParams}
SPECIAL = {"seed", "paths", "variants"}  # parsed by get_seed, get_paths, VariantParams per entry


def _as_plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _check_section(raw: dict, cls, name: str):
    obj = section(raw, cls, name)
    plain = _as_plain(obj)
    for key, value in raw.items():
        assert plain[key] == value, f"{name}.{key}: file says {value!r}, dataclass holds {plain[key]!r}"
    return obj


@pytest.mark.parametrize("path,parsers", [(MAIN_PARAMS, MAIN), (PRETRAIN_PARAMS, PRETRAIN)], ids=["params.yaml", "pretrain"])
def test_every_section_parses_with_the_files_values(path, parsers):
    params = load_params(path)
    assert set(params) == set(parsers) | (SPECIAL | {"launcher"} if path == MAIN_PARAMS else SPECIAL - {"variants"})
    if path == MAIN_PARAMS:  # how generate / align start (gmail/core/launch.py): a plain run by default
        assert params["launcher"] == "python"
    assert get_seed(params) >= 0
    paths = vars(get_paths(params, *params["paths"]))
    assert all(isinstance(p, Path) and not p.is_absolute() for p in paths.values())  # relative to the repository
    for name, cls in parsers.items():
        _check_section(params[name], cls, name)
    for name, raw in params.get("variants", {}).items():
        _check_section(raw, VariantParams, f"variants.{name}")


def _required(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


@pytest.mark.parametrize("path,parsers", [(MAIN_PARAMS, MAIN), (PRETRAIN_PARAMS, {k: v for k, v in PRETRAIN.items() if k not in ("sd2", "flux")})],
                         ids=["params.yaml", "pretrain"])
def test_sections_have_no_defaults_for_keys_the_file_sets(path, parsers):
    params = load_params(path)
    for name, cls in parsers.items():
        assert set(params[name]) == _required(cls), f"section {name}: file keys vs dataclass fields without default"
    # caption.model is a nested section with the same rule.
    if "caption" in parsers:
        from gmail.downstream.clipcap import ClipCapConfig

        assert set(params["caption"]["model"]) == _required(ClipCapConfig)
    if "llm" in parsers:  # llm.model and each llm.variants entry: the same rule
        from gmail.downstream.llava import LlavaConfig, LlmVariant

        assert set(params["llm"]["model"]) == _required(LlavaConfig)
        for name, raw in params["llm"]["variants"].items():
            assert set(raw) == _required(LlmVariant), name
            _check_section(raw, LlmVariant, f"llm.variants.{name}")


def test_generator_sections_set_exactly_their_familys_keys():
    pre = load_params(PRETRAIN_PARAMS)
    for family in ("sd2", "flux"):
        config = section(pre[family], GeneratorConfig, family)
        unset = {f.name for f in dataclasses.fields(GeneratorConfig) if f.name not in pre[family] and f.name != "text_dim"}
        assert all(getattr(config, k) is None for k in unset), family  # the other family's keys stay None


@pytest.mark.parametrize("name,cls", sorted(MAIN.items()))
def test_a_missing_key_is_a_one_line_error_naming_it(name, cls):
    raw = load_params(MAIN_PARAMS)[name]
    key = sorted(raw)[0]
    broken = params_dict(MAIN_PARAMS)[name]
    del broken[key]
    with pytest.raises(PipelineError, match=f"params key {name}.{key} is missing"):
        section(broken, cls, name)


def test_paths_errors_name_the_key():
    params = load_params(MAIN_PARAMS)
    with pytest.raises(PipelineError, match="paths.nowhere"):
        get_paths(params, "nowhere")
    with pytest.raises(PipelineError, match="section paths"):
        get_paths({"seed": 0}, "captions")


def _stage_names(params: dict) -> list:
    llm = params.get("llm", {})
    return [*params.get("variants", {}), *params.get("tune_text", {}).get("rows", []), *llm.get("variants", {}),
            *llm.get("benchmarks", {})]


@pytest.mark.parametrize("path", [MAIN_PARAMS, PRETRAIN_PARAMS], ids=["params.yaml", "pretrain"])
def test_names_that_become_stage_names_are_plain(path):
    """dvc.yaml makes `caption@<variant>`, `tune_text@<row>`, `train_llm@<variant>` and
    `bench_llm@<benchmark>` from these names, and folders named after them."""
    params = load_params(path)  # which runs check_keys
    check_keys(params)
    assert all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in _stage_names(params))
    if path == MAIN_PARAMS:
        assert len(_stage_names(params)) >= 12


@pytest.mark.parametrize("where", ["variants", "tune_text.rows", "llm.variants", "llm.benchmarks"])
@pytest.mark.parametrize("name", ["real;touch X;#", "..", "a b", "", 3])
def test_a_name_that_is_not_plain_fails_at_load(where, name, tmp_path):
    params = params_dict(MAIN_PARAMS)
    section_name, _, key = where.rpartition(".")
    holder = params[section_name] if section_name else params
    key = key or where
    if isinstance(holder[key], list):
        holder[key] = [*holder[key], name]
    else:
        holder[key] = {**holder[key], name: {}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(PipelineError) as info:
        load_params(path)
    assert str(info.value).startswith(f"params {where} has the name {name!r}") and "\n" not in str(info.value)

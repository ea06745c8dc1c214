"""Malformed params fail loudly: non-finite numbers, values outside the range any run would use,
sampling steps past the scheduler's limit and top-level sections no stage reads are one-line
PipelineErrors naming the key; the shipped params files pass."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import MAIN_PARAMS, PRETRAIN_PARAMS, ROOT, params_dict

from gmail.align.params import AlignParams
from gmail.core.config import COMMON_SECTIONS, MAIN_SECTIONS, PRETRAIN_SECTIONS, check_sections, load_params, section
from gmail.core.errors import PipelineError, check_loss
from gmail.downstream.llava import LlmParams
from gmail.downstream.text_tuning import TuneTextParams
from gmail.generation.mini_diffusion import GeneratorConfig
from gmail.generation.samplers import TRAIN_TIMESTEPS, train_timesteps
from stages.caption import CaptionParams
from stages.eval_vqa import EvalVqaParams
from stages.generate import GenParams
from stages.pretrain_clip import ClipParams
from stages.pretrain_fidelity import FidelityParams
from stages.pretrain_generator import TrainParams

MAIN = {"gen": GenParams, "align": AlignParams, "caption": CaptionParams, "eval_vqa": EvalVqaParams,
        "tune_text": TuneTextParams, "llm": LlmParams}
PRETRAIN = {"clip": ClipParams, "generator": TrainParams, "fidelity": FidelityParams, "sd2": GeneratorConfig,
            "flux": GeneratorConfig}
NAN, INF = float("nan"), float("inf")


def _build(name: str, overrides: dict):
    """Section `name` of the shipped params file holding it, with `overrides` merged in."""
    base, classes = (MAIN_PARAMS, MAIN) if name in MAIN else (PRETRAIN_PARAMS, PRETRAIN)
    return section(params_dict(base, **{name: overrides})[name], classes[name], name)


# --------------------------------------------------------------------------- ranges

BAD = [
    # (section, overrides, fragments the one-line error holds)
    ("align", {"lr": NAN}, ["align.lr", "finite", "nan"]),
    ("align", {"lr": INF}, ["align.lr", "finite"]),
    ("align", {"tau": -INF}, ["align.tau", "finite"]),
    ("align", {"lr": 0.0}, ["align.lr=0.0", "(0, 1]"]),
    ("align", {"lr": 2.0}, ["align.lr=2.0", "(0, 1]"]),
    ("align", {"weight_decay": -0.01}, ["align.weight_decay", ">= 0"]),
    ("caption", {"lr": 1e6}, ["caption.lr=1000000.0", "(0, 1]"]),
    ("caption", {"val_fraction": 1.0}, ["caption.val_fraction", "(0, 1)"]),
    ("caption", {"patience": 0}, ["caption.patience"]),
    ("caption", {"eval_every": 0}, ["caption.eval_every"]),
    ("caption", {"weight_decay": -1.0}, ["caption.weight_decay"]),
    ("caption", {"model": {"dropout": 1.0}}, ["caption.model.dropout", "[0, 1)"]),
    ("caption", {"model": {"n_head": 3}}, ["caption.model.n_embd", "multiple of n_head"]),
    ("caption", {"model": {"prefix_length": 0}}, ["caption.model.prefix_length", "positive"]),
    ("eval_vqa", {"lr": 10.0}, ["eval_vqa.lr", "(0, 1]"]),
    ("eval_vqa", {"weight_decay": -0.5}, ["eval_vqa.weight_decay"]),
    ("tune_text", {"lr": -1e-4}, ["tune_text.lr", "(0, 1]"]),
    ("llm", {"lr": 5.0}, ["llm.lr", "(0, 1]"]),
    ("llm", {"lr_projection": 0.0}, ["llm.lr_projection"]),
    ("llm", {"weight_decay": -0.1}, ["llm.weight_decay"]),
    ("llm", {"dtype": "float64"}, ["float64"]),
    ("llm", {"model": {"lora_dropout": 1.5}}, ["llm.model.lora_dropout"]),
    ("llm", {"model": {"lora_alpha": 0.0}}, ["llm.model.lora_alpha"]),
    ("gen", {"steps": 1200}, ["gen.steps=1200", f"at most {TRAIN_TIMESTEPS}"]),
    ("gen", {"guidance": INF}, ["gen.guidance", "finite"]),
    ("gen", {"guidance": -1.0}, ["gen.guidance=-1.0", "[0, 50]"]),
    ("gen", {"guidance": 51.0}, ["gen.guidance=51.0", "[0, 50]"]),
    ("gen", {"resolution": 100000}, ["gen.resolution"]),
    ("clip", {"lr": 1e3}, ["clip.lr", "(0, 1]", "pretrain/params.yaml"]),
    ("clip", {"batch_size": 1}, ["clip.batch_size", "at least 2"]),
    ("clip", {"embed_dim": 0}, ["clip.embed_dim"]),
    ("generator", {"lr": NAN}, ["generator.lr", "finite"]),
    ("generator", {"lr": 3.0}, ["generator.lr", "(0, 1]"]),
    ("generator", {"ema_decay": 1.0}, ["generator.ema_decay"]),
    ("generator", {"p_uncond": -0.1}, ["generator.p_uncond"]),
    ("generator", {"warmup": 0}, ["generator.warmup=0", "positive"]),
    ("generator", {"max_minutes": -1.0}, ["generator.max_minutes"]),
    ("fidelity", {"steps": TRAIN_TIMESTEPS + 1}, ["fidelity.steps", f"[1, {TRAIN_TIMESTEPS}]"]),
    ("fidelity", {"guidance": 1e9}, ["fidelity.guidance"]),
    ("fidelity", {"batch_size": 0}, ["fidelity.batch_size"]),
    ("sd2", {"channels": [12, 24, 48]}, ["sd2.channels", "multiple of 8"]),
    ("sd2", {"channels": []}, ["sd2.channels"]),
    ("sd2", {"layers_per_block": 0}, ["sd2.layers_per_block"]),
    ("flux", {"flux_heads": 0}, ["flux.flux_heads"]),
    ("flux", {"patch": 0}, ["flux.patch"]),
]


@pytest.mark.parametrize("name,overrides,fragments", BAD, ids=[f"{n}-{'-'.join(map(str, o))}" for n, o, _ in BAD])
def test_bad_value_is_a_one_line_error_naming_the_key(name, overrides, fragments):
    with pytest.raises(PipelineError) as info:
        _build(name, overrides)
    message = str(info.value)
    assert "\n" not in message and ": " in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


GOOD = [
    ("align", {"lr": 1.0, "weight_decay": 0.0}),
    ("align", {"lr": 1e-7}),
    ("caption", {"lr": 2e-5, "val_fraction": 0.5}),
    ("gen", {"steps": TRAIN_TIMESTEPS, "guidance": 0.0}),
    ("gen", {"steps": 1, "guidance": 50.0}),
    ("gen", {"scale": "paper", "model": "stabilityai/stable-diffusion-2-base@" + "0" * 40, "weights": "pretrain/hub-model.txt",
             "steps": 50, "guidance": 7.5}),
    ("fidelity", {"steps": TRAIN_TIMESTEPS}),
    ("generator", {"ema_decay": 0.0, "p_uncond": 0.0, "max_minutes": 0.0}),
    ("llm", {"lr": 1.0, "weight_decay": 0.0}),
]


@pytest.mark.parametrize("name,overrides", GOOD, ids=[f"{n}-{'-'.join(map(str, o))}" for n, o in GOOD])
def test_values_at_the_edges_of_the_ranges_are_accepted(name, overrides):
    _build(name, overrides)


def test_integers_for_float_keys_still_work():
    assert _build("align", {"lr": 1}).lr == 1.0 and isinstance(_build("gen", {"guidance": 3}).guidance, float)


def test_yaml_nan_and_inf_as_written_in_a_params_file_are_rejected(tmp_path):
    # What `-S align.lr=.nan` or a hand edit puts in the file: YAML's own spellings.
    for text, fragment in ((".nan", "nan"), (".inf", "inf"), ("-.Inf", "-inf")):
        path = tmp_path / "params.yaml"
        path.write_text(MAIN_PARAMS.read_text().replace("  lr: 1.0e-3 ", f"  lr: {text} ", 1))
        raw = load_params(path)["align"]
        assert math.isnan(raw["lr"]) or math.isinf(raw["lr"])
        with pytest.raises(PipelineError, match=rf"params key align\.lr must be a finite number, got {fragment}"):
            section(raw, AlignParams, "align")


# --------------------------------------------------------------------------- sampling steps


def test_steps_limit_is_the_saved_schedulers_training_timesteps(tmp_path):
    assert train_timesteps(ROOT / "pretrain/models/sd2") == train_timesteps(ROOT / "pretrain/models/flux") == TRAIN_TIMESTEPS
    model = tmp_path / "short"
    (model / "scheduler").mkdir(parents=True)
    (model / "scheduler/scheduler_config.json").write_text('{"num_train_timesteps": 50}')
    assert train_timesteps(model) == 50
    assert _build("gen", {"weights": str(model), "steps": 50}).steps == 50
    with pytest.raises(PipelineError, match=r"gen\.steps=51 must be at most 50"):
        _build("gen", {"weights": str(model), "steps": 51})
    # A hub id or a missing folder has no config to read: the SD2 / FLUX schedulers' 1000.
    assert train_timesteps("stabilityai/stable-diffusion-2-base") == train_timesteps(tmp_path / "missing") == TRAIN_TIMESTEPS


def test_the_limit_is_where_the_mini_ddim_sampler_fails():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(ROOT / "pretrain/models/sd2/scheduler")
    scheduler.set_timesteps(TRAIN_TIMESTEPS)
    with pytest.raises(ValueError):
        scheduler.set_timesteps(TRAIN_TIMESTEPS + 1)


# --------------------------------------------------------------------------- top-level sections


def _paper_params(tmp_path) -> Path:
    from gmail.core.cli import run
    from tools.scale import main

    path = tmp_path / "params.yaml"
    shutil.copy(MAIN_PARAMS, path)
    assert run(main, ["paper", "--params", str(path), "--overlay", str(ROOT / "params.paper.yaml")]) == 0
    return path


def test_the_shipped_params_files_hold_only_known_sections(tmp_path):
    for path in (MAIN_PARAMS, PRETRAIN_PARAMS, _paper_params(tmp_path)):
        assert load_params(path)  # check_sections runs inside
    assert set(load_params(MAIN_PARAMS)) == set(COMMON_SECTIONS + MAIN_SECTIONS)
    assert set(load_params(PRETRAIN_PARAMS)) == set(COMMON_SECTIONS + PRETRAIN_SECTIONS)


def test_known_sections_are_those_the_code_reads():
    """Every `params.get("<section>")` / `params["<section>"]` in stages/ and gmail/ names a known
    section, and every known one is read somewhere (sd2 / flux through `params.get(args.family)`)."""
    pattern = re.compile(r"""params(?:\.get\(|\[)\s*["']([a-z_0-9]+)["']""")
    read = set()
    for path in [*ROOT.glob("stages/*.py"), *ROOT.glob("gmail/**/*.py")]:
        read |= set(pattern.findall(path.read_text()))
    known = set(COMMON_SECTIONS + MAIN_SECTIONS + PRETRAIN_SECTIONS)
    assert read <= known, f"sections read but not known to check_sections: {sorted(read - known)}"
    assert known - read <= {"seed", "paths", "sd2", "flux"}  # get_seed, get_paths, params.get(args.family)


def _error(params: dict, path="params.yaml") -> str:
    with pytest.raises(PipelineError) as info:
        check_sections(params, path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_misspelt_main_section_names_the_nearest_known_one():
    params = params_dict(MAIN_PARAMS)
    params["aling"] = params.pop("align")
    assert _error(params) == "unknown params section 'aling' in params.yaml: did you mean 'align'?"
    params = params_dict(MAIN_PARAMS)
    params["eval_vga"] = params.pop("eval_vqa")
    assert "did you mean 'eval_vqa'?" in _error(params)


def test_misspelt_pretrain_section_is_checked_against_the_pretrain_sections():
    params = params_dict(PRETRAIN_PARAMS)
    params["genrator"] = params.pop("generator")
    assert _error(params, "pretrain/params.yaml") == ("unknown params section 'genrator' in pretrain/params.yaml: "
                                                      "did you mean 'generator'?")


def test_a_section_of_the_other_file_says_where_it_belongs():
    assert "belongs in pretrain/params.yaml" in _error(params_dict(MAIN_PARAMS, clip={"lr": 1e-3}))
    assert "belongs in params.yaml" in _error(params_dict(PRETRAIN_PARAMS, align={"lr": 1e-3}))


def test_an_unrelated_section_lists_the_known_ones():
    message = _error(params_dict(MAIN_PARAMS, zzz={"a": 1}))
    assert message.startswith("unknown params section 'zzz' in params.yaml: remove it or use one of seed, paths, launcher")
    assert "fidelity" not in message  # a main params file is not offered the pretrain sections


def test_a_file_of_neither_kind_is_checked_against_both():
    check_sections({"seed": 0, "paths": {}})
    check_sections({"seed": 0, "data": {}, "clip": {}})  # a tie: both kinds' sections are allowed
    assert "did you mean 'align'?" in _error({"seed": 0, "aling": {}})
    assert "did you mean 'fidelity'?" in _error({"seed": 0, "fidelty": {}})


def test_load_params_rejects_the_misspelt_section(tmp_path):
    params = yaml.safe_load(MAIN_PARAMS.read_text())
    params["aling"] = params.pop("align")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(PipelineError, match=r"unknown params section 'aling' in .*params\.yaml: did you mean 'align'\?"):
        load_params(path)


# --------------------------------------------------------------------------- losses


def test_check_loss_passes_finite_values_and_names_the_step_and_the_fix():
    assert check_loss(2.5, "alignment", 1, "lower align.lr (now 0.001)") == 2.5
    for value in (NAN, INF, -INF):
        with pytest.raises(PipelineError) as info:
            check_loss(value, "alignment", 7, "lower align.lr (now 0.001)")
        assert str(info.value) == f"alignment loss became {value} at step 7: lower align.lr (now 0.001) or check the inputs"

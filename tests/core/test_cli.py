"""gmail.core.cli: stage entry points turn PipelineError into one line on stderr and exit 2."""

from __future__ import annotations

import os

import pytest

from gmail.core.cli import offline, run, stage_parser
from gmail.core.errors import PipelineError


def test_run_pipeline_error_is_exit_2_and_one_error_line(capsys):
    def main(argv):
        raise PipelineError("params key gen.steps must be an integer, got 'x': fix params.yaml")

    assert run(main, []) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "gen.steps must be an integer" in lines[0]
    assert "Traceback" not in err


def test_run_success_is_exit_0_and_passes_argv(capsys):
    seen = []
    assert run(seen.append, ["--params", "p.yaml"]) == 0
    assert seen == [["--params", "p.yaml"]]
    assert capsys.readouterr().err == ""


def test_run_lets_other_errors_through():
    def main(argv):
        raise ValueError("a programming error keeps its traceback")

    with pytest.raises(ValueError):
        run(main, [])


def test_run_with_a_real_stage_parser(tmp_path, capsys):
    from gmail.core.config import load_params

    def main(argv):
        args = stage_parser("demo").parse_args(argv)
        load_params(args.params)

    assert run(main, ["--params", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.yaml" in err and err.count("\n") == 1


def test_stage_parser_default_params():
    assert stage_parser("x").parse_args([]).params == "params.yaml"
    assert stage_parser("x").parse_args(["--params", "a.yaml"]).params == "a.yaml"


def test_offline_sets_hf_variables_without_overriding(monkeypatch):
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "0"  # an explicit choice is kept

"""tools/scale.py and params.paper.yaml: the overlay names only keys params.yaml has; `paper` sets
exactly them and keeps every other key, every comment and the key order; the result parses
through every params dataclass; an unknown key changes nothing; `mini` restores the committed file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import MAIN_PARAMS, ROOT
from test_params_files import MAIN, SPECIAL, _check_section

from gmail.core.cli import run
from gmail.core.config import get_paths, get_seed, load_params
from gmail.downstream.llava import LlmVariant
from gmail.downstream.variants import VariantParams
from stages.bench_llm import BenchmarkParams
from tools.scale import load_round_trip, main, overlay_leaves

OVERLAY = ROOT / "params.paper.yaml"


def _flatten(node, prefix=()) -> dict[tuple, object]:
    """Every leaf of a plain YAML tree by key path (an empty mapping is a leaf)."""
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in _flatten(child, (*prefix, key)).items()}
    return {prefix: node}


def _under(path: tuple, prefixes: list[tuple]) -> bool:
    return any(path[: len(p)] == p for p in prefixes)


def _overlay_values() -> list[tuple[tuple, object]]:
    return overlay_leaves(yaml.safe_load(MAIN_PARAMS.read_text()), yaml.safe_load(OVERLAY.read_text()))


_COMMENT = re.compile(r"(?:^|\s)(#.*)$")
_KEY = re.compile(r"^(\s*[\w-]+):")


def _comments_and_keys(text: str) -> list[tuple]:
    """Per line: its key (with indentation) and its comment text; values are left out."""
    out = []
    for line in text.splitlines():
        comment, key = _COMMENT.search(line), _KEY.match(line)
        out.append((key.group(1) if key else None, comment.group(1) if comment else None))
    return out


@pytest.fixture
def paper_params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(MAIN_PARAMS, path)
    assert run(main, ["paper", "--params", str(path), "--overlay", str(OVERLAY)]) == 0
    return path


def test_every_overlay_key_exists_in_params_yaml():
    values = _overlay_values()  # raises, naming the key, when params.yaml has renamed or dropped one
    assert {p[0] for p, _ in values} >= {"data", "gen", "encoder", "align", "caption", "llm"}
    assert dict(values)[("gen", "scale")] == "paper" and dict(values)[("encoder", "scale")] == "paper"


def test_paper_sets_the_overlay_keys_and_keeps_everything_else(paper_params):
    before, after = _flatten(yaml.safe_load(MAIN_PARAMS.read_text())), _flatten(yaml.safe_load(paper_params.read_text()))
    values = _overlay_values()
    for path, value in values:
        got = {p[len(path):]: v for p, v in after.items() if p[: len(path)] == path}
        assert got == _flatten(value), ".".join(path)
    set_paths = [path for path, _ in values]
    assert {p: v for p, v in before.items() if not _under(p, set_paths)} == {p: v for p, v in after.items() if not _under(p, set_paths)}


def test_paper_keeps_every_comment_and_the_key_order(paper_params):
    before, after = MAIN_PARAMS.read_text(), paper_params.read_text()
    assert len(before.splitlines()) == len(after.splitlines())  # values stay on one line (flow style)
    assert _comments_and_keys(after) == _comments_and_keys(before)
    assert before != after


def test_paper_params_parse_through_every_section_dataclass(paper_params):
    params = load_params(paper_params)
    assert set(params) == set(load_params(MAIN_PARAMS)) and set(params) >= set(MAIN) | SPECIAL
    assert get_seed(params) >= 0
    get_paths(params, *params["paths"])
    for name, cls in MAIN.items():
        _check_section(params[name], cls, name)
    for name, raw in params["variants"].items():
        _check_section(raw, VariantParams, f"variants.{name}")
    for name, raw in params["llm"]["variants"].items():
        _check_section(raw, LlmVariant, f"llm.variants.{name}")
    assert params["llm"]["benchmarks"], "paper scale runs T10/T15 through llm.benchmarks"
    for name, raw in params["llm"]["benchmarks"].items():
        _check_section(raw, BenchmarkParams, f"llm.benchmarks.{name}")


def test_the_overlay_is_a_fixed_point(paper_params):
    once = paper_params.read_bytes()
    assert run(main, ["paper", "--params", str(paper_params), "--overlay", str(OVERLAY)]) == 0
    assert paper_params.read_bytes() == once


@pytest.mark.parametrize("overlay,key", [("gen: {steps: 50, stepz: 3}\n", "gen.stepz"),
                                         ("gen: {steps: 50}\nnowhere: {x: 1}\n", "nowhere"),
                                         ("gen: 5\n", "gen"),
                                         ("gen: {steps: {x: 1}}\n", "gen.steps")])
def test_an_unknown_or_misshapen_key_is_exit_2_and_changes_nothing(tmp_path, capsys, overlay, key):
    params, bad = tmp_path / "params.yaml", tmp_path / "bad.yaml"
    shutil.copy(MAIN_PARAMS, params)
    bad.write_text(overlay)
    assert run(main, ["paper", "--params", str(params), "--overlay", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and key in err
    assert params.read_bytes() == MAIN_PARAMS.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "params.yaml"]  # no temporary file left behind


def test_dry_run_writes_nothing(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    shutil.copy(MAIN_PARAMS, params)
    assert run(main, ["paper", "--params", str(params), "--overlay", str(OVERLAY), "--dry-run"]) == 0
    assert params.read_bytes() == MAIN_PARAMS.read_bytes()
    assert "gen.scale: 'mini' -> 'paper'" in capsys.readouterr().out


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_mini_restores_the_committed_values_and_keeps_other_edits(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    shutil.copy(MAIN_PARAMS, params)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "params.yaml")
    _git(tmp_path, "commit", "-qm", "mini")
    assert run(main, ["paper", "--params", str(params), "--overlay", str(OVERLAY)]) == 0
    edited = params.read_text().replace("\nseed: 0 ", "\nseed: 7 ", 1)  # an edit of a key the overlay does not set
    assert edited != params.read_text()
    params.write_text(edited)

    assert run(main, ["mini", "--params", str(params), "--overlay", str(OVERLAY)]) == 0
    assert params.read_text() == MAIN_PARAMS.read_text().replace("\nseed: 0 ", "\nseed: 7 ", 1)  # byte for byte, comments aligned

    # A revision whose params.yaml is at paper scale cannot supply the mini values.
    assert run(main, ["paper", "--params", str(params), "--overlay", str(OVERLAY)]) == 0
    _git(tmp_path, "commit", "-qam", "paper")
    capsys.readouterr()
    assert run(main, ["mini", "--params", str(params), "--overlay", str(OVERLAY)]) == 2
    assert "not at mini scale" in capsys.readouterr().err


def test_mini_outside_git_is_exit_2(tmp_path, capsys):
    if subprocess.run(["git", "-C", str(tmp_path), "rev-parse"], capture_output=True).returncode == 0:
        pytest.skip("the temporary folder lies inside a git repository")
    params = tmp_path / "params.yaml"
    shutil.copy(MAIN_PARAMS, params)
    assert run(main, ["mini", "--params", str(params), "--overlay", str(OVERLAY)]) == 2
    assert "git checkout" in capsys.readouterr().err
    assert params.read_bytes() == MAIN_PARAMS.read_bytes()


def test_params_yaml_round_trips_unchanged():
    # The precondition `paper` checks: ruamel reproduces the shipped file byte for byte.
    from tools.scale import dump_round_trip

    text = MAIN_PARAMS.read_text()
    assert dump_round_trip(load_round_trip(text, "params.yaml")) == text

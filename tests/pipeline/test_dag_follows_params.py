"""Which stages exist and what they depend on follow params (issue 15): DVC's own parser resolves
dvc.yaml under mini params and under params.yaml merged with params.paper.yaml (tools.scale).

At paper scale there is no eval_vqa stage (easy-vqa's questions exist only for the mini splits),
and each evaluation's data dep is its source's folder (T5: ShareGPT4V, never the easy-vqa images
of real T); at mini scale the stage names and deps are those the mini pipeline has always had,
but for `eval_vqa`, now `eval_vqa@easy_vqa`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import MAIN_PARAMS, ROOT

from gmail.core.cli import run
from gmail.core.config import check_keys
from gmail.core.errors import PipelineError
from tools.scale import main as scale_main


def _stages(root: Path, params_file: Path, monkeypatch) -> dict[str, list[str]]:
    """{stage address: its resolved dep paths} of dvc.yaml in a DVC repo (no git) in `root`."""
    from dvc.repo import Repo

    shutil.copy2(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy2(params_file, root / "params.yaml")
    Repo.init(str(root), no_scm=True).close()
    monkeypatch.chdir(root)  # stage addresses are relative to the working directory
    repo = Repo(str(root))
    try:
        return {s.addressing: [str(d.def_path) for d in s.deps] for s in repo.index.stages}
    finally:
        repo.close()


@pytest.fixture
def paper_params(tmp_path) -> Path:
    path = tmp_path / "paper.yaml"
    shutil.copy(MAIN_PARAMS, path)
    assert run(scale_main, ["paper", "--params", str(path), "--overlay", str(ROOT / "params.paper.yaml")]) == 0
    return path


def test_paper_scale_has_no_eval_vqa_and_its_evaluations_depend_on_their_sources(paper_params, tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    stages = _stages(tmp_path / "repo", paper_params, monkeypatch)
    assert not [s for s in stages if s.startswith("eval_vqa")]
    for name in ("captions", "generate", "embed", "eval_caption", "eval_retrieval", "eval_zeroshot", "eval_long_retrieval"):
        assert name in stages
    long_deps = stages["eval_long_retrieval"]
    assert "/data/sharegpt4v" in long_deps
    assert not [d for d in long_deps if d.rstrip("/").endswith("images/T")]
    assert "/data/flickr30k" in stages["eval_retrieval"] and "data/captions/T.jsonl" not in stages["eval_retrieval"]
    assert "/data/clip_benchmark" in stages["eval_zeroshot"]
    # the overlay's reader arguments lie inside the deps it names
    paper = yaml.safe_load(paper_params.read_text())
    assert paper["eval_long_retrieval"]["paper"]["json_path"].startswith("/data/sharegpt4v/")
    assert paper["eval_retrieval"]["paper"]["image_root"].startswith("/data/flickr30k/")


def test_mini_scale_keeps_its_stages_and_deps(tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    stages = _stages(tmp_path / "repo", MAIN_PARAMS, monkeypatch)
    assert "eval_vqa@easy_vqa" in stages and "eval_vqa" not in stages
    assert "data/captions/images/T" in stages["eval_long_retrieval"]
    assert "data/captions/T.jsonl" in stages["eval_retrieval"] and "data/captions/T.jsonl" in stages["eval_zeroshot"]


@pytest.mark.parametrize("datasets", [["easy vqa"], ["a;b"]])
def test_eval_vqa_dataset_names_are_checked_at_load(datasets):
    params = yaml.safe_load(MAIN_PARAMS.read_text())
    params["eval_vqa"]["datasets"] = datasets
    with pytest.raises(PipelineError, match=r"^params eval_vqa\.datasets has the name"):
        check_keys(params)

"""No params value reaches a shell (issue 14): DVC's stage commands are fixed text, a foreach stage
reads its key from DVC_STAGE and checks it, and `launcher` is split and checked without a shell.

The hostile values below each ran `touch X` before: DVC pasted `${launcher}`, variant keys,
tune_text rows and benchmark names into the command line its shell ran.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import MAIN_PARAMS, ROOT, assert_one_line_error, changed_files, params_dict, run_stage, snapshot

HOSTILE = "touch X;#"  # appended to a name after `;`, it would run `touch X` in a shell and comment out the rest
FIXED_CMD = re.compile(r"python -m stages\.\w+ --params params\.yaml")


def _hostile_params() -> dict:
    """The shipped params.yaml with a hostile launcher, variant, tune_text row, LLM variant and benchmark."""
    params = params_dict(MAIN_PARAMS, launcher="touch X; false")
    params["variants"][f"real;{HOSTILE}"] = params["variants"]["real"]
    params["tune_text"]["rows"].append(f"gmail;{HOSTILE}")
    params["llm"]["variants"][f"llm_real;{HOSTILE}"] = params["llm"]["variants"]["llm_real"]
    params["llm"]["benchmarks"] = {f"sqa;{HOSTILE}": {"kind": "scienceqa", "root": "bench", "split": "test"}}
    return params


def _dvc_repo(root: Path, params: dict) -> Path:
    """A DVC repo (no git) in `root` with both pipeline files and `params`."""
    from dvc.repo import Repo

    (root / "llm").mkdir(parents=True)
    shutil.copy2(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy2(ROOT / "llm/dvc.yaml", root / "llm/dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Repo.init(str(root), no_scm=True).close()
    return root


def test_dvc_resolves_every_command_to_fixed_text(tmp_path, monkeypatch):
    """DVC's own parser on both dvc.yaml files: it accepts the hostile names as stage names, but
    no command holds any params text."""
    from dvc.repo import Repo

    monkeypatch.chdir(tmp_path)  # stage addresses are relative to the working directory
    repo = Repo(str(_dvc_repo(tmp_path, _hostile_params())))
    try:
        stages = {s.addressing: s.cmd for s in repo.index.stages}
    finally:
        repo.close()
    assert f"caption@real;{HOSTILE}" in stages and f"llm/dvc.yaml:bench_llm@sqa;{HOSTILE}" in stages
    assert f"tune_text@gmail;{HOSTILE}" in stages and f"llm/dvc.yaml:train_llm@llm_real;{HOSTILE}" in stages
    assert len(stages) >= 25
    for address, cmd in stages.items():
        assert FIXED_CMD.fullmatch(cmd), f"{address} runs {cmd!r}: a command may not carry params values"


@pytest.mark.parametrize("module,launcher", [("stages.generate", "touch X; false"),
                                             ("stages.align", "accelerate launch --multi_gpu X.py"),
                                             ("stages.generate", "sbatch -W --wrap=touch job.sh")])
def test_a_hostile_launcher_is_refused_and_runs_nothing(module, launcher, tmp_path):
    params = params_dict(MAIN_PARAMS, launcher=launcher)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "job.sh").write_text("#!/bin/bash\n")
    before = snapshot(tmp_path)
    proc = run_stage(tmp_path, module, env={"DVC_STAGE": "align@generated"})
    assert_one_line_error(proc, "params key launcher", repr(launcher), "python, python3, accelerate launch, torchrun, sbatch")
    assert not (tmp_path / "X").exists()
    assert changed_files(before, snapshot(tmp_path)) == []


@pytest.mark.parametrize("module,stage", [("stages.caption", f"caption@real;{HOSTILE}"),
                                          ("stages.train_llm", f"llm/dvc.yaml:train_llm@llm_real;{HOSTILE}")])
def test_a_hostile_stage_key_is_refused_and_runs_nothing(module, stage, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(MAIN_PARAMS), sort_keys=False))
    before = snapshot(tmp_path)
    proc = run_stage(tmp_path, module, env={"DVC_STAGE": stage})
    assert_one_line_error(proc, f"(from DVC_STAGE {stage!r}) is not a valid name")
    assert not (tmp_path / "X").exists()
    assert changed_files(before, snapshot(tmp_path)) == []


def test_a_stage_without_its_key_says_so(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(MAIN_PARAMS), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    proc = subprocess.run([sys.executable, "-m", "stages.tune_text", "--params", "params.yaml"], cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "--row is missing and DVC_STAGE is not set: pass --row <name>")


def test_dvc_repro_with_hostile_params_runs_no_injected_command(tmp_path):
    """The real thing: `dvc repro` of the hostile caption variant, and of generate. Each stage starts
    (its dependencies exist, empty) and refuses in one line: caption its key from DVC_STAGE before
    reading params, generate the params file (which names that variant) before reading `launcher`."""
    root = _dvc_repo(tmp_path / "repo", _hostile_params())
    for rel in ("gmail", "stages"):
        shutil.copytree(ROOT / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("data/embeddings/real", "data/embeddings/generated/f_r", "pretrain/models/sd2", "pretrain/models/flux"):
        (root / folder).mkdir(parents=True)
    (root / "data/captions").mkdir(parents=True)
    for name in ("B.jsonl", "T.jsonl"):
        (root / "data/captions" / name).write_text("")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("DVC_STAGE", None)
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--keep-going", "-s", f"caption@real;{HOSTILE}", "generate"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "> python -m stages.caption --params params.yaml\n" in out and "> python -m stages.generate --params params.yaml\n" in out
    # caption refuses its key (from DVC_STAGE) or, reading params first to pick its launcher, the
    # variants name; generate refuses the params file. Either way: one error line each, nothing run.
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all(f"'real;{HOSTILE}'" in line for line in errors), out
    assert f"error: params variants has the name 'real;{HOSTILE}'" in out
    assert not (root / "X").exists() and not list(root.rglob("X"))

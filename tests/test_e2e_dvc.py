"""End to end: `dvc repro` of the real dvc.yaml on tiny params in a temporary git repo."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

COPY = ["gmail", "stages", "dvc.yaml", "pretrain/dvc.yaml", "pretrain/dvc.lock", "pretrain/params.yaml",
        "pretrain/models", "metrics/pretrain", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]


VARIANTS = ("synthetic", "gmail", "real", "gmail_heldout", "noise")


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("e2e") / "repo"
    for rel in COPY:
        src, dst = root / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(n_a=6, n_b=4, n_t=2)
    params["gen"].update(steps=2, batch_size=3, device="cpu")
    params["encoder"].update(device="cpu")
    params["align"].update(steps=2, batch_size=4, heldout=1)
    params["caption"].update(seeds=1, steps=2, batch_size=4, device="cpu")
    params["caption"]["model"].update(n_embd=16, n_head=2, prefix_hidden=16)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    _run(["git", "init", "-q", "-b", "main"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "tiny"], work, env)
    return work, env


def test_repro_runs_to_the_end_then_is_a_no_op(tiny_repo):
    work, env = tiny_repo
    out = _run(["dvc", "repro"], work, env)
    assert "Running stage 'captions'" in out and "Running stage 'generate'" in out
    # Frozen pretrain stages are upstream of generate but never rerun.
    assert "Running stage 'pretrain/dvc.yaml:generator" not in out
    gen = json.loads((work / "metrics/generate.json").read_text())
    assert gen["count"] == 4 and gen["model"] == "sd2"
    assert len(list((work / "data/generated/images").glob("*.png"))) == 4
    lines = (work / "data/generated/generated.jsonl").read_text().splitlines()
    b = (work / "data/captions/B.jsonl").read_text().splitlines()
    assert [json.loads(x)["image_id"] for x in lines] == [json.loads(x)["image_id"] for x in b]

    for variant in VARIANTS:
        m = json.loads((work / f"metrics/caption/{variant}.json").read_text())
        assert m["seeds"] == 1 and m["bleu4"]["std"] == 0 and m["spice"] is None
        assert (work / f"data/predictions/caption/{variant}/seed0.json").is_file()
    shown = _run(["dvc", "metrics", "show", "--json"], work, env)
    assert all(f"metrics/caption/{v}.json" in shown for v in VARIANTS) and "metrics/align.json" in shown

    again = _run(["dvc", "repro"], work, env)
    assert "Running stage" not in again
    assert "up to date" in _run(["dvc", "status", "dvc.yaml"], work, env)


def test_exp_run_flux_reruns_only_generation(tiny_repo):
    work, env = tiny_repo
    if not (work / "dvc.lock").exists():
        _run(["dvc", "repro"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "repro"], work, env)
    out = _run(["dvc", "exp", "run", "-S", "gen.model=flux"], work, env)
    assert "Running stage 'generate'" in out
    # Whatever reads generated images reruns; the real-image and noise branches do not.
    for stage in ("align@generated", "caption@synthetic", "caption@gmail", "caption@gmail_heldout", "eval_caption"):
        assert f"Running stage '{stage}'" in out
    for stage in ("captions", "embed", "align@noise", "caption@real", "caption@noise"):
        assert f"Running stage '{stage}'" not in out
    assert json.loads((work / "metrics/generate.json").read_text())["model"] == "flux"

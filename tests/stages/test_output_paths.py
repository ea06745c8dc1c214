"""A stage given an output path that would replace the repository, a parent of it or `.git`, or that
cannot be written, stops with one line and exit status 2, and the workspace is left as it was."""

from __future__ import annotations

import pytest
from helpers import assert_one_line_error, changed_files, run_stage, snapshot, write_params

COUNTS = {"n_a": 4, "n_b": 3, "n_t": 2}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """`<tmp>/ws`: a stand-in repository (a fake `.git`, `.dvc`, files) with a params file for stage
    `captions`; `<tmp>/beside.txt` lies next to it."""
    root = tmp_path_factory.mktemp("paths")
    ws = root / "ws"
    (ws / ".git" / "refs").mkdir(parents=True)
    (ws / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (ws / ".dvc").mkdir()
    (ws / ".dvc" / "config").write_text("[core]\n")
    (ws / "data").mkdir()
    (ws / "data" / "keep.txt").write_text("keep")
    (ws / "README.md").write_text("a repository\n")
    (ws / "blocker").write_text("a file where a folder is expected")
    (root / "beside.txt").write_text("beside")
    write_params(ws / "params.yaml", data=COUNTS)
    for name, captions in (("dot", "."), ("parent", ".."), ("git", ".git"), ("dvc", ".dvc/tmp/captions"),
                           ("blocked", "blocker/sub/captions")):
        write_params(ws / f"{name}.yaml", data=COUNTS, paths={"captions": captions})
    return ws


CASES = {
    "dot": ("paths.captions ('.')", "is the working directory"),
    "parent": ("paths.captions ('..')", "a parent of the working directory"),
    "git": ("paths.captions ('.git')", "inside .git/"),
    "dvc": ("paths.captions ('.dvc/tmp/captions')", "inside .dvc/"),
    "blocked": ("cannot write blocker/sub/captions: Not a directory",),
}


@pytest.mark.parametrize("case", ["dot", "parent", "git", "blocked"])
def test_refused_or_unwritable_output_is_one_line_and_changes_nothing(workspace, case):
    root = workspace.parent
    before = snapshot(root, skip=())  # .git included: it is what `paths.captions: .` used to delete
    proc = run_stage(workspace, "stages.captions", "--params", f"{case}.yaml")
    assert_one_line_error(proc, *CASES[case])
    after = snapshot(root, skip=())
    assert changed_files(before, after) == []
    assert "ws/.git/HEAD" in after and "beside.txt" in after


def test_dvc_folder_is_refused_in_process(workspace, monkeypatch, capsys):
    # The same check without another subprocess: `.dvc/...` as an output.
    from gmail.core.cli import run
    from stages import captions

    monkeypatch.chdir(workspace)
    before = snapshot(workspace.parent, skip=())
    assert run(captions.main, ["--params", "dvc.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(f in err[0] for f in CASES["dvc"]), err
    assert changed_files(before, snapshot(workspace.parent, skip=())) == []

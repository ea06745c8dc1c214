"""gmail.core.launch: params `launcher` becomes an argument list (no shell) that can only run the stage."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from gmail.core.errors import PipelineError
from gmail.core.launch import launch, launcher_command

ARGV = ["--params", "params.yaml"]


@pytest.mark.parametrize("launcher", ["python", "python3", " python "])
def test_plain_python_runs_in_this_process(launcher):
    assert launcher_command(launcher, "stages.generate", ARGV) is None


def test_accelerate_runs_the_stage_module_with_the_same_arguments():
    cmd = launcher_command("accelerate launch --multi_gpu --num_processes 8", "stages.align", ARGV)
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "8",
                   "-m", "stages.align", *ARGV]


def test_torchrun_runs_the_stage_module():
    cmd = launcher_command("torchrun --nproc_per_node 2", "stages.generate", ARGV)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "stages.generate", *ARGV]


def test_sbatch_hands_the_module_to_an_existing_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm/gmail.sbatch").write_text("#!/bin/bash\n")
    cmd = launcher_command("sbatch -W --time=1:00:00 slurm/gmail.sbatch", "stages.generate", ARGV)
    assert cmd == ["sbatch", "-W", "--time=1:00:00", "slurm/gmail.sbatch", "-m", "stages.generate", *ARGV]


@pytest.mark.parametrize("launcher,fragment", [
    ("touch X; false", "starts with 'touch'"),
    ("bash -c 'touch X'", "starts with 'bash'"),
    ("/usr/bin/python", "starts with '/usr/bin/python'"),
    ("python -c 'import os'", "holds the word 'import os'"),
    ("python -m pip", "gives python options"),
    ("accelerate launch --multi_gpu; touch X", "holds the word '--multi_gpu;'"),
    ("accelerate launch $(touch X)", "holds the word '$(touch'"),
    ("accelerate env", "without `launch`"),
    ("accelerate launch --no_python", "would not run `python -m stages.generate`"),
    ("accelerate launch --no_py", "'accelerate launch --no_py'"),  # refused whether or not accelerate's parser expands prefixes
    ("accelerate launch evil.py", "would not run"),
    ("accelerate launch --multi_gpu evil.py", "would not run"),
    ("accelerate launch --num_processes", "has options its program rejects"),
    ("torchrun --no-python", "would not run"),
    ("torchrun --run-path", "would not run"),
    ("torchrun evil.py", "would not run"),
    ("sbatch -W", "names no batch script"),
    ("sbatch -W --wrap=touch", "names no batch script"),
    ("sbatch -W --wra=touch job.sh", "uses --wrap"),
    ("sbatch -J touch job.sh", "has the word 'touch' before the script"),
    ("sbatch job.sh", "lacks -W"),
    ("sbatch -W missing.sbatch", "does not exist"),
    ("python 'unclosed", "cannot be split"),
    ("", "is empty"),
    (8, "must be a string"),
])
def test_a_launcher_that_could_run_anything_else_is_refused(launcher, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.sh").write_text("#!/bin/bash\n")
    with pytest.raises(PipelineError) as info:
        launcher_command(launcher, "stages.generate", ARGV)
    message = str(info.value)
    assert fragment in message and message.startswith("params key launcher") and "\n" not in message
    assert "python, python3, accelerate launch, torchrun, sbatch" in message  # names what is allowed


def test_launch_runs_main_here_for_python_and_inside_a_launched_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("launcher: python\n")
    seen = []
    assert launch(seen.append, "stages.generate", ARGV) == 0
    (tmp_path / "params.yaml").write_text("launcher: touch X; false\n")
    monkeypatch.setenv("GMAIL_LAUNCHED", "1")  # a process the launcher started: never launches again
    assert launch(seen.append, "stages.generate", ARGV) == 0
    assert seen == [ARGV, ARGV]
    monkeypatch.delenv("GMAIL_LAUNCHED")
    assert launch(seen.append, "stages.generate", ARGV) == 2
    assert capsys.readouterr().err.startswith("error: params key launcher 'touch X; false' starts with 'touch'")
    assert not (tmp_path / "X").exists() and len(seen) == 2


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="sbatch exists here: it would really submit a job")
def test_a_launcher_program_that_is_not_installed_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GMAIL_LAUNCHED", raising=False)
    (tmp_path / "job.sh").write_text("#!/bin/bash\n")
    (tmp_path / "params.yaml").write_text("launcher: sbatch -W job.sh\n")
    assert launch(lambda argv: None, "stages.generate", ARGV) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: params key launcher 'sbatch -W job.sh' cannot start sbatch (") and err.count("\n") == 1
    assert "GMAIL_LAUNCHED" not in os.environ

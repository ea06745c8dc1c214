"""gmail.core.cli: stage entry points turn PipelineError into one line on stderr and exit 2."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT

from gmail.core.cli import OFFLINE_VARIABLES, offline, run, stage_parser
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


def test_a_bad_argument_is_a_one_line_error(capsys):
    def main(argv):
        stage_parser("demo").parse_args(argv)

    assert run(main, ["--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unrecognized arguments: --bogus")


def test_run_keyboard_interrupt_is_exit_130_and_one_line(capsys):
    def main(argv):
        raise KeyboardInterrupt

    assert run(main, []) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: interrupted")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES])
def test_run_a_failed_write_is_one_line_naming_the_file(code, tmp_path, capsys):
    target = tmp_path / "out" / "metrics.json"

    def main(argv):
        raise OSError(code, os.strerror(code), str(target))

    assert run(main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write {target}: {os.strerror(code)}")


def test_run_an_unreadable_input_is_a_read_error(tmp_path, capsys):
    src = tmp_path / "B.jsonl"
    src.write_text("{}")
    src.chmod(0)
    if os.access(src, os.R_OK):
        pytest.skip("running as root: permissions do not apply")

    def main(argv):
        src.read_text()

    try:
        assert run(main, []) == 2
    finally:
        src.chmod(0o644)
    assert capsys.readouterr().err.startswith(f"error: cannot read {src}: Permission denied")


def test_run_other_os_errors_keep_their_traceback():
    def main(argv):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):
        run(main, [])


def _parser():
    parser = stage_parser("demo")
    parser.add_stage_key("--variant", help="a key of params.yaml `variants`")
    return parser


def test_stage_key_from_the_option_or_dvc_stage(monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "llm/dvc.yaml:train_llm@llm_gmail")
    assert _parser().parse_args([]).variant == "llm_gmail"
    assert _parser().parse_args(["--variant", "real"]).variant == "real"  # the option wins


@pytest.mark.parametrize("argv,stage,fragment", [
    ([], None, "--variant is missing and DVC_STAGE is not set"),
    ([], "eval_caption", "--variant is missing and DVC_STAGE is 'eval_caption'"),
    ([], "caption@real;touch X;#", "--variant 'real;touch X;#' (from DVC_STAGE 'caption@real;touch X;#') is not a valid name"),
    (["--variant", "../x"], None, "--variant '../x' (from --variant) is not a valid name"),
])
def test_a_missing_or_bad_stage_key_is_a_pipeline_error(argv, stage, fragment, monkeypatch):
    if stage is None:
        monkeypatch.delenv("DVC_STAGE", raising=False)
    else:
        monkeypatch.setenv("DVC_STAGE", stage)
    with pytest.raises(PipelineError) as info:
        _parser().parse_args(argv)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def _hf_modules(monkeypatch, offline_value: str):
    """HF libraries imported while the environment said `offline_value`, as a user's would be."""
    import huggingface_hub.constants
    import transformers.utils.hub

    for key in OFFLINE_VARIABLES:
        monkeypatch.setenv(key, offline_value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline_value == "1")
    return huggingface_hub.constants, transformers.utils.hub


def test_offline_at_mini_scale_overrides_the_environment(monkeypatch):
    constants, transformers_hub = _hf_modules(monkeypatch, "0")
    offline()
    assert all(os.environ[key] == "1" for key in OFFLINE_VARIABLES)
    # huggingface_hub read the variable at import: offline() switches the imported module too.
    assert constants.HF_HUB_OFFLINE is True and transformers_hub.is_offline_mode()


def test_offline_at_paper_scale_keeps_the_users_choice(monkeypatch):
    constants, _ = _hf_modules(monkeypatch, "0")
    offline("paper")
    assert all(os.environ[key] == "0" for key in OFFLINE_VARIABLES) and constants.HF_HUB_OFFLINE is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    offline("paper")  # nothing set: offline, as before
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True


def test_offline_in_a_fresh_process_with_hf_hub_offline_0():
    """What a stage process sees: HF_HUB_OFFLINE=0 exported, huggingface_hub and transformers
    imported before offline() (stages import them at the top)."""
    code = ("import huggingface_hub.constants as c, transformers.utils.hub as t\n"
            "assert not c.HF_HUB_OFFLINE\n"
            "from gmail.core.cli import offline\n"
            "offline()\n"
            "print(c.HF_HUB_OFFLINE, t.is_offline_mode())")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]


def test_ctrl_c_in_a_running_stage_is_one_line_exit_130_and_writes_nothing(tmp_path):
    """Stage `captions` at the shipped size writes its images for several seconds: SIGINT once its
    temporary output folder exists. The temp is removed and no output appears."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.captions", "--params", "params.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "data").glob(".captions.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the stage finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and [ln for ln in err.splitlines() if ln.strip()] == [
        "error: interrupted: every output is complete or untouched; rerun the stage to finish"]
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["params.yaml"]

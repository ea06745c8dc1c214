"""How `generate` and `align` start: params `launcher`, split and checked here, never by a shell.

DVC runs the fixed command `python -m stages.<name> --params params.yaml`. `launch` reads
`launcher` from that params file; unless it is plain `python`, it replaces the process
(`os.execvp`, no shell) with the launcher running the same module and arguments:

    accelerate launch --multi_gpu --num_processes 8  ->  python -m accelerate.commands.launch --multi_gpu
                                                         --num_processes 8 -m stages.generate --params params.yaml
    torchrun --nproc_per_node 8                      ->  python -m torch.distributed.run --nproc_per_node 8 -m ...
    sbatch -W slurm/gmail.sbatch                     ->  sbatch -W slurm/gmail.sbatch -m stages.generate ...

The processes it starts see GMAIL_LAUNCHED=1 and run the stage itself. A launcher may only run
the stage: its program is one of LAUNCHERS, accelerate and torchrun options are checked with
their own argument parsers (no `--no_python`, no other script), and no word holds a character
outside [A-Za-z0-9_.,:=+/@%-]. Outputs do not depend on the process count, so `launcher` is in
no stage's `params` and changing it reruns nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Callable, Sequence

from gmail.core.cli import run
from gmail.core.config import load_params
from gmail.core.errors import PipelineError

LAUNCHED = "GMAIL_LAUNCHED"  # set for the launched processes, so they run the stage instead of launching again
LAUNCHERS = ("python", "python3", "accelerate launch", "torchrun", "sbatch")
_WORD = re.compile(r"[A-Za-z0-9_.,:=+/@%-]+")
_HOW = "e.g. python, or accelerate launch --multi_gpu --num_processes 8"


def _fail(launcher: str, why: str) -> PipelineError:
    return PipelineError(f"params key launcher {launcher!r} {why}: use one of {', '.join(LAUNCHERS)} ({_HOW})")


def _check_with_parser(parser: argparse.ArgumentParser, launcher: str, args: list[str]) -> argparse.Namespace:
    """Parse `args` with the launcher's own parser (argparse prefix matching included), so what is
    checked is what the launcher will do."""
    def error(message):
        raise _fail(launcher, f"has options its program rejects ({message})")

    parser.error = error
    return parser.parse_args(args)


def _accelerate(launcher: str, options: list[str], module: str, argv: list[str]) -> list[str]:
    from accelerate.commands.launch import launch_command_parser

    ns = _check_with_parser(launch_command_parser(), launcher, [*options, "-m", module, *argv])
    if ns.training_script != module or not ns.module or ns.no_python or getattr(ns, "tpu_use_cluster", False):
        raise _fail(launcher, f"would not run `python -m {module}` (it may only add launch options)")
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", module, *argv]


def _torchrun(launcher: str, options: list[str], module: str, argv: list[str]) -> list[str]:
    from torch.distributed.run import get_args_parser

    ns = _check_with_parser(get_args_parser(), launcher, [*options, "-m", module, *argv])
    if ns.training_script != module or not ns.module or ns.no_python or ns.run_path:
        raise _fail(launcher, f"would not run `python -m {module}` (it may only add launch options)")
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", module, *argv]


def _sbatch(launcher: str, options: list[str], module: str, argv: list[str]) -> list[str]:
    # sbatch runs a batch script the repository owner wrote (README "Several nodes with Slurm"),
    # handing it `-m stages.<name> ...` as "$@". Options are single words (--name=value), so the
    # script is the one other word; --wrap (sbatch accepts any prefix down to --wr) would make
    # sbatch write a shell script from the value.
    if not options or options[-1].startswith("-"):
        raise _fail(launcher, "names no batch script: end it with the script, e.g. sbatch -W slurm/gmail.sbatch")
    *flags, script = options
    loose = next((w for w in flags if not w.startswith("-")), None)
    if loose is not None:
        raise _fail(launcher, f"has the word {loose!r} before the script: write sbatch options as one word (--name=value)")
    if any(w.split("=")[0].startswith("--wr") for w in flags):
        raise _fail(launcher, "uses --wrap: put the commands in the batch script")
    if not any(w in ("-W", "--wait") for w in flags):
        raise _fail(launcher, "lacks -W: without it sbatch returns before the job ends and DVC finds no outputs")
    if not Path(script).is_file():
        raise _fail(launcher, f"names the batch script {script}, which does not exist: create it (README \"Several nodes with Slurm\")")
    return ["sbatch", *flags, script, "-m", module, *argv]


def launcher_command(launcher, module: str, argv: Sequence[str]) -> list[str] | None:
    """The command that runs `python -m <module> <argv>` under `launcher` (params `launcher`),
    or None for a plain run in this process. A launcher that could run anything else is a
    PipelineError naming the key and the allowed programs."""
    if not isinstance(launcher, str):
        raise _fail(str(launcher), "must be a string")
    try:
        words = shlex.split(launcher)
    except ValueError as exc:
        raise _fail(launcher, f"cannot be split into words ({exc})") from exc
    if not words:
        raise _fail(launcher, "is empty")
    program, options = words[0], words[1:]
    if program not in ("python", "python3", "accelerate", "torchrun", "sbatch"):
        raise _fail(launcher, f"starts with {program!r}, which is not an allowed launcher program")
    bad = next((w for w in words if not _WORD.fullmatch(w)), None)
    if bad is not None:
        raise _fail(launcher, f"holds the word {bad!r}; launcher words may hold only letters, digits and _.,:=+/@%-")
    argv = list(argv)
    if program in ("python", "python3"):
        if options:
            raise _fail(launcher, "gives python options: use plain python")
        return None
    if program == "accelerate" and options[:1] == ["launch"]:
        return _accelerate(launcher, options[1:], module, argv)
    if program == "torchrun":
        return _torchrun(launcher, options, module, argv)
    if program == "sbatch":
        return _sbatch(launcher, options, module, argv)
    raise _fail(launcher, "runs accelerate without `launch`")


def _params_path(argv: Sequence[str]) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml")
    return parser.parse_known_args(argv)[0].params


def launch(main: Callable[[Sequence[str] | None], object], module: str, argv: Sequence[str] | None = None) -> int:
    """Run stage `module` (e.g. `stages.generate`): under params `launcher` when it is not plain
    `python` and this process was not launched already, else `main(argv)` here. The exit status
    and error lines are `gmail.core.cli.run`'s."""
    def start(argv):
        args = sys.argv[1:] if argv is None else list(argv)
        if os.environ.get(LAUNCHED) != "1" and not {"-h", "--help"} & set(args):
            params = load_params(_params_path(args))
            if "launcher" not in params:
                raise PipelineError("params key launcher is missing: add `launcher: python` (see params.yaml)")
            command = launcher_command(params["launcher"], module, args)
            if command is not None:
                os.environ[LAUNCHED] = "1"
                sys.stdout.flush()
                sys.stderr.flush()
                try:
                    os.execvp(command[0], command)
                except OSError as exc:  # sbatch not on PATH: not a Slurm machine
                    del os.environ[LAUNCHED]
                    raise _fail(params["launcher"], f"cannot start {command[0]} ({exc.strerror}; is this a Slurm machine?)") from exc
        main(argv)

    return run(start, argv)

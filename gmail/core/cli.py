"""Entry-point wrapper: a user-fixable error, Ctrl-C or a failed write is one line on stderr.

Every stage ends in `sys.exit(run(main))`; `generate` and `align` use `gmail.core.launch.launch`,
which reads params `launcher` first. No params value ever reaches a shell: DVC runs fixed
commands (`python -m stages.<name> --params params.yaml`), and a foreach stage reads its key
(`caption@real` -> `real`) from the DVC_STAGE variable DVC sets, not from its command line.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from typing import Callable, Sequence

from gmail.core.errors import PipelineError

# A foreach key becomes part of a DVC stage name, a command argument and a folder name; the same
# rule as gmail.core.config.check_keys, which checks every such key when params load.
STAGE_KEY = re.compile(r"[A-Za-z0-9_-]+")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# Only a write raises these (disk full, quota, read-only file system, file too large); EACCES and
# EPERM may come from a read too, so `run` words those by what the path allows.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


class StageParser(argparse.ArgumentParser):
    """`argparse` for a stage: a bad argument is a PipelineError (one line, exit 2 through `run`),
    and options added with `add_stage_key` fall back to the key in DVC_STAGE."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stage_keys: list[argparse.Action] = []

    def add_stage_key(self, option: str, help: str) -> None:
        """Add `option` (e.g. `--variant`): the foreach key of the stage. Without it on the command
        line, the key is the text after the last `@` of DVC_STAGE (`caption@real` -> `real`)."""
        action = self.add_argument(option, default=None, help=f"{help} (default: the key in $DVC_STAGE, set by dvc repro)")
        self._stage_keys.append(action)

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        for action in self._stage_keys:
            setattr(ns, action.dest, stage_key(getattr(ns, action.dest), action.option_strings[0]))
        return ns

    def error(self, message):
        raise PipelineError(f"{message}: see --help for this stage's options")


def stage_parser(description: str) -> StageParser:
    """Argument parser shared by every stage: `--params` plus stage-specific options."""
    parser = StageParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params YAML file (default: params.yaml)")
    return parser


def stage_key(value: str | None, option: str) -> str:
    """The foreach key: `value` (from `option`) if given, else the text after the last `@` of
    DVC_STAGE; a PipelineError when neither exists or the key is not a plain name."""
    where = option
    if value is None:
        address = os.environ.get("DVC_STAGE", "")
        if "@" not in address:
            seen = f"DVC_STAGE is {address!r}" if address else "DVC_STAGE is not set"
            raise PipelineError(f"{option} is missing and {seen}: pass {option} <name>, or run the stage with dvc repro "
                                "(which names it, e.g. caption@real)")
        value = address.rpartition("@")[2]
        where = f"DVC_STAGE {address!r}"
    if not STAGE_KEY.fullmatch(value):
        raise PipelineError(f"{option} {value!r} (from {where}) is not a valid name: use letters, digits, _ and - only")
    return value


def offline(scale: str = "mini") -> None:
    """Mini scale never touches the network: force the HF libraries offline, whatever the
    environment says. Another scale keeps the user's choice (offline when none is set).

    huggingface_hub reads HF_HUB_OFFLINE once, at import (and diffusers copies that value), so
    an already imported module is switched too.
    """
    for key in OFFLINE_VARIABLES:
        if scale == "mini":
            os.environ[key] = "1"
        else:
            os.environ.setdefault(key, "1")
    if os.environ["HF_HUB_OFFLINE"].upper() not in ("1", "ON", "YES", "TRUE"):
        return
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ("huggingface_hub", "diffusers", "transformers") and \
                isinstance(getattr(module, "HF_HUB_OFFLINE", None), bool):
            module.HF_HUB_OFFLINE = True


def _write_error(exc: OSError) -> str | None:
    """`cannot write <file>: <reason>` for a file-system error only a write (or a denied write)
    raises; None for any other OSError, which keeps its traceback."""
    path = exc.filename2 or exc.filename
    if exc.errno in _ACCESS_ERRNOS:
        if path is not None and os.path.exists(path) and not os.access(path, os.R_OK):
            return f"cannot read {path}: {exc.strerror}: fix its permissions"
    elif exc.errno not in _WRITE_ERRNOS:
        return None
    what = f"cannot write {path}" if path is not None else "cannot write an output"
    return f"{what}: {exc.strerror}: free disk space or fix the folder's permissions, then rerun"


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call a stage's main and return its exit status: 0, or 2 after printing one `error: ...`
    line for a PipelineError or a failed write (disk full, read-only, permission denied), or 130
    after Ctrl-C (outputs are written atomically, so each one is whole or untouched)."""
    try:
        main(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted: every output is complete or untouched; rerun the stage to finish", file=sys.stderr)
        return 130
    except OSError as exc:
        message = _write_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0

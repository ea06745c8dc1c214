"""Entry-point wrapper: a user-fixable error, Ctrl-C or a failed write is one line on stderr.

With GMAIL_AUDIT_DIR set (tools/paper_smoke.py sets it), `run` also writes
`<GMAIL_AUDIT_DIR>/<stage>.json` after a stage succeeds: the scale it declared
(`declare_scale`), the mini-scale modules it imported (MINI_MODULES) and the files of the
easy-vqa package it opened, so a paper-scale run can prove it never fell back to mini code or data.

Every stage ends in `sys.exit(run(main))`; `generate` and `align` use `gmail.core.launch.launch`,
which reads params `launcher` first. No params value ever reaches a shell: DVC runs fixed
commands (`python -m stages.<name> --params params.yaml`), and a foreach stage reads its key
(`caption@real` -> `real`) from the DVC_STAGE variable DVC sets, not from its command line.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
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
# Modules only mini scale may import: the stand-in CLIP and generators, easy-vqa's readers.
MINI_MODULES = ("gmail.models.mini_clip", "gmail.generation.mini_diffusion", "gmail.generation.mini_sampling",
                "gmail.data.easy_vqa_captions", "gmail.data.easy_vqa_questions", "easy_vqa")
AUDIT_VARIABLE = "GMAIL_AUDIT_DIR"
_declared_scale: str | None = None


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


def offline(scale: str = "mini") -> str:
    """Mini scale never touches the network: force the HF libraries offline, whatever the
    environment says. Another scale keeps the user's choice (offline when none is set).

    huggingface_hub reads HF_HUB_OFFLINE once, at import (and diffusers copies that value), so
    an already imported module is switched too. It also declares `scale` (`declare_scale`).
    """
    declare_scale(scale)
    declare_scale(scale)
    for key in OFFLINE_VARIABLES:
        if scale == "mini":
            os.environ[key] = "1"
        else:
            os.environ.setdefault(key, "1")
    if os.environ["HF_HUB_OFFLINE"].upper() not in ("1", "ON", "YES", "TRUE"):
        return scale
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ("huggingface_hub", "diffusers", "transformers") and \
                isinstance(getattr(module, "HF_HUB_OFFLINE", None), bool):
            module.HF_HUB_OFFLINE = True
    return scale


def declare_scale(scale: str) -> str:
    """Record the scale this stage runs at (mini | paper) for the audit report; returns it. Each
    stage calls it once its params are read, and also writes the scale into its own outputs."""
    global _declared_scale
    if scale not in ("mini", "paper"):
        raise PipelineError(f"unknown scale {scale!r}: use mini or paper")
    _declared_scale = scale
    return scale


class _Audit:
    """Files of the easy-vqa package this process opens (a sys audit hook; hooks cannot be
    removed, so the recorder is switched off instead once the stage has run)."""

    def __init__(self):
        spec = importlib.util.find_spec("easy_vqa")  # finds the package without importing it
        self.root = os.path.dirname(spec.origin) + os.sep if spec and spec.origin else None
        self.opened: set[str] = set()
        self.on = True
        sys.addaudithook(self.hook)

    def hook(self, event, args):
        if self.on and self.root and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if path.startswith(self.root):
                self.opened.add(path[len(self.root):])

    def write(self, folder: str) -> None:
        self.on = False
        stage = os.environ.get("DVC_STAGE", "").rpartition(":")[2] or os.path.basename(sys.argv[0]).removesuffix(".py")
        report = {"stage": stage, "scale": _declared_scale,
                  "mini_modules": sorted(m for m in sys.modules if m in MINI_MODULES or m.startswith("easy_vqa.")),
                  "easy_vqa_files": sorted(self.opened)}
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{stage}.json"), "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)


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
    audit_dir = os.environ.get(AUDIT_VARIABLE)
    audit = _Audit() if audit_dir else None
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
    if audit is not None:
        audit.write(audit_dir)
    return 0

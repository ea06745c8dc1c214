"""Entry-point wrapper: user-fixable errors become one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from gmail.core.errors import PipelineError


def stage_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser shared by every stage: `--params` plus stage-specific options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params YAML file (default: params.yaml)")
    return parser


def offline() -> None:
    """Mini scale never touches the network: force the HF libraries offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call a stage's main; print a PipelineError as a single line and return 2."""
    try:
        main(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

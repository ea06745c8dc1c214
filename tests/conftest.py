"""Shared test setup: offline, single-threaded torch (2 shared cores), repo root on sys.path."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Two processes with two threads each on two cores slow torch down ~10x (spin-waiting);
    # tests run one thread so background jobs (dvc subprocesses, other suites) don't collide.
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def repo_root() -> Path:
    return ROOT

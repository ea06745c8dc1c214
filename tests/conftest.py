"""Shared test setup: offline, single-threaded torch (2 shared cores), and tiny workspaces for
the downstream stages, each built by a session fixture so any test can run alone or in any order."""

import json
import os
from pathlib import Path

import pytest
from helpers import ROOT, VARIANTS, read_jsonl, write_params

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


def _in(root: Path, fn, *args):
    old = Path.cwd()
    os.chdir(root)
    try:
        return fn(*args)
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def downstream_workspace(tmp_path_factory):
    """A tiny workspace for the downstream stages: captions (B 6, T 3), fake "generated" images
    (two per real B image, as shards), a random-init mini CLIP, and
    `params.yaml` (the shipped one, shrunk, paths relative). Stages run with cwd = the workspace."""
    import numpy as np
    import torch
    from PIL import Image

    from gmail.models.mini_clip import MiniClip, MiniClipConfig, save_mini_clip
    from stages import captions

    root = tmp_path_factory.mktemp("downstream")
    write_params(root / "params.yaml", data={"n_a": 1, "n_b": 6, "n_t": 3},
                 encoder={"weights": str(root / "clip"), "device": "cpu", "batch_size": 4},
                 align={"rank": 2, "steps": 3, "batch_size": 4, "heldout": 2, "restart_steps": 2},
                 caption={"seeds": 2, "schedule": "equal_steps", "steps": 4, "batch_size": 4, "device": "cpu",
                          "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "prefix_hidden": 16}})
    _in(root, captions.main, ["--params", "params.yaml"])
    # Two "generated" images per real B image (real at 32 px, shifted in colour by caption),
    # written as stage generate writes them: manifest.jsonl + webdataset shards of 5.
    from gmail.data.shards import build_manifest, shard_name, write_shard

    records = read_jsonl(root / "data/captions/B.jsonl")
    manifest = build_manifest(records, per_real=2, seed=0)
    pixels = {r["image_id"]: np.asarray(Image.open(root / "data/captions" / r["path"]).convert("RGB").resize((32, 32)))
              for r in records}
    gen_dir = root / "data/generated"
    for k in range(0, len(manifest), 5):
        items = manifest[k:k + 5]
        write_shard(gen_dir / "shards" / shard_name(k // 5), [
            (it, np.clip(pixels[it["source_id"]].astype(int) + 20 * (1 + it["index"] % 2), 0, 255).astype(np.uint8))
            for it in items])
    (gen_dir / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    torch.manual_seed(0)
    save_mini_clip(MiniClip(MiniClipConfig(image_size=64, embed_dim=256)), root / "clip")
    return root


@pytest.fixture(scope="session")
def embedded_workspace(downstream_workspace):
    """`downstream_workspace` after stage `embed` (f_r embeddings of real B and T)."""
    from stages import embed

    _in(downstream_workspace, embed.main, ["--params", "params.yaml"])
    return downstream_workspace


@pytest.fixture(scope="session")
def aligned_workspace(embedded_workspace):
    """`embedded_workspace` after `align@generated` and `align@noise`."""
    from stages import align

    for source in ("generated", "noise"):
        _in(embedded_workspace, align.main, ["--params", "params.yaml", "--source", source])
    return embedded_workspace


@pytest.fixture(scope="session")
def captioned_workspace(aligned_workspace):
    """`aligned_workspace` after `caption@<variant>` for the shipped variants (4 equal steps each)."""
    from stages import caption

    for variant in VARIANTS:
        _in(aligned_workspace, caption.main, ["--params", "params.yaml", "--variant", variant])
    return aligned_workspace

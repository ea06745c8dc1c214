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


@pytest.fixture(scope="session")
def downstream_workspace(tmp_path_factory):
    """A tiny workspace for the downstream stages: captions (B 6, T 3), fake "generated" images
    (real B at 32 px with a colour shift, same ids and captions), a random-init mini CLIP, and
    a params file whose paths all point inside it. Tests run stages with cwd = the workspace."""
    import json

    import numpy as np
    import yaml
    from PIL import Image

    from gmail.clip import MiniClip, save_mini_clip
    from stages import captions

    root = tmp_path_factory.mktemp("downstream")
    base = {"seed": 0, "data": {"n_a": 1, "n_b": 6, "n_t": 3, "out": str(root / "data/captions")}}
    (root / "captions.yaml").write_text(yaml.safe_dump(base))
    old = Path.cwd()
    os.chdir(root)
    try:
        captions.main(["--params", str(root / "captions.yaml")])
    finally:
        os.chdir(old)
    gen_dir = root / "data/generated"
    (gen_dir / "images").mkdir(parents=True)
    rows = []
    for line in (root / "data/captions/B.jsonl").read_text().splitlines():
        rec = json.loads(line)
        img = Image.open(root / "data/captions" / rec["path"]).convert("RGB").resize((32, 32))
        arr = np.clip(np.asarray(img).astype(int) + 20, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(gen_dir / f"images/{rec['image_id']}.png")
        rows.append({"image_id": rec["image_id"], "path": f"images/{rec['image_id']}.png", "captions": rec["captions"]})
    (gen_dir / "generated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import torch

    torch.manual_seed(0)
    save_mini_clip(MiniClip(), root / "clip")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["out"] = "data/captions"
    params["encoder"].update(mini=str(root / "clip"), device="cpu", batch_size=4)
    params["align"].update(rank=2, steps=3, batch_size=4, heldout=2, restart_steps=2)
    params["caption"].update(seeds=2, steps=4, batch_size=4, device="cpu")
    params["caption"]["model"].update(n_layer=1, n_embd=16, n_head=2, prefix_hidden=16)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def write_params(root: Path, name: str, replace: tuple = (), **sections) -> str:
    """Copy the workspace's params.yaml to `name` with `sections` ({section: {key: value}})
    merged in, or put in whole for the section names in `replace`."""
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    for sec, values in sections.items():
        if sec not in replace and isinstance(values, dict) and isinstance(params.get(sec), dict):
            params[sec].update(values)
        else:
            params[sec] = values
    path = root / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


@pytest.fixture(scope="session")
def embedded_workspace(downstream_workspace):
    """`downstream_workspace` after the `embed` stage (f_r embeddings of real B and T)."""
    from stages import embed

    old = Path.cwd()
    os.chdir(downstream_workspace)
    try:
        embed.main(["--params", "params.yaml"])
    finally:
        os.chdir(old)
    return downstream_workspace

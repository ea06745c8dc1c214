"""The frozen CLIP image encoder `f_r` at either scale, split into a frozen trunk and a head.

Every stage that embeds images or aligns `f_g` goes through `load_image_tower`, so mini and
paper scale share one code path:

- mini: the committed mini CLIP (`gmail.models.mini_clip`). Its trunk (EfficientNet stem and blocks 0-5)
  is the part the mini CLIP never trained; LoRA goes on the part it did train (block 6's
  pointwise convs, the conv head, the projection), so alignment can run on cached trunk
  features: ~0.1 s per batch-256 step on 2 CPU cores instead of ~2 s through the whole tower.
- paper: open_clip `ViT-B-32` with `pretrained="openai"` (or a local checkpoint file). The
  trunk only resizes and normalises; LoRA goes on every residual block's attention and MLP,
  as the paper's LoRA on CLIP's ViT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gmail.core.errors import PipelineError

# Mini CLIP: block 6's pointwise convs, the conv head and the projection (24k LoRA params at
# rank 4). Blocks 0-5 come straight from ImageNet and stay frozen in the mini CLIP too.
MINI_LORA_TARGETS = r".*(blocks\.6\.0\.conv_pw|blocks\.6\.0\.conv_pwl|backbone\.conv_head|proj)$"
# Mini CLIP, `align.layers: all`: the pointwise convs of every block too (97k params at rank 4),
# the counterpart of LoRA on every ViT block; no trunk is cached, ~10x slower per step.
MINI_LORA_TARGETS_ALL = r".*(conv_pw|conv_pwl|backbone\.conv_head|proj)$"
# open_clip ViT: attention (nn.MultiheadAttention, which peft wraps as a whole) and both MLP
# linears of every residual block.
OPENCLIP_LORA_TARGETS = r".*resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"


class OpenClipImageTower(nn.Module):
    """open_clip's visual tower taking float images in [0, 1] of any size, (B, 3, H, W).

    Resizing and normalisation happen on tensors (open_clip's own preprocessing works on PIL
    images one at a time) with the model's `image_mean`/`image_std`.
    """

    lora_targets = lora_targets_all = OPENCLIP_LORA_TARGETS
    load_size = None  # filled in from the model: images are loaded at this size

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.load_size = self.image_size
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Nothing is frozen ahead of the LoRA layers, so the 'features' are the images."""
        return images

    def head(self, images: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return self.visual((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def load_image_tower(scale: str, mini_path: str, name: str = "ViT-B-32", pretrained: str = "openai",
                     device: str = "cpu") -> nn.Module:
    """`f_r`'s image tower, frozen and in eval mode.

    mini: the mini CLIP saved in `mini_path`. paper: `open_clip.create_model(name,
    pretrained=pretrained)`, where `pretrained` is an open_clip tag (needs the weights in the
    local cache when offline) or a checkpoint file.
    """
    if scale == "mini":
        from gmail.models.mini_clip import load_mini_clip

        tower = load_mini_clip(mini_path, device).visual
        tower.lora_targets = MINI_LORA_TARGETS
        tower.lora_targets_all = MINI_LORA_TARGETS_ALL
        tower.load_size = None  # the mini CLIP resizes internally (generated 32 px, real 64 px)
    elif scale == "paper":
        import open_clip

        try:
            model = open_clip.create_model(name, pretrained=pretrained or None, device=device)
        except RuntimeError as exc:
            raise PipelineError(f"cannot load open_clip {name!r} with pretrained={pretrained!r} ({str(exc).splitlines()[0][:120]}): "
                                "use a cached tag or a local checkpoint file") from exc
        tower = OpenClipImageTower(model.visual)
    else:
        raise PipelineError(f"unknown encoder.scale {scale!r}: use mini or paper")
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower.to(device).eval()


def images_to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1], what every image tower takes."""
    return torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def encode_images(encoder, images_uint8: np.ndarray, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """L2-normalised embeddings `encoder(images)` of an (N, H, W, 3) uint8 array, on the CPU."""
    encoder.eval()
    out = []
    for i in range(0, len(images_uint8), batch_size):
        x = images_to_tensor(images_uint8[i:i + batch_size]).to(device)
        out.append(F.normalize(encoder(x).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def trunk_features(tower: nn.Module, images: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """The frozen trunk's output for (N, 3, H, W) float images in [0, 1], computed once."""
    tower.eval()
    out = [tower.trunk(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else images[:0]


@torch.no_grad()
def head_embeddings(head, features: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """L2-normalised embeddings `head(features)`, on the CPU."""
    out = [F.normalize(head(features[i:i + batch_size].to(device)).float(), dim=-1).cpu()
           for i in range(0, len(features), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


@dataclass
class EncoderParams:
    """params.yaml `encoder`: which `f_r` every embedding and alignment stage uses."""

    scale: str
    mini: str
    name: str
    pretrained: str
    batch_size: int
    device: str

    def validate(self, name):
        if self.scale not in ("mini", "paper"):
            raise PipelineError(f"unknown {name}.scale {self.scale!r}: use mini or paper")
        if self.batch_size < 1:
            raise PipelineError(f"{name}.batch_size must be positive, got {self.batch_size}: fix params.yaml")


def load_tower_from_params(p: EncoderParams, device: str) -> nn.Module:
    """`load_image_tower` with the `encoder` params section."""
    return load_image_tower(p.scale, p.mini, p.name, p.pretrained, device)

"""The frozen CLIP image encoder `f_r` at either scale, split into a frozen trunk and a head.

Every stage that embeds images or aligns `f_g` goes through `load_image_tower`, so mini and
paper scale share one code path:

- mini: the committed mini CLIP (`gmail.clip`). Its trunk (EfficientNet stem and blocks 0-5)
  is the part the mini CLIP never trained; LoRA goes on the part it did train (block 6's
  pointwise convs, the conv head, the projection), so alignment can run on cached trunk
  features: ~0.1 s per batch-256 step on 2 CPU cores instead of ~2 s through the whole tower.
- paper: open_clip `ViT-B-32` with `pretrained="openai"` (or a local checkpoint file). The
  trunk only resizes and normalises; LoRA goes on every residual block's attention and MLP,
  as the paper's LoRA on CLIP's ViT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gmail.errors import PipelineError

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
        from gmail.clip import load_mini_clip

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

    scale: str = "mini"
    mini: str = "pretrain/models/clip"
    name: str = "ViT-B-32"
    pretrained: str = "openai"
    batch_size: int = 256
    device: str = "auto"


def load_tower_from_params(p: EncoderParams, device: str) -> nn.Module:
    """`load_image_tower` with the `encoder` params section."""
    return load_image_tower(p.scale, p.mini, p.name, p.pretrained, device)


# Embedding files: <dir>/<set>.<encoder>.npy (float32, one L2-normalised row per image, in the
# order of the set's JSONL) next to <dir>/ids.json ({set: [image ids]}), so a reader can check
# that rows still line up with the records it pairs them with.


def write_embeddings(directory, arrays: dict[str, torch.Tensor], ids: dict[str, list[str]]) -> None:
    """Write `arrays` ({"B.f_r": tensor, ...}) and the image ids of each set into `directory`."""
    import json

    import numpy as np

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, z in arrays.items():
        np.save(directory / f"{name}.npy", z.float().numpy().astype(np.float32))
    (directory / "ids.json").write_text(json.dumps(ids, indent=1) + "\n")


def read_embeddings(directory, name: str, ids: list[str]) -> torch.Tensor:
    """Embeddings `<directory>/<name>.npy`, checked against the expected image ids."""
    import json

    import numpy as np

    directory = Path(directory)
    path, index = directory / f"{name}.npy", directory / "ids.json"
    if not path.is_file() or not index.is_file():
        raise PipelineError(f"embeddings {path} not found: run `dvc repro` (stages embed / align) first")
    split = name.split(".")[0]
    stored = json.loads(index.read_text()).get(split)
    if stored != list(ids):
        raise PipelineError(f"embeddings {path} were computed for other {split} images than the current records: "
                            "rerun `dvc repro` so they are recomputed")
    z = torch.from_numpy(np.load(path))
    if len(z) != len(ids):
        raise PipelineError(f"embeddings {path} hold {len(z)} rows for {len(ids)} images: rerun `dvc repro`")
    return z

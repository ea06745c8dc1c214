"""The frozen CLIP image encoder `f_r` at either scale, split into a frozen trunk and a head.

Every stage that embeds images or aligns `f_g` goes through `load_image_tower`, so mini and
paper scale share one code path:

- mini: the committed mini CLIP (`gmail.models.mini_clip`). Its trunk (EfficientNet stem and blocks 0-5)
  is the part the mini CLIP never trained; LoRA goes on the part it did train (block 6's
  pointwise convs, the conv head, the projection), so alignment can run on cached trunk
  features: ~0.1 s per batch-256 step on 2 CPU cores instead of ~2 s through the whole tower.
- paper: open_clip `ViT-B-32` with `pretrained="openai"`, or any open_clip model/pretrained pair
  (`resolve_open_clip`: a tag, a checkpoint file, a `local-dir:` folder, a pinned `hf-hub:` id). The
  trunk only resizes and normalises; LoRA goes on every residual block's attention and MLP,
  as the paper's LoRA on CLIP's ViT.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gmail.core.deps import check_data_dep
from gmail.core.errors import PipelineError
from gmail.core.io import CropSize

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
        # open_clip's own preprocessing (visual.preprocess_cfg): short side + centre crop unless it squashes.
        squash = (getattr(visual, "preprocess_cfg", None) or {}).get("resize_mode") == "squash"
        self.load_size = self.image_size if squash else CropSize(self.image_size)
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


LOCAL_DIR, HF_HUB = "local-dir:", "hf-hub:"
# An open_clip Hub model pinned to one commit: `hf-hub:org/name@<40-hex sha>` (a branch moves, and
# DVC would serve embeddings of other weights under the same params).
PINNED_HF_HUB = re.compile(r"^hf-hub:(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)@(?P<revision>[0-9a-f]{40})$")
# The weight files open_clip looks for in a `local-dir:` folder (open_clip.factory._find_checkpoint_in_dir).
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth")


def check_open_clip_name(name: str, key: str = "encoder.name") -> None:
    """PipelineError unless an `hf-hub:` model name is pinned to a commit (open_clip itself would load
    the repository's moving main branch); says how to pin it."""
    if isinstance(name, str) and name.startswith(HF_HUB) and not PINNED_HF_HUB.match(name):
        repo = name[len(HF_HUB):].split("@", 1)[0]
        raise PipelineError(f"{key} {name!r} is not pinned to a commit (a branch moves, and DVC would serve embeddings of other "
                            f"weights): write hf-hub:{repo}@<40-hex commit sha>; on a connected machine `hf download {repo}` prints "
                            f"its snapshots/<sha> folder, or run python -c \"from huggingface_hub import HfApi; "
                            f"print(HfApi().model_info('{repo}').sha)\"")


def resolve_open_clip(name: str, pretrained: str) -> tuple[str, str | None]:
    """The `(model_name, pretrained)` to give `open_clip.create_model` for the params pair, checked
    so that every way to get it wrong is a PipelineError rather than random weights:

    - `ViT-B-32` + a tag (`openai`, `laion2b_s34b_b79k`; open_clip's registry pins its files) or a
      checkpoint file (which must exist); an empty `pretrained` (random weights) is refused;
    - `local-dir:<folder>` (open_clip_config.json + a weights file; `pretrained` ignored): a folder
      without weights is refused (open_clip would only warn and return a random model);
    - `hf-hub:org/name@<sha>`: that commit's snapshot from the Hugging Face cache, loaded as a
      `local-dir:` folder (open_clip's own `hf-hub:` loads the moving main branch).
    """
    check_open_clip_name(name)
    match = PINNED_HF_HUB.match(name)
    if match:
        from huggingface_hub import snapshot_download

        repo, revision = match["repo"], match["revision"]
        try:
            folder = snapshot_download(repo, revision=revision)
        except Exception as exc:  # offline cache misses, network and auth errors: all mean "not here"
            raise PipelineError(f"cannot find open_clip model {repo} at {revision} in the Hugging Face cache ({type(exc).__name__}): "
                                f"download it first (hf download {repo} --revision {revision}; HF_HOME says where the cache is)") from exc
        name = LOCAL_DIR + folder
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):])
        if not (folder / "open_clip_config.json").is_file():
            raise PipelineError(f"encoder.name {name!r}: no open_clip_config.json in {folder}: point it at a folder holding "
                                "open_clip_config.json and the weights (open_clip_model.safetensors)")
        if not any(p.suffix in CHECKPOINT_SUFFIXES and p.is_file() for p in folder.iterdir()):
            raise PipelineError(f"encoder.name {name!r}: no weights in {folder} (open_clip would load random weights): add "
                                f"open_clip_model.safetensors (or a .bin/.pth checkpoint) to the folder")
        return name, None
    if not pretrained:
        raise PipelineError(f"encoder.pretrained is empty, which gives {name} random weights: use an open_clip tag "
                            "(e.g. openai) or a checkpoint file")
    looks_like_path = os.sep in pretrained or pretrained.endswith((*CHECKPOINT_SUFFIXES, ".pt"))
    if looks_like_path and not os.path.isfile(pretrained):
        raise PipelineError(f"encoder.pretrained {pretrained!r} is no file: give an existing checkpoint file or an open_clip tag "
                            f"(python -c \"import open_clip; print(open_clip.list_pretrained_tags_by_model('{name}'))\")")
    return name, pretrained


def load_image_tower(scale: str, mini_path: str, name: str = "ViT-B-32", pretrained: str = "openai",
                     device: str = "cpu") -> nn.Module:
    """`f_r`'s image tower, frozen and in eval mode.

    mini: the mini CLIP saved in `mini_path`. paper: `open_clip.create_model(name,
    pretrained=pretrained)` for the pair `resolve_open_clip` checks: a tag (needs the weights in the
    local cache when offline), a checkpoint file, a `local-dir:` folder or a pinned `hf-hub:` id.
    """
    if scale == "mini":
        from gmail.models.mini_clip import load_mini_clip

        tower = load_mini_clip(mini_path, device).visual
        tower.lora_targets = MINI_LORA_TARGETS
        tower.lora_targets_all = MINI_LORA_TARGETS_ALL
        tower.load_size = None  # the mini CLIP resizes internally (generated 32 px, real 64 px)
    elif scale == "paper":
        import open_clip

        model_name, weights = resolve_open_clip(name, pretrained)
        try:
            model = open_clip.create_model(model_name, pretrained=weights, device=device)
        except (RuntimeError, FileNotFoundError, ValueError, OSError, KeyError) as exc:
            # Unknown names and tags, missing or broken checkpoints and uncached downloads all land here.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise PipelineError(f"cannot load open_clip {name!r} with pretrained={pretrained!r} ({first}): use a model name from "
                                "open_clip.list_models() with a cached tag or a checkpoint file, a local-dir: folder or a pinned "
                                "hf-hub: id") from exc
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
    weights: str          # mini: the mini CLIP folder; paper: what name/pretrained load from (a DVC dep)
    name: str
    pretrained: str
    batch_size: int
    device: str

    def validate(self, name):
        if self.scale not in ("mini", "paper"):
            raise PipelineError(f"unknown {name}.scale {self.scale!r}: use mini or paper")
        if self.batch_size < 1:
            raise PipelineError(f"{name}.batch_size must be positive, got {self.batch_size}: fix params.yaml")
        if self.scale == "paper":
            check_open_clip_name(self.name, f"{name}.name")
            # The files open_clip loads must lie in the dep dvc.yaml lists (${encoder.weights}), or a
            # retrained checkpoint under the same params would not rerun anything. A tag (openai) is
            # pinned by the open_clip version and a hf-hub: id by its commit: both are params.
            files = [self.name[len(LOCAL_DIR):]] if self.name.startswith(LOCAL_DIR) else []
            if os.sep in self.pretrained or self.pretrained.endswith((*CHECKPOINT_SUFFIXES, ".pt")):
                files.append(self.pretrained)
            check_data_dep(files, self.weights, f"{name}.weights", f"{name}.name={self.name!r} / {name}.pretrained={self.pretrained!r}")


def load_tower_from_params(p: EncoderParams, device: str) -> nn.Module:
    """`load_image_tower` with the `encoder` params section."""
    return load_image_tower(p.scale, p.weights, p.name, p.pretrained, device)

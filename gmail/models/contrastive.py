"""CLIP's training loss, shared by the mini CLIP's pretraining and the text-tower tuning of both
scales (a module of its own so that paper-scale stages never import the mini CLIP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(z_img: torch.Tensor, z_txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP over a batch of matching (image, text) rows."""
    z_img, z_txt = F.normalize(z_img, dim=-1), F.normalize(z_txt, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * z_img @ z_txt.t()
    labels = torch.arange(len(z_img), device=z_img.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))

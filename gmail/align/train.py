"""Training `f_g` with the GMAIL loss on (generated, real) pairs, and the inputs it trains on.

With `layers="head"` LoRA sits only after the tower's frozen trunk, so the trunk's features
of every image are computed once and each step runs the head alone (mini CLIP: ~0.1 s per
batch-256 step on 2 CPU cores instead of ~2 s through the whole tower); `layers="all"` puts
LoRA in every block and trains on the images themselves.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from gmail.align.lora import add_lora, base_model
from gmail.align.loss import gmail_loss
from gmail.core.errors import PipelineError
from gmail.models.image_tower import head_embeddings, images_to_tensor, trunk_features


class Alignment:
    """`f_r`'s frozen tower and its trainable copy `f_g`, for one choice of LoRA layers.

    `inputs` turns images into what both are applied to (trunk features or images);
    `embed_f_r` / `embed_f_g` give L2-normalised embeddings of such inputs.
    """

    def __init__(self, tower: nn.Module, rank, layers: str):
        self.tower, self.cached = tower, layers == "head"
        self.f_g = add_lora(tower, rank, tower.lora_targets if self.cached else tower.lora_targets_all)
        # With rank "full" every weight is trainable; with a cached trunk only the head's get gradients.
        base = base_model(self.f_g)
        self.forward = base.head if self.cached else base

    def inputs(self, images_uint8: np.ndarray, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
        images = images_to_tensor(images_uint8)
        return trunk_features(self.tower, images, batch_size, device) if self.cached else images

    def embed_f_r(self, inputs: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
        return head_embeddings(self.tower.head if self.cached else self.tower, inputs, batch_size, device)

    def embed_f_g(self, inputs: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
        return head_embeddings(self.forward, inputs, batch_size, device)


def train_alignment(f_g: nn.Module, generated: torch.Tensor, z_real: torch.Tensor, steps: int,
                    batch_size: int = 256, lr: float = 1e-4, weight_decay: float = 0.01, tau: float = 0.07,
                    restart_steps: int = 100, max_grad_norm: float = 1.0, seed: int = 0,
                    device: str = "cpu", progress: bool = True,
                    forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """Train `f_g` with `gmail_loss` on (generated input, f_r(real) embedding) pairs.

    `generated` holds one input per generated image: (N, 3, H, W) float images in [0, 1], or
    the frozen trunk's features of them when `forward` is the trainable head (see
    `gmail.models.image_tower`). `z_real` (N, D) holds the frozen encoder's embeddings of the paired
    real images, computed once. AdamW, cosine annealing with warm restarts every
    `restart_steps`, gradient clipping, as the paper. BatchNorm statistics stay those of f_r
    (the copy runs in eval mode; only the adapter weights learn).
    """
    from tqdm.auto import tqdm

    params = [p for p in f_g.parameters() if p.requires_grad]
    if not params:
        raise PipelineError("the aligned encoder has no trainable parameters: check align.rank")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(restart_steps, 1))
    gen = torch.Generator().manual_seed(seed)
    f_g.to(device).eval()
    forward = forward or f_g
    z_real = z_real.to(device)
    losses = []
    for _ in tqdm(range(steps), desc="align f_g", disable=not progress):
        idx = torch.randperm(len(generated), generator=gen)[:batch_size]
        loss = gmail_loss(forward(generated[idx].to(device)), z_real[idx.to(device)], tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses

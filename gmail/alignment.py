"""GMAIL alignment (paper Eq. 1): a LoRA copy `f_g` of the CLIP image encoder, trained on
generated images so that each one lands next to the frozen encoder's view `f_r` of the real
image that shares its caption. The `align` stage drives it; `gmail.encoders` supplies `f_r`
and which of its layers get LoRA.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gmail.errors import PipelineError

def parse_rank(rank) -> int | str:
    """A LoRA rank from params: a positive integer, or "full" for full fine-tuning."""
    if rank == "full":
        return "full"
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise PipelineError(f"align.rank must be a positive integer or 'full', got {rank!r}: fix params.yaml")
    return rank


def gmail_loss(z_gen: torch.Tensor, z_real: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """One-directional InfoNCE from generated to real over cosine similarities (Eq. 1).

    Row i of `z_gen` (f_g of generated image i) must pick row i of `z_real` (f_r of the real
    image with the same caption) among all real rows of the batch; there is no real->generated
    term, unlike CLIP's symmetric loss.
    """
    if z_gen.shape != z_real.shape:
        raise PipelineError(f"{len(z_gen)} generated vs {len(z_real)} real embeddings: pairs must match one to one")
    logits = F.normalize(z_gen, dim=-1) @ F.normalize(z_real, dim=-1).t() / tau
    return F.cross_entropy(logits, torch.arange(len(z_gen), device=z_gen.device))


def add_lora(encoder: nn.Module, rank, target_modules: str, alpha: float | None = None):
    """A trainable copy of `encoder`: peft LoRA of `rank` on `target_modules` (a regex over
    module names), or a full copy with every weight trainable (`rank="full"`).

    The original `encoder` is left untouched (it stays the frozen `f_r`). LoRA's B matrices
    start at zero, so the copy starts out computing exactly `f_r`.
    """
    rank = parse_rank(rank)
    f_g = copy.deepcopy(encoder)
    if rank == "full":
        for p in f_g.parameters():
            p.requires_grad_(True)
        return f_g
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=target_modules,
                        lora_dropout=0.0, bias="none")
    return get_peft_model(f_g, config)


@torch.no_grad()
def paired_cosine(z_a: torch.Tensor, z_b: torch.Tensor) -> float:
    """Mean cosine similarity of row-aligned embeddings (paper Table 14)."""
    return float((F.normalize(z_a, dim=-1) * F.normalize(z_b, dim=-1)).sum(-1).mean())


def base_model(f_g: nn.Module) -> nn.Module:
    """The wrapped encoder inside a peft model (LoRA layers injected in place), or `f_g` itself."""
    return f_g.get_base_model() if hasattr(f_g, "get_base_model") else f_g


def train_alignment(f_g: nn.Module, generated: torch.Tensor, z_real: torch.Tensor, steps: int,
                    batch_size: int = 256, lr: float = 1e-4, weight_decay: float = 0.01, tau: float = 0.07,
                    restart_steps: int = 100, max_grad_norm: float = 1.0, seed: int = 0,
                    device: str = "cpu", progress: bool = True,
                    forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """Train `f_g` with `gmail_loss` on (generated input, f_r(real) embedding) pairs.

    `generated` holds one input per generated image: (N, 3, H, W) float images in [0, 1], or
    the frozen trunk's features of them when `forward` is the trainable head (see
    `gmail.encoders`). `z_real` (N, D) holds the frozen encoder's embeddings of the paired
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


def noise_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8 uniform noise; image i depends only on `seed + i`.

    The `noise` control aligns and trains on these in place of generated images: whatever a
    captioner gains from them is a per-pair lookup, not information about the image.
    """
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = np.random.default_rng(seed + i).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return out


def load_f_g(f_r: nn.Module, directory) -> nn.Module:
    """The aligned encoder saved by the align stage in `directory`, on top of `f_r`.

    `directory/adapter` holds a peft LoRA adapter (`save_pretrained`), loaded onto a copy of
    `f_r` with `PeftModel.from_pretrained`; `directory/f_g.safetensors` holds a full copy's
    weights (`rank: full`). `f_r` itself is left untouched.
    """
    from pathlib import Path

    directory = Path(directory)
    adapter, full = directory / "adapter", directory / "f_g.safetensors"
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        try:
            f_g = PeftModel.from_pretrained(copy.deepcopy(f_r), str(adapter))
        except (ValueError, KeyError, RuntimeError) as exc:
            raise PipelineError(f"adapter {adapter} does not fit this encoder ({exc.__class__.__name__}): "
                                "use the encoder it was aligned from or rerun `dvc repro align@generated`") from exc
    elif full.is_file():
        from safetensors.torch import load_file

        f_g = copy.deepcopy(f_r)
        try:
            f_g.load_state_dict(load_file(str(full)))
        except RuntimeError as exc:
            raise PipelineError(f"{full} does not fit this encoder: use the encoder it was aligned from or rerun align") from exc
    else:
        raise PipelineError(f"no aligned encoder in {directory} (neither adapter/ nor f_g.safetensors): "
                            "run `dvc repro align@generated` or point --adapter at an align output")
    for p in f_g.parameters():
        p.requires_grad_(False)
    return f_g.eval()

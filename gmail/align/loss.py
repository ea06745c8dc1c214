"""The GMAIL objective (paper Eq. 1) and the paired cosine it is judged by (paper Table 14)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gmail.core.errors import PipelineError


def gmail_loss(z_gen: torch.Tensor, z_real: torch.Tensor, tau: float = 0.07, targets: torch.Tensor | None = None,
               groups: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """One-directional InfoNCE from generated to real over cosine similarities (Eq. 1).

    Row i of `z_gen` (f_g of generated image i) must pick row `targets[i]` of `z_real` (f_r of
    the real image with the same caption; default: row i) among all real rows of the batch;
    there is no real->generated term, unlike CLIP's symmetric loss. `groups[j]` names the real
    image behind column j: with several generated images per real one a batch may hold the same
    real image twice, and such a column is then no negative for its twin (masked out).
    `targets` lets a process score only its share of a batch's rows (multi-process training).
    """
    if targets is None:
        if z_gen.shape != z_real.shape:
            raise PipelineError(f"{len(z_gen)} generated vs {len(z_real)} real embeddings: pairs must match one to one")
        targets = torch.arange(len(z_gen), device=z_gen.device)
    logits = F.normalize(z_gen, dim=-1) @ F.normalize(z_real, dim=-1).t() / tau
    if groups is not None:
        twin = groups[targets].unsqueeze(1) == groups.unsqueeze(0)
        twin[torch.arange(len(targets), device=twin.device), targets] = False
        logits = logits.masked_fill(twin, float("-inf"))
    return F.cross_entropy(logits, targets, reduction=reduction)


@torch.no_grad()
def paired_cosine(z_a: torch.Tensor, z_b: torch.Tensor) -> float:
    """Mean cosine similarity of row-aligned embeddings (paper Table 14)."""
    return float((F.normalize(z_a, dim=-1) * F.normalize(z_b, dim=-1)).sum(-1).mean())

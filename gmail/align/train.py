"""Training `f_g` with the GMAIL loss on (generated, real) pairs, and the inputs it trains on.

With `layers="head"` LoRA sits only after the tower's frozen trunk, so the trunk's features
of every image are computed once and each step runs the head alone (mini CLIP: ~0.1 s per
batch-256 step on 2 CPU cores instead of ~2 s through the whole tower); `layers="all"` puts
LoRA in every block and trains on the images themselves.

Batches come from one of two samplers. In memory (`draw_batch`): every training input is
held, which suits mini `layers: head` (~3 KB of trunk features per image). Streaming
(`shuffled_batches`): the images are read from their source again each epoch through a
seeded shuffle buffer, so memory holds the buffer, not the data set (paper scale: 224-px
images, 602,112 bytes each as float tensors).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn

from gmail.align.lora import add_lora, base_model
from gmail.align.loss import gmail_loss
from gmail.core.errors import PipelineError, check_loss
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

    def inputs_from(self, batches: Iterable[np.ndarray], batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
        """`inputs` of a stream of uint8 batches; only the inputs are kept (trunk features when cached)."""
        return torch.cat([self.inputs(images, batch_size, device).cpu() for images in batches])

    @property
    def forward_module(self) -> nn.Module:
        """The trainable forward pass as a module (what DistributedDataParallel wraps)."""
        return _Head(base_model(self.f_g)) if self.cached else base_model(self.f_g)

    def embed_f_r(self, inputs: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
        return head_embeddings(self.tower.head if self.cached else self.tower, inputs, batch_size, device)

    def embed_f_g(self, inputs: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
        return head_embeddings(self.forward, inputs, batch_size, device)


class _Head(nn.Module):
    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.tower.head(features)


def draw_batch(groups: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Row indices of one batch: `batch_size` distinct real images (groups), one of each one's rows.

    With one generated image per real one this is a random subset of rows; with several it
    never puts two images of the same real one in a batch, so Eq. 1 has no false negatives.
    """
    unique, inverse = torch.unique(groups, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=len(unique))
    starts = torch.cumsum(counts, 0) - counts
    picked = torch.randperm(len(unique), generator=gen)[:batch_size]
    offset = (torch.rand(len(picked), generator=gen) * counts[picked]).long()
    return order[starts[picked] + offset]


def shuffled_batches(epoch: Callable[[], Iterable[tuple[int, int, Any]]], n_items: int, batch_size: int,
                     buffer_size: int, gen: torch.Generator) -> Iterator[tuple[list[int], list[int], list[Any]]]:
    """Endless (rows, groups, payloads) batches drawn through a seeded shuffle buffer.

    `epoch()` streams one pass over the training items as (row, group, payload): group names
    the real image behind the row, payload is what the batch carries (an image). The buffer
    holds `min(buffer_size, n_items)` items; each batch takes up to `batch_size` of them in a
    random order, one per group first (distinct real images, as `draw_batch`), then, only when
    the buffer holds fewer groups than `batch_size`, twins of groups already in the batch (the
    loss masks them, `gmail_loss(groups=)`). Taken items are replaced from the stream, which
    starts a new epoch when it runs out. The sequence depends only on the stream and `gen`,
    never on how many processes run: every process draws the same batches (DDP splits rows).
    """
    if n_items < 1:
        raise PipelineError("no pairs to align: every real image is held out (lower align.heldout)")
    capacity, batch_size = min(buffer_size, n_items), min(batch_size, n_items)

    def endless():
        while True:
            count = 0
            for item in epoch():
                count += 1
                yield item
            if count == 0:
                raise PipelineError("the alignment image stream is empty: rerun `dvc repro generate`")

    stream = endless()
    buffer: list = []
    while True:
        while len(buffer) < capacity:
            buffer.append(next(stream))
        order = torch.randperm(len(buffer), generator=gen).tolist()
        seen, first, twins = set(), [], []
        for k in order:
            (twins if buffer[k][1] in seen else first).append(k)
            seen.add(buffer[k][1])
        taken = (first + twins)[:batch_size]
        yield [buffer[k][0] for k in taken], [buffer[k][1] for k in taken], [buffer[k][2] for k in taken]
        gone = set(taken)
        buffer = [item for k, item in enumerate(buffer) if k not in gone]


def streamed_inputs(aligned: Alignment, batches: Iterable[tuple[list[int], list[int], list[np.ndarray]]],
                    z_real: torch.Tensor, rank: int = 0, world: int = 1, batch_size: int = 256,
                    device: str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`train_alignment`'s batches from `shuffled_batches` of uint8 images: this process's share
    of the rows (rank::world) as inputs, with the batch's real embeddings and groups."""
    for _rows, groups, images in batches:
        g = torch.tensor(groups)
        yield aligned.inputs(np.stack(images[rank::world]), batch_size, device), z_real[g], g


def train_alignment(f_g: nn.Module, generated: torch.Tensor | None, z_real: torch.Tensor | None, steps: int,
                    batch_size: int = 256, lr: float = 1e-4, weight_decay: float = 0.01, tau: float = 0.07,
                    restart_steps: int = 100, max_grad_norm: float = 1.0, seed: int = 0,
                    device: str = "cpu", progress: bool = True,
                    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    groups: torch.Tensor | None = None, rank: int = 0, world: int = 1,
                    batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None) -> list[float]:
    """Train `f_g` with `gmail_loss` on (generated input, f_r(real) embedding) pairs.

    `generated` holds one input per generated image: (N, 3, H, W) float images in [0, 1], or
    the frozen trunk's features of them when `forward` is the trainable head (see
    `gmail.models.image_tower`). `z_real` (N, D) holds the frozen encoder's embeddings of the paired
    real images, computed once, row-aligned with `generated`; `groups` (N,) names each row's real
    image (default: every row its own), and each batch draws `batch_size` real images and one of
    their rows (`draw_batch`). Streaming instead, `batches` yields each step's (inputs of this
    process's rows, real embeddings of the whole batch, groups of the whole batch), e.g.
    `streamed_inputs`, and `generated` / `z_real` are unused. AdamW, cosine annealing with warm restarts every
    `restart_steps`, gradient clipping, as the paper. BatchNorm statistics stay those of f_r
    (the copy runs in eval mode; only the adapter weights learn).

    Several processes (rank of world, `torch.distributed` initialised, `forward` wrapped in
    DistributedDataParallel): every process draws the same batch, embeds its share of the rows
    (rank::world) and scores them against all of the batch's real embeddings, with its loss
    scaled so that DDP's gradient average equals the one-process gradient of the batch mean.

    A NaN or infinite loss stops training with a PipelineError (every rank sees the same
    all-reduced loss, so all of them stop), before anything is saved.
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
    if batches is None:
        batches = _memory_batches(generated, z_real.to(device), groups, batch_size, gen, rank, world)
    losses = []
    for _ in tqdm(range(steps), desc="align f_g", disable=not progress or rank != 0):
        x, z, g = next(batches)
        n = len(g)
        mine = torch.arange(rank, n, world)
        loss_sum = gmail_loss(forward(x.to(device)), z.to(device), tau,
                              targets=mine.to(device), groups=g.to(device), reduction="sum")
        opt.zero_grad(set_to_none=True)
        (loss_sum * world / n).backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        total = loss_sum.detach()
        if world > 1:
            torch.distributed.all_reduce(total)
        # .item() syncs every step anyway (the loss curve), so checking it costs nothing.
        losses.append(check_loss(total.item() / n, "alignment", len(losses) + 1, f"lower align.lr (now {lr:g})"))
    return losses


def _memory_batches(generated: torch.Tensor, z_real: torch.Tensor, groups: torch.Tensor | None, batch_size: int,
                    gen: torch.Generator, rank: int, world: int):
    """`draw_batch` over inputs held in memory: this process's rows, the batch's real embeddings and groups."""
    groups = torch.arange(len(generated)) if groups is None else groups.cpu()
    while True:
        idx = draw_batch(groups, batch_size, gen)
        yield generated[idx[torch.arange(rank, len(idx), world)]], z_real[idx.to(z_real.device)], groups[idx]

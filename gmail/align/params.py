"""params.yaml `align`: the settings of GMAIL alignment, read by `align@<source>` and, for the
held-out split, by the captioner stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from gmail.core.config import check_lr, check_param
from gmail.core.errors import PipelineError

LAYERS = ("head", "all")
SAMPLERS = ("auto", "memory", "stream")


def parse_rank(rank) -> int | str:
    """A LoRA rank from params: a positive integer, or "full" for full fine-tuning."""
    if rank == "full":
        return "full"
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise PipelineError(f"align.rank must be a positive integer or 'full', got {rank!r}: fix params.yaml")
    return rank


@dataclass
class AlignParams:
    rank: Union[int, str]   # LoRA rank, or "full"
    layers: str             # head | all
    steps: int              # 0 = alignment off (f_g = f_r)
    batch_size: int
    lr: float
    weight_decay: float
    tau: float
    restart_steps: int      # cosine annealing with warm restarts: period in steps
    heldout: int            # the last B pairs, kept out of alignment
    noise_size: int         # side of the align@noise control's noise images
    sampler: str            # auto: stream when f_g trains on images (paper scale, layers all) | memory | stream
    shuffle_buffer: int     # streaming sampler: items held in its seeded shuffle buffer

    def validate(self, name):
        self.rank = parse_rank(self.rank)
        if self.layers not in LAYERS:
            raise PipelineError(f"{name}.layers={self.layers!r} is not one of {', '.join(LAYERS)}: fix params.yaml")
        if self.steps < 0 or self.batch_size < 1 or self.restart_steps < 1 or self.heldout < 0 or self.tau <= 0 or self.noise_size < 1:
            raise PipelineError(f"{name}: steps must be >= 0 (0 = alignment off), batch_size, restart_steps and "
                                "noise_size positive, heldout >= 0 and tau > 0: fix params.yaml")
        if self.sampler not in SAMPLERS:
            raise PipelineError(f"{name}.sampler={self.sampler!r} is not one of {', '.join(SAMPLERS)}: fix params.yaml")
        check_param(self.shuffle_buffer >= self.batch_size, f"{name}.shuffle_buffer", self.shuffle_buffer,
                    f">= {name}.batch_size ({self.batch_size})")
        check_lr(f"{name}.lr", self.lr)
        check_param(self.weight_decay >= 0, f"{name}.weight_decay", self.weight_decay, ">= 0")

    def streams(self, on_images: bool) -> bool:
        """Whether `align` uses the streaming sampler: `on_images` says whether f_g trains on the
        images themselves (paper scale, or mini `layers: all`) rather than cached trunk features."""
        return self.sampler == "stream" or (self.sampler == "auto" and on_images)

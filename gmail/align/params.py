"""params.yaml `align`: the settings of GMAIL alignment, read by `align@<source>` and, for the
held-out split, by the captioner stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from gmail.core.config import check_lr, check_param
from gmail.core.errors import PipelineError

LAYERS = ("head", "all")


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

    def validate(self, name):
        self.rank = parse_rank(self.rank)
        if self.layers not in LAYERS:
            raise PipelineError(f"{name}.layers={self.layers!r} is not one of {', '.join(LAYERS)}: fix params.yaml")
        if self.steps < 0 or self.batch_size < 1 or self.restart_steps < 1 or self.heldout < 0 or self.tau <= 0 or self.noise_size < 1:
            raise PipelineError(f"{name}: steps must be >= 0 (0 = alignment off), batch_size, restart_steps and "
                                "noise_size positive, heldout >= 0 and tau > 0: fix params.yaml")
        check_lr(f"{name}.lr", self.lr)
        check_param(self.weight_decay >= 0, f"{name}.weight_decay", self.weight_decay, ">= 0")

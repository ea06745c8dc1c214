"""Samplers for stage generate: `sampler(prompts, seeds)` yields one (R, R, 3) uint8 image per
prompt, in order, image i from `seeds[i]`; the model loads once, when the sampler is made."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

Sampler = Callable[[list[str], list[int]], Iterator[np.ndarray]]
# diffusers' schedulers' default training timesteps (SD2's and FLUX's; the mini generators' too).
TRAIN_TIMESTEPS = 1000


def train_timesteps(directory) -> int:
    """`num_train_timesteps` of the scheduler saved in `directory` (a mini generator or a local
    diffusers pipeline: `scheduler/scheduler_config.json`), the most sampling steps it takes;
    TRAIN_TIMESTEPS when there is none to read (a hub id, a missing model: loading reports that)."""
    import json
    from pathlib import Path

    try:
        value = json.loads((Path(directory) / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"]
    except (OSError, ValueError, KeyError, TypeError):
        return TRAIN_TIMESTEPS
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else TRAIN_TIMESTEPS


def mini_sampler(directory, steps: int, guidance: float, batch_size: int, device: str = "cpu", dtype=torch.float32,
                 resolution: int = 0) -> Sampler:
    """The mini generator saved in `directory`, sampled `batch_size` images at a time
    (`gmail.generation.mini_sampling.sample`). A missing model fails here, not at the first
    image. `resolution` > 0 resizes (bicubic) to that size; 0 keeps the model's native size."""
    from PIL import Image

    from gmail.generation.mini_diffusion import load_generator
    from gmail.generation.mini_sampling import sample
    from gmail.models.text import encode_texts

    model, scheduler, config = load_generator(directory, device, dtype)

    def sampler(prompts: list[str], seeds: list[int]) -> Iterator[np.ndarray]:
        cond = torch.from_numpy(encode_texts(prompts))
        for i in range(0, len(prompts), batch_size):
            for img in sample(model, scheduler, config, cond[i:i + batch_size], seeds[i:i + batch_size],
                              steps, guidance, device, dtype):
                if resolution and img.shape[0] != resolution:
                    img = np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC))
                yield img

    return sampler

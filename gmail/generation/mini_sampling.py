"""Sampling the mini generators with classifier-free guidance and per-image seeds."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from gmail.generation.mini_diffusion import GeneratorConfig, load_generator, predict


def sampler_for(scheduler, family: str):
    """Inference scheduler: DDIM for the SD family, flow-matching Euler for FLUX."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if family == "sd2":
        return DDIMScheduler.from_config(scheduler.config)
    return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One noise tensor per image from its own seed, so an image never depends on its batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample(model, scheduler, config: GeneratorConfig, cond: torch.Tensor, seeds: list[int],
           steps: int = 20, guidance: float = 3.0, device: str = "cpu", dtype=torch.float32) -> np.ndarray:
    """(B, R, R, 3) uint8 images for caption embeddings `cond` (B, 384).

    DDIM runs deterministically (eta 0) with `use_clipped_model_output=True`: with
    `clip_sample=True` DDIM otherwise keeps the unclipped noise estimate, so predicted image
    and noise disagree and samples come out grainy with saturated backgrounds.
    """
    sampler = sampler_for(scheduler, config.family)
    sampler.set_timesteps(steps, device=device)
    x = initial_noise(seeds, (3, config.resolution, config.resolution)).to(device, dtype)
    cond = cond.to(device, dtype)
    uncond = torch.zeros_like(cond)
    for t in sampler.timesteps:
        x_in = torch.cat([x, x])
        c_in = torch.cat([cond, uncond])
        if config.family == "sd2":
            t_in = t.expand(len(x_in))
        else:
            t_in = (t / sampler.config.num_train_timesteps).expand(len(x_in)).to(dtype)
        out_c, out_u = predict(model, config, x_in, t_in, c_in).chunk(2)
        out = out_u + guidance * (out_c - out_u)
        if config.family == "sd2":
            x = sampler.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        else:
            x = sampler.step(out, t, x).prev_sample
    img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


def mini_images(directory, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch_size: int,
                device: str = "cpu", dtype=torch.float32) -> Iterator[tuple[int, np.ndarray]]:
    """(index, (R, R, 3) uint8 image) for every prompt, from the mini generator saved in `directory`.

    The generator and the prompts' MiniLM embeddings are loaded before this returns, so a
    missing model fails at once rather than at the first `next()`; images are then sampled
    lazily, `batch_size` at a time, image i from `seeds[i]`.
    """
    from gmail.models.text import encode_texts

    model, scheduler, config = load_generator(directory, device, dtype)
    cond = torch.from_numpy(encode_texts(prompts))

    def images():
        for i in range(0, len(prompts), batch_size):
            batch = sample(model, scheduler, config, cond[i:i + batch_size], seeds[i:i + batch_size],
                           steps, guidance, device, dtype)
            yield from ((i + j, img) for j, img in enumerate(batch))

    return images()

"""Text-to-image generation: the mini SD / FLUX-family diffusers models and their sampler, and
the paper's StableDiffusionPipeline / FluxPipeline."""

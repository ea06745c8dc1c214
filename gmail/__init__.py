"""GMAIL reference implementation: generated images as their own modality, aligned to real ones.

Sub-packages by role; mini and paper scale sit side by side inside each:

- `gmail.core`: params files, seeding and devices, stage entry points, errors, atomic I/O.
- `gmail.data`: captioned image splits: easy-vqa (mini), COCO / Karpathy / img2dataset
  readers (paper), split records on disk, COCO results files.
- `gmail.models`: frozen pretrained parts: MiniLM text encoder, the mini CLIP, `f_r`'s image
  tower at both scales, embedding files.
- `gmail.generation`: text-to-image: mini diffusers generators and their sampler, the
  paper's SD2 / FLUX pipelines.
- `gmail.align`: the method: Eq. 1 loss, the LoRA copy `f_g`, its training, saving, loading.
- `gmail.downstream`: models trained on the embeddings: ClipCap and the captioner variants.
- `gmail.eval`: scores: caption metrics, zero-shot attribute accuracy and retrieval.
- `gmail.viz`: figures and curves: image grids, t-SNE, per-step loss TSVs.

Each sub-package's `__init__` holds only this kind of docstring: modules are imported by
their full name, so a stage's import closure (and so its DVC deps) is exactly what it uses.
"""

__version__ = "0.2.0"

"""t-SNE of real and generated embeddings before and after alignment (paper Figure 3)."""

from __future__ import annotations

import numpy as np

from gmail.core.io import atomic_file


def tsne_plot(z_real, z_gen_before, z_gen_after, path, seed, max_points: int = 600):
    """Paper Figure 3: t-SNE of real (f_r) and generated embeddings, before and after alignment.

    At most `max_points` pairs (a fixed random subset) are drawn: t-SNE's cost grows
    quadratically and 600 pairs show the picture as well as all of them.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on pipeline machines
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    if len(z_real) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(z_real), max_points, replace=False))
        z_real, z_gen_before, z_gen_after = z_real[keep], z_gen_before[keep], z_gen_after[keep]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, z_gen, title in ((axes[0], z_gen_before, "before (f_r on generated)"), (axes[1], z_gen_after, "after (f_g on generated)")):
        pts = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(z_real) - 1)).fit_transform(
            np.concatenate([z_real, z_gen]))
        ax.scatter(*pts[: len(z_real)].T, s=5, label="real (f_r)")
        ax.scatter(*pts[len(z_real):].T, s=5, label="generated")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)

"""Figures and curves: real-vs-generated image grids, t-SNE of embeddings (paper Fig. 3),
per-step training loss curves as TSV for `dvc plots`."""

"""GMAIL reference implementation: generated images as their own modality, aligned to real ones."""

__version__ = "0.1.0"

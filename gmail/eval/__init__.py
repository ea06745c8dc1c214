"""Evaluation: caption metrics (pycocoevalcap + WMD), zero-shot attribute classification and
caption retrieval with the mini CLIP."""

"""Frozen pretrained parts: the MiniLM sentence encoder, the mini CLIP (mini scale's `f_r`),
`f_r`'s image tower at both scales (mini CLIP or open_clip ViT) and embedding files."""

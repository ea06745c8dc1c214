"""The method (paper Eq. 1): the one-directional InfoNCE loss, the LoRA copy `f_g` of `f_r`,
its training on (generated, real) pairs, saving and loading, and the noise control."""

"""Pure tensor math on batched tensors ``[B, C, D, H, W]``: no classes, no RNG, no dicts."""

"""The image transform in front of the encoder: resize, (training only) a small affine jitter, tensor, normalise.

Standalone (torchvision only): `r2gen.export` copies this file into exported model folders, so an exported model
preprocesses exactly as training, evaluation and predict.py do.
"""

from __future__ import annotations

from torchvision import transforms as T


def image_transform(size: int, mean, std, augment: bool) -> T.Compose:
    """Resize to size x size, optionally a small affine jitter (never a horizontal flip: it swaps left and right)."""
    steps: list = [T.Resize((size, size), antialias=True)]
    if augment:
        steps.append(T.RandomAffine(degrees=5, translate=(0.03, 0.03), scale=(0.95, 1.05)))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)

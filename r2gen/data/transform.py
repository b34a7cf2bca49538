"""The image transform in front of the encoder: resize, (training only) a small affine jitter, tensor, normalise.

Standalone: this file is copied verbatim into every exported model folder (r2gen.export.exporter.EXPORTED), which
runs without r2gen, so it imports only the standard library, torch, torchvision, timm, transformers, numpy, Pillow,
pydicom and the other exported files (relatively), and r2gen (its error types, another exported file) only inside
`try: ... except ImportError:` with a fallback; tests/test_export.py::test_the_exported_files_are_standalone keeps
it so.
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

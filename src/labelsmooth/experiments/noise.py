"""Symmetric label noise for ``labelsmooth compare --noise``."""

from __future__ import annotations

import math

import torch

#: offset added to the seed for the noise generator, so the flips do not share a stream with the
#: split or the initialisation of the same seed.
NOISE_SEED_OFFSET = 7919


def check_noise(noise: float) -> float:
    """``--noise`` must be a float in ``[0, 1)``."""
    if isinstance(noise, bool) or not isinstance(noise, (int, float)):
        raise TypeError(f"--noise must be a float in [0, 1), got {type(noise).__name__} {noise!r}")
    if math.isnan(noise) or not 0.0 <= noise < 1.0:
        raise ValueError(f"--noise {noise} is out of range; allowed: a float in [0, 1)")
    return float(noise)


def flip_labels(labels: torch.Tensor, noise: float, num_classes: int, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly ``round(noise * n)`` of the ``n`` labels, each to a different class drawn uniformly.

    The rows to flip are the first ``round(noise * n)`` of a random permutation; a flipped label
    becomes ``(y + u) mod C`` with ``u`` uniform on ``{1, ..., C-1}``, i.e. uniform over the other
    ``C - 1`` classes. Randomness comes from ``torch.Generator().manual_seed(seed +
    NOISE_SEED_OFFSET)`` only, so a seed gives the same noisy labels to every loss. Returns ``(noisy
    labels, boolean mask of the flipped rows)``; ``labels`` is not modified.
    """
    noise = check_noise(noise)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} is not allowed with label noise; allowed: >= 2")
    labels = labels.long()
    n = labels.numel()
    count = round(noise * n)
    gen = torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET)
    rows = torch.randperm(n, generator=gen)[:count]
    offsets = torch.randint(1, num_classes, (count,), generator=gen)
    noisy = labels.clone()
    noisy[rows] = (labels[rows] + offsets) % num_classes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[rows] = True
    return noisy, mask

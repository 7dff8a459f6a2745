"""The two classifiers of ``labelsmooth compare``: a small MLP and a linear (softmax regression) model.

Both expose ``features(x)`` (the penultimate-layer activations ``h``) and ``head`` (the last
``nn.Linear``), so ``logits = head(features(x)) = h W^T + b`` and the rows of ``head.weight`` are the
class templates of Müller et al. 2019.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("mlp", "linear")


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_model(name: str, in_features: int, num_classes: int, *, hidden: int = 128) -> Classifier:
    """``mlp``: two hidden ReLU layers of width ``hidden``; ``linear``: no hidden layer (the
    penultimate "activations" are then the standardised inputs)."""
    if name == "mlp":
        body: nn.Module = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                        nn.Linear(hidden, hidden), nn.ReLU())
        return Classifier(body, hidden, num_classes)
    if name == "linear":
        return Classifier(nn.Identity(), in_features, num_classes)
    raise ValueError(f"--model {name!r} is not known; allowed: {', '.join(MODELS)}")

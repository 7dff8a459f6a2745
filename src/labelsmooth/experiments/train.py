"""The training loop of ``labelsmooth compare``: mini-batch AdamW with a cosine schedule.

The loop takes the training labels as an argument (so a caller may pass flipped / noisy labels) and
honours the optional loss hooks described in :mod:`.losses` (``on_train_begin``, ``on_epoch_end``,
``needs_index``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    device: str = "cpu"


def train(model: nn.Module, loss_fn: Any, X: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *,
          seed: int, on_epoch: Callable[[int, float], None] | None = None) -> float:
    """Train ``model`` in place on ``(X, y)``; return the wall time in seconds.

    Each epoch visits the rows in a fresh random order (``torch.Generator`` seeded with ``seed``) in
    batches of ``cfg.batch_size``; the learning rate follows a cosine from ``cfg.lr`` to 0 over all
    steps. ``on_epoch(epoch, mean_training_loss)`` is called after every epoch (progress bars).
    """
    device = torch.device(cfg.device)
    model.to(device)
    X, y = X.to(device), y.to(device)
    n = X.shape[0]
    steps_per_epoch = max(1, -(-n // cfg.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    needs_index = bool(getattr(loss_fn, "needs_index", False))
    epoch_end = getattr(loss_fn, "on_epoch_end", None)
    train_begin = getattr(loss_fn, "on_train_begin", None)
    if callable(train_begin):
        train_begin(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), device=device)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            logits = model(X[idx])
            loss = loss_fn(logits, y[idx], index=idx) if needs_index else loss_fn(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * idx.numel()
        if callable(epoch_end):
            epoch_end()
        if on_epoch is not None:
            on_epoch(epoch, float(total) / n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    model.eval()
    return time.perf_counter() - start


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Logits of ``X`` in eval mode, on the CPU."""
    model.eval()
    return model(X.to(device)).float().cpu()


@torch.no_grad()
def penultimate(model: Any, X: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Penultimate-layer activations ``model.features(X)``, on the CPU."""
    model.eval()
    return model.features(X.to(device)).float().cpu()

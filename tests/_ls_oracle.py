"""Float64 oracle for the label-smoothed loss, written from DESIGN.md §2 (imports no labelsmooth).

Shared by test_linear.py and test_triton_interpret.py. Gradients come from autograd through
``log_softmax`` in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def oracle_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                eps: float = 0.0, convention: str = "uniform", weight_mode: str = "class",
                ignore_index: int = -100, reduction: str = "mean", z_loss: float = 0.0
                ) -> torch.Tensor:
    """Loss of ``(N, K)`` float64 logits and ``(N,)`` class ids."""
    k = logits.shape[1]
    kept = target != ignore_index
    safe = torch.where(kept, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, k).double()
    if convention == "uniform":
        q = (1 - eps) * onehot + eps / k
    else:
        q = (1 - eps) * onehot + (eps / (k - 1)) * (1 - onehot)
    w = torch.ones(k, dtype=torch.float64) if weight is None else weight.double()
    elem = w[safe] * kept.double()
    if weight is None:
        coef = q
    elif weight_mode == "class":
        coef = q * w
    else:
        coef = q * w[safe].unsqueeze(1)
    coef = coef * kept.double().unsqueeze(1)
    z = torch.where(kept.unsqueeze(1), logits, torch.zeros_like(logits))
    logp = torch.log_softmax(z, dim=1)
    lse = torch.logsumexp(z, dim=1)
    per = -torch.where(coef == 0, torch.zeros_like(logp), coef * logp).sum(1)
    per = per + z_loss * elem * lse**2
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    denom = elem.sum()
    return per.sum() / denom if float(denom) != 0 else per.sum() * 0


def oracle_linear(hidden, classifier, target, bias=None, **kw):
    """The oracle of ``F.linear(hidden, classifier, bias)`` in float64 (class dim last)."""
    h = hidden.reshape(-1, hidden.shape[-1])
    logits = h @ classifier.t()
    if bias is not None:
        logits = logits + bias
    out = oracle_loss(logits, target.reshape(-1), **kw)
    return out.reshape(target.shape) if kw.get("reduction") == "none" else out

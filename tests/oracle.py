"""Independent float64 oracle for label-smoothed cross-entropy.

Written from the definitions in DESIGN.md §2 with explicit loops over elements; it imports nothing
from ``labelsmooth``. Gradients come from autograd through ``log_softmax`` in float64, which is fine
for an oracle (it is slow and obviously right, not fast).
"""

from __future__ import annotations

import torch


def target_distribution(y: int, k: int, eps: float, convention: str) -> list[float]:
    """q for one element: the two conventions, written out separately."""
    if convention == "uniform":
        return [(1 - eps) * (c == y) + eps / k for c in range(k)]
    if convention == "non_target":
        return [(1 - eps) if c == y else eps / (k - 1) for c in range(k)]
    raise ValueError(convention)


def oracle_loss(logits, target, weight=None, *, eps=0.0, convention="uniform", weight_mode="class",
                ignore_index=-100, reduction="mean", dim=1, z_loss=0.0):
    """Loss in float64 for class-index or probability targets. Returns a float64 tensor that is
    differentiable w.r.t. ``logits`` (give it a float64 leaf)."""
    x = logits.to(torch.float64)
    d = dim % x.dim()
    k = x.shape[d]
    x2 = x.movedim(d, -1).reshape(-1, k)
    soft = target.is_floating_point()
    t2 = target.to(torch.float64).movedim(d, -1).reshape(-1, k) if soft else target.reshape(-1)
    w = None if weight is None else [float(v) for v in weight]
    per, denom = [], 0.0
    for i in range(x2.shape[0]):
        logp = torch.log_softmax(x2[i], dim=0)
        lse = torch.logsumexp(x2[i], dim=0)
        if soft:
            if convention == "uniform":
                q = [(1 - eps) * float(t2[i, c]) + eps / k for c in range(k)]
            else:
                q = [(1 - eps) * float(t2[i, c]) + eps * (1 - float(t2[i, c])) / (k - 1)
                     for c in range(k)]
            coef = q if w is None else [w[c] * q[c] for c in range(k)]
            elem_w = 1.0
        else:
            y = int(t2[i])
            if y == ignore_index:
                per.append(x2.new_zeros(()))
                continue
            q = target_distribution(y, k, eps, convention)
            elem_w = 1.0 if w is None else w[y]
            if w is None:
                coef = q
            elif weight_mode == "class":
                coef = [w[c] * q[c] for c in range(k)]
            else:
                coef = [w[y] * q[c] for c in range(k)]
        terms = [-coef[c] * logp[c] for c in range(k) if coef[c] != 0.0]
        value = torch.stack(terms).sum() if terms else x2.new_zeros(())
        value = value + z_loss * elem_w * lse**2
        per.append(value)
        denom += elem_w
    out = torch.stack(per) if per else x2.new_zeros((0,))
    if reduction == "none":
        shape = list(x.shape)
        del shape[d]
        return out.reshape(shape)
    if reduction == "sum":
        return out.sum()
    return out.sum() / denom if denom != 0 else x2.new_zeros(())


def oracle_value_and_grad(logits, target, weight=None, **kw):
    """(loss, d loss.sum() / d logits) in float64."""
    x = logits.detach().to(torch.float64).requires_grad_(True)
    loss = oracle_loss(x, target, weight, **kw)
    if not loss.requires_grad:  # nothing kept: the gradient is zero by definition
        return loss.detach(), torch.zeros_like(x)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad

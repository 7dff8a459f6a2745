"""The projection of Müller, Kornblith & Hinton 2019 (fig. 1): penultimate activations of three
classes on the plane through their class templates."""

from __future__ import annotations

import torch


def template_plane(templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Origin and orthonormal basis of the affine plane through three templates.

    For templates :math:`w_1, w_2, w_3 \in \mathbb{R}^D` (rows of the last layer's weight), the plane
    is :math:`\{o + B a : a \in \mathbb{R}^2\}` with origin :math:`o = (w_1+w_2+w_3)/3` and
    :math:`B \in \mathbb{R}^{D\times 2}` the Gram--Schmidt orthonormalisation of
    :math:`(w_2 - w_1,\ w_3 - w_1)`. Computed in float64.

    Returns:
        ``(origin (D,), basis (D, 2))``.
    """
    if not isinstance(templates, torch.Tensor) or templates.dim() != 2 or templates.shape[0] != 3:
        raise ValueError(f"templates must be a tensor of shape (3, D), got "
                         f"{getattr(templates, 'shape', type(templates).__name__)}")
    w = templates.detach().double()
    origin = w.mean(dim=0)
    u = w[1] - w[0]
    v = w[2] - w[0]
    nu = u.norm()
    if nu == 0:
        raise ValueError("templates 1 and 2 coincide; they span no plane")
    e1 = u / nu
    v = v - (v @ e1) * e1
    nv = v.norm()
    if nv <= 1e-12 * max(float(nu), 1.0):
        raise ValueError("the three templates are collinear; they span no plane")
    e2 = v / nv
    return origin, torch.stack([e1, e2], dim=1)


def project_to_template_plane(features: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    r"""2-D coordinates of ``features`` (N, D) in the plane through ``templates`` (3, D).

    :math:`a_i = B^\top (h_i - o)` with ``o`` and ``B`` from :func:`template_plane`: the orthogonal
    projection onto the plane, expressed in its orthonormal basis. Returns float64 ``(N, 2)``.
    """
    origin, basis = template_plane(templates)
    if not isinstance(features, torch.Tensor) or features.dim() != 2 \
            or features.shape[1] != basis.shape[0]:
        raise ValueError(f"features must be a tensor of shape (N, {basis.shape[0]}), got "
                         f"{getattr(features, 'shape', type(features).__name__)}")
    return (features.detach().double() - origin) @ basis

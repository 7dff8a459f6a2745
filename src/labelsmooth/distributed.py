r"""Vocab-parallel label-smoothed cross-entropy over :mod:`torch.distributed`.

All the collectives of the package live in this module.

When the output layer is sharded by vocabulary (tensor parallelism), rank ``r`` of the group holds
the logits of a contiguous slice ``[o_r, o_r + V_r)`` of the ``V = sum_r V_r`` classes, slices in
rank order, sizes free (``V`` need not divide by the world size). With the per-row statistics of
:mod:`labelsmooth._stats` the loss needs only ``O(N)`` communication and never gathers logits:

1. one small ``all_gather`` of a fixed-size int64 record per rank: ``V_r`` (so every rank learns
   the offsets and the *global* ``V``), the target's shape and a checksum of its values, the
   options, and ``sum(w_r)`` of the local class weights; this is also where every rank checks that
   the group agrees, so a bad input raises the same clear error on every rank instead of hanging a
   later collective;
2. ``all_reduce(MAX)`` of the local ``logsumexp`` of each row, ``m = max_r lse_r`` (the stabiliser);
3. one packed ``all_reduce(SUM)`` of ``k`` per-row sums, ``k = 2 + [eps > 0] + [weight given]``:
   ``s = sum_r exp(lse_r - m)``, the target logit ``z_y`` (0 on shards that do not hold ``y``),
   ``sum_c u_c z_c`` (only with smoothing), and ``w_y`` (only with class weights).

Then ``lse = m + log s`` and, with ``b, c, e, U`` of :func:`labelsmooth._stats.row_coefficients`
computed with the **global** ``V`` (so ``eps/V``, or ``eps/(V-1)`` for ``convention="non_target"``;
smoothing over the *local* ``V_r`` is the well-known Megatron bug that makes the loss depend on the
parallel degree),

.. math::

    \ell = (b + cU)\,\mathrm{lse} - b\,z_y - c \textstyle\sum_c u_c z_c + \lambda e\,\mathrm{lse}^2,
    \qquad \partial\ell/\partial z_k = a\,p_k - b[k=y] - c\,u_k,
    \qquad a = b + cU + 2\lambda e\,\mathrm{lse}.

Each rank's gradient is the slice ``k in [o_r, o_r + V_r)`` of that formula, times the
reduction's scale: everything it needs (``lse``, ``a``, ``b``, ``c`` per row) is saved in forward,
so backward runs **no collective**. Every rank gets the same loss (the reduced statistics are
identical everywhere).
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import _stats
from ._options import LossOptions, check_float_input, check_weight, class_dim
from .functional import _check_index_target, _flatten, _options, output_dtype

__all__ = [
    "CommunicationVolume",
    "communication_volume",
    "recording_collectives",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]

# ----------------------------------------------------------------------------------------------
# Collectives: every one the module issues goes through these two functions (and can be recorded).

_RECORD: list[list[tuple[str, int]]] = []


@contextlib.contextmanager
def recording_collectives() -> Iterator[list[tuple[str, int]]]:
    """Record every collective this module issues in the block as ``(name, payload bytes)``.

    The payload is the size of the tensor each rank hands to the collective (for the all-gather,
    its own contribution). Used by the tests to check :func:`communication_volume`; cheap enough
    to leave on for debugging.
    """
    log: list[tuple[str, int]] = []
    _RECORD.append(log)
    try:
        yield log
    finally:
        _RECORD.remove(log)


def _note(name: str, tensor: torch.Tensor) -> None:
    for log in _RECORD:
        log.append((name, tensor.numel() * tensor.element_size()))


def _all_reduce(tensor: torch.Tensor, op: str, group: Any) -> None:
    dist = torch.distributed
    _note(f"all_reduce_{op}", tensor)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)


def _all_gather(tensor: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    _note("all_gather", tensor)
    out = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(out, tensor, group=group)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# Communication volume.

META_FIELDS = 32  # int64 entries of the one-time agreement record (see _Meta)


@dataclass(frozen=True)
class CommunicationVolume:
    """Bytes one rank hands to the collectives of one call (payload, not wire traffic).

    ``ring_bytes_per_rank`` is what a ring algorithm then sends per rank: ``2 (P-1)/P`` times an
    all-reduce's payload and ``(P-1)`` times an all-gather contribution.
    """

    num_tokens: int
    world_size: int
    packed_fields: int
    element_bytes: int
    size_gather_bytes: int
    max_allreduce_bytes: int
    sum_allreduce_bytes: int
    backward_bytes: int = 0

    @property
    def forward_bytes(self) -> int:
        return self.size_gather_bytes + self.max_allreduce_bytes + self.sum_allreduce_bytes

    @property
    def total_bytes(self) -> int:
        return self.forward_bytes + self.backward_bytes

    @property
    def ring_bytes_per_rank(self) -> float:
        p = self.world_size
        allreduce = self.max_allreduce_bytes + self.sum_allreduce_bytes + self.backward_bytes
        return 2.0 * (p - 1) / p * allreduce + (p - 1) * self.size_gather_bytes


def packed_fields(*, label_smoothing: float, weighted: bool) -> int:
    """``k``: sum of exp and target logit, + ``sum u z`` with smoothing, + ``w_y`` with weights."""
    return 2 + (label_smoothing > 0.0) + bool(weighted)


def communication_volume(num_tokens: int, *, world_size: int, dtype: torch.dtype = torch.float32,
                         label_smoothing: float = 0.0, weighted: bool = False,
                         hidden_size: int | None = None,
                         hidden_dtype: torch.dtype | None = None) -> CommunicationVolume:
    """Per-call communication of :func:`vocab_parallel_cross_entropy` for ``N = num_tokens`` rows.

    With ``b = 8`` for float64 logits and ``b = 4`` otherwise (half precision is reduced in
    float32):

    * the agreement all-gather: ``8 * 32 = 256`` bytes per rank, independent of ``N``;
    * ``all_reduce(MAX)``: ``b N``;
    * the packed ``all_reduce(SUM)``: ``b k N`` with ``k`` of :func:`packed_fields` (2 to 4);
    * backward: nothing, except for :func:`vocab_parallel_linear_cross_entropy` (pass
      ``hidden_size``), whose hidden gradient is all-reduced: ``N H`` elements of the hidden dtype.

    So fp32 with smoothing and no weights: ``256 + 4N + 12N = 256 + 16N`` bytes per rank. The number
    of classes does not appear: no logits are ever communicated.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
        raise ValueError(f"num_tokens={num_tokens!r} is not allowed; allowed: an int >= 0")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} is not allowed; allowed: an int >= 1")
    element = 8 if dtype == torch.float64 else 4
    k = packed_fields(label_smoothing=label_smoothing, weighted=weighted)
    backward = 0
    if hidden_size is not None:
        hdt = hidden_dtype or dtype
        backward = num_tokens * hidden_size * torch.empty((), dtype=hdt).element_size()
    return CommunicationVolume(num_tokens, world_size, k, element, 8 * META_FIELDS,
                               element * num_tokens, element * k * num_tokens, backward)


# ----------------------------------------------------------------------------------------------
# The one-time agreement record.

_SHAPE_DIMS = 8
_CODES = {
    "reduction": ("mean", "sum", "none"),
    "convention": ("uniform", "non_target"),
    "weight_mode": ("class", "sample"),
}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Fields that may differ between ranks; every other field must agree.
_PER_RANK = ("error", "num_classes", "weight_sum", "zero weights")
_FIELDS = ("error", "num_classes", "ndim", "numel", *(f"shape[{i}]" for i in range(_SHAPE_DIMS)),
           "target checksum", "target position checksum", "dtype", "dim", "ignore_index",
           "reduction", "convention", "weight_mode", "label_smoothing", "z_loss", "weight given",
           "weight_sum", "hidden size", "bias given", "chunk_size", "device type", "validate",
           "zero weights")


def _float_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _bits_float(i: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(i)))[0]


def _code(name: str, value: object) -> int:
    allowed = _CODES[name]
    return allowed.index(value) if value in allowed else -1


@dataclass(frozen=True)
class _Plan:
    """What every rank agreed on: the group, this shard's place, the options with the global V."""

    group: Any
    rank: int
    world: int
    sizes: tuple[int, ...]
    offset: int
    num_classes: int
    opts: LossOptions
    u_sum: float
    zero_weights: bool = False  # this shard's weight slice has zeros (see _global_stats)

    @property
    def local_classes(self) -> int:
        return self.sizes[self.rank]


def _group_info(group: Any) -> tuple[int, int]:
    dist = torch.distributed
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build; "
                           "vocab-parallel losses need it")
    if not dist.is_initialized():
        raise RuntimeError("the default process group is not initialised: call "
                           "torch.distributed.init_process_group(...) on every rank first "
                           "(torchrun sets up the environment for it), or pass group=")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of "
                         f"group={group!r}; allowed: a group that contains every calling rank")
    return rank, dist.get_world_size(group)


def _meta_device(tensor: object, group: Any) -> torch.device:
    if isinstance(tensor, torch.Tensor):
        return tensor.device
    backend = str(torch.distributed.get_backend(group))
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(record: list[int], on_device: torch.Tensor | None, group: Any, rank: int, world: int,
           device: torch.device, local_error: BaseException | None) -> list[list[int]]:
    """All-gather every rank's record and raise the same error everywhere on any disagreement.

    ``on_device`` holds the fields computed from tensors (:func:`_device_fields`), written into the
    record on the device so the only host sync is reading the gathered records.
    """
    if len(record) != META_FIELDS:
        raise AssertionError(f"internal: record has {len(record)} fields, not {META_FIELDS}")
    mine = torch.tensor(record, dtype=torch.int64, device=device)
    if on_device is not None:
        mine[list(_DEVICE_FIELDS)] = on_device.to(device)
    rows = _all_gather(mine, group, world).tolist()
    failed = [r for r in range(world) if rows[r][0]]
    if local_error is not None:
        raise local_error
    if failed:
        raise ValueError(f"rank(s) {failed} of the group rejected their arguments (each raised the "
                         "reason); no collective past the agreement check was started")
    for i, name in enumerate(_FIELDS):
        if name in _PER_RANK:
            continue
        values = [row[i] for row in rows]
        if len(set(values)) > 1:
            shown = values
            if name in ("label_smoothing", "z_loss"):
                shown = [_bits_float(v) for v in values]
            what = ("the target's class ids (every rank must pass the same global target)"
                    if "checksum" in name else name)
            raise ValueError(f"the ranks of the group disagree on {what}: per rank {shown}; "
                             "allowed: the same value on every rank")
    sizes = [row[1] for row in rows]
    empty = [r for r, v in enumerate(sizes) if v == 0]
    if empty:
        raise ValueError(f"local_logits of rank(s) {empty} have 0 classes (class counts per rank "
                         f"{sizes}); allowed: every shard holds at least one class")
    return rows


_DEVICE_FIELDS = (_FIELDS.index("target checksum"), _FIELDS.index("target position checksum"),
                  _FIELDS.index("weight_sum"), _FIELDS.index("zero weights"))


def _device_fields(target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Checksums of the target's ids (sum, and sum weighted by position; int64 wrap-around is
    fine: equal targets give equal sums), the float64 bits of ``sum(weight)`` and the number of
    zero weights, as int64 on the device."""
    flat = target.reshape(-1).long()
    pos = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.int64)
    if weight is None:
        wsum = torch.zeros((), dtype=torch.float64, device=flat.device)
        zeros = torch.zeros((), dtype=torch.int64, device=flat.device)
    else:
        wsum, zeros = weight.detach().double().sum(), (weight == 0).sum()
    return torch.stack([flat.sum(), (flat * pos).sum(), wsum.view(torch.int64), zeros])


def _record(*, error: bool, num_classes: int = 0, batch_shape: tuple[int, ...] = (),
            dtype: torch.dtype | None = None, dim: int = 0,
            kwargs: dict[str, Any] | None = None, weight: torch.Tensor | None = None,
            hidden: int = 0, bias: bool = False, chunk: int = 0, device: str = "",
            validate: bool = False) -> list[int]:
    if error:
        return [1] + [0] * (META_FIELDS - 1)
    kw = kwargs or {}
    shape = list(batch_shape[:_SHAPE_DIMS])
    shape += [-1] * (_SHAPE_DIMS - len(shape))
    record = [0, num_classes, len(batch_shape), math.prod(batch_shape), *shape,
              0, 0, _DTYPES.index(dtype) if dtype in _DTYPES else -1, dim,
              int(kw["ignore_index"]), _code("reduction", kw["reduction"]),
              _code("convention", kw["convention"]), _code("weight_mode", kw["weight_mode"]),
              _float_bits(kw["label_smoothing"]), _float_bits(kw["z_loss"]),
              int(weight is not None),
              0,  # weight_sum: filled in on the device by _device_fields (no host sync)
              hidden, int(bias), chunk, {"cpu": 0, "cuda": 1}.get(device, 2), int(validate),
              0]  # zero weights: filled in on the device
    return record + [0] * (META_FIELDS - len(record))


def _setup(local_logits: Any, target: Any, weight: Any, group: Any, kwargs: dict[str, Any],
           dim: int, validate: bool | None, local_checks: Any = None
           ) -> tuple[_Plan, torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[int, ...]]:
    """Local checks, the agreement gather, then the plan. Returns ``(plan, flat logits, flat
    target, weight, out_shape)``; raises the same error on every rank."""
    rank, world = _group_info(group)
    error: BaseException | None = None
    on_device: torch.Tensor | None = None
    record: list[int] = []
    flat = None
    try:
        more = local_checks() if local_checks is not None else {}
        check_float_input("local_logits", local_logits)
        d = class_dim(dim, local_logits.dim())
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a torch.Tensor of global class ids, got "
                            f"{type(target).__name__}")
        if target.is_floating_point():
            raise TypeError(f"target has dtype {target.dtype}; allowed: integer global class ids "
                            "(probability targets are not supported by the vocab-parallel loss)")
        if target.device != local_logits.device:
            raise ValueError(f"target is on {target.device} but local_logits is on "
                             f"{local_logits.device}")
        # Validate the options now (the class count only matters for non_target with V = 1,
        # which is re-checked with the global V below).
        _options(2, **kwargs)
        local_v = local_logits.shape[d]
        weight = check_weight(weight, local_v, local_logits, name="weight (this rank's slice)")
        shaped = local_logits
        if local_v == 0:  # rejected by every rank after the gather; flatten a 1-class stand-in
            shaped = local_logits.new_zeros(()).expand(
                *(1 if i == d else n for i, n in enumerate(local_logits.shape)))
        flat_logits, flat_target, out_shape = _flatten(shaped, target, d,
                                                       kwargs["ignore_index"], validate=False)
        do_validate = bool(validate) or (validate is None and target.device.type == "cpu")
        record = _record(error=False, num_classes=local_v, batch_shape=tuple(out_shape),
                         dtype=local_logits.dtype, dim=d, kwargs=kwargs, weight=weight,
                         device=local_logits.device.type, validate=do_validate, **more)
        flat = (flat_logits, flat_target, weight, out_shape)
        on_device = _device_fields(flat_target, weight)
    except Exception as exc:  # any local failure must still reach the gather, or ranks desync
        error = exc
        record = _record(error=True)
    device = _meta_device(local_logits, group)
    rows = _agree(record, on_device, group, rank, world, device, error)
    flat_logits, flat_target, weight, out_shape = flat  # type: ignore[misc]  # set: no rank failed
    sizes = tuple(row[1] for row in rows)
    num_classes = sum(sizes)
    opts = _options(num_classes, **kwargs)
    if record[_FIELDS.index("validate")]:
        _check_index_target(flat_target, num_classes, kwargs["ignore_index"])
    u_sum = math.fsum(_bits_float(row[_FIELDS.index("weight_sum")]) for row in rows)
    zero_weights = bool(rows[rank][_FIELDS.index("zero weights")])
    plan = _Plan(group, rank, world, sizes, sum(sizes[:rank]), num_classes, opts, u_sum,
                 zero_weights)
    return plan, flat_logits, flat_target, weight, out_shape


# ----------------------------------------------------------------------------------------------
# The per-row statistics: local, reduced, combined.


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _owned(target: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose target lives on this shard, and the local column (0 elsewhere)."""
    kept = target != plan.opts.ignore_index
    local = target - plan.offset
    owned = kept & (local >= 0) & (local < plan.local_classes)
    return owned, torch.where(owned, local, torch.zeros_like(local))


def _global_stats(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                  plan: _Plan) -> tuple[torch.Tensor, _stats.RowCoefficients, torch.Tensor,
                                        torch.Tensor]:
    """Reduce a block of rows ``z`` (n, V_r), in the accumulation dtype, over the group.

    Two collectives: ``all_reduce(MAX)`` of the local lse, then one packed ``all_reduce(SUM)``.
    Returns ``(lse, coefficients, z_y, sum_c u_c z_c)`` for the rows.
    """
    opts = plan.opts
    owned, col = _owned(target, plan)
    class_mode = weight is not None and opts.weight_mode == "class"
    u = weight.to(z.dtype) if class_mode else None
    local_lse = torch.logsumexp(z, dim=-1)
    m = local_lse.clone()
    _all_reduce(m, "max", plan.group)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    fields = [torch.exp(local_lse - m)]
    zy = z.gather(-1, col.unsqueeze(-1)).squeeze(-1)
    fields.append(torch.where(owned, zy, torch.zeros_like(zy)))
    if opts.smoothing > 0.0:
        if u is None:
            fields.append(z.sum(-1))
        elif plan.zero_weights:  # w_c = 0 skips z_c, so a -inf logit there gives 0, not NaN
            fields.append(torch.where(u == 0, torch.zeros((), dtype=z.dtype, device=z.device),
                                      z) @ u)
        else:
            fields.append(z @ u)
    if weight is not None:
        wy = weight.to(z.dtype)[col]
        fields.append(torch.where(owned, wy, torch.zeros_like(wy)))
    packed = torch.stack(fields)
    _all_reduce(packed, "sum", plan.group)
    lse = m + torch.log(packed[0])
    zy = packed[1]
    sz = packed[2] if opts.smoothing > 0.0 else torch.zeros_like(zy)
    row_weight = packed[-1] if weight is not None else None
    kept = target != opts.ignore_index
    coef = _stats.coefficients_from_rows(kept, row_weight, u, plan.u_sum, opts,
                                         plan.num_classes, z.dtype)
    return lse, coef, zy, sz


def _local_grad(z: torch.Tensor, target: torch.Tensor, lse: torch.Tensor, a: torch.Tensor,
                b: torch.Tensor, c: torch.Tensor, u: torch.Tensor | None,
                plan: _Plan) -> torch.Tensor:
    """This shard's slice of ``a p - b onehot(y) - c u`` (rows already scaled), no collective."""
    # One (n, V_r) buffer, updated in place; rows with a = 0 (ignored) may hold anything: zeroed.
    grad = z - torch.where(a != 0, lse, torch.zeros_like(lse)).unsqueeze(-1)
    grad.exp_().mul_(a.unsqueeze(-1)).masked_fill_((a == 0).unsqueeze(-1), 0.0)
    owned, col = _owned(target, plan)
    minus_b = torch.where(owned, -b, torch.zeros_like(b))
    grad.scatter_add_(-1, col.unsqueeze(-1), minus_b.unsqueeze(-1))
    if plan.opts.smoothing > 0.0:
        grad -= c.unsqueeze(-1) * (u if u is not None else 1.0)
    return grad


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
        z = logits.to(_accumulation(logits.dtype))
        lse, coef, zy, sz = _global_stats(z, target, weight, plan)
        opts = plan.opts
        per_row = _stats.loss_from_stats(lse, zy, sz, coef, opts.z_loss)
        scale = _stats.reduction_scale(coef, opts.reduction)
        a = _stats.grad_row_scale(lse, coef, opts.z_loss)
        scale_t = torch.as_tensor(scale, dtype=z.dtype, device=z.device)
        ctx.save_for_backward(logits, target, coef.u, lse, a, coef.b, coef.c, scale_t)
        ctx.plan = plan
        return _stats.reduce_rows(per_row, opts.reduction, scale)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        logits, target, u, lse, a, b, c, scale = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        z = logits.to(lse.dtype)
        g = grad_out.to(lse.dtype) * scale
        grad = _local_grad(z, target, lse, a * g, b * g, c * g, u, ctx.plan)
        return grad.to(logits.dtype), None, None, None


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    group: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    weight_mode: str = "class",
    z_loss: float = 0.0,
    dim: int = -1,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Label-smoothed cross-entropy of logits sharded by class over a process group.

    Equal (up to rounding) to :func:`labelsmooth.cross_entropy` on the logits concatenated along
    ``dim`` in rank order, with the same keywords and the same semantics; in particular the
    smoothing is spread over the **global** ``V = sum_r V_r`` classes:
    ``q_c = (1-eps)[c=y] + eps/V`` (or ``eps/(V-1)`` on the other classes for
    ``convention="non_target"``), so the loss does not depend on the number of ranks.
    Per row, with ``lse`` the logsumexp over all ``V`` classes::

        l = (b + c U) lse - b z_y - c sum_c u_c z_c + z_loss e lse^2,
        dl/dz_k = a softmax(z)_k - b [k = y] - c u_k     (see :mod:`labelsmooth._stats`)

    Communication per call (see :func:`communication_volume`): one 256-byte all-gather (sizes and
    agreement check), ``all_reduce(MAX)`` of ``N`` floats and one ``all_reduce(SUM)`` of ``k N``
    floats (``k`` = 2 to 4); nothing in backward. The result is the same on every rank.

    Args:
        local_logits: this rank's slice of the classes, ``(..., V_r)`` with ``dim=-1`` (or any
            ``dim`` as in :func:`labelsmooth.cross_entropy`); ``V_r >= 1`` may differ between
            ranks; slices
            are in rank order of ``group``.
        target: **global** class ids in ``[0, V)`` (or ``ignore_index``), the input's shape without
            ``dim``, identical on every rank (checked with a checksum).
        weight: this rank's slice ``(V_r,)`` of the class weights (``weight[o_r : o_r + V_r]`` of
            the global vector); ``weight_mode`` as in :func:`labelsmooth.cross_entropy`. The
            weights get
            no gradient.
        group: the process group (default: the world).
        ignore_index, reduction, label_smoothing, convention, weight_mode, z_loss, dim: as in
            :func:`labelsmooth.cross_entropy`; they must be the same on every rank.
        validate: check the class ids against ``[0, V)``; default on CPU only (costs a host sync on
            GPU). The agreement gather itself always syncs with the host once per call.

    Not supported: probability (soft) targets.

    Raises:
        RuntimeError: torch.distributed is unavailable or the process group is not initialised.
        ValueError: on **every** rank when the ranks disagree (target shape or values, options,
            dtype, device type) or a shard has zero classes; a rank whose own arguments are invalid
            raises its specific error and the others a ``ValueError`` naming it. No rank hangs: the
            check is one all-gather that every rank reaches before any other collective.
    """
    kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                  convention=convention, weight_mode=weight_mode, z_loss=z_loss)
    plan, flat_logits, flat_target, weight, out_shape = _setup(
        local_logits, target, weight, group, kwargs, dim, validate)
    loss = _VocabParallelCE.apply(flat_logits, flat_target, weight, plan)
    if plan.opts.reduction == "none":
        loss = loss.reshape(out_shape)
    return loss.to(output_dtype(local_logits.dtype))


# ----------------------------------------------------------------------------------------------
# Linear + cross-entropy with a classifier sharded by rows (classes).


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _linear_logits(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                   acc: torch.dtype) -> torch.Tensor:
    out = h @ w.t() if bias is None else torch.addmm(bias, h, w.t())
    return out.to(acc)


class _VocabParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, classifier: torch.Tensor,
                bias: torch.Tensor | None, target: torch.Tensor, weight: torch.Tensor | None,
                plan: _Plan, chunk: int, reduce_hidden_grad: bool) -> torch.Tensor:
        acc = _accumulation(hidden.dtype)
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        per_row = torch.empty_like(lse)
        parts: list[_stats.RowCoefficients] = []
        opts = plan.opts
        for rows in _chunks(n, chunk):
            z = _linear_logits(hidden[rows], classifier, bias, acc)
            lse_c, coef, zy, sz = _global_stats(z, target[rows], weight, plan)
            lse[rows] = lse_c
            per_row[rows] = _stats.loss_from_stats(lse_c, zy, sz, coef, opts.z_loss)
            parts.append(coef)
        if parts:
            coef = _stats.RowCoefficients(*(torch.cat([getattr(p, f) for p in parts])
                                            for f in ("b", "c", "e")), parts[0].u, parts[0].u_sum)
        else:
            empty = torch.zeros(0, dtype=acc, device=hidden.device)
            u = weight.to(acc) if weight is not None and opts.weight_mode == "class" else None
            coef = _stats.RowCoefficients(empty, empty, empty, u, plan.u_sum)
        scale = _stats.reduction_scale(coef, opts.reduction)
        a = _stats.grad_row_scale(lse, coef, opts.z_loss)
        scale_t = torch.as_tensor(scale, dtype=acc, device=hidden.device)
        ctx.save_for_backward(hidden, classifier, bias, target, coef.u, lse, a, coef.b, coef.c,
                              scale_t)
        ctx.plan, ctx.chunk, ctx.reduce_hidden_grad = plan, chunk, reduce_hidden_grad
        return _stats.reduce_rows(per_row, opts.reduction, scale)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        hidden, classifier, bias, target, u, lse, a, b, c, scale = ctx.saved_tensors
        plan, acc = ctx.plan, lse.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g = grad_out.to(acc) * scale
        a, b, c = a * g, b * g, c * g  # broadcast: scalar g or per row
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = (torch.zeros(classifier.shape, dtype=acc, device=classifier.device)
                  if need_w else None)
        grad_b = torch.zeros(classifier.shape[0], dtype=acc, device=classifier.device) \
            if need_b and bias is not None else None
        for rows in _chunks(hidden.shape[0], ctx.chunk):
            z = _linear_logits(hidden[rows], classifier, bias, acc)
            dz = _local_grad(z, target[rows], lse[rows], a[rows], b[rows], c[rows], u, plan)
            if grad_h is not None:
                grad_h[rows] = (dz.to(classifier.dtype) @ classifier).to(hidden.dtype)
            if grad_w is not None:
                grad_w += dz.t() @ hidden[rows].to(acc)
            if grad_b is not None:
                grad_b += dz.sum(0)
        if grad_h is not None and ctx.reduce_hidden_grad:
            _all_reduce(grad_h, "sum", plan.group)
        return (grad_h, None if grad_w is None else grad_w.to(classifier.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None)


def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    local_classifier: torch.Tensor,
    target: torch.Tensor,
    local_bias: torch.Tensor | None = None,
    *,
    weight: torch.Tensor | None = None,
    group: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    weight_mode: str = "class",
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    reduce_hidden_grad: bool = True,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""``vocab_parallel_cross_entropy(hidden @ local_classifier.T + local_bias, target)`` without
    materialising the ``N x V_r`` logits: rows of tokens are processed ``chunk_size`` at a time.

    The classifier ``W`` (``V x H``) is sharded by rows (classes): rank ``r`` holds
    ``local_classifier = W[o_r : o_r + V_r]`` and ``local_bias = bias[o_r : o_r + V_r]``; ``hidden``
    (``(..., H)``) and ``target`` (global ids, ``hidden``'s shape without ``H``) are the same on
    every rank. Per chunk the local logits are formed and reduced with the collectives of
    :func:`vocab_parallel_cross_entropy` (so 2 all-reduces per chunk, ``O(N)`` bytes in total); only
    ``O(N)`` row statistics are kept. Backward recomputes each chunk's logits (one extra matmul, no
    ``N x V_r`` buffer) and forms ``dz = a p - b onehot - c u`` locally.

    **Hidden gradient (row-parallel contract).** ``dL/dhidden = sum_r dz_r @ W_r`` needs every
    shard: with ``reduce_hidden_grad=True`` (default) backward all-reduces it (``N H`` elements of
    hidden's
    dtype, the only collective in backward), so every rank gets the full gradient, as a single
    process would. Pass ``False`` when the caller already sums it, e.g. Megatron's
    ``copy_to_tensor_model_parallel_region`` before the output layer; each rank then gets its
    partial ``dz_r @ W_r``. The classifier and bias gradients are local slices and need no
    collective.

    ``chunk_size`` (tokens per chunk) must be the same on every rank; the default targets ~32 MiB of
    fp32 logits using the largest shard, so ranks with unequal ``V_r`` still agree on the count.
    Other keywords as in :func:`vocab_parallel_cross_entropy`.
    """
    kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                  convention=convention, weight_mode=weight_mode, z_loss=z_loss)

    def local_checks() -> dict[str, Any]:
        check_float_input("hidden", hidden)
        check_float_input("local_classifier", local_classifier)
        if hidden.dim() < 1 or local_classifier.dim() != 2 \
                or local_classifier.shape[1] != hidden.shape[-1]:
            raise ValueError(f"local_classifier has shape {tuple(local_classifier.shape)} and "
                             f"hidden {tuple(hidden.shape)}; allowed: (V_r, H) with "
                             "H = hidden.shape[-1]")
        if local_classifier.dtype != hidden.dtype or local_classifier.device != hidden.device:
            raise ValueError("local_classifier must have hidden's dtype and device, got "
                             f"{local_classifier.dtype} on {local_classifier.device} vs "
                             f"{hidden.dtype} on {hidden.device}")
        if local_bias is not None and (not isinstance(local_bias, torch.Tensor)
                                       or local_bias.shape != local_classifier.shape[:1]
                                       or local_bias.dtype != hidden.dtype):
            raise ValueError(f"local_bias must be a ({local_classifier.shape[0]},) tensor of "
                             f"hidden's dtype, got {getattr(local_bias, 'shape', local_bias)!r}")
        if chunk_size is not None and (isinstance(chunk_size, bool)
                                       or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} is not allowed; allowed: an int >= 1 "
                             "or None")
        return {"hidden": hidden.shape[-1], "bias": local_bias is not None,
                "chunk": chunk_size or 0}

    # A stand-in for the logits with the right shape and dtype (no memory: expand of a scalar), so
    # the shared set-up checks target and weight exactly as for vocab_parallel_cross_entropy.
    if isinstance(hidden, torch.Tensor) and isinstance(local_classifier, torch.Tensor) \
            and local_classifier.dim() == 2 and hidden.dim() >= 1:
        stand_in = torch.zeros((), dtype=hidden.dtype, device=hidden.device).expand(
            *hidden.shape[:-1], local_classifier.shape[0])
    else:
        stand_in = hidden
    plan, _, flat_target, weight, out_shape = _setup(
        stand_in, target, weight, group, kwargs, -1, validate, local_checks=local_checks)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    chunk = chunk_size or max(1, (32 << 20) // (4 * max(plan.sizes)))
    loss = _VocabParallelLinearCE.apply(h2, local_classifier, local_bias, flat_target, weight,
                                        plan, chunk, bool(reduce_hidden_grad))
    if plan.opts.reduction == "none":
        loss = loss.reshape(out_shape)
    return loss.to(output_dtype(hidden.dtype))


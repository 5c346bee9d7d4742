r"""Softmax cross-entropy losses, optax-compatible (same names, signatures and per-example output).

Both losses are built from :mod:`jaxce._primitives` and inherit its conventions (masks, empty
rows, ``±inf``). They return float32 for 16-bit logits (float64 under x64 for float64 logits);
gradients come back in the logits' dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxce._checks import (
    Axis,
    canonical_axes,
    float_array,
    integer_array,
    mask_array,
    same_rank_broadcast,
)
from jaxce._primitives import (
    RowParts,
    mass_beyond_top,
    mass_from_pair,
    pair_total,
    recompute_exp,
    row_max,
    row_sum_pairs,
    safe_mul,
    shift_by_max,
)
from jaxce._validate import (
    check_class_indices,
    check_probabilities,
    nan_where,
    outside_unit_interval,
    targets_checked,
)

__all__ = [
    "safe_softmax_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]


# --------------------------------------------------------------------------------------------
# Soft labels
# --------------------------------------------------------------------------------------------


def _soft_ce_pieces(x, t, where, axes, check_targets=False):
    """Value, gradient wrt logits and gradient wrt labels of the soft-label cross-entropy.

    value = sum_k t_k (m - x_k) + T log1p(S'): every term is >= 0, nothing cancels. A term
    whose ``m - x_k`` overflows (logits spanning more than the dtype's max) is computed as
    ``(2 t_k) (m/2 - x_k/2)``, exact scaling, so the loss is finite whenever it is.
    grad_x = T p - t, except at a unique arg-max, where (T - t_j) - T S'/(1 + S') keeps the
    small 1 - p_j exact (``shared/NUMERICS.md``, the min(...) term of kappa); the complement
    mass T - t_j comes from the compensated label total ``(s, c)`` as ``(s - t_j) + c``, with
    ``s - t_j`` exact when it is small (Sterbenz), evaluated in the gradient's elementwise pass.
    grad_t = -log p, 0 for absent classes (zero target and zero probability) and masked ones.
    With ``check_targets`` a label outside [0, 1] makes the row's value and grad_x NaN.
    All of it is plain jnp code whose own derivatives are right, so JAX can differentiate the
    rule again for Hessians.
    """
    zero = jnp.zeros((), x.dtype)
    xm, m = row_max(x, where, axes)
    shifted = shift_by_max(xm, m)
    e = jnp.exp(shifted)
    tm = t if where is None else jnp.where(where, t, zero)
    # A label outside [0, 1] makes its example NaN (masked classes are dropped anyway): a NaN
    # label total spreads to the value and the whole row's gradient. Inside the sum's input,
    # the check costs no pass of its own.
    t_in = nan_where(outside_unit_interval(tm), tm) if check_targets else tm
    # m - x_k (= -shifted), or half of it where it overflows for finite m and x_k.
    gap = -shifted
    halve = (gap == jnp.inf) & jnp.isfinite(xm) & jnp.isfinite(m)
    gap = jnp.where(halve, 0.5 * m - 0.5 * xm, gap)
    coef = jnp.where(halve, 2.0 * tm, tm)
    # The three row sums (S', the label total T, the value's terms) in one compensated pass.
    e_pair, t_pair, v_pair = row_sum_pairs((e, t_in, safe_mul(coef, gap)), axes, keepdims=True)
    parts = RowParts(m, shifted, e, mass_from_pair(*e_pair, m))
    # The dominant class (unique arg-max with p > 1/2, i.e. S' < 1) gets its own form below.
    dominant = parts.top & (parts.s1 < 1.0)
    t_sum, t_err = t_pair
    total = pair_total(t_sum, t_err)
    # T - t_j at the dominant class j, elementwise (no reduction): read where it is used.
    t_rest = (t_sum - tm) + t_err
    log_norm = jnp.log1p(parts.s1)
    value = jnp.squeeze(pair_total(*v_pair) + total * log_norm, axes)
    one_plus = 1.0 + parts.s1
    p = parts.e / one_plus
    grad_x = jnp.where(dominant, t_rest - total * (parts.s1 / one_plus), total * p - tm)
    neg_log_p = log_norm - parts.shifted
    absent = (tm == 0) & (parts.e == 0)
    if where is not None:
        absent = absent | ~where
    grad_t = jnp.where(absent, jnp.zeros((), x.dtype), neg_log_p)
    return value, grad_x, grad_t


@functools.partial(jax.jit, static_argnums=(3, 4))
def _soft_ce_core(x, t, where, axes, check_targets=True):
    return _soft_ce(x, t, where, axes, check_targets)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _soft_ce(x, t, where, axes, check_targets):
    return _soft_ce_pieces(x, t, where, axes, check_targets)[0]


@functools.partial(_soft_ce.defjvp, symbolic_zeros=True)
def _soft_ce_jvp(axes, check_targets, primals, tangents):
    x, t, where = primals
    x_dot, t_dot, _ = tangents
    value, grad_x, grad_t = _soft_ce_pieces(x, t, where, axes, check_targets)
    tangent = jnp.zeros_like(value)
    # Symbolic zeros let us skip a term entirely: grad_t is +inf where a positive target sits
    # on a zero-probability class, and 0 * inf would turn a plain d/dlogits into NaN.
    if not isinstance(x_dot, SymbolicZero):
        tangent = tangent + jnp.sum(grad_x * x_dot, axis=axes)
    if not isinstance(t_dot, SymbolicZero):
        tangent = tangent + jnp.sum(grad_t * t_dot, axis=axes)
    return value, tangent


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with probability (soft) labels, per example.

    .. math::
       \ell = -\sum_k t_k \log \operatorname{softmax}(x)_k

    **Stable form.** With :math:`m = \max_k x_k` and :math:`S'` the sum of :math:`e^{x_k - m}`
    over all classes but one arg-max,
    :math:`-\log p_k = (m - x_k) + \operatorname{log1p}(S')`: exact at the arg-max (where it is
    just :math:`\operatorname{log1p}(S')`, e.g. ``1e-30``) and free of cancellation elsewhere.
    The gradient :math:`T p_j - t_j` (:math:`T = \sum_k t_k`) is computed by a custom rule that
    writes the arg-max component as :math:`(T - t_j) - T\,S'/(1+S')`, so a confident correct
    prediction gets its tiny gradient to full relative precision (optax returns 0).

    =====================================================  =================  =================
    case                                                   value              gradient
    =====================================================  =================  =================
    zero target on a ``-inf`` logit                        term is 0          0 (optax: NaN)
    positive target on a ``-inf`` logit                    ``+inf``           finite
    ``+inf`` logit(s)                                      they share p       finite
    all classes masked (``where``)                         0                  0
    masked class                                           excluded           0
    NaN logit                                              NaN (that row)     NaN (that row)
    label outside ``[0, 1]`` (see :func:`jaxce.checked`)   NaN (jit) / error  NaN (that row)
    =====================================================  =================  =================

    Args:
      logits: unnormalized log-probabilities, ``[..., num_classes]``.
      labels: target probabilities, same rank as ``logits`` and broadcastable to it
        (e.g. one-hot or smoothed labels).
      axis: class axis or tuple of axes (``None``: all axes).
      where: optional boolean mask, ``logits``' shape or its batch shape (per-example).

    Returns:
      Per-example loss with the class axes removed, float32 for 16-bit logits.

    >>> import jax.numpy as jnp, jaxce
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> jaxce.softmax_cross_entropy(logits, labels).round(4).tolist()
    [0.2761, 2.9518]

    References:
      optax #896 (NaN for ``-inf`` logits with zero labels); ``shared/NUMERICS.md``.
    """
    x = float_array("logits", logits)
    axes = canonical_axes(axis, x.ndim)
    t = same_rank_broadcast("labels", jnp.asarray(labels), tuple(x.shape)).astype(x.dtype)
    mask = mask_array(where, tuple(x.shape), axes)
    check_probabilities("labels", t, mask)
    return _soft_ce_core(x, t, mask, axes, targets_checked())


def safe_softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""optax's NaN-free variant; in jaxce every cross-entropy is already safe.

    Identical to :func:`softmax_cross_entropy` over the last axis (``0 · log 0 = 0`` in value
    and derivative, also with respect to the labels, where optax gives ``+inf``).

    Args:
      logits: ``[..., num_classes]``.
      labels: target probabilities broadcastable to ``logits`` with the same rank.

    Returns:
      Per-example loss ``[...]``.
    """
    return softmax_cross_entropy(logits, labels)


# --------------------------------------------------------------------------------------------
# Integer labels
# --------------------------------------------------------------------------------------------


def _classes_last(
    x: jax.Array, mask: jax.Array | None, axes: tuple[int, ...]
) -> tuple[jax.Array, jax.Array | None]:
    """Move the class axes to the end and flatten them (a tuple axis indexes the flat slice)."""
    batch = tuple(a for a in range(x.ndim) if a not in axes)
    perm = batch + axes
    n_batch = len(batch)

    def move(a: jax.Array) -> jax.Array:
        if perm != tuple(range(a.ndim)):
            a = a.transpose(perm)
        return a.reshape((*a.shape[:n_batch], math.prod(a.shape[n_batch:])))

    return move(x), None if mask is None else move(mask)


def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with integer class labels, per example.

    .. math::
       \ell = -\log \operatorname{softmax}(x)_y
            = \operatorname{softplus}\big(\operatorname{lse}_{k \ne y}(x) - x_y\big)

    **Stable form.** The log-sum-exp of the *other* classes is compared with the target
    logit, computed as :math:`(m' - x_y) + \operatorname{log1p}(S'')` without forming
    :math:`\operatorname{lse}(x)`. When the prediction is confident and right the softplus
    argument is very negative and the loss comes back to full relative precision (``1e-30``
    stays ``1e-30``; the usual ``lse(x) - x_y`` rounds it to 0). The derivatives follow from
    the primitives' rules: :math:`p_k` for :math:`k \ne y` and
    :math:`-\sigma(\operatorname{lse}_{k\ne y} - x_y) = -(1 - p_y)`, accurate even when
    :math:`1 - p_y` is ``1e-30``.

    ==============================================  ============  ==========================
    case                                            value         gradient
    ==============================================  ============  ==========================
    target logit ``-inf``                           ``+inf``      -1 at y, p elsewhere
    target logit the only ``+inf``                  0             0
    ``+inf`` on another class                       ``+inf``      finite
    target class masked, or every class masked      0             0 (as with a one-hot label)
    label outside ``[0, num_classes)`` (jit)        NaN           NaN
    label outside ``[0, num_classes)`` (eager)      ValueError    (names value and position)
    single class                                    0             0
    ==============================================  ============  ==========================

    Unlike optax, a label outside the valid range never wraps around (``-1`` is not the last
    class) and never silently picks a logit: that example's loss is NaN under ``jit``, an
    eager call raises, and :func:`jaxce.checked` reports it from inside ``jit``.

    Args:
      logits: ``[..., num_classes]``; with a tuple ``axis`` the classes span those axes.
      labels: integer class indices, ``logits``' shape without the class axes. With a tuple
        ``axis`` a label is a flat index into the ``logits[axis]`` slice (row-major).
      axis: class axis, or tuple of axes.
      where: optional boolean mask, ``logits``' shape or the labels' shape (per-example).

    Returns:
      Per-example loss, ``labels``' shape, float32 for 16-bit logits.

    >>> import jax.numpy as jnp, jaxce
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> jaxce.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])).round(4).tolist()
    [0.2761, 2.9518]
    >>> float(jaxce.softmax_cross_entropy_with_integer_labels(jnp.array([80.0, 0.0]), 0))
    1.8048513878454153e-35
    """
    x = float_array("logits", logits)
    y = integer_array("labels", labels)
    if isinstance(axis, list):
        axis = tuple(axis)
    axes = canonical_axes(axis, x.ndim)
    batch_shape = tuple(d for a, d in enumerate(x.shape) if a not in axes)
    if tuple(y.shape) != batch_shape:
        raise ValueError(
            f"`labels` has shape {tuple(y.shape)}, but `logits` of shape {tuple(x.shape)} with "
            f"class axes {axes} expects labels of shape {batch_shape} (one class index per "
            f"example)."
        )
    mask = mask_array(where, tuple(x.shape), axes)
    check_class_indices("labels", y, math.prod(x.shape[a] for a in axes))
    return _integer_ce_core(x, y, mask, axes)


@functools.partial(jax.jit, static_argnums=(3,))
def _integer_ce_core(
    x: jax.Array, y: jax.Array, mask: jax.Array | None, axes: tuple[int, ...]
) -> jax.Array:
    x, mask = _classes_last(x, mask, axes)
    return _integer_ce(x, y, mask)


def _integer_ce_pieces(
    x: jax.Array, y: jax.Array, mask: jax.Array | None, with_grad: bool
) -> tuple[jax.Array, jax.Array | None]:
    """Value ``[B]`` and (optionally) gradient ``[B, V]`` of the integer-label cross-entropy.

    Two passes over the logits for the value (the row max; one compensated sum of
    ``exp(x - m)``, :func:`jaxce._primitives.mass_beyond_top`), one elementwise pass for the
    gradient; the target logit is gathered. With ``m`` the row max and ``S'`` the mass beyond
    one arg-max, ``loss = (m - x_y) + log1p(S')``: both terms >= 0, and when the label is the
    arg-max it is ``log1p(S')`` to full relative precision. This equals
    ``softplus(lse_{k != y} - x_y)`` of ``shared/NUMERICS.md``. Gradient ``p_k = e_k / (1 + S')``
    for ``k != y``; at ``y``: ``-S' / (1 + S')`` (that is ``-(1 - p_y)``, exact) when ``x_y``
    is the max, else ``p_y - 1`` with ``p_y < 1/2`` (no cancellation). Empty, ``+inf``, NaN,
    masked-label and bad-label rows are settled by row-level selects.
    """
    dtype = x.dtype
    zero = jnp.zeros((), dtype)
    inf = jnp.array(jnp.inf, dtype)
    nan = jnp.array(jnp.nan, dtype)
    num_classes = x.shape[-1]
    axes = (x.ndim - 1,)

    y = y[..., None]
    valid = (y >= 0) & (y < num_classes)
    y_safe = jnp.clip(y, 0, num_classes - 1)
    x_y = jnp.take_along_axis(x, y_safe, axis=-1)  # [B, 1]
    kept = valid if mask is None else valid & jnp.take_along_axis(mask, y_safe, axis=-1)

    xm, m = row_max(x, mask, axes)
    s1 = mass_beyond_top(jnp.exp(shift_by_max(xm, m)), m, axes)
    log_norm = jnp.log1p(s1)
    at_top = x_y == m
    # m - x_y without inf - inf: 0 for the arg-max (also a +inf one), +inf for a -inf target
    # logit (also in an empty row: the target has probability 0).
    gap = jnp.where(at_top, zero, m - x_y)
    gap = jnp.where(x_y == -jnp.inf, inf, gap)
    loss = gap + log_norm
    # Masked target class: nothing to learn from the example (0), unless a NaN logit is left
    # in the row, which makes it NaN as any other NaN does. A bad label: NaN.
    loss = jnp.where(kept, loss, jnp.where(jnp.isnan(m), nan, zero))
    loss = jnp.where(valid, loss, nan)[..., 0]
    if not with_grad:
        return loss, None

    inv = 1.0 / (1.0 + s1)
    e_y = jnp.exp(shift_by_max(x_y, m))
    dominant = at_top & (m > -jnp.inf)
    g_y = jnp.where(dominant, -s1 * inv, e_y * inv - 1.0)
    is_y = lax.broadcasted_iota(y.dtype, x.shape, x.ndim - 1) == y_safe
    p = jnp.exp(shift_by_max(xm, m, again=recompute_exp())) * inv
    grad = jnp.where(is_y, g_y, p)
    live = kept | jnp.isnan(m)
    grad = jnp.where(live, grad, zero)
    grad = jnp.where(valid, grad, nan)
    return loss, grad


@jax.custom_jvp
def _integer_ce(x: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
    return _integer_ce_pieces(x, y, mask, with_grad=False)[0]


@_integer_ce.defjvp
def _integer_ce_jvp(primals, tangents):
    x, y, mask = primals
    x_dot = tangents[0]
    value, grad = _integer_ce_pieces(x, y, mask, with_grad=True)
    assert grad is not None
    return value, jnp.sum(grad * x_dot, axis=-1)

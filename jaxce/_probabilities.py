r"""Losses from probabilities (not logits), and the logit (log-odds) function.

For code that already holds probabilities (a sigmoid/softmax output, a model that emits them).
They are exact where the usual implementations clip: Keras/TF clip probabilities to
``[1e-7, 1 - 1e-7]`` (so the gradient is 0 below ``1e-7`` and the loss saturates at 16.1) and
PyTorch clamps each log term at ``-100``. Here ``0·log 0 = 0`` in value and derivative
(:func:`jaxce.xlogy`, :func:`jaxce.safe_mul`), ``log(1 - p)`` is ``log1p(-p)``, and a positive
target on a zero probability gives ``+inf`` (the true value). When logits are available, prefer
the logit losses: they are accurate where a probability has already rounded to 0 or 1.
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
    class_weights,
    elementwise_weights,
    float_array,
    mask_array,
    same_rank_broadcast,
)
from jaxce._primitives import safe_mul, xlogy
from jaxce._rows import reduction_for, row_sum
from jaxce._validate import (
    check_class_indices,
    check_nonnegative,
    check_probabilities,
    check_probability_targets,
    nan_where,
    negative,
    outside_unit_interval,
    strict_targets,
)

__all__ = ["binary_cross_entropy", "categorical_cross_entropy", "log_odds", "logit"]


def _neg_xlog1my(t: jax.Array, p: jax.Array) -> jax.Array:
    """``-(t · log(1 - p))`` as ``-t · log1p(-p)``, with the zero convention where ``t == 0``.

    Double ``where``: ``p`` is replaced before ``log1p`` where the term is absent, so nothing
    infinite is formed at ``p = 1`` for a term that is not there.
    """
    safe_p = jnp.where(t == 0, jnp.zeros((), p.dtype), p)
    return -safe_mul(t, jnp.log1p(-safe_p))


def _poison(bad: jax.Array, p: jax.Array) -> jax.Array:
    """``p`` with NaN where ``bad``, keeping the derivative path: a probability outside
    ``[0, 1]`` gives a NaN loss *and* a NaN gradient under jit (``nan_where`` would select a
    constant there, and the gradient would come back 0)."""
    return p + nan_where(bad, jnp.zeros_like(p))


@jax.custom_jvp
def _inv_pq(p: jax.Array) -> jax.Array:
    """``r = 1/(p(1 - p))``, the derivative of the logit; ``+inf`` at ``p = 0`` and ``p = 1``.

    ``p(1 - p) >= p/2`` (``>= (1 - p)/2``), so for a normal ``p`` the product never underflows
    and ``r`` never overflows before the true value does.
    """
    return 1.0 / (p * (1.0 - p))


@_inv_pq.defjvp
def _inv_pq_jvp(primals, tangents):
    (p,), (p_dot,) = primals, tangents
    r = _inv_pq(p)
    # dr/dp = -(1 - 2p)·r², written from the output: the plain quotient rule would form
    # (p(1 - p))², which underflows (to a NaN or a wrong inf) long before r² overflows.
    return r, -(1.0 - 2.0 * p) * (r * r) * p_dot


def _logit_value(p: jax.Array) -> jax.Array:
    """``log p - log1p(-p)``; ``log1p((2p - 1)/(1 - p))`` on ``[1/4, 3/4]`` (no cancellation)."""
    center = (p >= 0.25) & (p <= 0.75)
    half = jnp.full((), 0.5, p.dtype)
    pc = jnp.where(center, p, half)  # double where: no (2p-1)/0 at p = 1 in the unused branch
    po = jnp.where(center, half, p)
    inner = jnp.log1p((2.0 * pc - 1.0) / (1.0 - pc))
    outer = jnp.log(po) - jnp.log1p(-po)
    return jnp.where(center, inner, outer)


# --------------------------------------------------------------------------------------------
# Binary
# --------------------------------------------------------------------------------------------


def binary_cross_entropy(
    probs: ArrayLike, labels: ArrayLike, *, weights: ArrayLike | None = None
) -> jax.Array:
    r"""Element-wise binary cross-entropy from probabilities.

    .. math::
       \ell = -w\,\big[t \log p + (1 - t)\log(1 - p)\big]

    **Stable form.** ``-xlogy(t, p) - (1 - t)·log1p(-p)``, each product with the zero
    convention (a zero coefficient removes its term in value and derivative, even where the
    logarithm is ``-inf``). No clipping: Keras' ``BinaryCrossentropy`` clips ``p`` to
    ``[1e-7, 1 - 1e-7]`` (loss capped at 16.1, gradient exactly 0 below ``1e-7``), PyTorch's
    ``binary_cross_entropy`` clamps each log at ``-100`` (loss capped at 100, gradient finite
    but wrong).

    **Gradient** (a custom JVP whose rule is plain jnp, so Hessians work):

    .. math::
       \frac{\partial\ell}{\partial p} = w\,\frac{p - t}{p\,(1 - p)}
       \quad\Big(= w\Big[\frac{1 - t}{1 - p} - \frac{t}{p}\Big]\Big)

    One subtraction ``p - t`` (exact near ``p = t``) instead of the difference of the two
    large quotients that autodiff of the value forms. Hard labels use the cancelled forms
    ``1/(1 - p)`` (``t = 0``) and ``-1/p`` (``t = 1``), which are the limits of the formula at
    ``p = 0`` and ``p = 1`` respectively and keep the second derivative finite there (1).
    With respect to ``labels`` the derivative is ``-w·logit(p)``; with respect to ``weights``
    it is the unweighted loss.

    ====================================  ======================  ==========================
    case                                  value                   gradient (``probs``)
    ====================================  ======================  ==========================
    ``p=0, t=0``                          0                       ``w`` (limit of
                                                                  ``1/(1 - p)``)
    ``p=0, 0<t<=1``                       ``+inf``                ``-inf``
    ``p=1, t=1``                          0                       ``-w`` (limit of ``-1/p``)
    ``p=1, 0<=t<1``                       ``+inf``                ``+inf``
    ``0<p<1``, ``p=t``                    entropy of ``t``        0 (exactly)
    ``p=1e-30, t=1``                      69.08 (Keras: 16.12)    ``-1e30`` (Keras: 0)
    ``weights=0`` on an infinite loss     0                       0
    NaN prob                              ValueError / NaN (jit)  NaN (jit)
    subnormal ``p`` (float32)             as ``p = 0`` (flushed)  as ``p = 0``
    prob outside ``[0, 1]``               ValueError / NaN (jit)  NaN (jit)
    label outside ``[0, 1]``              exact (affine in t)     exact
    negative ``weights``                  ValueError / NaN (jit)  NaN (jit)
    ====================================  ======================  ==========================

    The infinite gradients are the true one-sided limits (the loss is infinite there); a
    subnormal label counts as 0 at ``p = 0`` (value 0, gradient ``w``), as in
    :func:`jaxce.safe_mul`.

    Args:
      probs: predicted probabilities in ``[0, 1]``, any shape.
      labels: targets, same rank as ``probs`` and broadcastable to it: probabilities, or any
        real number (errors in strict mode only, see :func:`jaxce.target_checks`).
      weights: optional non-negative element weights broadcastable to ``probs`` (NumPy rules).

    Returns:
      Element-wise loss, ``probs``' shape, float32 for 16-bit input.

    >>> import jax.numpy as jnp, jaxce
    >>> jaxce.binary_cross_entropy(jnp.array([0.0, 1e-30, 0.5]), jnp.array([0.0, 1.0, 1.0]))
    Array([ 0.       , 69.07755  ,  0.6931472], dtype=float32)
    """
    p = float_array("probs", probs)
    shape = tuple(p.shape)
    t = same_rank_broadcast("labels", jnp.asarray(labels), shape, "probs").astype(p.dtype)
    check_probabilities("probs", p)
    check_probability_targets("labels", t)
    w = None if weights is None else elementwise_weights("weights", weights, shape, p.dtype)
    return _binary_core(p, t, w, strict_targets())


@functools.partial(jax.jit, static_argnums=(3,))
def _binary_core(p, t, w, strict):
    p = _poison(outside_unit_interval(p), p)
    if strict:
        t = nan_where(outside_unit_interval(t), t)
    if w is None:
        return _bce(p, t, jnp.ones((), p.dtype), False)
    return _bce(p, t, nan_where(negative(w), w), True)


def _bce_value(p: jax.Array, t: jax.Array) -> jax.Array:
    # Each product with the zero convention; 0 - 0 so that a zero loss is +0.0, not -0.0.
    return (0.0 - xlogy(t, p)) + _neg_xlog1my(1.0 - t, p)


def _bce_grad(p: jax.Array, t: jax.Array) -> jax.Array:
    """``d/dp = (p - t)/(p(1 - p))`` (no cancellation of ``-t/p + (1 - t)/(1 - p)``).

    Plain jnp with double ``where`` (each branch sees safe inputs where it is not selected), so
    it can be differentiated again. Hard labels use the cancelled forms, which are exact at the
    end where the soft form is 0/0 and whose derivatives do not overflow early: ``t = 0``:
    ``1/(1 - p)``; ``t = 1``: ``-1/p``. Soft labels: ``(p - t)·r`` with ``r = 1/(p(1 - p))``.
    At ``p = 0`` (``t > 0``) and ``p = 1`` (``t < 1``) each form gives the signed infinity
    and an infinite second derivative, the true limits. A subnormal label counts as 0, as in
    :func:`jaxce.safe_mul` (which drops that term from the value at ``p = 0``).
    """
    dtype = p.dtype
    zero_t = jnp.abs(t) < jnp.finfo(dtype).tiny
    one_t = t == 1
    soft = ~zero_t & ~one_t
    pa = jnp.where(zero_t, p, jnp.zeros((), dtype))
    pb = jnp.where(one_t, p, jnp.ones((), dtype))
    pc = jnp.where(soft, p, jnp.full((), 0.5, dtype))
    ga = 1.0 / (1.0 - pa)
    gb = -1.0 / pb
    gc = (pc - t) * _inv_pq(pc)
    # A NaN label takes the soft branch: NaN, and NaN derivatives.
    return jnp.where(zero_t, ga, jnp.where(one_t, gb, gc))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _bce(p, t, w, weighted):
    value = _bce_value(p, t)
    return safe_mul(w, value) if weighted else value


@functools.partial(_bce.defjvp, symbolic_zeros=True)
def _bce_jvp(weighted, primals, tangents):
    p, t, w = primals
    p_dot, t_dot, w_dot = tangents
    value = _bce_value(p, t)
    out = jnp.zeros_like(value)
    # Weights multiply with the zero convention: weight 0 on an infinite loss or an infinite
    # derivative (p = 0 with t > 0) is an absent term, in value and every derivative.
    if not isinstance(p_dot, SymbolicZero):
        g = _bce_grad(p, t)
        out = out + (safe_mul(w, g) if weighted else g) * p_dot
    if not isinstance(t_dot, SymbolicZero):
        # d/dt = log1p(-p) - log p = -logit(p): +inf at p = 0, -inf at p = 1.
        gt = -_logit_value(p)
        out = out + (safe_mul(w, gt) if weighted else gt) * t_dot
    if weighted and not isinstance(w_dot, SymbolicZero):
        out = out + value * w_dot
    return (safe_mul(w, value) if weighted else value), out


# --------------------------------------------------------------------------------------------
# Categorical
# --------------------------------------------------------------------------------------------


def categorical_cross_entropy(
    probs: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    weights: ArrayLike | None = None,
) -> jax.Array:
    r"""Per-example categorical cross-entropy from probabilities.

    .. math::
       \ell = -\sum_k w_k\, t_k \log p_k

    ``labels`` are either probabilities (a float array of ``probs``' rank) or integer class
    indices (``probs``' shape without the class axes). Integer labels select the class like
    PyTorch's ``nll_loss`` on ``log(probs)``: :math:`\ell = -w_y \log p_y`, identical to a
    one-hot label. The probabilities are used as given: they are not renormalized (also not
    over ``where``); Keras' ``CategoricalCrossentropy`` renormalizes them to sum 1.

    **Stable form.** ``-xlogy(t_k, p_k)`` summed with a compensated sum: a class with zero
    target contributes exactly 0 to the value and every derivative, even at ``p_k = 0``
    (``log 0 = -inf``). No clipping (Keras' ``CategoricalCrossentropy`` clips to
    ``[1e-7, 1 - 1e-7]``). Gradient :math:`-w_k t_k / p_k`, one quotient per class and no
    difference anywhere, so each component is accurate relative to itself; the Hessian is
    :math:`\operatorname{diag}(w_k t_k / p_k^2)` (finite wherever the loss is; at an infinite
    loss its diagonal entry is ``+inf`` and forward-mode products ``0·inf`` make the rest of
    that row NaN).

    ======================================  ======================  =========================
    case                                    value                   gradient (``probs``)
    ======================================  ======================  =========================
    zero target on ``p_k = 0``              term is 0               0
    positive target on ``p_k = 0``          ``+inf``                ``-inf`` at k
    ``p_y = 1`` (integer label)             0                       ``-w_y`` at y, 0 elsewhere
    masked class (``where=False``)          excluded                0
    target class masked / all masked        0                       0
    NaN prob (unmasked)                     ValueError / NaN (jit)  NaN (jit)
    prob outside ``[0, 1]``                 ValueError / NaN (jit)  NaN (jit)
    probability label outside ``[0, 1]``    exact (linear in t)     exact
    negative ``weights``                    ValueError / NaN (jit)  NaN (jit)
    integer label outside ``[0, C)``        ValueError / NaN (jit)  NaN (jit)
    ======================================  ======================  =========================

    Args:
      probs: probabilities ``[..., num_classes]`` (need not sum to 1).
      labels: target probabilities (``probs``' rank, broadcastable) or integer indices
        (``probs``' shape without the class axes; a flat index for a tuple ``axis``).
      axis: class axis or tuple of axes.
      where: optional boolean mask, ``probs``' shape or its batch shape.
      weights: optional non-negative class weights, shape ``[num_classes]``.

    Returns:
      Per-example loss with the class axes removed, float32 for 16-bit input.

    >>> import jax.numpy as jnp, jaxce
    >>> p = jnp.array([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]])
    >>> jaxce.categorical_cross_entropy(p, jnp.array([0, 2])).round(4).tolist()
    [0.3567, 0.5108]
    >>> jaxce.categorical_cross_entropy(p, jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    Array([0.35667497, 0.5108256 ], dtype=float32)
    """
    p = float_array("probs", probs)
    shape = tuple(p.shape)
    axes = canonical_axes(tuple(axis) if isinstance(axis, list) else axis, p.ndim)
    mask = mask_array(where, shape, axes)
    lab = jnp.asarray(labels)
    w = None
    if weights is not None:
        check_nonnegative("weights", float_array("weights", weights))  # position in `weights`
        w = class_weights("weights", weights, shape, axes, p.dtype)
    check_probabilities("probs", p, mask)
    if jnp.issubdtype(lab.dtype, jnp.integer):
        batch_shape = tuple(d for a, d in enumerate(shape) if a not in axes)
        if tuple(lab.shape) != batch_shape:
            raise ValueError(
                f"`labels` has shape {tuple(lab.shape)}, but `probs` of shape {shape} with "
                f"class axes {axes} expects integer labels of shape {batch_shape} (one class "
                f"index per example) or probability labels of shape {shape}."
            )
        num_classes = math.prod(shape[a] for a in axes)
        check_class_indices("labels", lab, num_classes)
        onehot = _one_hot(lab, shape, axes, p.dtype)
        return _categorical_core(p, onehot, mask, w, axes, reduction_for(p), False, True)
    if not jnp.issubdtype(lab.dtype, jnp.floating):
        raise TypeError(
            f"`labels` must be integer class indices or floating-point probabilities; got "
            f"dtype {lab.dtype}, shape {tuple(lab.shape)}."
        )
    t = same_rank_broadcast("labels", lab, shape, "probs").astype(p.dtype)
    check_probability_targets("labels", t, mask)
    return _categorical_core(p, t, mask, w, axes, reduction_for(p), strict_targets(), False)


def _one_hot(y: jax.Array, shape: tuple[int, ...], axes: tuple[int, ...], dtype) -> jax.Array:
    """One-hot of the flat class index ``y`` over the class axes (row-major, in ``axes`` order);
    an out-of-range label gives a NaN row (that example's loss is NaN under jit)."""
    batch = tuple(a for a in range(len(shape)) if a not in axes)
    class_shape = tuple(shape[a] for a in axes)
    num = math.prod(class_shape)
    flat = lax.broadcasted_iota(jnp.int32, (*y.shape, num), y.ndim) == y[..., None]
    valid = (y >= 0) & (y < num)
    oh = jnp.where(valid[..., None], flat.astype(dtype), jnp.array(jnp.nan, dtype))
    oh = oh.reshape((*y.shape, *class_shape))
    # Back to probs' layout: batch dims then class dims in `axes` order -> original positions.
    perm_src = batch + axes
    inverse = [perm_src.index(a) for a in range(len(shape))]
    return oh.transpose(inverse)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _categorical_core(p, t, mask, w, axes, reduction, strict, integer):
    # A probability (or, in strict mode, a soft label) outside [0, 1] on a kept class poisons
    # its whole example: a NaN target on every class makes the value and every gradient
    # component NaN (a NaN probability alone would vanish on a class whose target is 0, by
    # xlogy's zero convention).
    bad = outside_unit_interval(p)
    if strict and not integer:
        bad = bad | outside_unit_interval(t)
    if mask is not None:
        bad = bad & mask
    t = nan_where(jnp.broadcast_to(jnp.any(bad, axis=axes, keepdims=True), t.shape), t)
    if w is not None:
        t = safe_mul(nan_where(negative(w), w), t)
    if mask is not None:
        zero = jnp.zeros((), p.dtype)
        t = jnp.where(mask, t, zero)
        p = jnp.where(mask, p, jnp.ones((), p.dtype))  # masked: no NaN/inf can leak
    return row_sum(-xlogy(t, p), axes, reduction)


# --------------------------------------------------------------------------------------------
# logit / log_odds
# --------------------------------------------------------------------------------------------


def logit(p: ArrayLike) -> jax.Array:
    r"""The logit (log-odds) :math:`\log(p / (1 - p))`, the inverse of :func:`jaxce.sigmoid`.

    **Stable form.** :math:`\log p - \operatorname{log1p}(-p)` (exact near 0 and 1: ``1 - p``
    is never formed and rounded), and for :math:`p \in [1/4, 3/4]`, where the two logarithms
    would cancel, :math:`\operatorname{log1p}((2p - 1)/(1 - p))` (``2p - 1`` is exact there,
    ``1 - p`` exact for ``p >= 1/2`` and one rounding below).

    **Derivative** (a custom JVP, plain jnp): :math:`r = 1/(p(1 - p))` formed directly (not
    as ``1/p + 1/(1 - p)`` through the two branches). Since :math:`p(1 - p) \ge \min(p, 1 - p)/2`
    the product never underflows for a normal ``p``, so ``r`` is finite wherever the true
    derivative is. The second derivative is written from the output,
    :math:`-(1 - 2p)\,r^2`, so it too is finite wherever the true one is (the quotient rule
    would square ``p(1 - p)``, which underflows for ``p < 1e-19`` in float32).

    ==============  ==============  ==============
    ``p``           value           derivative
    ==============  ==============  ==============
    0               ``-inf``        ``+inf``
    1               ``+inf``        ``+inf``
    1/2             0               4
    ``1 - 2**-24``  16.635532…      16777217.000…
    ``1e-30``       -69.07755…      1e30
    NaN, <0, >1     NaN             NaN (under jit too)
    ==============  ==============  ==============

    Args:
      p: probabilities, any shape.

    Returns:
      :math:`\log(p/(1-p))`, same shape and dtype as ``p`` (16-bit computed in float32).

    >>> import jax.numpy as jnp, jaxce
    >>> jaxce.logit(jnp.array([0.0, 0.5, 1.0 - 2.0**-24, 1e-30]))
    Array([      -inf,   0.      ,  16.635532, -69.07755 ], dtype=float32)
    """
    arr = float_array("p", p)
    return _logit_core(arr).astype(jnp.asarray(p).dtype)


#: Alias of :func:`logit`.
log_odds = logit


@jax.jit
def _logit_core(p: jax.Array) -> jax.Array:
    return _logit(_poison(outside_unit_interval(p), p))


@jax.custom_jvp
def _logit(p: jax.Array) -> jax.Array:
    return _logit_value(p)


@_logit.defjvp
def _logit_jvp(primals, tangents):
    (p,), (p_dot,) = primals, tangents
    # 1/(p(1 - p)) directly, not 1/p + 1/(1 - p) through the two branches; its own rule keeps
    # the second derivative finite as long as the true one is (see _inv_pq).
    return _logit_value(p), _inv_pq(p) * p_dot

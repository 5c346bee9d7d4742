r"""The public primitives: sigmoid, softplus, log-sigmoid, safe products, and the row normalizers
logsumexp, log_softmax and softmax (built on the row statistics of :mod:`jaxce._rows`).

The accuracy standard is the condition-scaled error of ``docs/numerics.md``. The row normalizers
keep small quantities small: ``logsumexp = m + log1p(S')`` with ``m`` the row maximum and ``S'``
the sum of ``exp(x_k - m)`` over every class but one arg-max, so a row dominated by one class
gives ``S'`` itself (say ``1e-30``), not ``1 + S'`` rounded to 1.

Conventions (each pinned by a test):

* ``where=False`` removes a class: it leaves the normalizer, its log-probability is ``-inf``, its
  probability and every derivative with respect to it are 0.
* A row whose classes are all masked or ``-inf`` is *empty*: ``logsumexp = -inf``,
  ``log_softmax = -inf``, ``softmax = 0`` and all derivatives 0, never NaN (jax #6811).
* ``+inf`` entries of a row share the probability equally (the limit of equal logits growing
  together); ``logsumexp = +inf``, its derivative is that probability, finite.
* A NaN in a row makes that row's results NaN and leaves other rows untouched.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._checks import Axis, canonical_axes, compute_dtype, mask_array
from jaxce._rows import Reduction, RowStats, reduction_for, row_stats

__all__ = [
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "safe_mul",
    "sigmoid",
    "softmax",
    "softplus",
    "xlogy",
]


def _float_in(x: ArrayLike) -> jax.Array:
    """Primitives accept any numeric input (as ``jax.nn`` does); compute in >= float32."""
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


# --------------------------------------------------------------------------------------------
# Elementwise: sigmoid, softplus, log_sigmoid
# --------------------------------------------------------------------------------------------


@jax.custom_jvp
def stable_sigmoid(x: jax.Array) -> jax.Array:
    # exp(-|x|) never overflows; the negative side is e/(1+e), not 1 - 1/(1+e^-x).
    e = jnp.exp(-jnp.abs(x))
    s = 1.0 / (1.0 + e)
    return jnp.where(x >= 0, s, e * s)


@stable_sigmoid.defjvp
def _stable_sigmoid_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (x,), (x_dot,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    s = 1.0 / (1.0 + e)
    # sigma(x) * sigma(-x) = e / (1 + e)^2: no 1 - sigma cancellation in either tail.
    return jnp.where(x >= 0, s, e * s), e * s * s * x_dot


@jax.custom_jvp
def stable_softplus(x: jax.Array) -> jax.Array:
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): exact limits softplus(+inf) = +inf,
    # softplus(-inf) = 0, and full relative precision for the tiny values at x << 0.
    return jnp.maximum(x, 0.0) + softplus_tail(x)


@stable_softplus.defjvp
def _stable_softplus_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (x,), (x_dot,) = primals, tangents
    return stable_softplus(x), stable_sigmoid(x) * x_dot


@jax.custom_jvp
def sigmoid_pair(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(σ(x), σ(-x))`` from one ``e = exp(-|x|)`` and one division, each exactly as
    :func:`stable_sigmoid` gives it; derivatives ``±e/(1 + e)^2``."""
    e = jnp.exp(-jnp.abs(x))
    s = 1.0 / (1.0 + e)
    es = e * s
    return jnp.where(x >= 0, s, es), jnp.where(x >= 0, es, s)


@sigmoid_pair.defjvp
def _sigmoid_pair_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (x,), (x_dot,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    s = 1.0 / (1.0 + e)
    es = e * s
    d = es * s * x_dot
    return (jnp.where(x >= 0, s, es), jnp.where(x >= 0, es, s)), (d, -d)


def softplus_tail(x: jax.Array) -> jax.Array:
    """``log1p(exp(-|x|))``, the part of ``softplus(x) = max(x, 0) + log1p(exp(-|x|))`` that
    ``softplus(x)`` and ``softplus(-x)`` share (plain jnp, for use inside a rule that supplies
    the derivative)."""
    return jnp.log1p(jnp.exp(-jnp.abs(x)))


def _neg_softplus_neg(x: jax.Array) -> jax.Array:
    return -stable_softplus(-x)


# The public functions validate in Python, then call one jitted core: eager calls compile once
# per shape instead of once per operation, and inside a user's jit the inner jit is inlined.
@functools.partial(jax.jit, static_argnums=(0,))
def _elementwise_core(fn, arr: jax.Array) -> jax.Array:
    return fn(arr.astype(compute_dtype(arr.dtype))).astype(arr.dtype)


def _elementwise(fn, x: ArrayLike) -> jax.Array:
    return _elementwise_core(fn, _float_in(x))


def sigmoid(x: ArrayLike) -> jax.Array:
    r"""Logistic sigmoid :math:`\sigma(x) = 1 / (1 + e^{-x})`, accurate in both tails.

    Computed as ``1/(1+e)`` for ``x >= 0`` and ``e/(1+e)`` for ``x < 0`` with
    ``e = exp(-|x|)``, so ``sigmoid(-80)`` is ``1.8e-35`` to full relative precision. The
    derivative :math:`\sigma(x)\sigma(-x)` is evaluated as ``e/(1+e)^2``: finite at ``±inf``
    (where it is 0) and accurate in the tails.

    Args:
      x: any shape. 16-bit inputs are computed in float32; the result has ``x``'s dtype.

    Returns:
      :math:`\sigma(x)`, same shape and dtype as ``x``.

    >>> import jaxce
    >>> float(jaxce.sigmoid(-80.0))  # doctest: +ELLIPSIS
    1.80485...e-35
    """
    return _elementwise(stable_sigmoid, x)


def softplus(x: ArrayLike) -> jax.Array:
    r"""Softplus :math:`\log(1 + e^x)`, with derivative :math:`\sigma(x)`.

    Computed as :math:`\max(x, 0) + \operatorname{log1p}(e^{-|x|})`: no overflow, and the tiny
    values for :math:`x \ll 0` keep full relative precision (``softplus(-30) = 9.4e-14``, not 0).

    ========  =====================  ==================
    ``x``     value                  derivative
    ========  =====================  ==================
    ``+inf``  ``+inf``               1
    ``-inf``  0                      0
    NaN       NaN                    NaN
    ========  =====================  ==================

    Args:
      x: any shape. 16-bit inputs are computed in float32; the result has ``x``'s dtype.

    Returns:
      ``softplus(x)``, same shape and dtype as ``x``.

    >>> import jaxce
    >>> float(jaxce.softplus(-30.0))  # doctest: +ELLIPSIS
    9.357...e-14
    """
    return _elementwise(stable_softplus, x)


def log_sigmoid(x: ArrayLike) -> jax.Array:
    r"""Log-sigmoid :math:`\log\sigma(x) = -\operatorname{softplus}(-x)`.

    Built on :func:`softplus` and its rule.

    ``log_sigmoid(+inf) = 0`` with derivative 0, ``log_sigmoid(-inf) = -inf`` with derivative 1.

    Args:
      x: any shape. 16-bit inputs are computed in float32; the result has ``x``'s dtype.

    Returns:
      :math:`\log\sigma(x)`, same shape and dtype as ``x``.
    """
    return _elementwise(_neg_softplus_neg, x)


# --------------------------------------------------------------------------------------------
# Safe products: 0 * anything = 0, in value and derivative
# --------------------------------------------------------------------------------------------


def safe_mul(x: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""The product ``x * y``, with ``0 * y = 0`` even where ``y`` is ``±inf``.

    Where ``y`` is infinite and ``x == 0`` (or subnormal) the value is 0 and the derivatives
    with respect to ``x`` and ``y`` are both 0: the term is absent. Elsewhere it is the plain
    product with its plain derivatives (``y`` and ``x``; so ``d/dx`` at ``x = 0`` is ``y``, as
    a derivative with respect to a zero target must be). A NaN ``y`` stays NaN
    (``0 · NaN = NaN``): a NaN input is never hidden by a zero target. This is the
    ``0 · (−inf) = 0`` convention of cross-entropy with a zero target on a class of zero
    probability (optax #896). It is written with the double ``where`` (replace the unsafe
    operand first, then multiply), which JAX's own derivative rules carry exactly to every
    order, so no custom rule is needed.

    Args:
      x: the coefficient (a target, a weight).
      y: the factor that may be infinite where ``x`` is 0.

    Returns:
      ``x * y`` with the zero convention, broadcast shape.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    # A subnormal coefficient counts as 0 against an infinite factor: XLA:CPU flushes
    # subnormals in arithmetic but not always in comparisons (seen with a bfloat16 label
    # of 9e-41 upcast inside jit), and subnormal * inf would come back as 0 * inf = NaN.
    tiny = jnp.finfo(jnp.result_type(x, y)).tiny if jnp.issubdtype(x.dtype, jnp.inexact) else 1
    absent = jnp.isinf(y) & (jnp.abs(x) < tiny)
    return x * jnp.where(absent, jnp.zeros((), y.dtype), y)


def xlogy(x: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""``x * log(y)`` with ``0 · log 0 = 0`` in value *and* derivative.

    Unlike ``jax.scipy.special.xlogy``, whose derivative at ``x = y = 0`` is ``-inf`` with respect
    to ``x`` and NaN with respect to ``y``, both derivatives here are 0 where ``x == 0`` and ``y``
    is not a positive number (the term is absent). Elsewhere the derivatives are ``log y`` and
    ``x / y`` (so ``log y`` at ``x = 0 < y``).

    Args:
      x: the coefficient.
      y: the argument of the logarithm.

    Returns:
      ``x * log(y)``, broadcast shape.
    """
    x = _float_in(x)
    y = _float_in(y)
    safe_y = jnp.where((x == 0) & ~(y > 0), jnp.ones((), y.dtype), y)
    return safe_mul(x, jnp.log(safe_y))


# --------------------------------------------------------------------------------------------
# Row reductions: logsumexp, log_softmax, softmax
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def row_logsumexp(
    x: jax.Array, where: jax.Array | None, axes: tuple[int, ...], reduction: Reduction
) -> jax.Array:
    """``logsumexp`` over ``axes`` (dims kept) as ``m + log1p(S')``; derivative ``<p, x_dot>``
    (0 for an empty row)."""
    stats, _ = row_stats(x, where, axes, reduction)
    return stats.m + stats.log_norm


@row_logsumexp.defjvp
def _row_logsumexp_jvp(axes, reduction, primals, tangents):
    (x, where), (x_dot, _) = primals, tangents
    stats, _ = row_stats(x, where, axes, reduction)
    return stats.m + stats.log_norm, jnp.sum(stats.p * x_dot, axis=axes, keepdims=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _log_softmax(
    x: jax.Array, where: jax.Array | None, axes: tuple[int, ...], reduction: Reduction
) -> jax.Array:
    return row_stats(x, where, axes, reduction)[0].log_p


def _log_softmax_tangent(stats: RowStats, x_dot: jax.Array) -> jax.Array:
    """``x_dot - <p, x_dot>``, with a single arg-max's ``(1 - p_j) x_dot_j`` formed from ``S'``
    rather than by cancellation, so that under ``jax.grad`` a confident class's cotangent
    ``-(1 - p_y)`` keeps its digits (as the fused cross-entropy's does)."""
    axes, p = stats.axes, stats.p
    plain = x_dot - jnp.sum(p * x_dot, axis=axes, keepdims=True)
    # A tied maximum has p <= 1/2 and no cancellation: those rows keep the plain rule.
    single = stats.top & (stats.n_top == 1)
    zero = jnp.zeros((), x_dot.dtype)
    rest = jnp.sum(jnp.where(single, zero, p * x_dot), axis=axes, keepdims=True)
    at_top = stats.s1 / (1.0 + stats.s1) * x_dot - rest
    return jnp.where(single, at_top, plain)


@_log_softmax.defjvp
def _log_softmax_jvp(axes, reduction, primals, tangents):
    (x, where), (x_dot, _) = primals, tangents
    stats, _ = row_stats(x, where, axes, reduction)
    t = _log_softmax_tangent(stats, x_dot)
    # An empty row is constant -inf: derivative 0, not the identity (NaN rows stay NaN).
    t = jnp.where(stats.m == -jnp.inf, jnp.zeros((), t.dtype), t)
    if where is not None:
        t = jnp.where(where, t, jnp.zeros((), t.dtype))
    return stats.log_p, t


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _softmax(
    x: jax.Array, where: jax.Array | None, axes: tuple[int, ...], reduction: Reduction
) -> jax.Array:
    return row_stats(x, where, axes, reduction)[0].p


@_softmax.defjvp
def _softmax_jvp(axes, reduction, primals, tangents):
    (x, where), (x_dot, _) = primals, tangents
    p = _softmax(x, where, axes, reduction)
    # Written from the output, as jax.nn.softmax does: p * (x_dot - <p, x_dot>).
    return p, p * (x_dot - jnp.sum(p * x_dot, axis=axes, keepdims=True))


def _row_inputs(
    x: ArrayLike, axis: Axis, where: ArrayLike | None
) -> tuple[jax.Array, tuple[int, ...], jax.Array | None]:
    arr = _float_in(x)
    axes = canonical_axes(axis, arr.ndim)
    return arr, axes, mask_array(where, tuple(arr.shape), axes)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _logsumexp_core(
    x: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    keepdims: bool,
    reduction: Reduction,
) -> jax.Array:
    out = row_logsumexp(x.astype(compute_dtype(x.dtype)), mask, axes, reduction)
    if not keepdims:
        out = jnp.squeeze(out, axes)
    return out.astype(x.dtype)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _normalize_core(
    fn, x: jax.Array, mask: jax.Array | None, axes: tuple[int, ...], reduction: Reduction
):
    return fn(x.astype(compute_dtype(x.dtype)), mask, axes, reduction).astype(x.dtype)


def logsumexp(
    x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None, keepdims: bool = False
) -> jax.Array:
    r"""Log-sum-exp :math:`\log\sum_k e^{x_k}` over ``axis``, with a custom derivative rule.

    Computed as :math:`m + \operatorname{log1p}(S')` where :math:`m` is the maximum over the
    included classes and :math:`S' = \sum e^{x_k - m}` over all of them but one arg-max: a
    result near 0 (one dominant logit near 0) keeps its relative precision. Derivative:
    the softmax.

    =====================================  ==========  ====================================
    row                                    value       derivative
    =====================================  ==========  ====================================
    all ``-inf`` or all masked             ``-inf``    0 (jax #6811 gives NaN)
    contains ``+inf``                      ``+inf``    shared equally by the ``+inf`` entries
    contains NaN (unmasked)                NaN         NaN
    masked entries (``where=False``)       excluded    0
    =====================================  ==========  ====================================

    Args:
      x: logits, any shape.
      axis: axis or tuple of axes to reduce; ``None`` for all.
      where: optional boolean mask broadcastable to ``x`` (True = include).
      keepdims: keep the reduced axes with size 1.

    Returns:
      The log-sum-exp, in ``x``'s dtype (16-bit inputs computed in float32).

    >>> import jax.numpy as jnp, jaxce
    >>> float(jaxce.logsumexp(jnp.array([-jnp.inf, -jnp.inf])))
    -inf
    """
    arr, axes, mask = _row_inputs(x, axis, where)
    return _logsumexp_core(arr, mask, axes, keepdims, reduction_for(arr))


def log_softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> jax.Array:
    r"""Log-softmax :math:`x_k - \log\sum_j e^{x_j}`, accurate for the dominant class too.

    Computed as ``(x - m) - log1p(S')`` (see :func:`logsumexp`), so the log-probability of a
    confident class, e.g. ``-1e-30``, is not rounded to 0 as ``x - logsumexp(x)`` rounds it.
    Masked classes give ``-inf`` with derivative 0; an empty row gives ``-inf`` everywhere;
    ``+inf`` entries share the probability (``-log(n_inf)`` each, ``-inf`` elsewhere). The
    derivative ``x_dot - <p, x_dot>`` forms a single arg-max's ``1 - p_j`` from ``S'``, so NLL
    on these log-probabilities has the fused loss's gradient: ``-(1 - p_y)`` keeps its digits
    at ``1e-30``.

    Args:
      x: logits, any shape.
      axis: axis or tuple of axes of the classes.
      where: optional boolean mask broadcastable to ``x`` (True = include).

    Returns:
      Log-probabilities, same shape and dtype as ``x``.

    >>> import jax, jax.numpy as jnp, jaxce
    >>> x = jnp.array([40.0, 0.0])
    >>> float(jax.grad(lambda a: -jaxce.log_softmax(a)[0])(x)[0])  # -exp(-40)
    -4.24835413113866e-18
    """
    arr, axes, mask = _row_inputs(x, axis, where)
    return _normalize_core(_log_softmax, arr, mask, axes, reduction_for(arr))


def softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> jax.Array:
    r"""Softmax :math:`e^{x_k} / \sum_j e^{x_j}`, same conventions as :func:`log_softmax`.

    Masked classes and ``-inf`` entries give probability 0; an empty row gives all zeros (not
    NaN, not a uniform guess); ``+inf`` entries share the mass equally. Derivative
    ``p * (x_dot - <p, x_dot>)``.

    Args:
      x: logits, any shape.
      axis: axis or tuple of axes of the classes.
      where: optional boolean mask broadcastable to ``x`` (True = include).

    Returns:
      Probabilities, same shape and dtype as ``x``.
    """
    arr, axes, mask = _row_inputs(x, axis, where)
    return _normalize_core(_softmax, arr, mask, axes, reduction_for(arr))

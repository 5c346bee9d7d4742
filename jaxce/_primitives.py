r"""Numerical primitives: every loss in jaxce is built from these and nothing else.

The accuracy standard is the condition-scaled error of ``docs/numerics.md``. The common idea
is to keep the small quantities small: the log-sum-exp of a row is computed as
``m + log1p(S')`` where ``m`` is the row maximum and ``S'`` sums ``exp(x_k - m)`` over every class
but *one* arg-max, so a row dominated by one class gives ``S'`` itself (say ``1e-30``), not
``1 + S'`` rounded to 1. The derivative rules reuse the same pieces, so ``1 - p`` for a confident
class is also available to full relative precision.

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
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._checks import Axis, canonical_axes, compute_dtype, mask_array

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
def _sigmoid(x: jax.Array) -> jax.Array:
    # exp(-|x|) never overflows; the negative side is e/(1+e), not 1 - 1/(1+e^-x).
    e = jnp.exp(-jnp.abs(x))
    s = 1.0 / (1.0 + e)
    return jnp.where(x >= 0, s, e * s)


@_sigmoid.defjvp
def _sigmoid_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (x,), (x_dot,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    s = 1.0 / (1.0 + e)
    # sigma(x) * sigma(-x) = e / (1 + e)^2: no 1 - sigma cancellation in either tail.
    return jnp.where(x >= 0, s, e * s), e * s * s * x_dot


@jax.custom_jvp
def _softplus(x: jax.Array) -> jax.Array:
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): exact limits softplus(+inf) = +inf,
    # softplus(-inf) = 0, and full relative precision for the tiny values at x << 0.
    return jnp.maximum(x, 0.0) + softplus_tail(x)


@_softplus.defjvp
def _softplus_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (x,), (x_dot,) = primals, tangents
    return _softplus(x), _sigmoid(x) * x_dot


@jax.custom_jvp
def sigmoid_pair(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(σ(x), σ(-x))`` from one ``e = exp(-|x|)`` and one division, each exactly as
    :func:`_sigmoid` gives it; derivatives ``±e/(1 + e)^2``."""
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
    return -_softplus(-x)


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
    return _elementwise(_sigmoid, x)


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
    return _elementwise(_softplus, x)


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


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``s = fl(a + b)`` and its rounding error ``e``: ``s + e == a + b`` exactly (Knuth).

    Branch-free and valid for any order of magnitudes. Non-finite ``s`` gives a NaN ``e``,
    which :func:`row_sum` drops.
    """
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


def _combine(
    a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Add two compensated partial sums ``(s, c)`` (the value is ``s + c``)."""
    s, e = _two_sum(a[0], b[0])
    return s, (a[1] + b[1]) + e


# Row sums are reduced in up to three strided stages (a reduction over a major axis of a few
# lanes, which XLA vectorizes along the row) before the final reduction; this only sets the
# speed. XLA:CPU vectorizes a stage only when LLVM fully unrolls its loop over the lanes, and
# whether it does depends on the size of the loop body: the first stage's body holds the
# elementwise producer of the summed terms (fused into it) and one compensated addition per
# summed array, so a heavy producer needs a narrow first stage. Measured on a 2-core CPU
# (value + gradient, float32, 512 x 32768): KL 354 -> 128 ms with 8 lanes instead of 16, soft
# CE 323 -> 211 ms with 4 (since split into two reductions with lighter bodies, 16 and 8 lanes,
# see `jaxce._softmax._soft_ce_pieces`); integer CE (one sum of a bare exponential) is fastest
# with 16.
# Later stages read stored partial sums (a small body): 16 lanes.
FIRST_LANES = 4
_LANES = 16
# Rows (or partial-sum rows) shorter than this go straight to the final reduction, which runs
# along the row without vectorizing across it: 50 terms there (V = 1000 after a 20-lane stage)
# cost more than one more stage (10 x 5): integer CE value + gradient, float32, jaxce/optax
# 1.08-1.14 -> 0.99-1.01 at 16384 x 1000 with this and the divisor rule of `_lanes` (at
# 65536 x 1000 within noise; temp memory 67 -> 28 MiB); V = 32768 and 262144 are unchanged.
_MIN_STAGED = 2 * _LANES
_MAX_STAGES = 3


def staged_sums() -> bool:
    """Whether row sums are reduced in strided stages (on CPU) or in one reduction (GPU, TPU).

    The stages exist for XLA:CPU, which vectorizes a reduction over a few major lanes but not
    one along the row. A stage writes its partial sums to memory (a ``1/lanes`` fraction of the
    summed arrays), which on a GPU or TPU, whose reduction emitters fuse the elementwise
    producer into a single row reduction, would only add memory traffic: there every row sum is
    one variadic reduction, one pass over its inputs. The compensated combiner makes the result
    independent of the order to about one rounding either way. Decided at trace time from the
    default backend (like :func:`recompute_exp`); not measured on an accelerator yet.
    """
    return jax.default_backend() == "cpu"


def _lanes(n: int, preferred: int = _LANES) -> int:
    """The stage width for a row of ``n``: the divisor of ``n`` in ``[preferred/2,
    2·preferred]`` nearest to ``preferred`` (the larger one on a tie) if there is one (no
    padding: ``jnp.pad`` would copy the whole array, 1.4× optax's time at V = 1000), else
    ``preferred`` with padding. V = 1000 with 16 preferred takes 20 lanes (then 50 terms per
    lane, see :data:`_MIN_STAGED`), not 8 (then 125, padded to 128)."""
    divisors = [d for d in range(max(preferred // 2, 2), 2 * preferred + 1) if n % d == 0]
    if not divisors:
        return preferred
    return min(divisors, key=lambda d: (abs(d - preferred), -d))


def _compensated_reduce(
    pairs: tuple[tuple[jax.Array, jax.Array] | jax.Array, ...], axis: int
) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """One variadic reduction over ``axis``: a compensated pair ``(s, c)`` per input pair, and
    a plain sum (returned with a zero ``c``) per bare array."""
    dtype = (pairs[0][0] if isinstance(pairs[0], tuple) else pairs[0]).dtype
    zero = jnp.zeros((), dtype)
    widths = [2 if isinstance(p, tuple) else 1 for p in pairs]
    flat = tuple(a for p in pairs for a in (p if isinstance(p, tuple) else (p,)))

    def combine(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        out: list[jax.Array] = []
        i = 0
        for w in widths:
            if w == 2:
                out.extend(_combine((a[i], a[i + 1]), (b[i], b[i + 1])))
            else:
                out.append(a[i] + b[i])
            i += w
        return tuple(out)

    res = jax.lax.reduce(flat, (zero,) * len(flat), combine, (axis,))
    out: list[tuple[jax.Array, jax.Array]] = []
    i = 0
    for w in widths:
        out.append((res[i], res[i + 1]) if w == 2 else (res[i], jnp.zeros_like(res[i])))
        i += w
    return tuple(out)


def _pairs_value(
    arrays: tuple[jax.Array, ...],
    axes: tuple[int, ...],
    keepdims: bool,
    lanes: int,
    plain_first: tuple[bool, ...] = (),
) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """Compensated sums of same-shaped arrays in one reduction (one pass over each); ``lanes``
    is the first stage's width (see :data:`FIRST_LANES`). An array flagged in ``plain_first``
    is added plainly in the first stage (``lanes`` terms per partial sum) and compensated
    after it: only for non-negative terms, where each partial sum is then within
    ``(lanes - 1)·u`` of exact and the total within the same relative bound (a weighted mean
    of the partials' errors, about one rounding in practice)."""
    nd = arrays[0].ndim
    axes = tuple(sorted(ax % nd for ax in axes))
    batch = tuple(ax for ax in range(nd) if ax not in axes)
    n_lead = len(batch)

    def flatten(a: jax.Array) -> jax.Array:
        if axes != tuple(range(nd - len(axes), nd)):
            a = a.transpose(batch + axes)
        return a.reshape((*a.shape[:n_lead], math.prod(a.shape[n_lead:])))

    flags = plain_first + (False,) * (len(arrays) - len(plain_first))
    pairs = tuple((f, jnp.zeros_like(f)) for f in map(flatten, arrays))
    lead = pairs[0][0].shape[:n_lead]
    preferred = lanes
    for stage in range(_MAX_STAGES if staged_sums() else 0):
        n = pairs[0][0].shape[-1]
        if n < _MIN_STAGED:
            break
        width = _lanes(n, preferred)
        preferred = _LANES
        pad = (-n) % width
        shape = (*lead, width, (n + pad) // width)
        widths = [(0, 0)] * n_lead + [(0, pad)]

        def restage(a: jax.Array) -> jax.Array:
            return (jnp.pad(a, widths) if pad else a).reshape(shape)  # noqa: B023

        # The first stage adds flagged arrays plainly (a bare array: no error term).
        staged: tuple[tuple[jax.Array, jax.Array] | jax.Array, ...] = tuple(
            restage(s) if plain and stage == 0 else (restage(s), restage(c))
            for (s, c), plain in zip(pairs, flags, strict=True)
        )
        pairs = _compensated_reduce(staged, n_lead)
    pairs = _compensated_reduce(pairs, n_lead)
    if keepdims:
        pairs = tuple((jnp.expand_dims(s, axes), jnp.expand_dims(c, axes)) for s, c in pairs)
    return pairs


def _pair_value(
    a: jax.Array, axes: tuple[int, ...], keepdims: bool, lanes: int
) -> tuple[jax.Array, jax.Array]:
    return _pairs_value((a,), axes, keepdims, lanes)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def row_sum_pairs(
    arrays: tuple[jax.Array, ...],
    axes: tuple[int, ...],
    keepdims: bool = False,
    plain_first: tuple[bool, ...] = (),
    lanes: int = FIRST_LANES,
) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """:func:`row_sum_pair` of several same-shaped arrays in one reduction (a single pass).

    Returns one ``(s, c)`` pair per array; derivative ``(sum of tangents, 0)`` for each.
    ``plain_first`` flags arrays of non-negative terms whose first stage may be a plain sum
    (see :func:`_pairs_value`); ``lanes`` is the first stage's width.
    """
    return _pairs_value(tuple(arrays), axes, keepdims, lanes, plain_first)


@row_sum_pairs.defjvp
def _row_sum_pairs_jvp(
    axes: tuple[int, ...],
    keepdims: bool,
    plain_first: tuple[bool, ...],
    lanes: int,
    primals,
    tangents,
):
    (arrays,), (dots,) = primals, tangents
    pairs = row_sum_pairs(arrays, axes, keepdims, plain_first, lanes)
    out_dots = tuple(
        (jnp.sum(d, axis=axes, keepdims=keepdims), jnp.zeros_like(c))
        for d, (_, c) in zip(dots, pairs, strict=True)
    )
    return pairs, out_dots


def pair_total(s: jax.Array, c: jax.Array) -> jax.Array:
    """``s + c`` of a compensated pair; a non-finite ``s`` (its ``c`` is NaN) stays as it is."""
    return jnp.where(jnp.isfinite(s), s + c, s)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def row_sum_pair(
    a: jax.Array, axes: tuple[int, ...], keepdims: bool = False, lanes: int = FIRST_LANES
) -> tuple[jax.Array, jax.Array]:
    """The compensated sum of :func:`row_sum` as an unevaluated pair ``(s, c)``.

    ``s`` is the running floating-point sum and ``c`` the accumulated rounding error: the sum is
    ``s + c`` up to ``O(u^2)`` relative to the sum of absolute values. Keeping the pair lets a
    caller remove a known exact part first, e.g. ``S' = (s - 1) + c`` for the sum of
    ``exp(x - m)`` over a row, which contains exactly 1 for the arg-max: ``s - 1`` is exact
    (Sterbenz, or ``s >= 2``), and ``S'`` keeps its relative precision even when it is
    ``1e-30``. A non-finite ``s`` comes with a NaN ``c``. Derivative: ``(sum of tangents, 0)``.
    """
    return _pair_value(a, axes, keepdims, lanes)


@row_sum_pair.defjvp
def _row_sum_pair_jvp(axes: tuple[int, ...], keepdims: bool, lanes: int, primals, tangents):
    (a,), (a_dot,) = primals, tangents
    s, c = row_sum_pair(a, axes, keepdims, lanes)
    return (s, c), (jnp.sum(a_dot, axis=axes, keepdims=keepdims), jnp.zeros_like(c))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def row_sum(a: jax.Array, axes: tuple[int, ...], keepdims: bool = False) -> jax.Array:
    """Compensated sum over the class axes: the exact sum rounded once, up to ``O(u^2)``.

    A plain reduction's error depends on the order the backend picks, which is not ours to
    choose: XLA picks a different strategy per shape and fusion, and merges a blocked
    two-level sum written in jnp back into one reduction. Even a good order leaves several
    ulps when many similar terms are added: the 999 entries of 1e-4 of a smoothed label gave
    ``T = sum(t)`` 5 ulps off at V = 1000, and the loss ``T·log1p(S')`` with it. Here every
    addition carries its rounding error along (``_two_sum``, exact), in whatever order the
    backend combines the terms, so the result is within about one rounding of the exact sum
    for any V. One pass over ``a``, like a plain sum.

    Used for every sum that forms a value (the label total ``T``, ``S'``, the losses' sums);
    derivatives are plain sums (the tangent of a sum is the sum of the tangents).
    """
    s, c = _pair_value(a, axes, keepdims, FIRST_LANES)
    # A non-finite sum (an inf or NaN term) stays as it is: its error terms are NaN.
    return jnp.where(jnp.isfinite(s), s + c, s)


@row_sum.defjvp
def _row_sum_jvp(axes: tuple[int, ...], keepdims: bool, primals, tangents):
    (a,), (a_dot,) = primals, tangents
    return row_sum(a, axes, keepdims), jnp.sum(a_dot, axis=axes, keepdims=keepdims)


def shift_by_max(xm: jax.Array, m: jax.Array, *, again: bool = False) -> jax.Array:
    """``xm - m`` for a row maximum ``m`` (broadcastable), without ``inf - inf``.

    An empty row (``m = -inf``) shifts by 0, so every entry stays ``-inf``; a ``+inf`` row maps
    its ``+inf`` entries to 0 and the rest to ``-inf`` (they share the probability); a NaN row
    shifts by 0 (its NaN entries stay NaN). Elsewhere ``x - m``, exact at the arg-max. Only
    row-level conditions: inside a fused elementwise pass this costs a few selects, no memory.

    ``again=True`` gives the same values (``-(m - x) == x - m`` in IEEE arithmetic; only the
    sign of a zero differs, and ``exp`` maps both to 1) written differently, for a second
    elementwise pass that should recompute ``exp(x - m)`` from the logits: XLA would otherwise
    merge the two expressions into one
    array stored in memory between a reduction and the gradient, which costs more than the
    exponential on every backend measured (``benchmarks/README.md``).
    """
    zero = jnp.zeros((), xm.dtype)
    neg_inf = jnp.array(-jnp.inf, xm.dtype)
    m_shift = jnp.where(jnp.isfinite(m), m, zero)
    shifted = -(m_shift - xm) if again else xm - m_shift
    # The arg-max gets its exact 0 from a comparison, not from the subtraction: when ``xm`` is
    # a product fused into this pass (``x * 0.4``, a temperature), XLA:CPU may contract
    # ``x * c - m`` into one FMA, which gives the product's rounding error (5.96e-5 for
    # ``4000``) instead of 0, while the comparison sees the same rounded product as the max
    # did. The 0 carries the derivative of ``x - m`` (:func:`zero_with_tangent`; nonzero for
    # tied maxima, whose tangent ``jnp.max`` spreads: Hessians need it). An empty row's
    # "arg-max" entries stay -inf; a +inf row's finite entries are -inf.
    top = jnp.where(m == -jnp.inf, neg_inf, zero_with_tangent(shifted))
    rest = jnp.where(m == jnp.inf, neg_inf, shifted)
    return jnp.where(xm == m, top, rest)


@jax.custom_jvp
def zero_with_tangent(a: jax.Array) -> jax.Array:
    """Zeros shaped like ``a`` whose tangent is ``a``'s: ``a - stop_gradient(a)`` at no cost.

    (``a - stop_gradient(a)`` would compute the subtraction, and give NaN for infinite ``a``.)
    """
    return jnp.zeros_like(a)


@zero_with_tangent.defjvp
def _zero_with_tangent_jvp(primals, tangents):
    return jnp.zeros_like(primals[0]), tangents[0]


def recompute_exp() -> bool:
    """Whether a gradient pass recomputes ``exp(x - m)`` rather than reading it back stored.

    Off on CPU, where the exponential costs more than a pass over memory (XLA:CPU does not fuse
    an elementwise producer into a row reduction, so the sum's input is stored anyway); on
    GPU/TPU, where the exponential is free next to the memory traffic, the sum fuses its
    exponential and the gradient recomputes it: 3 reads + 1 write of ``[B, V]`` instead of
    4 reads + 2 writes. Both give the same bits. Decided at trace time from the default backend.
    Used by the integer-label CE (on CPU its stored ``exp`` becomes the gradient's buffer, and
    recomputing measured no faster); the soft-label CE recomputes on every backend (measured
    in ``jaxce._softmax._soft_ce_pieces``).
    """
    return jax.default_backend() != "cpu"


def row_max(
    x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """``(xm, m)``: the masked row (``-inf`` at masked classes) and its max (dims kept)."""
    xm = x if where is None else jnp.where(where, x, -jnp.inf)
    return xm, jnp.max(xm, axis=axes, keepdims=True, initial=-jnp.inf)


def mass_beyond_top(
    e: jax.Array, m: jax.Array, axes: tuple[int, ...], lanes: int = FIRST_LANES
) -> jax.Array:
    """``S'``: the sum of ``e = exp(shift_by_max(x, m))`` minus the one arg-max's exact 1.

    One compensated pass over ``e`` (:func:`row_sum_pair`), ``S' = (s - 1) + c``; tied maxima
    count ``n_top - 1`` as they should, and the tiny ``S'`` of a confident row keeps its
    relative precision. 0 for empty rows (``m = -inf``), NaN for NaN rows (dims kept).
    """
    return mass_from_pair(*row_sum_pair(e, axes, True, lanes), m)


def mass_from_pair(s: jax.Array, c: jax.Array, m: jax.Array) -> jax.Array:
    """:func:`mass_beyond_top` from the compensated pair ``(s, c)`` of ``e``'s row sum."""
    zero = jnp.zeros((), s.dtype)
    s1 = jnp.maximum((s - 1.0) + c, zero)
    # Empty rows (m = -inf) have s = 0: no mass at all, S' = 0 (not -1).
    return jnp.where(m == -jnp.inf, zero, s1)


class RowParts(NamedTuple):
    """The shifted pieces of a row, shared by every softmax-type computation.

    ``shifted = x - m`` (``-inf`` at masked classes, 0 at ``+inf`` entries of a ``+inf`` row),
    ``e = exp(shifted)``, ``s1 = S'`` (the sum of ``e`` over all classes but one arg-max, >= 0),
    ``n_top`` the number of arg-max entries, ``top`` their indicator. ``m`` is the row max
    (``-inf`` for an empty row); all reductions keep their dims. ``lo`` is the rounding error
    of ``shifted`` (``x - m == shifted + lo`` exactly; 0 at the arg-max and wherever
    ``shifted`` is not finite, no derivative): ``exp(shifted) · (1 + lo)`` is ``exp(x - m)`` to
    an ulp even when ``|x - m|`` is large (the information measures' gradients need that; XLA
    drops it where it is unused).
    """

    m: jax.Array
    shifted: jax.Array
    e: jax.Array
    s1: jax.Array
    top: jax.Array
    n_top: jax.Array
    lo: jax.Array


def row_parts(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]) -> RowParts:
    """Plain jnp code, differentiable to any order with correct derivatives.

    This is the general-purpose form, for code that JAX differentiates through (poly, focal,
    the information measures, the primitives' rules): ``S'`` leaves the arg-max out with an
    explicit mask, so its reverse-mode derivative at the arg-max is ``-S'`` exactly. The fast
    loss cores (integer and soft CE) use :func:`row_max` / :func:`shift_by_max` /
    :func:`mass_beyond_top` instead, with their own derivative rules: there ``S' = (s - 1) + c``
    is exact in value, but the reverse-mode derivative of that form at the arg-max would be
    ``1 - (1 + S')``, which rounds a tiny ``S'`` away.

    The shift keeps its true derivative (no ``stop_gradient``): ``jnp.max`` spreads its tangent
    evenly over tied maxima, and with that the tangent of ``S'`` (which drops the arg-max terms)
    equals the tangent of the full sum, so the derivative rules built on these parts stay exact
    when JAX differentiates them again (Hessians).
    """
    xm = x if where is None else jnp.where(where, x, -jnp.inf)
    m = jnp.max(xm, axis=axes, keepdims=True, initial=-jnp.inf)
    nonempty = m > -jnp.inf  # False for empty rows and for NaN rows
    top = (xm == m) & nonempty
    zero = jnp.zeros((), x.dtype)
    # No inf - inf anywhere (so jax.debug_nans stays quiet): an empty row shifts by 0, and a
    # +inf row is set directly (its +inf entries to 0, the rest to -inf). Elsewhere the shift
    # is x - m, exact at the arg-max.
    m_shift = jnp.where(jnp.isinf(m), zero, m)
    d = xm - m_shift
    # Exactly 0 at the arg-max even when XLA contracts a fused ``x * c - m`` into an FMA (see
    # :func:`shift_by_max`), keeping the derivative of ``x - m`` (ties need it for Hessians).
    d = jnp.where(top, zero_with_tangent(d), d)
    shifted = jnp.where(m == jnp.inf, jnp.where(top, zero, jnp.array(-jnp.inf, x.dtype)), d)
    e = jnp.exp(shifted)
    n_top = jnp.sum(top, axis=axes, keepdims=True, dtype=x.dtype)  # exact: integers
    s1 = row_sum(jnp.where(top, jnp.zeros((), x.dtype), e), axes, keepdims=True)
    s1 = s1 + jnp.maximum(n_top - 1.0, 0.0)
    live = jnp.isfinite(shifted) & jnp.isfinite(m) & ~top
    _, lo = _two_sum(jnp.where(live, xm, zero), -jnp.where(live, m_shift, zero))
    lo = jax.lax.stop_gradient(jnp.where(live, lo, zero))
    return RowParts(m, shifted, e, s1, top, n_top, lo)


def _lse_minus_value(parts: RowParts, ref: jax.Array) -> jax.Array:
    m = parts.m
    zero = jnp.zeros((), m.dtype)
    # m - ref without inf - inf: (+inf, +inf) -> 0 (tied +inf entries), and an empty row
    # against a -inf reference -> +inf (the reference class has probability 0). Finite ties
    # keep m - ref, whose derivative the Hessian needs.
    both_inf = (m == ref) & jnp.isinf(m)
    d = jnp.where(both_inf, zero, m) - jnp.where(both_inf, zero, ref)
    d = jnp.where(both_inf & (m < 0), jnp.array(jnp.inf, m.dtype), d)
    return d + jnp.log1p(parts.s1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def lse_minus(
    x: jax.Array, ref: jax.Array, where: jax.Array | None, axes: tuple[int, ...]
) -> jax.Array:
    """``logsumexp(x, axes, where) - ref`` (dims kept), computed as ``(m - ref) + log1p(S')``.

    With ``ref = 0`` this is logsumexp itself; with ``ref`` = the target logit and ``where``
    excluding the target, it is the argument of the integer-label cross-entropy's softplus,
    free of the ``lse(x) - x_y`` cancellation. Derivative: ``sum(p * x_dot) - ref_dot`` with
    ``p`` the (masked) softmax, 0 for empty rows.
    """
    return _lse_minus_value(row_parts(x, where, axes), ref)


@lse_minus.defjvp
def _lse_minus_jvp(axes: tuple[int, ...], primals, tangents):
    x, ref, where = primals
    x_dot, ref_dot, _ = tangents
    parts = row_parts(x, where, axes)
    p = parts.e / (1.0 + parts.s1)
    return (
        _lse_minus_value(parts, ref),
        jnp.sum(p * x_dot, axis=axes, keepdims=True) - ref_dot,
    )


def _log_softmax_value(parts: RowParts) -> jax.Array:
    return parts.shifted - jnp.log1p(parts.s1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _log_softmax(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]) -> jax.Array:
    return _log_softmax_value(row_parts(x, where, axes))


@_log_softmax.defjvp
def _log_softmax_jvp(axes: tuple[int, ...], primals, tangents):
    x, where = primals
    x_dot, _ = tangents
    parts = row_parts(x, where, axes)
    p = parts.e / (1.0 + parts.s1)
    t = x_dot - jnp.sum(p * x_dot, axis=axes, keepdims=True)
    # An empty row is constant -inf: derivative 0, not the identity (NaN rows stay NaN).
    t = jnp.where(parts.m == -jnp.inf, jnp.zeros((), t.dtype), t)
    if where is not None:
        t = jnp.where(where, t, jnp.zeros((), t.dtype))
    return _log_softmax_value(parts), t


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _softmax(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]) -> jax.Array:
    parts = row_parts(x, where, axes)
    return parts.e / (1.0 + parts.s1)


@_softmax.defjvp
def _softmax_jvp(axes: tuple[int, ...], primals, tangents):
    x, where = primals
    x_dot, _ = tangents
    p = _softmax(x, where, axes)
    # Written from the output, as jax.nn.softmax does: p * (x_dot - <p, x_dot>).
    return p, p * (x_dot - jnp.sum(p * x_dot, axis=axes, keepdims=True))


def _row_inputs(
    x: ArrayLike, axis: Axis, where: ArrayLike | None
) -> tuple[jax.Array, tuple[int, ...], jax.Array | None]:
    arr = _float_in(x)
    axes = canonical_axes(axis, arr.ndim)
    return arr, axes, mask_array(where, tuple(arr.shape), axes)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _logsumexp_core(
    x: jax.Array, mask: jax.Array | None, axes: tuple[int, ...], keepdims: bool
) -> jax.Array:
    arr = x.astype(compute_dtype(x.dtype))
    out = lse_minus(arr, jnp.zeros((), arr.dtype), mask, axes)
    if not keepdims:
        out = jnp.squeeze(out, axes)
    return out.astype(x.dtype)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _normalize_core(fn, x: jax.Array, mask: jax.Array | None, axes: tuple[int, ...]):
    return fn(x.astype(compute_dtype(x.dtype)), mask, axes).astype(x.dtype)


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
    return _logsumexp_core(arr, mask, axes, keepdims)


def log_softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> jax.Array:
    r"""Log-softmax :math:`x_k - \log\sum_j e^{x_j}`, accurate for the dominant class too.

    Computed as ``(x - m) - log1p(S')`` (see :func:`logsumexp`), so the log-probability of a
    confident class, e.g. ``-1e-30``, is not rounded to 0 as ``x - logsumexp(x)`` rounds it.
    Masked classes give ``-inf`` with derivative 0; an empty row gives ``-inf`` everywhere;
    ``+inf`` entries share the probability (``-log(n_inf)`` each, ``-inf`` elsewhere).

    Args:
      x: logits, any shape.
      axis: axis or tuple of axes of the classes.
      where: optional boolean mask broadcastable to ``x`` (True = include).

    Returns:
      Log-probabilities, same shape and dtype as ``x``.
    """
    arr, axes, mask = _row_inputs(x, axis, where)
    return _normalize_core(_log_softmax, arr, mask, axes)


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
    return _normalize_core(_softmax, arr, mask, axes)

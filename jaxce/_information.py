r"""Information measures of categorical distributions given by logits.

Entropy, KL divergence and Jensen-Shannon divergence of ``softmax(logits)``, for reinforcement
learning (entropy bonuses, KL penalties between policies) and distillation. The point is the
masked action: an action removed by a ``-inf`` logit (or ``where=False``) has probability 0 and
must leave no trace, in the value *and* in every derivative. The usual formulas
``-sum(p * log p)`` and ``sum(p * (log p - log q))`` evaluate ``0 · (-inf)`` there and return NaN
(PyTorch #40553 for ``Categorical(logits=...).entropy()``, huggingface/trl #7221 for
``entropy_from_logits``, optax #896 / PR #1786 for the same ``0 · log 0`` in the losses).

Every function here is built on the row statistics of :mod:`jaxce._rows`: one
``row_stats`` per distribution gives ``x - m``, ``exp(x - m)`` and ``S'``, from which
``log p = (x - m) - log1p(S')`` and ``p = e / (1 + S')`` (the same log-softmax and softmax as
:func:`jaxce.log_softmax` / :func:`jaxce.softmax`), and products with a zero probability go
through :func:`jaxce.safe_mul`. Each function has a ``jax.custom_jvp`` whose rule is itself
plain, differentiable ``jnp`` (Hessians are exact and finite where the math is).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._checks import Axis, broadcast_pair, canonical_axes, float_array, mask_array
from jaxce._divergences import bregman_term
from jaxce._primitives import stable_softplus
from jaxce._rows import Reduction, RowStats, reduction_for, row_stats, row_sum, two_sum

__all__ = ["entropy", "jensen_shannon_divergence", "kl_divergence_with_logits"]


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _p_times(parts: RowStats, c: jax.Array, scale: float = 1.0) -> jax.Array:
    """``p_k · c_k`` with ``p = e / (1 + S')``, also where ``p_k`` alone is subnormal.

    A gradient ``p_k (m - x_k - A)`` is normal for ``p_k`` down to ``tiny / 100``; forming
    ``p_k`` first flushes it to 0 (XLA flushes subnormals). Here ``e_k · c_k`` is
    ``(e^{s/2} c_k) e^{s/2}`` (``s = x_k - m``; ``s/2`` is exact and both factors are normal
    wherever the product can be), then divided by ``1 + S'``, and corrected for the rounding
    of ``s`` itself (``RowStats.shift_error``: a class 100 nats below the top otherwise carries a
    relative error of ``100 u`` in ``p_k``). A zero-probability class
    (``s = -inf``) gives 0 whatever ``c`` (0 · inf = 0); ``c = ±inf`` on a class of positive
    probability gives ``±inf``; NaN propagates. ``scale`` (a power of 2) multiplies the result
    without overflowing ``c``.
    """
    s = parts.shifted
    zero = jnp.zeros((), s.dtype)
    live = ~jnp.isneginf(s)
    eh = jnp.exp(0.5 * jnp.where(live, s, zero))
    c_live = jnp.where(live, c, zero)
    c_fin = jnp.where(jnp.isinf(c_live), zero, c_live)
    out = ((eh * c_fin) * (eh * scale)) / (1.0 + parts.s1)
    # exp(x - m), not exp(fl(x - m)) (see RowStats.shift_error); an overflowed product stays inf.
    out = jnp.where(jnp.isfinite(out), out + out * parts.shift_error, out)
    out = jnp.where(jnp.isinf(c_live), jax.lax.stop_gradient(c_live), out)
    return jnp.where(live, out, zero)


def _centered(
    parts: RowStats,
    pos: jax.Array,
    d: jax.Array,
    mean: jax.Array,
    axes: tuple[int, ...],
    eps: jax.Array | None = None,
    eps_mean: jax.Array | None = None,
) -> jax.Array:
    """``d_j - mean`` with ``mean = sum_k p_k d_k`` (given, accurate), on p's support.

    At a dominant class (``p_j > 1/2``) the two are nearly equal and the difference is
    formed as ``sum_{k != j} p_k (d_j - d_k)`` instead (non-cancelling for ``p_j → 1``: the
    gradient ``p_j (d_j - mean)`` of a confident policy is then accurate to its own size).
    With ``eps = c - d`` for a constant ``c`` (and ``eps_mean = c - mean``), each difference is
    taken in whichever of the two forms has the smaller operands (``eps`` small: JS of nearly
    disjoint distributions, where ``d = log 2 - eps``).
    """
    zero = jnp.zeros((), d.dtype)
    d = jnp.where(pos, d, zero)
    plain = d - mean
    dom = parts.top & (parts.n_top == 1) & (parts.s1 < 1.0) & pos
    d_top = jnp.sum(jnp.where(dom, d, zero), axis=axes, keepdims=True)
    diffs = d_top - d
    if eps is not None and eps_mean is not None:
        eps = jnp.where(pos, eps, zero)
        use_eps = jnp.abs(d) + jnp.abs(mean) > jnp.abs(eps) + jnp.abs(eps_mean)
        plain = jnp.where(use_eps, eps_mean - eps, plain)
        e_top = jnp.sum(jnp.where(dom, eps, zero), axis=axes, keepdims=True)
        use_eps = jnp.abs(d_top) + jnp.abs(d) > jnp.abs(e_top) + jnp.abs(eps)
        diffs = jnp.where(use_eps, eps - e_top, diffs)
    rest = row_sum(
        jnp.where(dom | ~pos, zero, _p_times(parts, jnp.where(pos, diffs, zero))),
        axes,
        parts.reduction,
        keepdims=True,
    )
    return jnp.where(dom, rest, plain)


_SCALE = 2.0**64


def _small_row_sum(
    terms_of, axes: tuple[int, ...], reduction: Reduction, keepdims: bool = False
) -> jax.Array:
    """``row_sum(terms_of(1))``, but a row whose terms are below the normal range one by one
    (XLA flushes them to 0) while their sum is not, is summed scaled by ``2^64`` instead.

    ``terms_of(scale)`` returns the terms computed with their weights multiplied by ``scale``
    (an exact power of 2); the scaled sum is used where the plain one is below ``2^-60``, where
    no scaled term can overflow.
    """
    plain = row_sum(terms_of(1.0), axes, reduction, keepdims)
    scaled = row_sum(terms_of(_SCALE), axes, reduction, keepdims) * (1.0 / _SCALE)
    return jnp.where(plain < 2.0**-60, scaled, plain)


def _log_base(base: object) -> float | None:
    """``log(base)`` for the unit conversion (None: nats); trace-time checks."""
    if base is None:
        return None
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(
            f"`base` must be a real number > 1 (e.g. 2 for bits) or None for nats; got {base!r} "
            f"(type {type(base).__name__})."
        )
    if not float(base) > 1.0 or math.isinf(float(base)):
        raise ValueError(
            f"`base` must be a finite real number > 1 (e.g. 2 for bits, math.e for nats); "
            f"got {base!r}."
        )
    return math.log(float(base))


def _in_base(out: jax.Array, log_base: float | None) -> jax.Array:
    return out if log_base is None else out / jnp.asarray(log_base, out.dtype)


def _one_input(name: str, x: ArrayLike, axis: Axis, where: ArrayLike | None):
    arr = float_array(name, x)
    axes = canonical_axes(axis, arr.ndim)
    return arr, axes, mask_array(where, tuple(arr.shape), axes)


def _two_inputs(
    name_a: str, a: ArrayLike, name_b: str, b: ArrayLike, axis: Axis, where: ArrayLike | None
):
    aa = float_array(name_a, a)
    bb = float_array(name_b, b)
    aa, bb = broadcast_pair(name_a, aa, name_b, bb)
    dtype = jnp.promote_types(aa.dtype, bb.dtype)
    axes = canonical_axes(axis, aa.ndim)
    return aa.astype(dtype), bb.astype(dtype), axes, mask_array(where, tuple(aa.shape), axes)


def _zero_masked(t: jax.Array, where: jax.Array | None) -> jax.Array:
    return t if where is None else jnp.where(where, t, jnp.zeros((), t.dtype))


# --------------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------------


def _entropy_parts(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...], reduction):
    parts, _ = row_stats(x, where, axes, reduction)
    p = parts.p
    neg_s = -parts.shifted  # m - x_k >= 0 (+inf at masked and -inf classes)
    # A = sum p_k (m - x_k): non-negative terms; 0 · inf = 0 at zero-probability classes.
    a = _small_row_sum(lambda sc: _p_times(parts, neg_s, sc), axes, reduction, keepdims=True)
    return parts, p, neg_s, a


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _entropy(
    x: jax.Array, where: jax.Array | None, axes: tuple[int, ...], reduction: Reduction
) -> jax.Array:
    parts, _, _, a = _entropy_parts(x, where, axes, reduction)
    # H = sum p_k (-log p_k) = sum p_k ((m - x_k) + log1p(S')) = log1p(S') + A: two
    # non-negative numbers, each to full relative precision (H of [0, -80] is 1.5e-33).
    return jnp.squeeze(jnp.log1p(parts.s1) + a, axes)


@_entropy.defjvp
def _entropy_jvp(axes: tuple[int, ...], reduction: Reduction, primals, tangents):
    x, where = primals
    x_dot, _ = tangents
    parts, _, neg_s, a = _entropy_parts(x, where, axes, reduction)
    # dH/dx_j = p_j (-log p_j - H) = p_j ((m - x_j) - A): log1p(S') cancels exactly. The
    # difference d_j = (m - x_j) - A is the size of x_j - sum_k p_k x_k, but its operands can
    # be several times larger (logits of size 1e-4 around 0: m - x_j and A reach 6e-4 while
    # the x_j are 1e-4, and an ulp of A alone is then 4 ulps of the condition number). So
    # m - x_j keeps its rounding error (-lo), and A's own error comes back as
    # A2 = sum_k p_k d_k (0 in exact arithmetic, from terms the size of d).
    zero = jnp.zeros((), x.dtype)
    live = jnp.isfinite(neg_s)
    d = jnp.where(live, (jnp.where(live, neg_s, zero) - a) - parts.shift_error, zero)
    a2 = row_sum(_p_times(parts, d), axes, reduction, keepdims=True)
    g = _zero_masked(_p_times(parts, d - a2), where)
    return _entropy(x, where, axes, reduction), jnp.sum(g * x_dot, axis=axes)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _entropy_core(x, mask, axes, reduction, log_base):
    return _in_base(_entropy(x, mask, axes, reduction), log_base)


def entropy(
    logits: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
) -> jax.Array:
    r"""Shannon entropy :math:`H(p) = -\sum_k p_k \log p_k` of ``p = softmax(logits)``.

    **Stable form.** With ``m`` the row maximum and :math:`S'` the sum of
    :math:`e^{x_k - m}` over all classes but one arg-max (see :func:`jaxce.logsumexp`),
    :math:`-\log p_k = (m - x_k) + \operatorname{log1p}(S')`, so

    .. math:: H = \operatorname{log1p}(S') + \sum_k p_k (m - x_k),

    a sum of non-negative terms: a near-deterministic distribution keeps full relative
    precision (``logits [0, -80]``: ``H = 81 e^{-80} = 1.46e-33``; ``-sum(p * log_softmax)``
    loses the ``log1p(S')`` part and is 1.2% off). A zero-probability class contributes
    ``0 · inf = 0``; terms that are subnormal one by one are summed scaled by ``2^64``.
    Gradient :math:`\partial H/\partial x_j = p_j(-\log p_j - H)
    = p_j((m - x_j) - \sum_k p_k (m - x_k))`, where ``log1p(S')`` cancels exactly. Condition
    number scored against: :math:`\kappa = \sum_j |x_j|\,p_j\,|\log p_j + H|`.

    ===================================  ==============================  =====================
    row                                  value                           gradient
    ===================================  ==============================  =====================
    ``-inf`` logit (masked action)       that class contributes 0        0 on that class
    ``where=False`` (masked action)      class removed                   0 on that class
    all masked / all ``-inf``            0                               0
    ``n`` entries ``+inf``               :math:`\log n`                  0
    NaN logit (unmasked)                 NaN                             NaN
    ===================================  ==============================  =====================

    No NaN anywhere in the value, gradient or Hessian of a row with masked actions (PyTorch
    #40553, huggingface/trl #7221: ``Categorical(logits).entropy()`` / ``entropy_from_logits``
    give NaN there).

    Args:
      logits: unnormalized log-probabilities, ``[..., num_classes]``.
      axis: class axis or tuple of axes (``None``: all).
      where: optional boolean mask, full shape or batch shape (True = include).
      base: logarithm base, e.g. 2 for bits; ``None`` (default) for nats. Must be > 1.

    Returns:
      The entropy per example, class axes removed, float32 for 16-bit inputs.

    >>> import jax, jax.numpy as jnp, jaxce
    >>> x = jnp.array([0.0, 0.0, -jnp.inf])  # a masked action
    >>> float(jaxce.entropy(x, base=2)), [abs(g) for g in jax.grad(jaxce.entropy)(x).tolist()]
    (1.0, [0.0, 0.0, 0.0])
    >>> float(jaxce.entropy(jnp.array([0.0, -80.0])))
    1.46...e-33
    """
    arr, axes, mask = _one_input("logits", logits, axis, where)
    return _entropy_core(arr, mask, axes, reduction_for(arr), _log_base(base))


# --------------------------------------------------------------------------------------------
# KL divergence between two categorical distributions given by logits
# --------------------------------------------------------------------------------------------


# Log-ratios of two rows: with dx_k = (a_k - m_a) - (b_k - m_b), log p_k - log q_k =
# dx_k - D with D = log1p(S'_a) - log1p(S'_b) = log1p(sum_k q_k expm1(dx_k)). That form has no
# rounding of either log1p (u·log V, which swamps a tiny KL for logits of size 1e-4); it is used
# where its own rounding is smaller (p's support inside q's); otherwise log p - log q from the
# two log-softmaxes.
_NEAR = 80.0  # expm1(dx) stays finite


class _Pair(NamedTuple):
    parts_p: RowStats
    parts_q: RowStats
    p: jax.Array
    q: jax.Array
    pos_p: jax.Array
    pos_q: jax.Array
    delta: jax.Array  # log p - log q where both > 0, else 0


def _pair(
    a: jax.Array,
    b: jax.Array,
    where: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
) -> _Pair:
    pa, pb = row_stats(a, where, axes, reduction)[0], row_stats(b, where, axes, reduction)[0]
    p, q = pa.p, pb.p
    # Present classes: finite shifted logit (p may still underflow; p = 0 exactly only for
    # masked and -inf classes, and for the finite ones of a +inf row).
    pos_p, pos_q = ~jnp.isneginf(pa.shifted), ~jnp.isneginf(pb.shifted)
    both = pos_p & pos_q
    zero = jnp.zeros((), a.dtype)
    plain = jnp.where(both, pa.log_p, zero) - jnp.where(both, pb.log_p, zero)
    # dx = (a_k - b_k) - (m_a - m_b), each difference with its rounding error carried (two-sum):
    # accurate to an ulp of dx itself, and exactly 0 when the rows are shifts of each other.
    fin_row = jnp.isfinite(pa.m) & jnp.isfinite(pb.m)
    live = both & fin_row
    d1, e1 = two_sum(jnp.where(live, a, zero), -jnp.where(live, b, zero))
    d2, e2 = two_sum(jnp.where(fin_row, pa.m, zero), -jnp.where(fin_row, pb.m, zero))
    dx = (d1 - d2) + (e1 - e2)
    near_k = jnp.where(pos_q, ~pos_p | (dx <= _NEAR), ~pos_p)  # p's support inside q's
    near = jnp.all(near_k, axis=axes, keepdims=True) & fin_row
    em1 = jnp.where(pos_p, jnp.expm1(jnp.where(live & (dx <= _NEAR), dx, zero)), zero - 1.0)
    s = row_sum(jnp.where(pos_q, q * em1, zero), axes, reduction, keepdims=True)
    # Rounding of D through s: u·sum q|expm1(dx)| / (1 + s); through the two log1p: u·(L_a +
    # L_b). Take the smaller (1 + s near 0, or large dx, make the first large).
    # A third form, D = log(sum_k q_k e^{dx_k}) (positive terms): rounding ~2u whatever L.
    err_s = row_sum(jnp.where(pos_q, q * jnp.abs(em1), zero), axes, reduction, keepdims=True)
    err_plain = jnp.log1p(pa.s1) + jnp.log1p(pb.s1)
    one_s = 1.0 + jnp.where(near, s, zero)
    use_s = near & (one_s > 0.0) & (err_s <= jnp.minimum(err_plain, 2.0) * one_s)
    use_l = near & ~use_s & (err_plain > 2.0)
    ex = jnp.where(pos_p, jnp.exp(jnp.where(live & (dx <= _NEAR), dx, zero)), zero)
    w_sum = row_sum(jnp.where(pos_q, q * ex, zero), axes, reduction, keepdims=True)
    near = use_s | use_l
    d = jnp.where(
        use_s,
        _log1p(jnp.where(use_s, s, zero)),
        jnp.log(jnp.where(use_l, w_sum, zero + 1.0)),
    )
    # delta = dx - D = (d1 + e1) - (d2 + e2 + D). The offset d2 + D is carried as two floats
    # (two-sum), so each delta_k is rounded once, at its own size: dx alone can be several
    # times larger than delta (rows of logits of size 1e-4 and 1e-3 around 0, whose maxima
    # differ by 3e-3 while delta is 1e-3), and an ulp of it is then several ulps of the
    # condition number.
    # (d2 is 0 off finite rows, and `near` implies a finite row; entries off `live` are unused.)
    c_hi, c_lo = two_sum(jnp.where(near, d2, zero), jnp.where(near, d, zero))
    near_delta = jnp.where(live, (jnp.where(live, d1, zero) - c_hi) + ((e1 - e2) - c_lo), zero)
    # D's own rounding is a common error eps in every delta_k; with the rounded deltas,
    # sum_k q_k expm1(delta_k) (expm1 = -1 off p's support) is e^{-eps} - 1 instead of 0, and
    # is formed from terms the size of delta. q_k expm1(delta_k) = p_k - q_k is taken as
    # -p_k expm1(-delta_k) for delta_k > 0 (no overflow of expm1 where q_k is tiny).
    up = live & (near_delta > 0.0)
    nd_up = jnp.where(up, near_delta, zero)
    nd_dn = jnp.where(live & ~up, near_delta, zero)
    r_terms = jnp.where(
        up,
        -_p_times(pa, jnp.expm1(-nd_up)),
        jnp.where(live, _p_times(pb, jnp.expm1(nd_dn)), -q),
    )
    r = row_sum(jnp.where(pos_q & near, r_terms, zero), axes, reduction, keepdims=True)
    near_delta = near_delta - jax.lax.stop_gradient(_log1p(jnp.where(near, r, zero)))
    delta = jnp.where(both, jnp.where(near, near_delta, plain), zero)
    return _Pair(pa, pb, p, q, pos_p, pos_q, delta)


def _kl_delta(pr: _Pair) -> jax.Array:
    """log p - log q on p's support: +inf where q = 0 < p."""
    return jnp.where(pr.pos_p & ~pr.pos_q, jnp.array(jnp.inf, pr.p.dtype), pr.delta)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _kl_logits(
    a: jax.Array,
    b: jax.Array,
    where: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
) -> jax.Array:
    pr = _pair(a, b, where, axes, reduction)
    p, q, pos, delta = pr.p, pr.q, pr.pos_p, _kl_delta(pr)

    # KL = sum_{p_k > 0} p_k phi(delta_k) + sum_{p_k = 0} q_k with phi(d) = e^-d - 1 + d >= 0:
    # the same sum as sum p_k delta_k (because sum q = 1), but of non-negative terms, so two
    # nearly equal distributions give their tiny KL without cancellation.
    def terms(sc: float) -> jax.Array:
        qs = q * sc
        t = jnp.where(pos, bregman_term(jnp.where(pos, p, 1.0) * sc, qs, delta), qs)
        return _zero_masked(t, where)

    return _small_row_sum(terms, axes, reduction)


@_kl_logits.defjvp
def _kl_logits_jvp(axes: tuple[int, ...], reduction: Reduction, primals, tangents):
    a, b, where = primals
    a_dot, b_dot, _ = tangents
    pr = _pair(a, b, where, axes, reduction)
    p, q, pos, delta = pr.p, pr.q, pr.pos_p, _kl_delta(pr)
    kl = _kl_logits(a, b, where, axes, reduction)
    kl_k = jnp.expand_dims(kl, axes)
    inf = jnp.array(jnp.inf, a.dtype)
    # d/da_j = p_j (delta_j - KL); with KL = +inf (an action masked in q only) the limit is
    # +inf on the classes with q = 0 and -inf on the others of p's support.
    finite = ~jnp.isinf(kl_k)
    fin_delta = jnp.where(finite, delta, 0.0)
    diff = _centered(pr.parts_p, pos, fin_delta, jnp.where(finite, kl_k, 0.0), axes)
    diff = jnp.where(finite, diff, jnp.where(jnp.isposinf(delta), inf, -inf))
    g_a = _zero_masked(_p_times(pr.parts_p, jnp.where(pos, diff, 0.0)), where)
    # d/db_j = q_j - p_j, as p_j expm1(-delta_j) where q is close to p (no cancellation).
    near = pos & (delta > -1.0)
    g_b = jnp.where(near, p * jnp.expm1(-jnp.where(near, delta, 0.0)), q - p)
    g_b = _zero_masked(g_b, where)
    return kl, jnp.sum(g_a * a_dot, axis=axes) + jnp.sum(g_b * b_dot, axis=axes)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _kl_logits_core(a, b, mask, axes, reduction, log_base):
    return _in_base(_kl_logits(a, b, mask, axes, reduction), log_base)


def kl_divergence_with_logits(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
) -> jax.Array:
    r"""KL divergence :math:`\mathrm{KL}(P \| Q) = \sum_k p_k (\log p_k - \log q_k)` from logits.

    ``P = softmax(p_logits)`` is the distribution the expectation is taken under (the
    "true" / behaviour / current policy) and ``Q = softmax(q_logits)`` the approximating one
    (reference / target policy). Note the order is the reverse of :func:`jaxce.kl_divergence`,
    whose first argument is the *approximating* log-probabilities.

    **Stable form.** With :math:`\delta_k = \log p_k - \log q_k` (each log-probability from
    its row's ``(x - m) - log1p(S')``) and :math:`\varphi(\delta) = e^{-\delta} - 1 + \delta
    \ge 0`,

    .. math:: \mathrm{KL} = \sum_{p_k > 0} p_k\,\varphi(\delta_k) + \sum_{p_k = 0} q_k,

    equal to :math:`\sum p_k\delta_k` because :math:`\sum q_k = 1`, but a sum of non-negative
    terms, with :math:`\varphi` evaluated without cancellation (see
    :func:`jaxce.generalized_kl_divergence`): two nearly equal distributions give their tiny
    divergence (:math:`\approx \frac12\sum p_k\delta_k^2`) to a few ulps instead of the rounding
    noise of :math:`\sum p_k\delta_k`. The bound is in ulps of the value plus the condition
    number :math:`\kappa = \sum_j |a_j|\,p_j\,|\delta_j - \mathrm{KL}| + \sum_j |b_j|\,|q_j -
    p_j|` (``a``, ``b`` the two logit rows). Gradients: :math:`\partial/\partial a_j =
    p_j(\delta_j - \mathrm{KL})`, :math:`\partial/\partial b_j = q_j - p_j` (as
    :math:`p_j\,\mathrm{expm1}(-\delta_j)` near ``q = p``).

    =========================================  ==========  ====================================
    case                                       value       gradient (``p_logits``, ``q_logits``)
    =========================================  ==========  ====================================
    action masked in both (``-inf`` or         term 0      0, 0 on that action
    ``where=False``)
    action ``-inf`` in ``p`` only              term 0      0, :math:`q_j` on that action
    action ``-inf`` in ``q`` only              ``+inf``    ``±inf`` (the limit), finite
                                                           :math:`q_j - p_j`
    all masked / both rows all ``-inf``        0           0
    NaN logit (unmasked)                       NaN         NaN
    =========================================  ==========  ====================================

    ``KL = +inf`` when ``Q`` gives probability 0 to an action ``P`` can take: that is the
    divergence, not an overflow. Use a shared ``where`` (or the same ``-inf`` logits in both) for
    actions that are illegal under both policies.

    Args:
      p_logits: logits of ``P``, ``[..., num_classes]``.
      q_logits: logits of ``Q``, same rank, broadcastable.
      axis: class axis or tuple of axes (``None``: all).
      where: optional boolean mask applied to both distributions (True = include).
      base: logarithm base, e.g. 2 for bits; ``None`` (default) for nats.

    Returns:
      The divergence per example, class axes removed, float32 for 16-bit inputs.

    >>> import jax, jax.numpy as jnp, jaxce
    >>> p = jnp.array([1.0, 0.0, -jnp.inf]); q = jnp.array([0.0, 1.0, -jnp.inf])
    >>> round(float(jaxce.kl_divergence_with_logits(p, q)), 6)
    0.462117
    >>> [g.tolist() for g in jax.grad(jaxce.kl_divergence_with_logits, (0, 1))(p, q)]
    [[0.393..., -0.393..., 0.0], [-0.462..., 0.462..., 0.0]]
    """
    a, b, axes, mask = _two_inputs("p_logits", p_logits, "q_logits", q_logits, axis, where)
    return _kl_logits_core(a, b, mask, axes, reduction_for(a), _log_base(base))


# --------------------------------------------------------------------------------------------
# Jensen-Shannon divergence
# --------------------------------------------------------------------------------------------


def _log1p(x: jax.Array) -> jax.Array:
    """``log1p``, with ``[-0.5, -0.25]`` done by hand: XLA:CPU's float64 ``log1p`` is up to 240
    ulps off on ``[-0.414, -0.356]`` (measured with jax 0.10.2 against mpmath; float32 is fine).

    There ``t = 1 + x`` and ``t - 1`` are computed, ``e = x - (t - 1)`` is the exact rounding
    error of ``t``, and ``log1p(x) = log(t) + e / t`` to about an ulp.
    """
    band = (x >= -0.5) & (x <= -0.25)
    xb = jnp.where(band, x, -0.375)
    t = 1.0 + xb
    corrected = jnp.log(t) + (xb - (t - 1.0)) / t
    return jnp.where(band, corrected, jnp.log1p(jnp.where(band, 0.0, x)))


def _log_ratio_to_mixture(z: jax.Array) -> jax.Array:
    """``log(p / m)`` with ``m = (p + q)/2`` from ``z = log q - log p``: ``-log((1 + e^z)/2)``.

    ``-log1p(expm1(z)/2)`` keeps relative precision near ``z = 0`` (``p ≈ q``, where
    ``log 2 - softplus(z)`` would cancel); for ``z > 1`` it is ``log 2 - softplus(z)`` (no
    overflow of ``e^z``, cancellation at most a factor 1.5). ``z = -inf`` gives ``log 2``.
    """
    hi = z > 1.0
    z_lo = jnp.where(hi, 0.0, z)
    z_hi = jnp.where(hi, z, 2.0)
    near = -_log1p(0.5 * jnp.expm1(z_lo))
    # softplus(z) = z + log1p(e^-z) for z > 1 (the primitive's formula on that side).
    far = jnp.log(2.0) - (z_hi + jnp.log1p(jnp.exp(-z_hi)))
    return jnp.where(hi, far, near)


def _js_parts(a: jax.Array, b: jax.Array, where: jax.Array | None, axes, reduction):
    return _js_parts_of(_pair(a, b, where, axes, reduction))


def _js_parts_of(pr: _Pair):
    both = pr.pos_p & pr.pos_q
    z = -pr.delta  # log q - log p where both > 0
    # delta_p = log(p/m), delta_q = log(q/m): finite on each support (<= log 2).
    d_p = jnp.where(both, _log_ratio_to_mixture(z), jnp.log(2.0))
    d_q = jnp.where(both, _log_ratio_to_mixture(-z), jnp.log(2.0))
    return pr.p, pr.q, d_p, d_q


def _kl_to_mixture(p: jax.Array, q: jax.Array, d_p: jax.Array) -> jax.Array:
    # KL(p || m) = sum_{p>0} p phi(log(p/m)) + sum_{p=0} m: non-negative terms (m = q/2 there).
    pos = p > 0
    m = 0.5 * (p + q)
    terms = jnp.where(pos, bregman_term(jnp.where(pos, p, 1.0), m, d_p), m)
    return terms


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _js(
    a: jax.Array,
    b: jax.Array,
    where: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
) -> jax.Array:
    p, q, d_p, d_q = _js_parts(a, b, where, axes, reduction)

    def terms(sc: float) -> jax.Array:
        ps, qs = p * sc, q * sc
        t = _kl_to_mixture(ps, qs, d_p) + _kl_to_mixture(qs, ps, d_q)
        return _zero_masked(t, where)

    return 0.5 * _small_row_sum(terms, axes, reduction)


def _kl_to_mixture_sum(p, q, d_p, where, axes, reduction):
    terms = _zero_masked(_kl_to_mixture(p, q, d_p), where)
    return row_sum(terms, axes, reduction, keepdims=True)


@_js.defjvp
def _js_jvp(axes: tuple[int, ...], reduction: Reduction, primals, tangents):
    a, b, where = primals
    a_dot, b_dot, _ = tangents
    pr = _pair(a, b, where, axes, reduction)
    p, q, d_p, d_q = _js_parts_of(pr)
    k_p = _kl_to_mixture_sum(p, q, d_p, where, axes, reduction)
    k_q = _kl_to_mixture_sum(q, p, d_q, where, axes, reduction)
    # dJS/da_j = p_j (log(p_j/m_j) - KL(p||m)) / 2, and symmetrically for b: always finite.
    # eps = log 2 - log(p/m) = softplus(log q - log p) >= 0 (0 where q = 0): the small form
    # when the supports barely overlap, with sum_k p_k eps_k = log 2 - KL(p||m) >= 0.
    both = pr.pos_p & pr.pos_q
    z = jnp.where(both, -pr.delta, 0.0)
    e_p = jnp.where(both, stable_softplus(z), 0.0)
    e_q = jnp.where(both, stable_softplus(-z), 0.0)
    m_p = _small_row_sum(lambda sc: _p_times(pr.parts_p, e_p, sc), axes, reduction, True)
    m_q = _small_row_sum(lambda sc: _p_times(pr.parts_q, e_q, sc), axes, reduction, True)
    c_p = _centered(pr.parts_p, pr.pos_p, d_p, k_p, axes, e_p, m_p)
    c_q = _centered(pr.parts_q, pr.pos_q, d_q, k_q, axes, e_q, m_q)
    g_a = _zero_masked(_p_times(pr.parts_p, jnp.where(pr.pos_p, c_p, 0.0)), where)
    g_b = _zero_masked(_p_times(pr.parts_q, jnp.where(pr.pos_q, c_q, 0.0)), where)
    out = _js(a, b, where, axes, reduction)
    return out, 0.5 * (jnp.sum(g_a * a_dot, axis=axes) + jnp.sum(g_b * b_dot, axis=axes))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _js_core(a, b, mask, axes, reduction, log_base):
    return _in_base(_js(a, b, mask, axes, reduction), log_base)


def jensen_shannon_divergence(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
) -> jax.Array:
    r"""Jensen-Shannon divergence of ``P = softmax(p_logits)`` and ``Q = softmax(q_logits)``.

    .. math:: \mathrm{JS} = \tfrac12 \mathrm{KL}(P \| M) + \tfrac12 \mathrm{KL}(Q \| M),
        \qquad M = \tfrac12 (P + Q),

    symmetric, bounded by :math:`\log 2` (1 bit with ``base=2``), finite even when one
    distribution gives probability 0 to an action the other can take.

    **Stable form.** :math:`\log(p_k/m_k) = -\log\frac{1 + e^{z_k}}{2}` with
    :math:`z_k = \log q_k - \log p_k` (a stable log-add-exp of the two log-probabilities,
    evaluated as ``-log1p(expm1(z)/2)`` near ``z = 0``); each KL is summed as
    :math:`\sum_{p_k>0} p_k\varphi(\log(p_k/m_k)) + \sum_{p_k=0} m_k` with
    :math:`\varphi(d) = e^{-d} - 1 + d \ge 0` (see :func:`kl_divergence_with_logits`), so
    nearly equal distributions give their tiny JS (:math:`\approx \frac18\sum p_k z_k^2`)
    without cancellation. Gradients: :math:`\partial/\partial a_j = \frac12 p_j(\log(p_j/m_j)
    - \mathrm{KL}(P\|M))`, symmetrically for ``q_logits``. Condition number scored against:
    :math:`\kappa = \sum_j |a_j\,\partial_{a_j}\mathrm{JS}| + \sum_j |b_j\,\partial_{b_j}
    \mathrm{JS}|`.

    =========================================  ==============  ==================================
    case                                       value           gradient
    =========================================  ==============  ==================================
    action masked in both (``-inf`` or         term 0          0 on that action
    ``where=False``)
    action ``-inf`` in one only                finite          finite; 0 wrt the ``-inf`` logit
    disjoint supports                          :math:`\log 2`  0
    all masked                                 0               0
    NaN logit (unmasked)                       NaN             NaN
    =========================================  ==============  ==================================

    Args:
      p_logits: logits of ``P``, ``[..., num_classes]``.
      q_logits: logits of ``Q``, same rank, broadcastable.
      axis: class axis or tuple of axes (``None``: all).
      where: optional boolean mask applied to both distributions (True = include).
      base: logarithm base, e.g. 2 for bits; ``None`` (default) for nats.

    Returns:
      The divergence per example, class axes removed, float32 for 16-bit inputs.

    >>> import jax.numpy as jnp, jaxce
    >>> p = jnp.array([0.0, -jnp.inf]); q = jnp.array([-jnp.inf, 0.0])
    >>> float(jaxce.jensen_shannon_divergence(p, q, base=2))  # disjoint supports: 1 bit
    1.0
    """
    a, b, axes, mask = _two_inputs("p_logits", p_logits, "q_logits", q_logits, axis, where)
    return _js_core(a, b, mask, axes, reduction_for(a), _log_base(base))

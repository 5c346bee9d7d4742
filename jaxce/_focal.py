r"""Losses that reweight the softmax cross-entropy by the complement probability ``1 - p``:
PolyLoss (optax ``poly_loss_cross_entropy``) and the multi-class focal loss.

Both need ``q_k = 1 - p_k`` without cancellation. From the shared row pieces
(:func:`jaxce._rows.row_stats`: row max ``m``, ``S'`` the sum of ``exp(x - m)`` over all
classes but one arg-max), a dominant class (the unique arg-max with ``p > 1/2``) has
``q = S'/(1 + S')`` and ``log q = log S' - log1p(S')``, exact when ``q`` is ``1e-30``; every other
class has ``p <= 1/2``, where ``1 - p`` and ``log1p(-p)`` lose nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxce._checks import (
    Axis,
    canonical_axes,
    class_weights,
    float_array,
    mask_array,
    same_rank_broadcast,
)
from jaxce._options import NONNEGATIVE, scalar_option
from jaxce._primitives import safe_mul
from jaxce._rows import Reduction, RowStats, reduction_for, row_stats, row_sum
from jaxce._softmax import soft_ce_core, soft_ce_pieces
from jaxce._validate import (
    check_nonnegative,
    check_probability_targets,
    nan_where,
    negative,
    outside_unit_interval,
    strict_targets,
)

__all__ = ["poly_loss_cross_entropy", "softmax_focal_loss"]


def _complement(
    x: jax.Array, where: jax.Array | None, axes: tuple[int, ...], reduction: Reduction
) -> tuple[RowStats, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Row statistics, the dominant-class indicator, ``p``, ``q = 1 - p`` and ``log q``.

    Plain jnp (differentiable by JAX with the right derivatives, also at ``±inf`` logits and
    masked classes, where the row statistics keep every intermediate finite or ``-inf``).
    """
    parts, _ = row_stats(x, where, axes, reduction)
    zero, one = jnp.zeros((), x.dtype), jnp.ones((), x.dtype)
    dominant = parts.top & (parts.s1 < 1.0)  # S' < 1: a unique arg-max
    one_plus = 1.0 + parts.s1
    p = parts.e / one_plus
    q = jnp.where(dominant, parts.s1 / one_plus, 1.0 - p)
    # Double `where` on both branches, so that no derivative sees 0 * inf (Hessians): log S' only
    # where S' is a normal number (a zero or flushed-subnormal S' gives log q = -inf, as the plain
    # log does, but with derivative 0 instead of 0/0), and log1p(-p) only off the dominant class
    # (whose p may be 1: derivative -1/(1 - p) = -inf in the unselected branch, NaN in reverse).
    positive = dominant & (parts.s1 >= jnp.finfo(x.dtype).tiny)
    s1 = jnp.where(positive, parts.s1, one)
    log_dominant = jnp.where(positive, jnp.log(s1) - jnp.log1p(s1), -jnp.inf)
    log_q = jnp.where(dominant, log_dominant, jnp.log1p(-jnp.where(dominant, zero, p)))
    return parts, dominant, p, q, log_q


@jax.custom_jvp
def _ratio(n: jax.Array, d: jax.Array) -> jax.Array:
    """``n / d``, with the derivative written as ``(n_dot - (n / d) d_dot) / d``.

    JAX's rule for division forms ``(-d_dot n) * d^-2``, whose ``d^-2`` overflows for a tiny
    ``d`` (``1 - p = 1e-25`` in float32) while ``d_dot n`` underflows: ``0 * inf = NaN`` in the
    Hessian. This form divides once and stays finite wherever the ratio and its derivative are.
    """
    return n / d


@_ratio.defjvp
def _ratio_jvp(primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]):
    (n, d), (n_dot, d_dot) = primals, tangents
    r = n / d
    return r, (n_dot - r * d_dot) / d


# --------------------------------------------------------------------------------------------
# PolyLoss
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _poly_core(
    x: jax.Array,
    t: jax.Array,
    mask: jax.Array | None,
    eps: jax.Array,
    axes: tuple[int, ...],
    reduction: Reduction,
    check_targets: bool,
) -> jax.Array:
    """``CE(x, t) + eps · sum_k t_k (1 - p_k)``."""
    if check_targets:
        t = nan_where(outside_unit_interval(t), t)
    _, _, _, q, _ = _complement(x, mask, axes, reduction)
    tm = t if mask is None else jnp.where(mask, t, jnp.zeros((), x.dtype))
    return soft_ce_core(x, t, mask, axes, reduction) + eps * row_sum(tm * q, axes, reduction)


def poly_loss_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    epsilon: ArrayLike = 2.0,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""PolyLoss (Poly-1): cross-entropy plus ε times the expected complement probability.

    .. math::
       \ell = -\sum_k t_k \log p_k + \varepsilon \sum_k t_k (1 - p_k),
       \qquad p = \operatorname{softmax}(x)

    (optax 0.2.8's ``poly_loss_cross_entropy``; for one-hot labels the Poly-1 form
    :math:`-\log p_y + \varepsilon(1 - p_y)` of Leng et al.)

    **Stable form.** The cross-entropy is the stable soft-label core of
    :func:`jaxce.softmax_cross_entropy`; ``1 - p_k`` is ``S'/(1+S')`` for a dominant class
    (see the module docstring), so a confident correct prediction with ``1 - p_y = 1e-30``
    gives ``(1 + ε)·1e-30``, not 0. Gradients follow by JAX's chain rule through plain jnp
    pieces that stay finite at ``±inf`` logits and masked classes.

    Known limit: for ε close to -1 the loss of a confident correct prediction is
    :math:`-\log(1-q) - q \approx q^2/2`, the difference of two nearly equal terms; its
    relative accuracy is then about ``u / q`` (the other ε are unaffected).

    =====================================================  =================  =================
    case                                                   value              gradient
    =====================================================  =================  =================
    confident correct, ``1 - p_y = 1e-30``                 ``(1+ε)·1e-30``    exact
    zero target on a ``-inf`` logit                        term is 0          0 (optax: NaN)
    positive target on a ``-inf`` logit                    ``+inf``           finite
    ``+inf`` logit(s)                                      they share p       finite
    all classes masked / masked class                      0 / excluded       0
    NaN logit                                              NaN (that row)     NaN (that row)
    any real label (signed, ``> 1``): linear extension     exact              exact
    =====================================================  =================  =================

    Args:
      logits: ``[..., num_classes]``.
      labels: target probabilities, same rank as ``logits`` and broadcastable to it.
      epsilon: the coefficient ε of the first polynomial term (any real scalar; 2 for
        ImageNet, -1 for detection in the paper).
      axis: class axis or tuple of axes.
      where: optional boolean mask, ``logits``' shape or its batch shape.

    Returns:
      Per-example loss, float32 for 16-bit logits.

    >>> import jax.numpy as jnp, jaxce
    >>> logits = jnp.array([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]])
    >>> jaxce.poly_loss_cross_entropy(logits, labels).round(4).tolist()
    [0.4823, 1.2567]

    References:
      Leng et al., *PolyLoss*, ICLR 2022; optax ``poly_loss_cross_entropy``; optax #896.
    """
    x = float_array("logits", logits)
    axes = canonical_axes(axis, x.ndim)
    t = same_rank_broadcast("labels", jnp.asarray(labels), tuple(x.shape)).astype(x.dtype)
    mask = mask_array(where, tuple(x.shape), axes)
    eps = scalar_option("epsilon", epsilon, x.dtype, None)
    check_probability_targets("labels", t, mask)
    reduction = reduction_for(x)
    return _poly_core(x, t, mask, eps, axes, reduction, strict_targets())


# --------------------------------------------------------------------------------------------
# Focal loss
# --------------------------------------------------------------------------------------------


# The modulating factor splits off an integer power: q^n · exp((γ - n) log q), n = floor(γ) up
# to this bound (a larger γ keeps n = 8 and exponentiates the rest).
_MAX_POWER = 8


def _modulating_factor(q: jax.Array, log_q: jax.Array, gamma: jax.Array) -> jax.Array:
    """``(1 - p)^γ`` as ``q^n · exp((γ - n) log q)`` with ``n = min(floor(γ), 8)``.

    ``q^n`` is a few multiplications, one rounding each (binary powers of ``q`` picked by
    ``n``'s bits; ``q·q`` for ``γ = 2``), and the exponential is exactly 1 when ``γ`` is an
    integer: ``exp(γ log q)`` alone would add ``γ`` times the rounding error of ``log q`` and
    the exponential's own (on one float64 grid row, with XLA:CPU's ``log1p``, 4.22 ulps
    instead of 2.74 for ``γ = 2``). ``n`` is computed from ``γ`` in the program, so a traced
    ``γ`` (under ``jit``) gets the same numbers as a Python float. A NaN ``γ`` gives NaN
    (through the exponential); ``q^0 = 1``, also at ``q = 0``, and ``0·log 0 = 0`` in the
    exponent (:func:`safe_mul`), so ``γ = 0`` gives 1.
    """
    n = jnp.clip(jnp.floor(gamma), 0.0, float(_MAX_POWER))
    squares = [q]  # q, q^2, q^4, q^8
    for _ in range(_MAX_POWER.bit_length() - 1):
        squares.append(squares[-1] * squares[-1])
    power = jnp.ones_like(q)
    rest = n
    # Largest bit first: n in [0, 8] is a sum of distinct powers of two.
    for bit in reversed(range(len(squares))):
        use = rest >= 2.0**bit
        power = jnp.where(use, power * squares[bit], power)
        rest = jnp.where(use, rest - 2.0**bit, rest)
    return power * jnp.exp(safe_mul(gamma - n, log_q))


def _focal_pieces(x, a, gamma, where, axes, reduction):
    """Value, gradient wrt logits, wrt the weighted labels ``a`` and wrt ``gamma``.

    With ``c_k = q_k^γ (1 + γ p_k h_k)``, ``h_k = -log p_k / q_k`` (-> 1 as q_k -> 0):
    d/dx_j = p_j Σ_k a_k c_k - a_j c_j, written for the dominant class as
    p_j Σ_{k≠j} a_k c_k - a_j c_j q_j (no cancellation when 1 - p_j is tiny). Every factor is
    finite for γ >= 0, also where q^(γ-1) alone would be infinite.
    """
    parts, dominant, p, q, log_q = _complement(x, where, axes, reduction)
    zero, one = jnp.zeros((), x.dtype), jnp.ones((), x.dtype)
    am = a if where is None else jnp.where(where, a, zero)
    mod = _modulating_factor(q, log_q, gamma)  # (1 - p)^γ
    eff = am * mod
    # The value is the soft-label core with labels a_k (1 - p_k)^γ: for γ = 0 it is the
    # (weighted) cross-entropy bit for bit.
    value = soft_ce_pieces(x, eff, where, axes, reduction)[0]
    nlp = jnp.log1p(parts.s1) - parts.shifted
    # h is only used as p * h: where p = 0 (masked or -inf logit, nlp = +inf) or q = 0 the term is
    # absent, so both operands are replaced first (double `where`: no inf / 1 in any derivative).
    no_h = (q == 0) | (p == 0)
    h = jnp.where(no_h, one, _ratio(jnp.where(no_h, one, nlp), jnp.where(no_h, one, q)))
    c = mod * (1.0 + gamma * safe_mul(p, h))
    ac = am * c
    total = row_sum(ac, axes, reduction, keepdims=True)
    rest = row_sum(jnp.where(dominant, zero, ac), axes, reduction, keepdims=True)
    grad_x = jnp.where(dominant, p * rest - ac * q, p * total - ac)
    absent = (am == 0) & (parts.e == 0)
    if where is not None:
        absent = absent | ~where
    grad_a = jnp.where(absent, zero, mod * nlp)
    grad_gamma = row_sum(safe_mul(safe_mul(eff, nlp), log_q), axes, reduction)
    return value, grad_x, grad_a, grad_gamma


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _focal(x, a, gamma, where, axes, reduction):
    return _focal_pieces(x, a, gamma, where, axes, reduction)[0]


@functools.partial(_focal.defjvp, symbolic_zeros=True)
def _focal_jvp(axes, reduction, primals, tangents):
    x, a, gamma, where = primals
    x_dot, a_dot, gamma_dot, _ = tangents
    value, grad_x, grad_a, grad_gamma = _focal_pieces(x, a, gamma, where, axes, reduction)
    tangent = jnp.zeros_like(value)
    if not isinstance(x_dot, SymbolicZero):
        tangent = tangent + jnp.sum(grad_x * x_dot, axis=axes)
    if not isinstance(a_dot, SymbolicZero):
        tangent = tangent + jnp.sum(grad_a * a_dot, axis=axes)
    if not isinstance(gamma_dot, SymbolicZero):
        tangent = tangent + grad_gamma * gamma_dot
    return value, tangent


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def _focal_core(x, t, alpha, gamma, mask, axes, reduction, check_targets):
    if check_targets:
        t = nan_where(outside_unit_interval(t), t)
    a = t if alpha is None else nan_where(negative(alpha), alpha) * t
    return _focal(x, a, gamma, mask, axes, reduction)


def softmax_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: ArrayLike = 2.0,
    alpha: ArrayLike | None = None,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Multi-class (softmax) focal loss, computed in log space without clipping.

    .. math::
       \ell = -\sum_k \alpha_k\, t_k\, (1 - p_k)^{\gamma} \log p_k,
       \qquad p = \operatorname{softmax}(x)

    **Stable form.** :math:`(1-p_k)^\gamma = \exp(\gamma \log(1 - p_k))` with
    :math:`\log(1 - p_k)` from the row pieces (``log S' - log1p(S')`` for a dominant class,
    ``log1p(-p_k)`` otherwise: no cancellation), and :math:`-\log p_k` from the stable
    soft-label core. The gradient is a custom rule,
    :math:`\partial\ell/\partial x_j = p_j \sum_k a_k c_k - a_j c_j` with
    :math:`a = \alpha t`, :math:`c_k = q_k^\gamma (1 + \gamma\, p_k (-\log p_k)/q_k)`, finite for
    every :math:`\gamma \ge 0` (the factor :math:`q^{\gamma-1}` of the naive chain rule is
    infinite at :math:`q = 0` for :math:`\gamma < 1`; optax #1267 is the binary analogue).
    ``γ = 0`` gives the (α-weighted) cross-entropy exactly.

    With an integer part ``n = min(floor(γ), 8)`` split off, the factor is
    ``q^n · exp((γ - n) log q)`` (the exponential is exactly 1 for an integer γ), also for a
    γ traced under ``jit``. Known limit: the value's relative error grows with γ, since the
    last-place rounding of ``q`` is raised to the γ-th power; measured on the accuracy grid,
    within 4 ulps for γ up to 4.5 and about γ ulps above (8.2 at γ = 8); the gradient stays
    within 8.

    Keras' ``CategoricalFocalCrossentropy`` clips probabilities to ``[1e-7, 1 - 1e-7]``: its
    loss for a confident correct prediction never drops below
    :math:`-(10^{-7})^{\gamma}\log(1 - 10^{-7})`, about ``1e-21`` for γ = 2, and its gradient
    there is 0; here the loss of ``1 - p_y = 1e-10`` is ``1e-30`` with its exact gradient.

    =====================================================  =================  =================
    case                                                   value              gradient
    =====================================================  =================  =================
    confident correct, ``1 - p_y = q`` tiny                ``α q^(γ+1)``      exact, finite
    target the only ``+inf`` logit                         0                  0
    zero target on a ``-inf`` logit                        term is 0          0
    positive target on a ``-inf`` logit                    ``+inf``           finite
    all classes masked / masked class                      0 / excluded       0
    NaN logit                                              NaN (that row)     NaN (that row)
    ``gamma < 0``, negative ``alpha``                      NaN (jit) / error  NaN
    any real label (signed, ``> 1``): linear extension     exact              exact
    =====================================================  =================  =================

    Args:
      logits: ``[..., num_classes]``.
      labels: target probabilities (e.g. one-hot), same rank as ``logits``, broadcastable.
      gamma: focusing parameter γ ``>= 0`` (a scalar); 0 gives the cross-entropy.
      alpha: optional class balance: a scalar or one weight per class (``>= 0``).
      axis: class axis or tuple of axes.
      where: optional boolean mask, ``logits``' shape or its batch shape.

    Returns:
      Per-example loss, float32 for 16-bit logits.

    >>> import jax.numpy as jnp, jaxce
    >>> logits = jnp.array([[25.0, 2.0, 0.0], [0.0, 1.0, 2.0]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> jaxce.softmax_focal_loss(logits, labels, gamma=2.0).tolist()  # doctest: +ELLIPSIS
    [1.58...e-30, 0.80...]

    References:
      Lin et al., *Focal Loss for Dense Object Detection*, 2017; optax #1267.
    """
    x = float_array("logits", logits)
    axes = canonical_axes(axis, x.ndim)
    t = same_rank_broadcast("labels", jnp.asarray(labels), tuple(x.shape)).astype(x.dtype)
    mask = mask_array(where, tuple(x.shape), axes)
    g = scalar_option("gamma", gamma, x.dtype, NONNEGATIVE)
    a = None
    if alpha is not None:
        raw = float_array("alpha", alpha)
        if raw.ndim == 0:
            a = raw.astype(x.dtype)
        else:
            a = class_weights("alpha", raw, tuple(x.shape), axes, x.dtype)
        check_nonnegative("alpha", raw)
    check_probability_targets("labels", t, mask)
    reduction = reduction_for(x)
    return _focal_core(x, t, a, g, mask, axes, reduction, strict_targets())

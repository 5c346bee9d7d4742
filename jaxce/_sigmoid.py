r"""Sigmoid (binary) losses from logits: binary cross-entropy and the focal loss, optax-compatible.

Both are element-wise and built on :mod:`jaxce._primitives` (softplus, sigmoid, safe_mul), so
``±inf`` logits give exact limits in value and gradient instead of optax's and PyTorch's NaN
(pytorch #49844, optax #1267).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxce._checks import elementwise_weights, float_array, same_rank_broadcast
from jaxce._options import EXPONENT, UNIT, is_off, scalar_option
from jaxce._primitives import safe_mul, sigmoid_pair, softplus, softplus_tail, stable_sigmoid
from jaxce._transforms import scale_logits
from jaxce._validate import (
    check_probability_targets,
    nan_where,
    negative,
    outside_unit_interval,
    strict_targets,
)

__all__ = ["sigmoid_binary_cross_entropy", "sigmoid_focal_loss"]


# --------------------------------------------------------------------------------------------
# Binary cross-entropy
# --------------------------------------------------------------------------------------------


def sigmoid_binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    logit_soft_cap: ArrayLike | None = None,
    temperature: ArrayLike | None = None,
) -> jax.Array:
    r"""Element-wise sigmoid (binary) cross-entropy from logits.

    .. math::
       \ell = -t \log\sigma(x) - (1 - t)\log(1 - \sigma(x))
            = (1 - t)\operatorname{softplus}(x) + t\operatorname{softplus}(-x)

    With the keyword-only extras (each left out of the computation at its default):

    .. math::
       x' = \operatorname{cap}(x / T),\quad t' = (1 - \varepsilon)\,t + \varepsilon/2,

       \ell = w\,[p_w t' \operatorname{softplus}(-x') + (1 - t') \operatorname{softplus}(x')]

    ``pos_weight`` :math:`p_w` is PyTorch's (``BCEWithLogitsLoss``): it scales the positive
    term only; label smoothing is Keras' ``BinaryCrossentropy`` rule (toward 1/2).

    **Stable form.** :math:`\log(1 - \sigma(x)) = \log\sigma(-x)`, and both are softplus
    values, which never overflow and keep tiny losses exact. Each product is taken with the
    zero convention of :func:`jaxce.safe_mul`, so a coefficient of 0 (a label, ``pos_weight``
    or ``weights`` entry) removes its term even where the softplus is infinite. Gradient (from
    the softplus rule): :math:`w\,[(1 - t')\sigma(x') - p_w t'\sigma(-x')]` times the
    derivative of the logit transform.

    =======================================  ======================  ==================
    case                                     value                   gradient
    =======================================  ======================  ==================
    ``x=+inf, t=1``                          0                       0
    ``x=+inf, t=0``                          ``+inf``                1
    ``x=-inf, t=0``                          0                       0
    ``x=-inf, t=1``                          ``+inf``                -1
    ``x=-inf, t=1, pos_weight=2``            ``+inf``                -2
    ``weights=0`` on an infinite loss        0                       0
    ``x=+inf`` with ``logit_soft_cap=c``     ``(1-t)·softplus(c)``…  0
    NaN logit                                NaN                     NaN
    label outside ``[0, 1]``                 exact (affine in t)     exact
    negative ``weights``/``pos_weight``      ValueError / NaN (jit)  NaN (jit)
    ``label_smoothing`` outside ``[0, 1]``   ValueError / NaN (jit)  NaN (jit)
    =======================================  ======================  ==================

    optax and PyTorch give NaN at ``±inf`` logits (pytorch #49844, #102894).

    Args:
      logits: any shape; each element is the logit of an independent binary event.
      labels: targets, same rank as ``logits`` and broadcastable to it: probabilities, or
        any real number (the loss is affine in its label; errors in strict mode only, see
        :func:`jaxce.target_checks`).
      weights: optional non-negative element weights, broadcastable to ``logits`` (NumPy
        rules), e.g. ``[batch, 1]`` per example or ``[num_classes]`` per class.
      pos_weight: optional non-negative weight of the positive term, broadcastable to
        ``logits`` (typically ``[num_classes]`` on the last axis, as in PyTorch).
      label_smoothing: :math:`\varepsilon \in [0, 1]`; labels move toward 1/2.
      logit_soft_cap: optional positive cap :math:`c`: :math:`x \mapsto c\tanh(x/c)`
        (``-inf`` stays ``-inf``), see :func:`jaxce._transforms.scale_logits`.
      temperature: optional positive :math:`T`: logits are divided by it (before the cap).

    Returns:
      Element-wise loss, ``logits``' shape, float32 for 16-bit logits.

    >>> import jax.numpy as jnp, jaxce
    >>> jaxce.sigmoid_binary_cross_entropy(jnp.array([jnp.inf, 0.0]), jnp.array([1.0, 0.0]))
    Array([0.       , 0.6931472], dtype=float32)
    >>> jaxce.sigmoid_binary_cross_entropy(
    ...     jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 1.0]]), pos_weight=jnp.array([1.0, 3.0]))
    Array([[0.6931472, 2.0794415]], dtype=float32)
    """
    x = float_array("logits", logits)
    shape = tuple(x.shape)
    t = same_rank_broadcast("labels", jnp.asarray(labels), shape).astype(x.dtype)
    check_probability_targets("labels", t)
    if (
        weights is None
        and pos_weight is None
        and is_off(label_smoothing)
        and logit_soft_cap is None
        and temperature is None
    ):
        return _bce_core(x, t, strict_targets())
    x = scale_logits(x, temperature=temperature, logit_soft_cap=logit_soft_cap)
    eps = (
        None
        if is_off(label_smoothing)
        else scalar_option("label_smoothing", label_smoothing, x.dtype, UNIT)
    )
    w = None if weights is None else elementwise_weights("weights", weights, shape, x.dtype)
    pw = (
        None
        if pos_weight is None
        else elementwise_weights("pos_weight", pos_weight, shape, x.dtype)
    )
    return _bce_extended_core(x, t, eps, w, pw, strict_targets())


@functools.partial(jax.jit, static_argnums=(2,))
def _bce_core(x: jax.Array, t: jax.Array, check_targets: bool = False) -> jax.Array:
    if check_targets:
        t = nan_where(outside_unit_interval(t), t)  # strict mode: a label outside [0, 1] is NaN
    return _bce(x, t, None)


def _bce_terms(
    t: jax.Array, x: jax.Array, tail: jax.Array, b: jax.Array | None = None
) -> jax.Array:
    """``(1 - t)·softplus(x) + b·softplus(-x)`` (``b = t``, or ``pos_weight·t``) from
    ``tail = log1p(exp(-|x|))``: the softplus are ``max(±x, 0) + tail``, so the value is
    ``k·tail + (1 - t)·x`` for ``x >= 0`` and ``k·tail + b·(-x)`` below, ``k = (1 - t) + b``
    (1 for ``b = t``). Non-negative terms for labels in [0, 1]; outside, the two terms can
    cancel only where the loss's own condition number is as large (``0·inf = 0``)."""
    if b is None:
        return jnp.where(x >= 0, tail + safe_mul(1.0 - t, x), tail + safe_mul(t, -x))
    a = 1.0 - t
    shared = safe_mul(a + b, tail)
    return jnp.where(x >= 0, shared + safe_mul(a, x), shared + safe_mul(b, -x))


@jax.custom_jvp
def _bce(x: jax.Array, t: jax.Array, pw: jax.Array | None) -> jax.Array:
    """``(1 - t)·softplus(x) + b·softplus(-x)``, ``b = t`` (``pw`` None) or ``pw·t``, in
    :func:`_bce_terms`' select form: one ``exp``, one ``log1p`` and one division per element
    for value and gradient (the softplus and sigmoids share ``exp(-|x|)``)."""
    return _bce_terms(t, x, softplus_tail(x), None if pw is None else safe_mul(t, pw))


@_bce.defjvp
def _bce_jvp(primals, tangents):
    x, t, pw = primals
    x_dot, t_dot, pw_dot = tangents
    tail = softplus_tail(x)
    # The labels' (and pos_weight's) tangent through the zero-convention products, as JAX
    # differentiates them.
    if pw is None:
        value, label_tangent = jax.jvp(lambda tt: _bce_terms(tt, x, tail), (t,), (t_dot,))
        b = t
    else:
        value, label_tangent = jax.jvp(
            lambda tt, ww: _bce_terms(tt, x, tail, safe_mul(tt, ww)), (t, pw), (t_dot, pw_dot)
        )
        b = safe_mul(t, pw)
    s_pos, s_neg = sigmoid_pair(x)
    grad_x = safe_mul(1.0 - t, s_pos) - safe_mul(b, s_neg)
    return value, grad_x * x_dot + label_tangent


@functools.partial(jax.jit, static_argnums=(5,))
def _bce_extended_core(
    x: jax.Array,
    t: jax.Array,
    eps: jax.Array | None,
    w: jax.Array | None,
    pw: jax.Array | None,
    check_targets: bool,
) -> jax.Array:
    if check_targets:
        t = nan_where(outside_unit_interval(t), t)
    if eps is not None:
        eps = nan_where(outside_unit_interval(eps), eps)
        t = (1.0 - eps) * t + 0.5 * eps
    # The positive coefficient pw·t' is itself a product with the zero convention: pw = inf on
    # a zero label is an absent term, not NaN.
    loss = _bce(x, t, None if pw is None else nan_where(negative(pw), pw))
    if w is not None:
        loss = safe_mul(nan_where(negative(w), w), loss)
    return loss


# --------------------------------------------------------------------------------------------
# Focal loss
# --------------------------------------------------------------------------------------------


def _sides(x: jax.Array, t: jax.Array):
    """``a = |x|``, ``e = exp(-a)``, the label mass on each side of the logit, and ``n``.

    ``c`` is the mass on the *wrong* side (``1 - t`` for ``x >= 0``, ``t`` for ``x < 0``) and
    ``cc = 1 - c`` the mass on the right side, each taken directly from ``t`` (``t`` itself,
    or one rounding of ``1 - t``), never as ``1 - c``: that would round ``t`` twice.
    ``n = c + cc·e = (1 + e)(1 - p_t)``: for labels in ``[0, 1]`` both terms are ``>= 0``; for
    a label outside, ``c`` and ``cc`` have opposite signs and that sum can cancel (``t = 100``,
    ``x = -1e-4``: 100 ulps). ``n = 1 - cc·m`` with ``m = 1 - e = -expm1(-a)`` is the same
    number; each form's rounding is about ``u`` times the magnitude of its terms
    (``|c| + |cc|·e`` or ``1 + |cc|·m``), and the smaller is taken (always the first for labels
    in ``[0, 1]``, where it is at most ``1 - cc·m``).
    """
    nonneg = x >= 0
    a = jnp.where(nonneg, x, -x)  # |x| whose derivative at 0 is +1 (the x >= 0 branch)
    e = jnp.exp(-a)
    omt = 1.0 - t
    c = jnp.where(nonneg, omt, t)
    cc = jnp.where(nonneg, t, omt)
    m = -jnp.expm1(-a)
    direct = jnp.abs(c) + jnp.abs(cc) * e <= 1.0 + jnp.abs(cc) * m
    n = jnp.where(direct, c + cc * e, 1.0 - cc * m)
    return nonneg, a, e, c, cc, n, m


def _focal_parts(x: jax.Array, t: jax.Array):
    """The pieces of the focal loss, all plain jnp (so JAX can differentiate the rule again).

    With ``a``, ``e``, ``c``, ``c'``, ``n`` of :func:`_sides`:

    * ``1 - p_t = t σ(-x) + (1 - t) σ(x) = n / (1 + e)``, so
      ``L = log(1 - p_t) = log(n) - softplus(-a)``; for ``c = 0`` the first term is
      ``-a`` exactly (no ``log(exp(-a))`` underflow);
    * ``r = σ(x)σ(-x) / (1 - p_t) = 1 / (1 + t e^{-x} + (1 - t) e^{x}) = σ(-a) / n``,
      bounded by 1 for labels in ``[0, 1]``, and ``dL/dx = (1 - 2t) r``. At ``c = 0`` it is
      ``σ(a)`` (1 at ``±inf``).
    """
    _, a, _, c, _, n, _ = _sides(x, t)
    sure = c == 0  # the label sits entirely on the logit's side
    n = jnp.where(sure, jnp.ones((), x.dtype), n)
    log_n = jnp.where(sure, -a, jnp.log(n))
    big_l = log_n - softplus(-a)
    r = jnp.where(sure, stable_sigmoid(a), stable_sigmoid(-a) / n)
    return big_l, r


def _alpha_t(alpha: jax.Array, t: jax.Array) -> jax.Array:
    """``α_t = α t + (1 - α)(1 - t)`` as ``(1 - α) + (2α - 1) t``: one product and one sum
    (the first form rounds ``1 - t`` and two products); exact for hard labels."""
    return (1.0 - alpha) + (2.0 * alpha - 1.0) * t


def _focal_pieces(x, t, alpha, gamma):
    """Value and the partial derivatives (x, t, alpha, gamma) of the focal loss.

    The value is the product of three factors, each within about two roundings of exact, so
    that their product stays within the 4-ulp bound where the loss is well conditioned
    (``x`` near 0, where κ = |x·dℓ/dx| vanishes and the value must be right relative to
    itself): ``α_t`` (:func:`_alpha_t`), ``(1 - p_t)^γ`` as a power of ``(c + c' e)/(1 + e)``,
    and the cross-entropy as ``softplus(-|x|) + c·|x|`` (two non-negative terms, three
    roundings; the ``(1 - t)·softplus(x) + t·softplus(-x)`` form rounds six times and reached
    4.7 ulps in float64 at ``x = 2.5e-4, t = 1e-7, α = 0.75, γ = 1``).
    """
    zero = jnp.zeros((), x.dtype)
    nonneg, a, e, c, _, n, m = _sides(x, t)
    # BCE = softplus(-|x|) + c·|x| (the select form; c = 0 on an infinite logit is an absent
    # term), with softplus(-|x|) differentiable again for the rule's own derivatives.
    ce = _bce_terms(t, x, softplus(-a))
    big_l, r = _focal_parts(x, t)
    # (1 - p_t)^gamma as a power of 1 - p_t = n/(1 + e) (accurate to a rounding or two):
    # exp(gamma·L) would amplify the rounding of gamma·L by |gamma·L| (15 ulps at L = -16).
    # Only where 1 - p_t underflows is the log form used (gamma = 0: exactly 1).
    q = n / (1.0 + e)
    # Near x = 0, where the loss is perfectly conditioned, 1 - p_t is about 1/2 and the
    # quotient's three roundings (doubled by gamma = 2) exceed the bound: there it is
    # 1/2 + (2c - 1)·m / (2(1 + e)), whose correction term is small.
    d = (2.0 * c - 1.0) * m / (2.0 * (1.0 + e))
    q = jnp.where(jnp.abs(d) <= 0.25, 0.5 + d, q)
    normal = q >= jnp.finfo(x.dtype).tiny
    q_safe = jnp.where(normal, q, jnp.ones((), x.dtype))  # double where: no 0^(gamma-1)
    fw = jnp.where(normal, jnp.power(q_safe, gamma), jnp.exp(safe_mul(gamma, big_l)))
    # gamma = 0 is the weight 1 also where a label outside [0, 1] makes 1 - p_t < 0 (log NaN).
    fw = jnp.where(gamma == 0, jnp.ones((), x.dtype), fw)
    at = jnp.ones((), x.dtype) if alpha is None else _alpha_t(alpha, t)
    base = safe_mul(fw, ce)
    value = safe_mul(at, base)
    # d/dx: at·fw·[ce' + gamma (1 - 2t) r ce]; r·ce -> 0 where ce = inf (r = 0 there exactly).
    dce = (1.0 - t) * stable_sigmoid(x) - t * stable_sigmoid(-x)
    dx = at * fw * (dce + gamma * (1.0 - 2.0 * t) * safe_mul(r, ce))
    # d/dt: at·fw·[-x + gamma ce dL/dt] + (2 alpha - 1) fw ce, with
    # dL/dt = sign·(1 - e)/n, sign = -1 for x >= 0 (infinite where 1 - p_t = 0: the term is
    # then taken as 0 by the zero convention of its coefficient ce·fw).
    dl_dt = jnp.where(nonneg, -1.0, 1.0) * (1.0 - e) / jnp.where(n == 0, 1.0, n)
    dl_dt = jnp.where(n == 0, jnp.where(nonneg, -jnp.inf, jnp.inf), dl_dt)
    dt = at * (safe_mul(fw, -x) + gamma * safe_mul(base, dl_dt))
    if alpha is not None:
        dt = dt + (2.0 * alpha - 1.0) * base
    dalpha = zero if alpha is None else (2.0 * t - 1.0) * base
    dgamma = safe_mul(at, safe_mul(base, big_l))
    return value, dx, dt, dalpha, dgamma


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _focal(x, t, alpha, gamma, has_alpha):
    return _focal_pieces(x, t, alpha if has_alpha else None, gamma)[0]


@functools.partial(_focal.defjvp, symbolic_zeros=True)
def _focal_jvp(has_alpha, primals, tangents):
    x, t, alpha, gamma = primals
    x_dot, t_dot, alpha_dot, gamma_dot = tangents
    value, dx, dt, dalpha, dgamma = _focal_pieces(x, t, alpha if has_alpha else None, gamma)
    out = jnp.zeros_like(value)
    # Symbolic zeros skip a term: dt is infinite where a label change has an infinite effect
    # (x = ±inf), and 0·inf would make a plain d/dlogits NaN.
    if not isinstance(x_dot, SymbolicZero):
        out = out + dx * x_dot
    if not isinstance(t_dot, SymbolicZero):
        out = out + dt * t_dot
    if has_alpha and not isinstance(alpha_dot, SymbolicZero):
        out = out + dalpha * alpha_dot
    if not isinstance(gamma_dot, SymbolicZero):
        out = out + dgamma * gamma_dot
    return value, out


@functools.partial(jax.jit, static_argnums=(4, 5))
def _focal_core(x, t, alpha, gamma, has_alpha, check_targets):
    if check_targets:
        t = nan_where(outside_unit_interval(t), t)
    if has_alpha:
        alpha = nan_where(outside_unit_interval(alpha), alpha)
    gamma = nan_where(negative(gamma), gamma)
    return _focal(x, t, alpha, gamma, has_alpha)


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike | None = None,
    gamma: ArrayLike = 2.0,
) -> jax.Array:
    r"""Element-wise sigmoid focal loss (Lin et al. 2017), optax 0.2.8 semantics.

    .. math::
       \ell = \alpha_t\,(1 - p_t)^\gamma\,\mathrm{BCE}(x, t),\quad
       1 - p_t = t\,\sigma(-x) + (1 - t)\,\sigma(x),\quad
       \alpha_t = \alpha t + (1 - \alpha)(1 - t)

    (:math:`\alpha_t = 1` when ``alpha`` is None); soft labels :math:`t \in [0, 1]` allowed, and
    labels outside ``[0, 1]`` wherever :math:`1 - p_t \ge 0` (where a label outside makes
    :math:`1 - p_t < 0`, :math:`(1 - p_t)^\gamma` is not real for :math:`\gamma > 0`: NaN,
    as optax's log-space form gives).

    **Stable form.** Everything is built around :math:`a = |x|`, :math:`e = e^{-a}` and
    :math:`c`, the label mass on the wrong side of the logit (:math:`1 - t` for
    :math:`x \ge 0`, :math:`t` otherwise; :math:`c' = 1 - c` is taken from ``t`` directly):
    :math:`1 - p_t = (c + c'e)/(1 + e)` (no cancellation), the focal weight
    :math:`(1 - p_t)^\gamma` as that power (and as :math:`\exp(\gamma\log(1 - p_t))`, with
    :math:`\log(1 - p_t) = \log(c + c'e) - \operatorname{softplus}(-a)`, only where
    :math:`1 - p_t` underflows), :math:`\mathrm{BCE} = \operatorname{softplus}(-a) + c\,a`
    (two non-negative terms) and :math:`\alpha_t = (1 - \alpha) + (2\alpha - 1)t`. Each factor
    is within about two roundings, so the product meets the 4-ulp bound even near
    :math:`x = 0`, where the loss is perfectly conditioned. The derivative
    is a custom rule (plain jnp, so Hessians work):

    .. math::
       \partial_x \ell = \alpha_t (1 - p_t)^\gamma\big[(1 - t)\sigma(x) - t\sigma(-x)
       + \gamma (1 - 2t)\, r\, \mathrm{BCE}\big],\quad
       r = \frac{\sigma(x)\sigma(-x)}{1 - p_t} = \frac{1}{1 + t e^{-x} + (1 - t) e^{x}}

    with :math:`r \le 1` computed as :math:`\sigma(-a)/(c + (1 - c)e)`. The naive
    :math:`(1 - p_t)^\gamma` has an infinite derivative where :math:`1 - p_t` rounds to 0 for
    :math:`\gamma < 1` (0·inf = NaN in the chain rule, optax #1267); here nothing is infinite.
    ``gamma = 0`` gives exactly the (α-weighted) :func:`sigmoid_binary_cross_entropy`.

    ===================================  =========================  ===========================
    case                                 value                      gradient (logits)
    ===================================  =========================  ===========================
    ``x=+inf, t=1`` (or ``-inf, t=0``)   0                          0
    ``x=+inf, t=0`` (or ``-inf, t=1``)   ``+inf`` (α_t > 0)         ``±α_t`` (finite)
    ``x=±inf``, soft ``t``               ``+inf``                   finite
    ``gamma = 0``                        α_t·BCE exactly            α_t·BCE' exactly
    ``gamma`` in ``(0, 1)``, ``|x|>90``  finite, tiny               finite (optax: NaN at inf)
    NaN logit                            NaN                        NaN
    label ∉ [0, 1], ``1 - p_t >= 0``     exact                      exact
    label ∉ [0, 1], ``1 - p_t < 0``      NaN (``gamma > 0``)        NaN (``gamma > 0``)
    ``alpha`` outside [0, 1]             ValueError / NaN (jit)     NaN (jit)
    negative ``gamma``                   ValueError / NaN (jit)     NaN (jit)
    ===================================  =========================  ===========================

    Derivatives with respect to ``labels``, ``alpha`` and ``gamma`` are provided too; where
    the loss is not differentiable in the label (``1 - p_t = 0``, at ``x = ±inf``) the label
    derivative is infinite; it never reaches the logits' derivative.

    Args:
      logits: any shape.
      labels: targets, same rank as ``logits`` and broadcastable to it (``[0, 1]``, or outside
        it where ``1 - p_t >= 0``).
      alpha: optional weight of the positive class in ``[0, 1]`` (a scalar); None: no weight.
      gamma: focusing exponent, a scalar ``>= 0``.

    Returns:
      Element-wise loss, ``logits``' shape, float32 for 16-bit logits.

    >>> import jax, jax.numpy as jnp, jaxce
    >>> x, t = jnp.array([jnp.inf, 100.0]), jnp.array([1.0, 1.0])
    >>> jaxce.sigmoid_focal_loss(x, t, gamma=0.5)
    Array([0., 0.], dtype=float32)
    >>> jax.grad(lambda a: jaxce.sigmoid_focal_loss(a, t, gamma=0.5).sum())(x)
    Array([0., 0.], dtype=float32)

    References:
      Lin et al., Focal Loss for Dense Object Detection (2017); optax #1267 (NaN gradients).
    """
    x = float_array("logits", logits)
    t = same_rank_broadcast("labels", jnp.asarray(labels), tuple(x.shape)).astype(x.dtype)
    check_probability_targets("labels", t)
    has_alpha = alpha is not None
    a = jnp.zeros((), x.dtype) if alpha is None else scalar_option("alpha", alpha, x.dtype, UNIT)
    g = scalar_option("gamma", gamma, x.dtype, EXPONENT)
    if is_off(gamma):
        # gamma = 0 is the (alpha-weighted) binary cross-entropy, bit for bit: same core.
        loss = _bce_core(x, t, strict_targets())
        if not has_alpha:
            return loss
        a = nan_where(outside_unit_interval(a), a)
        return safe_mul(_alpha_t(a, t), loss)
    return _focal_core(x, t, a, g, has_alpha, strict_targets())

r"""Softmax cross-entropy losses, optax-compatible (same names, signatures and per-example output).

Both losses are built on the row statistics of :mod:`jaxce._rows` and share the conventions of
:func:`jaxce.log_softmax` (masks, empty rows, ``±inf``). They return float32 for 16-bit logits
(float64 under x64 for float64 logits); gradients come back in the logits' dtype.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxce._checks import (
    Axis,
    canonical_axes,
    class_weights,
    classes_last,
    float_array,
    ignored_labels,
    integer_array,
    mask_array,
    same_rank_broadcast,
)
from jaxce._options import NONNEGATIVE, UNIT, is_off, scalar_option
from jaxce._primitives import row_logsumexp, safe_mul
from jaxce._rows import Reduction, pair_total, reduction_for, row_max, row_stats, shift_by_max
from jaxce._transforms import scale_logits
from jaxce._validate import (
    check_class_indices,
    check_nonnegative,
    check_probability_targets,
    nan_where,
    negative,
    outside_unit_interval,
    strict_targets,
)

__all__ = [
    "safe_softmax_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]


# --------------------------------------------------------------------------------------------
# Soft labels
# --------------------------------------------------------------------------------------------


def soft_ce_pieces(x, t, where, axes, reduction, check_targets=False):
    """Value, gradient wrt logits and gradient wrt labels of the soft-label cross-entropy.

    ``value = sum_k t_k (m - x_k) + T log1p(S')`` (``T = sum_k t_k``; no term cancels),
    ``grad_x = T p - t``, at a dominant class ``j`` ``(T - t_j) - T S'/(1 + S')`` (the small
    ``1 - p_j`` exact), ``grad_t = -log p`` (0 for absent and masked classes). In strict mode
    a label outside [0, 1] makes its row NaN. Plain jnp, so JAX differentiates it again.
    """
    zero = jnp.zeros((), x.dtype)
    xm, m = row_max(x, where, axes)
    tm = t if where is None else jnp.where(where, t, zero)
    # A NaN in the label total spreads to the row's value and gradient, at no extra pass.
    t_in = nan_where(outside_unit_interval(tm), tm) if check_targets else tm
    # t_k (m - x_k) as (2 t_k)(m/2 - x_k/2): the same rounding, and no overflow for logits
    # spanning more than the dtype's max.
    terms = safe_mul(2.0 * tm, -shift_by_max(0.5 * xm, 0.5 * m))
    # T is compensated from the first addition (T p - t cancels where p ~ t); the terms are
    # non-negative for labels in [0, 1] (signed labels: accurate relative to sum |t_k| gap_k).
    stats, (t_pair, v_pair) = row_stats(
        x, where, axes, reduction, row_max_of=(xm, m), also=(t_in, terms), plain_first=(False, True)
    )
    total = pair_total(t_pair)
    value = jnp.squeeze(pair_total(v_pair) + total * stats.log_norm, axes)
    # A dominant class is the unique arg-max with p > 1/2 (S' < 1); T - t_j = (s - t_j) + c
    # there, exact when small (Sterbenz).
    dominant = (stats.shifted == 0) & (stats.s1 < 1.0)
    t_rest = (t_pair.s - tm) + t_pair.c
    one_plus = 1.0 + stats.s1
    e = stats.exp_again()
    p = e / one_plus
    grad_x = jnp.where(dominant, t_rest - total * (stats.s1 / one_plus), total * p - tm)
    absent = (tm == 0) & (e == 0)
    if where is not None:
        absent = absent | ~where
    grad_t = jnp.where(absent, zero, stats.log_norm - stats.shifted)
    return value, grad_x, grad_t


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def soft_ce_core(x, t, where, axes, reduction, check_targets=False):
    """The soft-label cross-entropy of compute-dtype arrays (jitted, custom rule)."""
    return _soft_ce(x, t, where, axes, reduction, check_targets)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _soft_ce(x, t, where, axes, reduction, check_targets):
    return soft_ce_pieces(x, t, where, axes, reduction, check_targets)[0]


@functools.partial(_soft_ce.defjvp, symbolic_zeros=True)
def _soft_ce_jvp(axes, reduction, check_targets, primals, tangents):
    x, t, where = primals
    x_dot, t_dot, _ = tangents
    value, grad_x, grad_t = soft_ce_pieces(x, t, where, axes, reduction, check_targets)
    tangent = jnp.zeros_like(value)
    # Symbolic zeros skip a term: grad_t is +inf where a positive target sits on a
    # zero-probability class, and 0 * inf would turn a plain d/dlogits into NaN.
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
    *,
    weights: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_soft_cap: ArrayLike | None = None,
    temperature: ArrayLike | None = None,
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
    any real label (signed, ``> 1``): linear extension     exact              exact
    negative label on a ``-inf`` logit                     ``-inf``           finite
    =====================================================  =================  =================

    Labels outside ``[0, 1]`` are errors only in strict mode (:func:`jaxce.target_checks`);
    :func:`jaxce.checked` reports them.

    **Keyword options** (all off by default; then exactly the plain code path runs). With
    :math:`x' = c\tanh(x / (T c))` (``temperature`` T, ``logit_soft_cap`` c, see
    :func:`jaxce._transforms.scale_logits`), :math:`C_r` the number of unmasked classes of
    the row and :math:`t'_k = (1-\varepsilon) t_k + \varepsilon / C_r`:

    .. math::
       \ell = -\sum_k w_k t'_k \log\operatorname{softmax}(x')_k
              + z \cdot \operatorname{logsumexp}(x')^2

    The weighted, smoothed label :math:`w_k t'_k` goes through the same stable core (so the
    tiny losses and gradients stay exact); the z-loss (PaLM) goes through the custom-JVP
    log-sum-exp of :func:`jaxce.logsumexp`, so its derivative :math:`2 z\,\mathrm{lse}\,p`
    is right in forward *and* reverse mode (T5X's ``cross_entropy_with_logits`` uses a
    ``custom_vjp``: reverse mode only).

    =====================================================  =================  =================
    option case                                            value              gradient
    =====================================================  =================  =================
    ``label_smoothing > 0`` and a ``-inf`` logit           ``+inf``           finite
    (an unmasked impossible class gets mass ε/C)
    all classes masked, any options                        0 (z-loss 0)       0
    weight 0 on a class with target > 0 and ``p = 0``      term is 0          0
    negative weight (see :func:`jaxce.checked`)            NaN (jit) / error  NaN
    ``label_smoothing`` outside ``[0, 1]``, ``z_loss<0``   NaN (jit) / error  NaN
    ``temperature`` / ``logit_soft_cap`` ``<= 0``          NaN (jit) / error  NaN
    ``+inf`` logit with ``logit_soft_cap``                 capped to ``c``    0 on that logit
    ``+inf`` logit with ``z_loss > 0`` (no cap)            ``+inf``           z-part 0
    =====================================================  =================  =================

    Args:
      logits: unnormalized log-probabilities, ``[..., num_classes]``.
      labels: target probabilities, same rank as ``logits`` and broadcastable to it
        (e.g. one-hot or smoothed labels).
      axis: class axis or tuple of axes (``None``: all axes).
      where: optional boolean mask, ``logits``' shape or its batch shape (per-example).
      weights: optional per-class weights ``[num_classes]`` (``>= 0``); for a tuple ``axis``
        the class axes' shape or the flat ``[prod]`` vector.
      label_smoothing: ε in ``[0, 1]``: the labels become ``(1 - ε) t + ε / C_r``.
      z_loss: coefficient ``>= 0`` of the auxiliary ``logsumexp(x')^2`` term.
      logit_soft_cap: optional positive cap ``c``: logits become ``c tanh(x / c)``.
      temperature: optional positive ``T``: logits become ``x / T`` (before the cap).

    Returns:
      Per-example loss with the class axes removed, float32 for 16-bit logits.

    >>> import jax.numpy as jnp, jaxce
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> jaxce.softmax_cross_entropy(logits, labels).round(4).tolist()
    [0.2761, 2.9518]

    References:
      optax #896 (NaN for ``-inf`` logits with zero labels); ``docs/numerics.md``.
    """
    x = float_array("logits", logits)
    axes = canonical_axes(axis, x.ndim)
    t = same_rank_broadcast("labels", jnp.asarray(labels), tuple(x.shape)).astype(x.dtype)
    mask = mask_array(where, tuple(x.shape), axes)
    check_probability_targets("labels", t, mask)
    opts = _options(x, axes, weights, label_smoothing, z_loss)
    reduction = reduction_for(x, jnp.result_type(logits))
    if opts.off and temperature is None and logit_soft_cap is None:
        return soft_ce_core(x, t, mask, axes, reduction, strict_targets())
    x = scale_logits(x, temperature=temperature, logit_soft_cap=logit_soft_cap)
    return _soft_ce_options(x, t, mask, opts, axes, reduction, strict_targets())


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


def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: ArrayLike | None = None,
    *,
    weights: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_soft_cap: ArrayLike | None = None,
    temperature: ArrayLike | None = None,
    ignore_index: int | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with integer class labels, per example.

    .. math::
       \ell = -\log \operatorname{softmax}(x)_y
            = \operatorname{softplus}\big(\operatorname{lse}_{k \ne y}(x) - x_y\big)

    **Stable form.** With :math:`m` the row maximum and :math:`S'` the sum of
    :math:`e^{x_k - m}` over every class but one arg-max, :math:`\ell = (m - x_y) +
    \operatorname{log1p}(S')`: both terms are non-negative, and when the label is the
    confident arg-max the loss is :math:`\operatorname{log1p}(S')` to full relative precision
    (``1e-30`` stays ``1e-30``; the usual ``lse(x) - x_y`` rounds it to 0). The gradient is
    :math:`p_k` for :math:`k \ne y` and, at a dominant label,
    :math:`-S'/(1 + S') = -(1 - p_y)`, accurate even when :math:`1 - p_y` is ``1e-30``.

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

    **Keyword options** (all off by default; then exactly the plain code path runs), with
    :math:`x'` the scaled logits (``temperature``, ``logit_soft_cap``), :math:`w` the class
    weights and :math:`C_r` the number of unmasked classes of the row (PyTorch's formula,
    ``torch.nn.functional.cross_entropy``):

    .. math::
       \ell = (1-\varepsilon)\,w_y\,(-\log p_y)
             + \frac{\varepsilon}{C_r}\sum_k w_k\,(-\log p_k)
             + z\cdot\operatorname{logsumexp}(x')^2,
       \qquad p = \operatorname{softmax}(x')

    equal to :func:`softmax_cross_entropy` with the one-hot label and the same options. The
    first term is the stable integer-label core scaled, the second the soft-label core with a
    uniform (weighted) label (no second log-softmax), the third the custom-JVP log-sum-exp
    (forward and reverse mode). Note that with weights the smoothing is weighted too, so the
    effective smoothing depends on the weights (pytorch #104776); jaxce keeps PyTorch's
    formula.

    =====================================================  =================  =================
    option case                                            value              gradient
    =====================================================  =================  =================
    label equal to ``ignore_index``                        0                  0 (even for NaN
                                                                              or ``inf`` logits)
    target class masked, ``label_smoothing = ε``           the ε part only    of the ε part
    ``label_smoothing > 0`` and a ``-inf`` logit           ``+inf``           finite
    all classes masked, any options                        0                  0
    weight 0 on the target, target logit ``-inf``          smoothing part     finite
    negative weight (see :func:`jaxce.checked`)            NaN (jit) / error  NaN
    ``label_smoothing`` outside ``[0, 1]``, ``z_loss<0``   NaN (jit) / error  NaN
    =====================================================  =================  =================

    Args:
      logits: ``[..., num_classes]``; with a tuple ``axis`` the classes span those axes.
      labels: integer class indices, ``logits``' shape without the class axes. With a tuple
        ``axis`` a label is a flat index into the ``logits[axis]`` slice (row-major).
      axis: class axis, or tuple of axes.
      where: optional boolean mask, ``logits``' shape or the labels' shape (per-example).
      weights: optional per-class weights ``[num_classes]`` (``>= 0``).
      label_smoothing: ε in ``[0, 1]``.
      z_loss: coefficient ``>= 0`` of the auxiliary ``logsumexp(x')^2`` term (PaLM).
      logit_soft_cap: optional positive cap ``c``: logits become ``c tanh(x / c)``.
      temperature: optional positive ``T``: logits become ``x / T`` (before the cap).
      ignore_index: optional label value whose examples give 0 loss and 0 gradient
        (exempt from the range check), like PyTorch's ``ignore_index``.

    Returns:
      Per-example loss, ``labels``' shape, float32 for 16-bit logits.

    >>> import jax.numpy as jnp, jaxce
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> jaxce.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])).round(4).tolist()
    [0.2761, 2.9518]
    >>> float(jaxce.softmax_cross_entropy_with_integer_labels(jnp.array([80.0, 0.0]), 0))
    1.80485...e-35
    >>> jaxce.softmax_cross_entropy_with_integer_labels(
    ...     logits, jnp.array([0, -100]), label_smoothing=0.1, ignore_index=-100
    ... ).round(4).tolist()
    [0.3995, 0.0]
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
    ignored, y = ignored_labels(ignore_index, y)
    if ignored is not None:
        # Double where: an ignored example gets label 0 and zero logits before anything is
        # computed, so neither a NaN nor an inf of its own reaches its (zero) value or gradient,
        # and it is exempt from the range check.
        x = jnp.where(jnp.expand_dims(ignored, axes), jnp.zeros((), x.dtype), x)
    check_class_indices("labels", y, math.prod(x.shape[a] for a in axes))
    opts = _options(x, axes, weights, label_smoothing, z_loss)
    reduction = reduction_for(x)  # x is upcast: 16 lanes vectorize here, also for 16-bit logits
    if opts.off and temperature is None and logit_soft_cap is None and ignored is None:
        return _integer_ce_core(x, y, mask, axes, reduction)
    x = scale_logits(x, temperature=temperature, logit_soft_cap=logit_soft_cap)
    return _integer_ce_options(x, y, mask, ignored, opts, axes, reduction)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _integer_ce_core(
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
) -> jax.Array:
    x, mask = classes_last(x, mask, axes)
    return _integer_ce(x, y, mask, reduction)


def _integer_ce_pieces(
    x: jax.Array, y: jax.Array, mask: jax.Array | None, reduction: Reduction, with_grad: bool
) -> tuple[jax.Array, jax.Array | None]:
    """Value ``[B]`` and (optionally) gradient ``[B, V]`` of the integer-label cross-entropy.

    ``loss = (m - x_y) + log1p(S')``: both terms >= 0, and ``log1p(S')`` to full relative
    precision when the label is the arg-max. Gradient ``p_k`` for ``k != y``; at ``y``
    ``-S'/(1 + S')`` (that is ``-(1 - p_y)``, exact) when ``x_y`` is the max, else
    ``p_y - 1`` with ``p_y < 1/2``. Empty, ``+inf``, NaN, masked-label and bad-label rows are
    settled by row-level selects.
    """
    dtype = x.dtype
    zero = jnp.zeros((), dtype)
    nan = jnp.array(jnp.nan, dtype)
    num_classes = x.shape[-1]

    y = y[..., None]
    valid = (y >= 0) & (y < num_classes)
    y_safe = jnp.clip(y, 0, num_classes - 1)
    x_y = jnp.take_along_axis(x, y_safe, axis=-1)  # [B, 1]
    kept = valid if mask is None else valid & jnp.take_along_axis(mask, y_safe, axis=-1)

    stats, _ = row_stats(x, mask, (x.ndim - 1,), reduction)
    m = stats.m
    at_top = x_y == m
    # m - x_y without inf - inf: 0 at the arg-max (also a +inf one), +inf for a -inf target
    # logit (also in an empty row: the target has probability 0).
    gap = jnp.where(at_top, zero, m - x_y)
    gap = jnp.where(x_y == -jnp.inf, jnp.array(jnp.inf, dtype), gap)
    loss = gap + stats.log_norm
    # A masked target class leaves nothing to learn (0), unless a NaN logit makes the row NaN.
    loss = jnp.where(kept, loss, jnp.where(jnp.isnan(m), nan, zero))
    loss = jnp.where(valid, loss, nan)[..., 0]
    if not with_grad:
        return loss, None

    inv = 1.0 / (1.0 + stats.s1)
    dominant = at_top & (m > -jnp.inf)
    g_y = jnp.where(dominant, -stats.s1 * inv, jnp.exp(shift_by_max(x_y, m)) * inv - 1.0)
    is_y = lax.broadcasted_iota(y.dtype, x.shape, x.ndim - 1) == y_safe
    grad = jnp.where(is_y, g_y, stats.probabilities())
    grad = jnp.where(kept | jnp.isnan(m), grad, zero)
    return loss, jnp.where(valid, grad, nan)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _integer_ce(
    x: jax.Array, y: jax.Array, mask: jax.Array | None, reduction: Reduction
) -> jax.Array:
    return _integer_ce_pieces(x, y, mask, reduction, with_grad=False)[0]


@_integer_ce.defjvp
def _integer_ce_jvp(reduction, primals, tangents):
    x, y, mask = primals
    value, grad = _integer_ce_pieces(x, y, mask, reduction, with_grad=True)
    assert grad is not None
    return value, jnp.sum(grad * tangents[0], axis=-1)


# --------------------------------------------------------------------------------------------
# Keyword options shared by both losses: weights, label_smoothing, z_loss, temperature, cap
# --------------------------------------------------------------------------------------------


class _Options(NamedTuple):
    """The keyword options as arrays (``None``: off, nothing traced)."""

    weights: jax.Array | None  # class weights broadcast to the logits' shape
    smoothing: jax.Array | None
    z_loss: jax.Array | None

    @property
    def off(self) -> bool:
        return self.weights is None and self.smoothing is None and self.z_loss is None


def _options(
    x: jax.Array,
    axes: tuple[int, ...],
    weights: ArrayLike | None,
    label_smoothing: ArrayLike,
    z_loss: ArrayLike,
) -> _Options:
    w = None
    if weights is not None:
        w = class_weights("weights", weights, tuple(x.shape), axes, x.dtype)
        check_nonnegative("weights", float_array("weights", weights))
    eps = (
        None
        if is_off(label_smoothing)
        else scalar_option("label_smoothing", label_smoothing, x.dtype, UNIT)
    )
    z = None if is_off(z_loss) else scalar_option("z_loss", z_loss, x.dtype, NONNEGATIVE)
    return _Options(w, eps, z)


def _uniform_mass(
    eps: jax.Array, mask: jax.Array | None, shape: tuple[int, ...], axes: tuple[int, ...]
) -> jax.Array:
    """``eps / C_row`` (dims kept), ``C_row`` the number of unmasked classes; 0 for empty rows."""
    if mask is None:
        n = jnp.asarray(math.prod(shape[a] for a in axes), eps.dtype)
    else:
        n = jnp.sum(mask, axis=axes, keepdims=True, dtype=eps.dtype)
    one = jnp.ones((), eps.dtype)
    return jnp.where(n > 0, eps / jnp.where(n > 0, n, one), jnp.zeros((), eps.dtype))


def _z_loss_term(
    x: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
    z: jax.Array,
) -> jax.Array:
    """PaLM's auxiliary ``z · logsumexp(x)^2``, per example.

    The log-sum-exp is the custom-JVP primitive behind :func:`jaxce.logsumexp`, so the
    derivative ``2 z lse · p`` is right in forward and reverse mode (T5X writes this term with a
    ``custom_vjp``, reverse mode only). An empty row (every class masked or ``-inf``) has
    ``lse = -inf`` and contributes 0, not ``(-inf)^2``; its derivative is 0.
    """
    zero = jnp.zeros((), x.dtype)
    lse = jnp.squeeze(row_logsumexp(x, mask, axes, reduction), axes)
    finite = jnp.isfinite(lse)
    # Double where: the derivative flows only through finite rows. A +inf row (a +inf logit)
    # has z-loss +inf whose derivative is not defined; it gets 0 here (the cross-entropy keeps
    # its own finite gradient) instead of inf * 0 = NaN. NaN rows stay NaN.
    lse_f = jnp.where(finite, lse, zero)
    edge = lax.stop_gradient(jnp.where(lse == -jnp.inf, zero, lse * lse))
    return safe_mul(z, jnp.where(finite, lse_f * lse_f, edge))


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _soft_ce_options(
    x: jax.Array,
    t: jax.Array,
    mask: jax.Array | None,
    opts: _Options,
    axes: tuple[int, ...],
    reduction: Reduction,
    check_targets: bool,
) -> jax.Array:
    if check_targets:
        t = nan_where(outside_unit_interval(t), t)
    if opts.smoothing is not None:
        eps = opts.smoothing
        t = (1.0 - eps) * t + _uniform_mass(eps, mask, tuple(x.shape), axes)
    if opts.weights is not None:
        # Weighted labels w_k t'_k may exceed 1: the check above already ran on t itself.
        t = nan_where(negative(opts.weights), opts.weights) * t
    loss = soft_ce_core(x, t, mask, axes, reduction)
    if opts.z_loss is not None:
        loss = loss + _z_loss_term(x, mask, axes, reduction, opts.z_loss)
    return loss


@functools.partial(jax.jit, static_argnums=(5, 6))
def _integer_ce_options(
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array | None,
    ignored: jax.Array | None,
    opts: _Options,
    axes: tuple[int, ...],
    reduction: Reduction,
) -> jax.Array:
    zero = jnp.zeros((), x.dtype)
    # (1 - eps) w[y] (-log p_y): the exact integer-label core, scaled.
    loss = _integer_ce_core(x, y, mask, axes, reduction)
    coef = None
    if opts.weights is not None:
        w = nan_where(negative(opts.weights), opts.weights)
        wl, _ = classes_last(w, None, axes)
        is_y = lax.broadcasted_iota(y.dtype, wl.shape, wl.ndim - 1) == y[..., None]
        coef = jnp.sum(jnp.where(is_y, wl, zero), axis=-1)  # w[y] without a gather
    if opts.smoothing is not None:
        coef = 1.0 - opts.smoothing if coef is None else (1.0 - opts.smoothing) * coef
    if coef is not None:
        # safe_mul: a zero weight (or eps = 1) removes the term even where -log p_y = +inf;
        # a NaN loss (out-of-range label) stays NaN.
        loss = safe_mul(coef, loss)
    if opts.smoothing is not None:
        # (eps / C_row) sum_k w_k (-log p_k): the soft-label core with a uniform (weighted)
        # label, so there is one log-softmax, not two.
        u = _uniform_mass(opts.smoothing, mask, tuple(x.shape), axes)
        if opts.weights is not None:
            u = u * nan_where(negative(opts.weights), opts.weights)
        loss = loss + soft_ce_core(x, jnp.broadcast_to(u, x.shape), mask, axes, reduction)
    if opts.z_loss is not None:
        loss = loss + _z_loss_term(x, mask, axes, reduction, opts.z_loss)
    if ignored is not None:
        loss = jnp.where(ignored, zero, loss)
    return loss

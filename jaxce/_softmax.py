r"""Softmax cross-entropy losses, optax-compatible (same names, signatures and per-example output).

Both losses are built from :mod:`jaxce._primitives` and inherit its conventions (masks, empty
rows, ``±inf``). They return float32 for 16-bit logits (float64 under x64 for float64 logits);
gradients come back in the logits' dtype.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxce._checks import (
    Axis,
    canonical_axes,
    class_weights,
    float_array,
    integer_array,
    mask_array,
    same_rank_broadcast,
)
from jaxce._primitives import (
    lse_minus,
    mass_beyond_top,
    mass_from_pair,
    pair_total,
    recompute_exp,
    row_max,
    row_sum_pair,
    row_sum_pairs,
    safe_mul,
    shift_by_max,
    staged_sums,
)
from jaxce._transforms import scale_logits
from jaxce._validate import (
    _report,
    _wanted,
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


def _soft_ce_pieces(x, t, where, axes, check_targets=False, s_lanes=16):
    """Value, gradient wrt logits and gradient wrt labels of the soft-label cross-entropy.

    value = sum_k t_k (m - x_k) + T log1p(S'): every term is >= 0, nothing cancels. Each term
    is computed as ``(2 t_k) (m/2 - x_k/2)``, the same rounding by exact scaling, so that it
    cannot overflow where ``m - x_k`` would (logits spanning more than the dtype's max): the
    loss is finite whenever it is.
    grad_x = T p - t, except at a unique arg-max, where (T - t_j) - T S'/(1 + S') keeps the
    small 1 - p_j exact (``docs/numerics.md``, the min(...) term of kappa); the complement
    mass T - t_j comes from the compensated label total ``(s, c)`` as ``(s - t_j) + c``, with
    ``s - t_j`` exact when it is small (Sterbenz), evaluated in the gradient's elementwise pass.
    grad_t = -log p, 0 for absent classes (zero target and zero probability) and masked ones.
    With ``check_targets`` (strict mode) a label outside [0, 1] makes the row's value and
    grad_x NaN; otherwise any real label is the linear extension.
    ``s_lanes``: the first-stage width of S' on CPU (16; 8 for 16-bit logits, see below).
    All of it is plain jnp code whose own derivatives are right, so JAX can differentiate the
    rule again for Hessians.
    """
    zero = jnp.zeros((), x.dtype)
    xm, m = row_max(x, where, axes)
    shifted = shift_by_max(xm, m)
    e = jnp.exp(shifted)
    tm = t if where is None else jnp.where(where, t, zero)
    # Strict mode: a label outside [0, 1] makes its example NaN (masked classes are dropped):
    # a NaN label total spreads to the value and the whole row's gradient. Inside the sum's
    # input, the check costs no pass of its own.
    t_in = nan_where(outside_unit_interval(tm), tm) if check_targets else tm
    # The value's terms t_k (m - x_k), as (2 t_k)(m/2 - x_k/2): halving is exact, so this is the
    # same product rounded the same way, and m/2 - x_k/2 cannot overflow for finite m and x_k
    # (logits spanning more than the dtype's max: the loss stays finite whenever it is).
    # shift_by_max keeps -inf entries (gap +inf, a term of 0 or +inf by safe_mul) and +inf
    # rows as for `shifted`. (Subnormal halves are flushed by XLA, an absolute 1e-38.)
    half_gap = -shift_by_max(0.5 * xm, 0.5 * m)
    terms = safe_mul(2.0 * tm, half_gap)
    # The three row sums: S' and the label total T compensated from the first addition (S'
    # since its exact 1 at the arg-max would absorb a tiny rest; T since the gradient T p - t
    # cancels where p ~ t: with a plain 8-term first stage a smoothed label's gradient at a
    # +inf logit was 9.9 ulps off), and the value's terms t_k (m - x_k), whose first stage
    # adds a few terms plainly (see `_pairs_value`): >= 0 for non-negative labels; with
    # labels of both signs the sum is accurate relative to sum_k |t_k| (m - x_k), which the
    # accuracy standard scores such rows against (the halves t+ and t-, docs/numerics.md).
    if staged_sums():
        # XLA:CPU: two staged reductions, S' alone with 16 lanes (like the integer-label CE)
        # and T with the terms with 8. One reduction of all three vectorizes only with 4
        # lanes, and its four quarter-size partial-sum arrays cost more to write than the
        # second read of x. Value + gradient, float32, 2-core CPU, jaxce/optax, interleaved:
        # 1.31-1.48 -> 0.85-1.04 at 4096 x 32768, 1.11 -> 0.95-1.09 at 65536 x 1000,
        # 1.26 -> 0.78-0.92 at 256 x 262144; compiled temp memory 432 -> 208, 225 -> 93,
        # 216 -> 104 MiB (optax 512, 250, 512). For 16-bit logits S' takes 8 lanes: their
        # conversion in the body stops the vectorization of 16 (20 at V = 1000): bfloat16
        # 0.75 -> 0.44x optax at 65536 x 1000, 0.79 -> 0.64 at 4096 x 32768, 0.54 -> 0.49 at
        # 256 x 262144 (in float32, 8 lanes are 1.0-1.1x slower than 16).
        e_pair = row_sum_pair(e, axes, True, s_lanes)
        t_pair, v_pair = row_sum_pairs((t_in, terms), axes, True, (False, True), 8)
    else:
        # GPU / TPU: one variadic row reduction, fused with its producer (`staged_sums`).
        e_pair, t_pair, v_pair = row_sum_pairs((e, t_in, terms), axes, True, (False, False, True))
    s1 = mass_from_pair(*e_pair, m)
    # The dominant class (unique arg-max with p > 1/2, i.e. S' < 1) gets its own form below.
    dominant = (shifted == 0) & (s1 < 1.0)
    t_sum, t_err = t_pair
    total = pair_total(t_sum, t_err)
    # T - t_j at the dominant class j, elementwise (no reduction): read where it is used.
    t_rest = (t_sum - tm) + t_err
    log_norm = jnp.log1p(s1)
    value = jnp.squeeze(pair_total(*v_pair) + total * log_norm, axes)
    one_plus = 1.0 + s1
    # The gradient pass recomputes exp(x - m) (same bits, `shift_by_max(again=True)`) rather
    # than reading it back stored, on every backend: on GPU/TPU the exponential is free next
    # to the memory traffic, and on a 2-core CPU, where writing a [B, V] array costs several
    # times reading one, it is no slower (value + gradient, float32, interleaved, 11 repeats,
    # jaxce/optax: 1.22 -> 1.18 at 16384 x 1000, 0.99 -> 0.95 at 1024 x 32768, 1.16 -> 1.07
    # at 64 x 262144) and stores less (compiled temp memory 71 -> 56, 140 -> 108, 70 -> 54 MiB;
    # optax 62, 256, 128).
    e = jnp.exp(shift_by_max(xm, m, again=True))
    p = e / one_plus
    grad_x = jnp.where(dominant, t_rest - total * (s1 / one_plus), total * p - tm)
    neg_log_p = log_norm - shifted
    absent = (tm == 0) & (e == 0)
    if where is not None:
        absent = absent | ~where
    grad_t = jnp.where(absent, jnp.zeros((), x.dtype), neg_log_p)
    return value, grad_x, grad_t


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _soft_ce_core(x, t, where, axes, check_targets=False, s_lanes=16):
    return _soft_ce(x, t, where, axes, check_targets, s_lanes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _soft_ce(x, t, where, axes, check_targets, s_lanes):
    return _soft_ce_pieces(x, t, where, axes, check_targets, s_lanes)[0]


@functools.partial(_soft_ce.defjvp, symbolic_zeros=True)
def _soft_ce_jvp(axes, check_targets, s_lanes, primals, tangents):
    x, t, where = primals
    x_dot, t_dot, _ = tangents
    value, grad_x, grad_t = _soft_ce_pieces(x, t, where, axes, check_targets, s_lanes)
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
    if opts.off and temperature is None and logit_soft_cap is None:
        # the plain path, unchanged
        s_lanes = 8 if jnp.dtype(jnp.result_type(logits)).itemsize < 4 else 16
        return _soft_ce_core(x, t, mask, axes, strict_targets(), s_lanes)
    x = scale_logits(x, temperature=temperature, logit_soft_cap=logit_soft_cap)
    return _soft_ce_options(x, t, mask, opts, axes, strict_targets())


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
    ignored = None
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(
                f"`ignore_index` must be an int or None; got {ignore_index!r} "
                f"(type {type(ignore_index).__name__})."
            )
        ignored = y == ignore_index
        # Double where: an ignored example gets label 0 and zero logits before anything is
        # computed, so neither a NaN nor an inf of its own reaches its (zero) value or gradient,
        # and it is exempt from the range check.
        y = jnp.where(ignored, jnp.zeros((), y.dtype), y)
        x = jnp.where(jnp.expand_dims(ignored, axes), jnp.zeros((), x.dtype), x)
    check_class_indices("labels", y, math.prod(x.shape[a] for a in axes))
    opts = _options(x, axes, weights, label_smoothing, z_loss)
    if opts.off and temperature is None and logit_soft_cap is None and ignored is None:
        return _integer_ce_core(x, y, mask, axes)  # the plain path, unchanged
    x = scale_logits(x, temperature=temperature, logit_soft_cap=logit_soft_cap)
    return _integer_ce_options(x, y, mask, ignored, opts, axes)


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
    ``softplus(lse_{k != y} - x_y)`` of ``docs/numerics.md``. Gradient ``p_k = e_k / (1 + S')``
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
    # One sum of a bare exponential: the widest first stage is fastest (see FIRST_LANES).
    s1 = mass_beyond_top(jnp.exp(shift_by_max(xm, m)), m, axes, lanes=16)
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


# --------------------------------------------------------------------------------------------
# Keyword options shared by both losses: weights, label_smoothing, z_loss, temperature, cap
# --------------------------------------------------------------------------------------------


def _off(value: object) -> bool:
    """A Python number equal to 0: the option is off and nothing is traced for it."""
    return isinstance(value, (int, float)) and value == 0


def _coefficient(name: str, value: ArrayLike, dtype: jnp.dtype, upper: float | None) -> jax.Array:
    """A real scalar hyperparameter in ``[0, upper]``: eager ValueError, NaN under ``jit``."""
    try:
        v = jnp.asarray(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a real scalar; got {value!r}.") from None
    if v.ndim != 0 or not (
        jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)
    ):
        raise TypeError(
            f"`{name}` must be a real scalar; got dtype {v.dtype}, shape {tuple(v.shape)}."
        )
    v = v.astype(dtype)
    if upper is None:
        bad, expected = ~(v >= 0), "[0, inf) (a non-negative coefficient)"
    else:
        bad, expected = ~((v >= 0) & (v <= upper)), f"[0, {upper:g}]"
    if _wanted(v):
        _report(name, v, bad, expected)
    if not isinstance(v, jax.core.Tracer):
        return v  # concrete and checked above; no NaN constant (quiet under jax.debug_nans)
    return nan_where(bad, v)


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
        if _off(label_smoothing)
        else _coefficient("label_smoothing", label_smoothing, x.dtype, 1.0)
    )
    z = None if _off(z_loss) else _coefficient("z_loss", z_loss, x.dtype, None)
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
    x: jax.Array, mask: jax.Array | None, axes: tuple[int, ...], z: jax.Array
) -> jax.Array:
    """PaLM's auxiliary ``z · logsumexp(x)^2``, per example.

    The log-sum-exp is the custom-JVP primitive behind :func:`jaxce.logsumexp`, so the
    derivative ``2 z lse · p`` is right in forward and reverse mode (T5X writes this term with a
    ``custom_vjp``, reverse mode only). An empty row (every class masked or ``-inf``) has
    ``lse = -inf`` and contributes 0, not ``(-inf)^2``; its derivative is 0.
    """
    zero = jnp.zeros((), x.dtype)
    lse = jnp.squeeze(lse_minus(x, zero, mask, axes), axes)
    finite = jnp.isfinite(lse)
    # Double where: the derivative flows only through finite rows. A +inf row (a +inf logit)
    # has z-loss +inf whose derivative is not defined; it gets 0 here (the cross-entropy keeps
    # its own finite gradient) instead of inf * 0 = NaN. NaN rows stay NaN.
    lse_f = jnp.where(finite, lse, zero)
    edge = lax.stop_gradient(jnp.where(lse == -jnp.inf, zero, lse * lse))
    return safe_mul(z, jnp.where(finite, lse_f * lse_f, edge))


@functools.partial(jax.jit, static_argnums=(4, 5))
def _soft_ce_options(
    x: jax.Array,
    t: jax.Array,
    mask: jax.Array | None,
    opts: _Options,
    axes: tuple[int, ...],
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
    loss = _soft_ce_core(x, t, mask, axes, False)
    if opts.z_loss is not None:
        loss = loss + _z_loss_term(x, mask, axes, opts.z_loss)
    return loss


@functools.partial(jax.jit, static_argnums=(5,))
def _integer_ce_options(
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array | None,
    ignored: jax.Array | None,
    opts: _Options,
    axes: tuple[int, ...],
) -> jax.Array:
    zero = jnp.zeros((), x.dtype)
    # (1 - eps) w[y] (-log p_y): the exact integer-label core, scaled.
    loss = _integer_ce_core(x, y, mask, axes)
    coef = None
    if opts.weights is not None:
        w = nan_where(negative(opts.weights), opts.weights)
        wl, _ = _classes_last(w, None, axes)
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
        loss = loss + _soft_ce_core(x, jnp.broadcast_to(u, x.shape), mask, axes, False)
    if opts.z_loss is not None:
        loss = loss + _z_loss_term(x, mask, axes, opts.z_loss)
    if ignored is not None:
        loss = jnp.where(ignored, zero, loss)
    return loss

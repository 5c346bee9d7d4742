r"""``torch.nn.functional.cross_entropy`` and ``nll_loss`` in JAX, on jaxce's stable losses.

Per-example losses come from :func:`jaxce.softmax_cross_entropy_with_integer_labels` and
:func:`jaxce.softmax_cross_entropy` (so they inherit their accuracy and edge-case behaviour);
the reductions use PyTorch's denominators through :func:`jaxce.torch._reduction.reduce`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxce._checks import (
    canonical_axes,
    class_weights,
    classes_last,
    float_array,
    integer_array,
)
from jaxce._primitives import safe_mul
from jaxce._softmax import (
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
)
from jaxce._validate import check_class_indices, check_nonnegative, nan_where, negative
from jaxce.torch._reduction import check_reduction, reduce

__all__ = ["cross_entropy", "nll_loss"]


def _class_axis(axis: int, ndim: int) -> tuple[int, ...]:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(
            f"`axis` must be an int (the class dimension; 1 for PyTorch's [N, C, ...] layout); "
            f"got {axis!r} (type {type(axis).__name__})."
        )
    return canonical_axes(axis, ndim)


def _check_ignore_index(ignore_index: int) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(
            f"`ignore_index` must be an int; got {ignore_index!r} "
            f"(type {type(ignore_index).__name__})."
        )
    return int(ignore_index)


def _labels_shape(y: jax.Array, x: jax.Array, axes: tuple[int, ...], name: str) -> None:
    batch_shape = tuple(d for a, d in enumerate(x.shape) if a not in axes)
    if tuple(y.shape) != batch_shape:
        raise ValueError(
            f"`labels` has shape {tuple(y.shape)}, but `{name}` of shape {tuple(x.shape)} with "
            f"class axis {axes[0]} expects integer labels of shape {batch_shape} (or "
            f"probability targets of shape {tuple(x.shape)})."
        )


@jax.jit
def _target_weight(y: jax.Array, ignored: jax.Array, w: jax.Array | None) -> jax.Array:
    """``w[y_n]·m_n`` (``m_n = 0`` for ignored targets): PyTorch's mean denominator terms."""
    kept = (~ignored).astype(jnp.result_type(float))
    if w is None:
        return kept
    w_y = jnp.take(w, jnp.where(ignored, 0, y), mode="clip")
    return jnp.where(ignored, jnp.zeros((), w.dtype), w_y)


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: ArrayLike = 0.0,
    axis: int = -1,
) -> jax.Array:
    r"""``torch.nn.functional.cross_entropy`` with jaxce's stable per-example losses.

    Integer ``labels`` (class indices) or floating ``labels`` (probability targets) are told
    apart by their dtype, as PyTorch does. With :math:`lp = \log\operatorname{softmax}(x)`,
    weights :math:`w`, smoothing ε, :math:`C` classes and :math:`m_n = 0` for an ignored
    target (1 otherwise):

    .. math::
       \text{indices: } \ell_n = m_n\big[(1-\varepsilon) w_{y_n}(-lp_{n,y_n})
          + \tfrac{\varepsilon}{C}\textstyle\sum_c w_c (-lp_{n,c})\big],\quad
       \text{mean} = \frac{\sum_n \ell_n}{\sum_n w_{y_n} m_n}

    .. math::
       \text{probabilities: } \ell_n = -\sum_c w_c\big((1-\varepsilon) t_{n,c} +
          \tfrac{\varepsilon}{C}\big)\, lp_{n,c},\quad
       \text{mean} = \frac{1}{N}\sum_n \ell_n

    **Stable form.** The per-example losses are
    :func:`jaxce.softmax_cross_entropy_with_integer_labels` and
    :func:`jaxce.softmax_cross_entropy` with ``weights``, ``label_smoothing`` and
    ``ignore_index``: tiny losses and the gradient ``1 - p_y`` of a confident prediction keep
    full relative precision, ``0 · log 0 = 0``, ``±inf`` logits have finite gradients.

    ====================================================  ==================  ===============
    case                                                  jaxce               PyTorch
    ====================================================  ==================  ===============
    ``"mean"``, every target ignored (or ``Σ w[y] = 0``)  0, gradient 0       NaN
    ignored example with NaN/``inf`` logits               0, gradient 0       0
    label outside ``[0, C)``, not ``ignore_index``        error / NaN (jit)   error
    probability target outside ``[0, 1]``                 accepted (exact)    accepted
    negative ``weight``                                   error / NaN (jit)   accepted
    zero target on a ``-inf`` logit (probabilities)       0, finite gradient  NaN
    confident correct (``-log p_y = 1e-30``)              1e-30               0
    ====================================================  ==================  ===============

    The all-ignored mean is a deliberate difference: PyTorch's 0/0 (pytorch #70348, #116349)
    would poison a whole training step for a batch of padding.

    Args:
      logits: ``[..., C, ...]`` unnormalized log-probabilities, classes on ``axis``.
      labels: integer class indices, ``logits``' shape without the class axis; or floating
        probability targets of ``logits``' shape.
      weight: optional per-class weights ``[C]`` (``>= 0``).
      ignore_index: label value whose targets are skipped (integer labels only).
      reduction: ``"none"``, ``"sum"`` or ``"mean"``.
      label_smoothing: ε in ``[0, 1]``.
      axis: the class axis; ``-1`` (JAX layout) by default, ``1`` for PyTorch's ``[N, C, d1...]``.

    Returns:
      Per-example losses (``"none"``, the labels' batch shape) or a scalar; float32 for 16-bit
      logits.

    >>> import jax.numpy as jnp
    >>> from jaxce.torch import cross_entropy
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> round(float(cross_entropy(logits, jnp.array([0, 1]))), 4)
    1.614
    >>> float(cross_entropy(logits, jnp.array([-100, -100])))  # PyTorch: nan
    0.0
    """
    check_reduction(reduction)
    x = float_array("logits", logits)
    axes = _class_axis(axis, x.ndim)
    if weight is not None:
        # Checked here under PyTorch's name (the core loss would report `weights`).
        class_weights("weight", weight, tuple(x.shape), axes, x.dtype)
        check_nonnegative("weight", float_array("weight", weight))
    lab = jnp.asarray(labels)
    if jnp.issubdtype(lab.dtype, jnp.floating):
        loss = softmax_cross_entropy(
            x, lab, axes[0], weights=weight, label_smoothing=label_smoothing
        )
        return reduce(loss, reduction)
    y = integer_array("labels", lab)
    _labels_shape(y, x, axes, "logits")
    ignore = _check_ignore_index(ignore_index)
    loss = softmax_cross_entropy_with_integer_labels(
        x,
        y,
        axes[0],
        weights=weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore,
    )
    if reduction != "mean":
        return reduce(loss, reduction)
    w = None if weight is None else jnp.reshape(float_array("weight", weight), (-1,))
    w = None if w is None else w.astype(loss.dtype)
    return reduce(loss, reduction, jnp.sum(_target_weight(y, y == ignore, w), dtype=loss.dtype))


@functools.partial(jax.jit, static_argnums=(4,))
def _nll_core(
    x: jax.Array,
    y: jax.Array,
    ignored: jax.Array,
    w: jax.Array | None,
    axes: tuple[int, ...],
) -> jax.Array:
    xl, _ = classes_last(x, None, axes)
    num_classes = xl.shape[-1]
    zero = jnp.zeros((), x.dtype)
    yy = y[..., None]
    is_y = lax.broadcasted_iota(y.dtype, xl.shape, xl.ndim - 1) == yy
    valid = ((y >= 0) & (y < num_classes)) | ignored
    # The target log-probability without a gather (a masked sum). A bad label makes its row
    # NaN in value and gradient: the row enters as x * NaN, whose tangent is NaN too (a NaN
    # put in after the sum would leave a zero gradient under jit). Double where: a valid row
    # never meets the NaN factor, not even as a zero cotangent.
    row_ok = valid[..., None]
    other = jnp.where(row_ok, zero, jnp.where(row_ok, zero, xl) * jnp.array(jnp.nan, x.dtype))
    lp_y = jnp.sum(jnp.where(is_y, xl, other), axis=-1)
    if w is not None:
        w = nan_where(negative(w), w)
        w_y = jnp.sum(jnp.where(is_y, w, zero), axis=-1)
        w_y = jnp.where(valid, w_y, jnp.array(jnp.nan, x.dtype))
        loss = safe_mul(w_y, -lp_y)  # a zero weight on a -inf log-probability: 0
    else:
        loss = -lp_y
    return jnp.where(ignored, zero, loss)


def nll_loss(
    log_probs: ArrayLike,
    labels: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    axis: int = -1,
) -> jax.Array:
    r"""``torch.nn.functional.nll_loss``: the negative log-likelihood of given log-probabilities.

    .. math::
       \ell_n = -w_{y_n}\, lp_{n, y_n}\, m_n,\qquad
       \text{mean} = \frac{\sum_n \ell_n}{\sum_n w_{y_n} m_n}

    with :math:`m_n = 0` for ``labels == ignore_index``. ``log_probs`` are used as given (as in
    PyTorch they need not be normalized); pair it with :func:`jaxce.log_softmax`, or use
    :func:`cross_entropy` on logits directly, which is more accurate for confident predictions.

    **Stable form.** The target entry is picked with a masked sum (no gather), an ignored
    example's inputs are replaced before use (double ``where``) and a zero weight times a
    ``-inf`` log-probability is 0 (:func:`jaxce.safe_mul`).

    ====================================================  ==================  ===============
    case                                                  jaxce               PyTorch
    ====================================================  ==================  ===============
    ``"mean"``, every target ignored (or ``Σ w[y] = 0``)  0, gradient 0       NaN
    target log-probability ``-inf``                       ``+inf``            ``+inf``
    weight 0 on a ``-inf`` target log-probability         0                   NaN
    label outside ``[0, C)``, not ``ignore_index``        error / NaN (jit)   error
    negative ``weight``                                   error / NaN (jit)   accepted
    ====================================================  ==================  ===============

    Args:
      log_probs: ``[..., C, ...]`` log-probabilities, classes on ``axis``.
      labels: integer class indices, ``log_probs``' shape without the class axis.
      weight: optional per-class weights ``[C]`` (``>= 0``).
      ignore_index: label value whose targets are skipped.
      reduction: ``"none"``, ``"sum"`` or ``"mean"``.
      axis: the class axis; ``-1`` by default, ``1`` for PyTorch's ``[N, C, d1...]``.

    Returns:
      Per-example losses (``"none"``) or a scalar; float32 for 16-bit inputs.

    >>> import jax.numpy as jnp, jaxce
    >>> from jaxce.torch import nll_loss
    >>> lp = jaxce.log_softmax(jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]]))
    >>> nll_loss(lp, jnp.array([0, 1]), reduction="none").round(4).tolist()
    [0.2761, 2.9518]
    """
    check_reduction(reduction)
    x = float_array("log_probs", log_probs)
    axes = _class_axis(axis, x.ndim)
    y = integer_array("labels", labels)
    _labels_shape(y, x, axes, "log_probs")
    ignore = _check_ignore_index(ignore_index)
    num_classes = math.prod(x.shape[a] for a in axes)
    ignored = y == ignore
    y = jnp.where(ignored, jnp.zeros((), y.dtype), y)
    x = jnp.where(jnp.expand_dims(ignored, axes), jnp.zeros((), x.dtype), x)
    check_class_indices("labels", y, num_classes)
    w = None
    if weight is not None:
        wf = class_weights("weight", weight, tuple(x.shape), axes, x.dtype)
        check_nonnegative("weight", float_array("weight", weight))
        w, _ = classes_last(wf, None, axes)
    loss = _nll_core(x, y, ignored, w, axes)
    if reduction != "mean":
        return reduce(loss, reduction)
    wv = None if weight is None else jnp.reshape(float_array("weight", weight), (-1,))
    wv = None if wv is None else wv.astype(loss.dtype)
    return reduce(loss, reduction, jnp.sum(_target_weight(y, ignored, wv), dtype=loss.dtype))

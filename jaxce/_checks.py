"""Trace-time argument checks and the dtype policy shared by every public function.

Everything here looks only at shapes and dtypes, so it runs once per trace and costs nothing
under ``jit``. Each error names the argument, what it received and what was expected.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxce._validate import check_nonnegative

Axis = int | Sequence[int] | None


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype a computation runs in: 16-bit floats are upcast to float32."""
    return jnp.promote_types(dtype, jnp.float32)


def _describe(x: jax.Array) -> str:
    return f"dtype {x.dtype}, shape {tuple(x.shape)}"


def floating_input(name: str, x: ArrayLike) -> jax.Array:
    """``x`` as an array in its own dtype; a ``TypeError`` unless it is floating point."""
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array (float16, bfloat16, float32 or float64); "
            f"got {_describe(arr)}. Cast it, e.g. `{name}.astype(jnp.float32)`."
        )
    return arr


def float_array(name: str, x: ArrayLike) -> jax.Array:
    """``x`` as an array in its compute dtype; a ``TypeError`` unless it is floating point."""
    arr = floating_input(name, x)
    return arr.astype(compute_dtype(arr.dtype))


def integer_array(name: str, x: ArrayLike) -> jax.Array:
    """``x`` as an integer array; a ``TypeError`` for float or boolean labels."""
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(
            f"`{name}` must hold integer class indices (an int32/int64 array); got "
            f"{_describe(arr)}. For probability targets use `softmax_cross_entropy`; "
            f"for float-typed indices cast with `{name}.astype(jnp.int32)`."
        )
    return arr


def ignored_labels(ignore_index: object, y: jax.Array) -> tuple[jax.Array | None, jax.Array]:
    """``(ignored, y)``: where ``y == ignore_index`` (None without one), and ``y`` with label 0
    there (exempt from the range check); a ``TypeError`` unless ``ignore_index`` is an int."""
    if ignore_index is None:
        return None, y
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(
            f"`ignore_index` must be an int or None; got {ignore_index!r} "
            f"(type {type(ignore_index).__name__})."
        )
    ignored = y == ignore_index
    return ignored, jnp.where(ignored, jnp.zeros((), y.dtype), y)


def canonical_axes(axis: Axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Normalize an int, a tuple of ints or ``None`` to a tuple of non-negative axes.

    The order is kept: with integer labels over a tuple of axes it fixes the flat class index.
    """
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        raw: tuple[int, ...] = (operator.index(axis),)
    elif isinstance(axis, (tuple, list)) and all(isinstance(a, (int, np.integer)) for a in axis):
        raw = tuple(operator.index(a) for a in axis)
    else:
        raise TypeError(
            f"`{name}` must be an int, a tuple of ints or None; got {axis!r} "
            f"(type {type(axis).__name__})."
        )
    if not raw:
        raise ValueError(f"`{name}` must name at least one axis; got {axis!r}.")
    out = []
    for a in raw:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`{name}`={axis!r} is out of range for an array with {ndim} dimension(s); "
                f"expected values in [{-ndim}, {ndim - 1}]."
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}`={axis!r} repeats an axis.")
    return tuple(out)


def _broadcastable(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    return len(src) == len(dst) and all(s in (1, d) for s, d in zip(src, dst, strict=True))


def same_rank_broadcast(
    name: str, x: jax.Array, shape: tuple[int, ...], ref_name: str = "logits"
) -> jax.Array:
    """Broadcast ``x`` to ``shape`` only if it has the same rank and each dim is equal or 1.

    Rank promotion is refused on purpose: labels of shape ``[batch]`` against logits of shape
    ``[batch, classes]`` would silently broadcast along the wrong axis when batch == classes.
    """
    if not _broadcastable(tuple(x.shape), shape):
        raise ValueError(
            f"`{name}` has shape {tuple(x.shape)}, which does not match `{ref_name}` of shape "
            f"{shape}: expected the same number of dimensions with each dimension equal "
            f"or 1."
        )
    return jnp.broadcast_to(x, shape)


def broadcast_pair(
    name_a: str, a: jax.Array, name_b: str, b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Broadcast two same-rank arrays against each other (each dim equal or 1), else raise."""
    sa, sb = tuple(a.shape), tuple(b.shape)
    if len(sa) != len(sb) or any(x != y and 1 not in (x, y) for x, y in zip(sa, sb, strict=True)):
        raise ValueError(
            f"`{name_a}` of shape {sa} and `{name_b}` of shape {sb} do not match: expected the "
            f"same number of dimensions with each dimension equal or 1."
        )
    shape = tuple(max(x, y) for x, y in zip(sa, sb, strict=True))
    return jnp.broadcast_to(a, shape), jnp.broadcast_to(b, shape)


def mask_array(
    where: ArrayLike | None, shape: tuple[int, ...], axes: tuple[int, ...], name: str = "where"
) -> jax.Array | None:
    """A boolean mask broadcast to ``shape``, or ``None``.

    As in optax, a mask with the class axes missing (``[batch]`` for ``[batch, classes]``) is a
    per-example mask and is expanded along ``axes`` first.
    """
    if where is None:
        return None
    w = jnp.asarray(where)
    if w.dtype != jnp.bool_:
        raise TypeError(
            f"`{name}` must be a boolean mask (True = include); got {_describe(w)}. "
            f"Use `{name}.astype(bool)`."
        )
    if w.ndim == len(shape) - len(axes):
        w = jnp.expand_dims(w, axes)
    if not _broadcastable(tuple(w.shape), shape):
        raise ValueError(
            f"`{name}` has shape {tuple(jnp.asarray(where).shape)}, which fits neither the "
            f"logits shape {shape} nor its batch shape (logits without axes {axes}); each "
            f"dimension must be equal or 1."
        )
    return jnp.broadcast_to(w, shape)


def class_weights(
    name: str, weights: ArrayLike, shape: tuple[int, ...], axes: tuple[int, ...], dtype: jnp.dtype
) -> jax.Array:
    """Per-class weights broadcast to the full ``shape`` along the class ``axes``.

    Accepted: the class axes' shape (``[num_classes]`` for one class axis) or, for a tuple
    ``axis``, the flat ``[prod(class dims)]`` vector (row-major, as integer labels index it).
    """
    w = float_array(name, weights).astype(dtype)
    class_shape = tuple(shape[a] for a in axes)
    flat = (int(np.prod(class_shape)),)
    if tuple(w.shape) == flat and len(class_shape) > 1:
        w = w.reshape(class_shape)
    if tuple(w.shape) != class_shape:
        expected = f"{class_shape}" if len(class_shape) == 1 else f"{class_shape} or {flat}"
        raise ValueError(
            f"`{name}` has shape {tuple(w.shape)}; expected one weight per class, shape "
            f"{expected} (the logits' class axes {axes} of shape {shape})."
        )
    # Place the class dims at their axes (in the order the axes were given), 1 elsewhere.
    order = sorted(range(len(axes)), key=lambda i: axes[i])
    w = w.transpose(order) if order != list(range(len(axes))) else w
    full = [1] * len(shape)
    for a in sorted(axes):
        full[a] = shape[a]
    return jnp.broadcast_to(w.reshape(full), shape)


def classes_last(
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


def elementwise_weights(name: str, w: ArrayLike, shape: tuple[int, ...], dtype) -> jax.Array:
    """``w`` broadcast to the logits' ``shape`` by NumPy rules (a ``ValueError`` otherwise).

    Broadcasting is explicit (``broadcast_to``) so that rank promotion, e.g. ``pos_weight`` of
    shape ``[num_classes]`` against ``[batch, num_classes]`` logits, is the documented NumPy
    rule and not a silent promotion inside arithmetic. The weights never enlarge the output.
    """
    arr = float_array(name, w).astype(dtype)
    try:
        out_shape = np.broadcast_shapes(tuple(arr.shape), shape)
    except ValueError:
        out_shape = None
    if out_shape != shape:
        raise ValueError(
            f"`{name}` has shape {tuple(arr.shape)}, which does not broadcast to the logits "
            f"shape {shape} (NumPy rules: trailing dimensions equal or 1, e.g. "
            f"[num_classes] for logits [..., num_classes])."
        )
    check_nonnegative(name, arr)
    return jnp.broadcast_to(arr, shape)

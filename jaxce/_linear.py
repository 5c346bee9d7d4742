r"""The cross-entropy of a linear head (an LM head) without the ``[tokens, vocab]`` logits.

``linear_cross_entropy(hidden, weight, labels)`` is
``softmax_cross_entropy_with_integer_labels(hidden @ weight, labels)`` computed over blocks of
the vocabulary: no more than one block of logits is ever held, in the value, the gradient or
forward mode.

How the row statistics are carried across blocks. Each block ``b`` gives its own max ``m_b``
and ``S'_b`` (the sum of ``exp(z - m_b)`` over the block's columns but one arg-max; see
:mod:`jaxce._rows`). At the end, with ``m = max_b m_b`` and ``b*`` the first block holding it,

    ``S' = S'_{b*} + sum_{b != b*} exp(m_b - m) (1 + S'_b)``

a compensated sum of non-negative terms, each rescaled once: within a few roundings of the
``S'`` of the whole row, however many blocks there are. The target logit is picked out of its
block (the same bits as the block's logits), so the loss ``(m - z_y) + log1p(S')`` keeps a
confident token's tiny loss to full relative precision, as the integer-label core does.

Derivatives: a ``jax.custom_jvp`` whose tangent rule is a second pass over the blocks (a
``lax.scan`` whose body is checkpointed), linear in the tangents of ``hidden``, ``weight`` and
``bias``. Forward mode runs it as it is; reverse mode is JAX's transposition of it, which
recomputes each block's logits instead of storing them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxce._checks import compute_dtype, integer_array
from jaxce._options import NONNEGATIVE, POSITIVE, UNIT, is_off, scalar_option
from jaxce._primitives import safe_mul
from jaxce._rows import FUSED, Reduction, pair_total, reduction_for, row_max, row_stats, row_sum
from jaxce._transforms import soft_cap_slopes
from jaxce._validate import check_class_indices, check_nonnegative, nan_where, negative

__all__ = ["linear_cross_entropy"]

#: vocabulary columns per block when ``block_size`` is not given (benchmarks/README.md)
DEFAULT_BLOCK = 1024
_REDUCTIONS = ("none", "sum", "mean")


class _Head(NamedTuple):
    """The static layout of a call: block width, block count, vocabulary, options present."""

    block: int
    n_blocks: int
    vocab: int
    reduction: Reduction
    smoothing: bool
    z_loss: bool
    cap: bool
    bias: bool
    lse_tangent: bool
    rows: bool  # the weight is [V, D] (blocks are rows), else [D, V] (blocks are columns)

    def start(self, j: jax.Array) -> jax.Array:
        # The last block is shifted left to end at the vocabulary's end; its columns that the
        # previous block already counted are masked (``fresh``), never zero-padded.
        return jnp.minimum(j * self.block, self.vocab - self.block)

    def columns(self, a: jax.Array, j: jax.Array) -> jax.Array:
        """Block ``j`` of a weight-shaped array (the weight or its tangent), in its layout."""
        return lax.dynamic_slice_in_dim(a, self.start(j), self.block, axis=0 if self.rows else 1)

    def logits(self, h: jax.Array, wj: jax.Array) -> jax.Array:
        """``h @ W_b`` for a block ``wj`` of either layout, in the compute dtype."""
        dims = (((1,), (1 if self.rows else 0,)), ((), ()))
        return lax.dot_general(h, wj, dims, preferred_element_type=compute_dtype(h.dtype))

    def back(self, g: jax.Array, wj: jax.Array) -> jax.Array:
        """``g @ W_b^T`` (``[N, D]``), in the compute dtype."""
        dims = (((1,), (0 if self.rows else 1,)), ((), ()))
        return lax.dot_general(g, wj, dims, preferred_element_type=compute_dtype(g.dtype))


class _Stats(NamedTuple):
    """Per-token statistics of the whole row of logits, from the first pass."""

    m: jax.Array  # row max
    s1: jax.Array  # S'
    z_y: jax.Array  # target logit
    spread: jax.Array  # sum_k (m - z_k) (0 unless label smoothing is on)


class _Block(NamedTuple):
    w: jax.Array  # the block of the weight: its columns [D, block] (rows for [V, D])
    z: jax.Array  # logits [N, block] in the compute dtype
    cols: jax.Array  # their vocabulary indices
    fresh: jax.Array  # columns not counted by an earlier block
    slopes: tuple[jax.Array, jax.Array] | None  # the soft cap's d/dz and d/dcap


def _block(head: _Head, h, w, b, cap, j) -> _Block:
    """Block ``j`` of the logits: the matmul in the inputs' dtype, accumulated in the compute
    dtype (float32 for 16-bit inputs)."""
    start = head.start(j)
    # The barrier ties the weight to the iteration: otherwise XLA:CPU hoists a 16-bit weight's
    # conversion to float32 out of the loop, a float32 copy of the whole weight.
    wj = head.columns(*lax.optimization_barrier((w, j)))
    a = head.logits(h, wj)
    if head.bias:
        a = a + lax.dynamic_slice_in_dim(b, start, head.block).astype(a.dtype)[None, :]
    cols = (start + lax.iota(jnp.int32, head.block))[None, :]
    fresh = cols >= j * head.block
    if not head.cap:
        return _Block(wj, a, cols, fresh, None)
    z, slope, cap_slope = soft_cap_slopes(a, cap)
    return _Block(wj, z, cols, fresh, (slope, cap_slope))


def _first_pass(head: _Head, h, w, b, y, cap) -> _Stats:
    """One pass over the blocks: each block's ``(m_b, S'_b, spread_b)`` and the target logit,
    combined into the row's statistics."""
    ct = compute_dtype(h.dtype)

    def body(z_y, j):
        z = (blk := _block(head, h, w, b, cap, j)).z
        mask = jnp.broadcast_to(blk.fresh, z.shape)
        xm, m = row_max(z, mask, (1,))
        also = (jnp.where(mask, m - z, 0.0),) if head.smoothing else ()
        stats, pairs = row_stats(
            z,
            mask,
            (1,),
            head.reduction,
            row_max_of=(xm, m),
            also=also,
            plain_first=(True,) * len(also),
        )
        spread = pair_total(pairs[0]) if pairs else jnp.zeros_like(m)
        local = jnp.clip(y - head.start(j), 0, head.block - 1)[:, None]
        picked = jnp.take_along_axis(z, local, axis=1)[:, 0]
        mine = (y >= j * head.block) & (y < (j + 1) * head.block)
        return jnp.where(mine, picked, z_y), (m[:, 0], stats.s1[:, 0], spread[:, 0])

    z_y, (m_b, s1_b, spread_b) = lax.scan(
        body, jnp.zeros(h.shape[:1], ct), jnp.arange(head.n_blocks, dtype=jnp.int32)
    )
    m = jnp.max(m_b, axis=0, keepdims=True)
    blocks = lax.broadcasted_iota(jnp.int32, m_b.shape, 0)
    top = m_b == m
    first = jnp.argmax(top, axis=0, keepdims=True)
    # exp(m_b - m) with m_b = m = ±inf would be NaN; such rows are settled by _token_values.
    below = jnp.where(top, 0.0, m_b - m)
    terms = jnp.where(blocks == first, s1_b, jnp.exp(below) * (1.0 + s1_b))
    s1 = row_sum(terms, (0,), FUSED)
    spread = jnp.zeros_like(s1)
    if head.smoothing:
        # sum_k (m - z_k) = sum_b [spread_b + n_b (m - m_b)]: non-negative terms only.
        last = head.vocab - (head.n_blocks - 1) * head.block
        width = jnp.where(blocks == head.n_blocks - 1, last, head.block)
        spread = row_sum(spread_b - width * below, (0,), FUSED)
    return _Stats(m[0], s1, z_y, spread)


def _token_values(head: _Head, st: _Stats, live, eps, zl):
    """Per-token loss and log-normalizer from the statistics (0 for dead tokens)."""
    zero = jnp.zeros((), st.m.dtype)
    gap = jnp.where(st.z_y == st.m, zero, st.m - st.z_y)
    log_norm = jnp.log1p(st.s1)
    lse = st.m + log_norm
    loss = gap + log_norm
    if head.smoothing:
        loss = (1.0 - eps) * gap + log_norm + (eps / head.vocab) * st.spread
    if head.z_loss:
        loss = loss + safe_mul(zl, lse * lse)
    return jnp.where(live, loss, zero), jnp.where(live, lse, zero)


def _target_slope(head: _Head, st: _Stats, lse, eps, zl):
    """``d loss / d z_y`` per token: ``-(1 - p_y)`` exact at a dominant target, plus the
    options' terms."""
    inv = 1.0 / (1.0 + st.s1)
    at_top = st.z_y == st.m
    p_y = jnp.where(at_top, inv, jnp.exp(st.z_y - st.m) * inv)
    g = jnp.where(at_top, -st.s1 * inv, p_y - 1.0)
    if head.smoothing:
        g = g + eps * (1.0 - 1.0 / head.vocab)
    if head.z_loss:
        g = g + 2.0 * zl * lse * p_y
    return g


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _head_ce(head: _Head, h, w, b, y, live, eps, zl, cap):
    """Per-token ``(loss, lse)`` of the linear head (the core the public function reduces)."""
    st = _first_pass(head, h, w, b, y, cap)
    return _token_values(head, st, live, eps, zl)


@functools.partial(_head_ce.defjvp, symbolic_zeros=True)
def _head_ce_jvp(head: _Head, primals, tangents):
    h, w, b, y, live, eps, zl, cap = primals
    dh, dw, db, _, _, deps, dzl, dcap = tangents
    st = _first_pass(head, h, w, b, y, cap)
    loss, lse = _token_values(head, st, live, eps, zl)
    g_y = _target_slope(head, st, lse, eps, zl)
    inv = 1.0 / (1.0 + st.s1)
    cdt, ct = h.dtype, compute_dtype(h.dtype)
    live_c = live.astype(ct)
    use_w = not isinstance(dw, SymbolicZero)
    use_b = head.bias and not isinstance(db, SymbolicZero)
    use_cap = head.cap and not isinstance(dcap, SymbolicZero)
    # dh enters in the compute dtype, so its cotangent accumulates across blocks in it.
    dh_c = None if isinstance(dh, SymbolicZero) else dh.astype(ct)

    def tangent(blk: _Block, j, grad):
        """``sum_k grad_k · dz_k`` per token for block ``j`` (``dz``: the logits' tangent)."""
        ga = grad if blk.slopes is None else grad * blk.slopes[0]
        t = jnp.zeros(grad.shape[:1], ct)
        if dh_c is not None:
            # (ga @ W_b^T) · dh: the matmul in the input dtype, as the cotangent's is.
            back = head.back(ga.astype(cdt), blk.w)
            t = t + jnp.sum(back * dh_c, axis=1)
        if use_w:
            t = t + jnp.sum(ga * head.logits(h, head.columns(dw, j)), axis=1)
        if use_b:
            dbb = lax.dynamic_slice_in_dim(db, head.start(j), head.block).astype(ct)[None, :]
            t = t + jnp.sum(ga * dbb, axis=1)
        if use_cap and blk.slopes is not None:
            t = t + jnp.sum(grad * blk.slopes[1], axis=1) * dcap
        return t

    def body(acc, j):
        blk = _block(head, h, w, b, cap, j)
        p = jnp.where(blk.fresh, jnp.exp(blk.z - st.m[:, None]), 0.0) * inv[:, None]
        g = p * (1.0 + 2.0 * zl * lse)[:, None] if head.z_loss else p
        if head.smoothing:
            g = jnp.where(blk.fresh, g - eps / head.vocab, 0.0)
        g = jnp.where((blk.cols == y[:, None]) & blk.fresh, g_y[:, None], g) * live_c[:, None]
        t_loss = acc[0] + tangent(blk, j, g)
        if not head.lse_tangent:
            return (t_loss, acc[1]), None
        return (t_loss, acc[1] + tangent(blk, j, p * live_c[:, None])), None

    zeros = (jnp.zeros(h.shape[:1], ct), jnp.zeros(h.shape[:1], ct))
    body = jax.checkpoint(body, prevent_cse=False)
    (t_loss, t_lse), _ = lax.scan(body, zeros, jnp.arange(head.n_blocks, dtype=jnp.int32))
    if not isinstance(deps, SymbolicZero) and head.smoothing:
        gap = jnp.where(st.z_y == st.m, 0.0, st.m - st.z_y)
        t_loss = t_loss + live_c * (st.spread / head.vocab - gap) * deps
    if not isinstance(dzl, SymbolicZero) and head.z_loss:
        t_loss = t_loss + live_c * lse * lse * dzl
    return (loss, lse), (t_loss, t_lse)


def _block_width(vocab: int, block_size: int | None) -> int:
    if block_size is None:
        return min(vocab, DEFAULT_BLOCK)
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, (int, np.integer))
        or (block_size < 1)
    ):
        raise ValueError(f"`block_size` must be a positive int or None; got {block_size!r}.")
    return min(vocab, int(block_size))


def linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    reduction: str = "mean",
    ignore_index: int | None = -100,
    weights: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    logit_soft_cap: ArrayLike | None = None,
    return_lse: bool = False,
    block_size: int | None = None,
    weight_layout: str = "dv",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy of the logits ``hidden @ weight (+ bias)``, never materialized.

    The loss of a language model's head: per token ``n`` with logits
    :math:`z_n = h_n W + b` (soft-capped when ``logit_soft_cap`` is given),

    .. math::
       \ell_n = (1-\varepsilon)\,(-\log p_{n,y_n})
              + \frac{\varepsilon}{V}\sum_k (-\log p_{n,k})
              + z\cdot\operatorname{lse}(z_n)^2,
       \qquad p_n = \operatorname{softmax}(z_n),

    the same value as :func:`jaxce.softmax_cross_entropy_with_integer_labels` on the
    materialized logits (with ``label_smoothing`` and ``z_loss``), computed over blocks of
    ``block_size`` vocabulary columns so that at most one ``[tokens, block_size]`` block of
    logits exists at a time, in the value, the gradient and forward mode. The row statistics
    are carried across blocks so that a confident token's tiny loss and its ``1 - p_y`` keep
    their digits (``lse - z_y`` would round them to 0).

    Derivatives are a ``jax.custom_jvp``: ``jax.grad``, ``jax.jvp``, ``jax.linearize`` and
    ``jax.vmap`` work; reverse mode recomputes each block's logits instead of storing them.

    Args:
      hidden: ``[..., D]`` activations; the leading dims are the tokens.
      weight: ``[D, V]`` (the Flax ``Dense`` kernel layout: logits ``= hidden @ weight``), or
        ``[V, D]`` with ``weight_layout="vd"`` (a tied embedding, PyTorch's ``Linear``).
      labels: integer ``[...]`` (``hidden``'s leading shape), in ``[0, V)`` or
        ``ignore_index``.
      bias: optional ``[V]``.
      reduction: ``"mean"`` (over the non-ignored tokens, weighted by ``weights`` when given;
        0 with zero gradients when every token is ignored), ``"sum"`` or ``"none"``
        (per-token losses, ``labels``' shape; 0 at ignored tokens).
      ignore_index: label value of tokens that give 0 loss and 0 gradient (PyTorch's default
        ``-100``); ``None`` for none.
      weights: optional per-token weights ``>= 0``, ``labels``' shape.
      label_smoothing: ε in ``[0, 1]`` (uniform over the ``V`` classes, as in
        :func:`jaxce.softmax_cross_entropy_with_integer_labels`).
      z_loss: coefficient ``>= 0`` of ``lse(z)^2`` per token (PaLM).
      logit_soft_cap: optional positive ``c``: logits become ``c·tanh(z / c)`` (Gemma 2).
      return_lse: also return the per-token ``logsumexp`` of the (capped) logits,
        ``labels``' shape, differentiable (0 at ignored tokens).
      block_size: vocabulary columns per block (default 1024); the vocabulary need not be a
        multiple of it.
      weight_layout: ``"dv"`` (``weight`` is ``[D, V]``) or ``"vd"`` (``[V, D]``). Pass a
        tied embedding ``[V, D]`` itself with ``"vd"``, not ``embedding.T``: XLA keeps a
        loop's operands in their default layout, so under ``jit`` ``embedding.T`` is copied
        into a ``[D, V]`` array (and its gradient copied back), two weight-sized buffers.

    Returns:
      The loss (float32, or float64 under x64 for float64 inputs); with ``return_lse``, the
      pair ``(loss, lse)``. Gradients come back in the inputs' dtypes.

    A label outside ``[0, V)`` (other than ``ignore_index``) raises eagerly; under ``jit``
    that token's loss is NaN (and with it a reduced loss) and it adds nothing to the
    gradients. A negative weight and an option outside its range raise eagerly and give NaN
    under ``jit``. Non-finite logits (NaN inputs, or a matmul that overflows) give a
    non-finite loss for their token.

    >>> import jax, jax.numpy as jnp, jaxce
    >>> h = jnp.array([[1.0, -2.0], [0.5, 0.25]])
    >>> w = jnp.array([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]])
    >>> float(jaxce.linear_cross_entropy(h, w, jnp.array([0, 2])))
    0.83996
    >>> float(jaxce.softmax_cross_entropy_with_integer_labels(h @ w, jnp.array([0, 2])).mean())
    0.83996
    """
    h = _float_input("hidden", hidden)
    w = _float_input("weight", weight)
    y = integer_array("labels", labels)
    if h.ndim < 1:
        raise ValueError("`hidden` must have shape [..., D]; got a scalar.")
    if weight_layout not in ("dv", "vd"):
        raise ValueError(f'`weight_layout` must be "dv" or "vd"; got {weight_layout!r}.')
    rows = weight_layout == "vd"
    d_axis = 1 if rows else 0
    if w.ndim != 2 or w.shape[d_axis] != h.shape[-1]:
        expected = "[V, D]" if rows else "[D, V]"
        raise ValueError(
            f"`weight` has shape {tuple(w.shape)}; expected {expected} with D = "
            f"{h.shape[-1]} (`hidden`'s last dimension) for weight_layout={weight_layout!r}."
        )
    token_shape = tuple(h.shape[:-1])
    if tuple(y.shape) != token_shape:
        raise ValueError(
            f"`labels` has shape {tuple(y.shape)}; expected {token_shape}, `hidden`'s shape "
            f"{tuple(h.shape)} without its last dimension (one label per token)."
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}; got {reduction!r}.")
    dim, vocab = h.shape[-1], w.shape[1 - d_axis]
    if vocab < 1:
        raise ValueError("`weight` has no columns: the vocabulary is empty.")
    dtype = jnp.result_type(h.dtype, w.dtype)
    h, w = h.astype(dtype), w.astype(dtype)
    out_dtype = compute_dtype(dtype)
    b = None
    if bias is not None:
        b = _float_input("bias", bias)
        if tuple(b.shape) != (vocab,):
            raise ValueError(f"`bias` has shape {tuple(b.shape)}; expected ({vocab},).")
    wt = None
    if weights is not None:
        wt = _float_input("weights", weights).astype(out_dtype)
        if tuple(wt.shape) != token_shape:
            raise ValueError(
                f"`weights` has shape {tuple(wt.shape)}; expected {token_shape} (one weight "
                f"per token, `labels`' shape)."
            )
        check_nonnegative("weights", wt)
    ignored = None
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(
                f"`ignore_index` must be an int or None; got {ignore_index!r} "
                f"(type {type(ignore_index).__name__})."
            )
        ignored = y == ignore_index
        y = jnp.where(ignored, jnp.zeros((), y.dtype), y)
    check_class_indices("labels", y, vocab)
    if not isinstance(return_lse, bool):
        raise TypeError(f"`return_lse` must be a bool; got {return_lse!r}.")
    eps = (
        None
        if is_off(label_smoothing)
        else scalar_option("label_smoothing", label_smoothing, out_dtype, UNIT)
    )
    zl = None if is_off(z_loss) else scalar_option("z_loss", z_loss, out_dtype, NONNEGATIVE)
    cap = (
        None
        if logit_soft_cap is None
        else scalar_option("logit_soft_cap", logit_soft_cap, out_dtype, POSITIVE)
    )
    block = _block_width(vocab, block_size)
    head = _Head(
        block,
        -(-vocab // block),
        vocab,
        reduction_for(h, out_dtype),
        eps is not None,
        zl is not None,
        cap is not None,
        b is not None,
        return_lse,
        rows,
    )
    return _linear_ce(
        head,
        reduction,
        return_lse,
        h.reshape(-1, dim),
        w,
        b,
        y.reshape(-1),
        None if ignored is None else ignored.reshape(-1),
        None if wt is None else wt.reshape(-1),
        eps,
        zl,
        cap,
        token_shape,
    )


def _float_input(name: str, x: ArrayLike) -> jax.Array:
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array; got dtype {arr.dtype}, shape "
            f"{tuple(arr.shape)}."
        )
    return arr


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 12))
def _linear_ce(head, reduction, return_lse, h, w, b, y, ignored, wt, eps, zl, cap, shape):
    ct = compute_dtype(h.dtype)
    valid = (y >= 0) & (y < head.vocab)
    live = valid if ignored is None else valid & ~ignored
    if ignored is not None:
        # Double where: an ignored token's hidden state (even NaN) never reaches the sums.
        h = jnp.where(ignored[:, None], jnp.zeros((), h.dtype), h)
    zero = jnp.zeros((), ct)
    loss, lse = _head_ce(
        head,
        h,
        w,
        b,
        jnp.clip(y, 0, head.vocab - 1),
        live,
        zero if eps is None else eps,
        zero if zl is None else zl,
        cap,
    )
    loss = jnp.where(valid, loss, jnp.nan)
    if wt is not None:
        loss = safe_mul(nan_where(negative(wt), wt), loss)
    if reduction == "sum":
        loss = jnp.sum(loss)
    elif reduction == "mean":
        kept = jnp.ones_like(loss) if ignored is None else (~ignored).astype(ct)
        den = jnp.sum(kept if wt is None else kept * wt)
        loss = jnp.where(den > 0, jnp.sum(loss) / jnp.where(den > 0, den, 1.0), 0.0)
    else:
        loss = loss.reshape(shape)
    if return_lse:
        return loss, lse.reshape(shape)
    return loss

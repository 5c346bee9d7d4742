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

Derivatives: a ``jax.custom_jvp``. The hidden state's part of the tangent comes from sums the
first pass gathers alongside the statistics (``sum_k e^{z_k - m} W_k`` over the non-target
columns, rescaled whenever the running max moves), so it costs no second pass; the target's term
is added with its exact ``-(1 - p_y)``. The weight's, bias's and soft cap's parts are a second
pass over the blocks (a ``lax.scan`` whose body is checkpointed). Forward mode runs the rule as
it is; reverse mode is JAX's transposition of it, which recomputes each block's logits instead
of storing them.

Each block is computed in chunks of tokens: the ``[tokens, block]`` logits and the float32
temporaries of one step stay a fixed size however many tokens there are.
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
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxce._checks import compute_dtype, floating_input, ignored_labels, integer_array
from jaxce._options import NONNEGATIVE, POSITIVE, UNIT, is_off, scalar_option
from jaxce._primitives import safe_mul
from jaxce._rows import FUSED, Reduction, pair_total, reduction_for, row_max, row_stats, row_sum
from jaxce._transforms import soft_cap_slopes
from jaxce._validate import check_class_indices, check_nonnegative, nan_where, negative

__all__ = ["linear_cross_entropy"]

#: vocabulary columns per block when ``block_size`` is not given (benchmarks/README.md)
DEFAULT_BLOCK = 1024
#: tokens per chunk within a block when ``block_size`` does not say
DEFAULT_TOKENS = 1024
_REDUCTIONS = ("none", "sum", "mean")


class _Head(NamedTuple):
    """The static layout of a call: block width, block count, vocabulary, options present."""

    block: int
    n_blocks: int
    vocab: int  # columns of this device's weight (the whole vocabulary without ``axis``)
    reduction: Reduction
    smoothing: bool
    z_loss: bool
    cap: bool
    bias: bool
    lse_tangent: bool
    rows: bool  # the weight is [V, D] (blocks are rows), else [D, V] (blocks are columns)
    tokens: int  # tokens per chunk (a divisor of the token count)
    classes: int  # the whole vocabulary (``vocab`` times the size of ``axis``)
    axis: str | tuple[str, ...] | None  # the mesh axes the vocabulary is split over

    def psum(self, a):
        """The sum over the vocabulary's shards (``a`` itself on one device)."""
        return a if self.axis is None else lax.psum(a, self.axis)

    def chunk(self, a: jax.Array, i: jax.Array) -> jax.Array:
        """Token chunk ``i`` of a per-token array."""
        return lax.dynamic_slice_in_dim(a, i * self.tokens, self.tokens, axis=0)

    def hidden(self, h: jax.Array, live: jax.Array, i: jax.Array, j: jax.Array) -> jax.Array:
        """Token chunk ``i`` of the hidden states, 0 at dead tokens (ignored, bad label): a
        NaN of theirs never reaches the sums (and a chunk-sized select, not a copy of ``h``)."""
        # The barrier ties ``h`` to both loops' iterations: XLA:CPU otherwise hoists the
        # masked chunks out of the vocabulary loop (a stacked copy of ``h``, float32 for 16-bit).
        h, i, _ = lax.optimization_barrier((h, i, j))
        return jnp.where(self.chunk(live, i)[:, None], self.chunk(h, i), jnp.zeros((), h.dtype))

    def scan_tokens(self, fn, carry, n: int):
        """``carry, out = fn(carry, i)`` over the token chunks ``i``, per-token outputs joined."""
        if self.tokens == n:  # one chunk (also no tokens at all)
            return fn(carry, jnp.zeros((), jnp.int32))
        carry, out = lax.scan(fn, carry, jnp.arange(n // self.tokens))
        return carry, jax.tree.map(lambda o: o.reshape((n, *o.shape[2:])), out)

    def over_tokens(self, fn, n: int):
        """``fn(i)`` for every token chunk ``i``, its per-token outputs joined (a scan)."""
        if self.tokens == n:  # one chunk (also no tokens at all)
            return fn(jnp.zeros((), jnp.int32))
        _, out = lax.scan(lambda _, i: (None, fn(i)), None, jnp.arange(n // self.tokens))
        return jax.tree.map(lambda o: o.reshape((n, *o.shape[2:])), out)

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


def _varying(tree, *like):
    """``tree``'s arrays typed as varying over every manual mesh axis that the arrays of
    ``like`` vary over: inside ``shard_map`` a scan's initial carry must have the type of its
    body's output. (Only with ``axis_name``: it needs JAX's varying-axis types.)"""

    def axes(a) -> frozenset:
        kind = getattr(jax.typeof(a), "manual_axis_type", None)
        return getattr(kind, "varying", frozenset())

    want = frozenset().union(*(axes(a) for a in like if isinstance(a, jax.Array)))

    def cast(a):
        missing = want - axes(a)
        return lax.pcast(a, tuple(sorted(missing)), to="varying") if missing else a

    return jax.tree.map(cast, tree) if want else tree


def _weight_block(head: _Head, w, b, j):
    """Block ``j`` of the weight (and bias)."""
    # The barrier ties the weight to the iteration: otherwise XLA:CPU hoists a 16-bit weight's
    # conversion to float32 out of the loop, a float32 copy of the whole weight.
    wj = head.columns(*lax.optimization_barrier((w, j)))
    bj = None
    if head.bias:
        bj = lax.dynamic_slice_in_dim(b, head.start(j), head.block)
    return wj, bj


def _block(head: _Head, h, wj, bj, cap, j) -> _Block:
    """The logits of tokens ``h`` in vocabulary block ``j`` (weight block ``wj``): the matmul
    in the inputs' dtype, accumulated in the compute dtype (float32 for 16-bit inputs)."""
    a = head.logits(h, wj)
    if bj is not None:
        a = a + bj.astype(a.dtype)[None, :]
    start = head.start(j)
    cols = (start + lax.iota(jnp.int32, head.block))[None, :]
    fresh = cols >= j * head.block
    if not head.cap:
        return _Block(wj, a, cols, fresh, None)
    z, slope, cap_slope = soft_cap_slopes(a, cap)
    return _Block(wj, z, cols, fresh, (slope, cap_slope))


def _first_pass(head: _Head, h, w, b, y, live, cap, gather: bool = False):
    """One pass over the blocks: each block's ``(m_b, S'_b, spread_b)`` and the target logit,
    combined into the row's statistics.

    With ``gather``, also the sums the hidden state's gradient is made of, carried with the
    running max ``m_r`` (rescaled when it moves): ``G = sum_{k != y} e^{z_k - m_r} s_k W_k``
    (``s`` the soft cap's slope, 1 without it), ``F = sum_{k != y} s_k W_k`` (soft cap with
    label smoothing only) and the target's slope ``s_y``.
    """
    ct = compute_dtype(h.dtype)
    n = h.shape[0]

    def chunk_stats(acc, i, wj, bj, j):
        hi, yi = head.hidden(h, live, i, j), head.chunk(y, i)
        z = (blk := _block(head, hi, wj, bj, cap, j)).z
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
        local = jnp.clip(yi - head.start(j), 0, head.block - 1)[:, None]
        picked = jnp.take_along_axis(z, local, axis=1)[:, 0]
        out = (m[:, 0], stats.s1[:, 0], spread[:, 0], picked)
        if acc is None:
            return acc, out
        g_acc, f_acc, m_run, s_y = acc
        m_old = head.chunk(m_run, i)
        m_new = jnp.maximum(m_old, m[:, 0])
        rescale = jnp.where(m_old == m_new, 1.0, jnp.exp(m_old - m_new))
        other = mask & (blk.cols != yi[:, None])
        e = jnp.where(other, jnp.exp(z - m_new[:, None]), 0.0)
        slope = None if blk.slopes is None else blk.slopes[0]
        e = e if slope is None else e * slope

        def update(a, rows):
            return lax.dynamic_update_slice_in_dim(a, rows, i * head.tokens, 0)

        g_new = head.chunk(g_acc, i) * rescale[:, None] + head.back(e.astype(h.dtype), wj)
        g_acc = update(g_acc, g_new)
        if f_acc is not None and slope is not None:
            flat = jnp.where(other, slope, 0.0).astype(h.dtype)
            f_acc = update(f_acc, head.chunk(f_acc, i) + head.back(flat, wj))
        if s_y is not None and slope is not None:
            mine = (yi >= j * head.block) & (yi < (j + 1) * head.block)
            at_y = jnp.take_along_axis(slope, local, axis=1)[:, 0]
            s_y = update(s_y, jnp.where(mine, at_y, head.chunk(s_y, i)))
        return (g_acc, f_acc, update(m_run, m_new), s_y), out

    def body(carry, j):
        z_y, acc = carry
        wj, bj = _weight_block(head, w, b, j)
        acc, (m, s1, spread, picked) = head.scan_tokens(
            lambda a, i: chunk_stats(a, i, wj, bj, j), acc, n
        )
        mine = (y >= j * head.block) & (y < (j + 1) * head.block)
        return (jnp.where(mine, picked, z_y), acc), (m, s1, spread)

    acc0 = None
    if gather:
        acc0 = (
            jnp.zeros((n, h.shape[1]), ct),
            jnp.zeros((n, h.shape[1]), ct) if head.cap and head.smoothing else None,
            jnp.full((n,), -jnp.inf, ct),
            jnp.ones((n,), ct) if head.cap else None,
        )
    init = (jnp.zeros((n,), ct), acc0)
    if head.axis is not None:
        init = _varying(init, h, w, b, y, live, cap)
    (z_y, acc), (m_b, s1_b, spread_b) = lax.scan(
        body, init, jnp.arange(head.n_blocks, dtype=jnp.int32)
    )
    blocks = lax.broadcasted_iota(jnp.int32, m_b.shape, 0)
    last = head.vocab - (head.n_blocks - 1) * head.block
    width = jnp.where(blocks == head.n_blocks - 1, last, head.block)
    m, s1, spread = _combine(head, m_b, s1_b, spread_b, width)
    if head.axis is not None:
        # The shards' statistics combine as the blocks' do: [N]-sized gathers, the target
        # logit from the shard that holds it (the others add an exact 0).
        m_s, s1_s, spread_s = (
            lax.all_gather(a, head.axis, to="invarying") for a in (m, s1, spread)
        )
        m_loc, (m, s1, spread) = m, _combine(head, m_s, s1_s, spread_s, head.vocab)
        z_y = lax.psum(jnp.where(y >= 0, z_y, 0.0), head.axis)
        if acc is not None:
            # G was summed relative to this shard's max: rescale it to the row's.
            scale = jnp.where(m_loc == m, 1.0, jnp.exp(m_loc - m))
            acc = (acc[0] * scale[:, None], *acc[1:])
    return _Stats(m, s1, z_y, spread), acc


def _combine(head: _Head, m_b, s1_b, spread_b, width):
    """The row's ``(m, S', spread)`` from those of its parts (axis 0: blocks or shards) of
    ``width`` columns each."""
    m = jnp.max(m_b, axis=0, keepdims=True)
    parts = lax.broadcasted_iota(jnp.int32, m_b.shape, 0)
    top = m_b == m
    first = jnp.argmax(top, axis=0, keepdims=True)
    # exp(m_b - m) with m_b = m = ±inf would be NaN; such rows are settled by _token_values.
    below = jnp.where(top, 0.0, m_b - m)
    terms = jnp.where(parts == first, s1_b, jnp.exp(below) * (1.0 + s1_b))
    s1 = row_sum(terms, (0,), FUSED)
    spread = jnp.zeros_like(s1)
    if head.smoothing:
        # sum_k (m - z_k) = sum_b [spread_b + n_b (m - m_b)]: non-negative terms only.
        spread = row_sum(spread_b - width * below, (0,), FUSED)
    return m[0], s1, spread


def _token_values(head: _Head, st: _Stats, live, eps, zl):
    """Per-token loss and log-normalizer from the statistics (0 for dead tokens)."""
    zero = jnp.zeros((), st.m.dtype)
    gap = jnp.where(st.z_y == st.m, zero, st.m - st.z_y)
    log_norm = jnp.log1p(st.s1)
    lse = st.m + log_norm
    loss = gap + log_norm
    if head.smoothing:
        loss = (1.0 - eps) * gap + log_norm + (eps / head.classes) * st.spread
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
        g = g + eps * (1.0 - 1.0 / head.classes)
    if head.z_loss:
        g = g + 2.0 * zl * lse * p_y
    return g


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _head_ce(head: _Head, h, w, b, y, live, eps, zl, cap):
    """Per-token ``(loss, lse)`` of the linear head (the core the public function reduces)."""
    st, _ = _first_pass(head, h, w, b, y, live, cap)
    return _token_values(head, st, live, eps, zl)


@functools.partial(_head_ce.defjvp, symbolic_zeros=True)
def _head_ce_jvp(head: _Head, primals, tangents):
    h, w, b, y, live, eps, zl, cap = primals
    dh, dw, db, _, _, deps, dzl, dcap = tangents
    dh_c = None if isinstance(dh, SymbolicZero) else dh.astype(compute_dtype(h.dtype))
    st, acc = _first_pass(head, h, w, b, y, live, cap, gather=dh_c is not None)
    loss, lse = _token_values(head, st, live, eps, zl)
    g_y = _target_slope(head, st, lse, eps, zl)
    inv = 1.0 / (1.0 + st.s1)
    ct = compute_dtype(h.dtype)
    live_c = live.astype(ct)
    use_w = not isinstance(dw, SymbolicZero)
    use_b = head.bias and not isinstance(db, SymbolicZero)
    use_cap = head.cap and not isinstance(dcap, SymbolicZero)
    t_loss = jnp.zeros_like(loss)
    t_lse = jnp.zeros_like(lse)

    if dh_c is not None:
        # d loss / dh = sum_k g_k s_k W_k, from the first pass's sums: the target's term with
        # its exact -(1 - p_y), the others' scaled by 1 / (1 + S') at the final max.
        # With the vocabulary split over ``axis`` each shard adds its columns' part (the
        # target's from the shard that holds it): one [N, D] all-reduce.
        g_acc, f_acc, _, s_y = acc
        s_y = jnp.ones_like(lse) if s_y is None else s_y
        at = jnp.maximum(y, 0)
        w_y = (jnp.take(w, at, axis=0) if head.rows else jnp.take(w, at, axis=1).T).astype(ct)
        w_y = jnp.where((y >= 0)[:, None], w_y, 0.0)
        c = inv * (1.0 + 2.0 * zl * lse) if head.z_loss else inv
        grad_h = c[:, None] * g_acc + (g_y * s_y)[:, None] * w_y
        if head.smoothing:
            if f_acc is None:
                f_acc = jnp.sum(w, axis=1 - head.rows, dtype=ct)[None, :] - w_y
            grad_h = grad_h - (eps / head.classes) * f_acc
        t_loss = t_loss + jnp.sum(head.psum(grad_h) * dh_c, axis=1) * live_c
        if head.lse_tangent:
            p_y = jnp.where(st.z_y == st.m, inv, jnp.exp(st.z_y - st.m) * inv)
            grad_lse = inv[:, None] * g_acc + (p_y * s_y)[:, None] * w_y
            t_lse = t_lse + jnp.sum(head.psum(grad_lse) * dh_c, axis=1) * live_c

    def tangent(blk: _Block, grad, hi, dwj, dbj):
        """``sum_k grad_k · dz_k`` per token of one block, ``dz`` the logits' tangent from
        the weight, the bias and the cap (the hidden state's part is above)."""
        ga = grad if blk.slopes is None else grad * blk.slopes[0]
        t = jnp.zeros(grad.shape[:1], ct)
        if dwj is not None:
            t = t + jnp.sum(ga * head.logits(hi.astype(ct), dwj), axis=1)
        if dbj is not None:
            t = t + jnp.sum(ga * dbj[None, :], axis=1)
        if use_cap and blk.slopes is not None:
            t = t + jnp.sum(grad * blk.slopes[1], axis=1) * dcap
        return t

    per_token = (y, live_c, st.m, inv, lse, g_y)

    def chunk_tangents(i, wj, bj, dwj, dbj, j):
        hi = head.hidden(h, live, i, j)
        yi, live_i, m_i, inv_i, lse_i, g_y_i = (head.chunk(a, i) for a in per_token)
        blk = _block(head, hi, wj, bj, cap, j)
        p = jnp.where(blk.fresh, jnp.exp(blk.z - m_i[:, None]), 0.0) * inv_i[:, None]
        g = p * (1.0 + 2.0 * zl * lse_i)[:, None] if head.z_loss else p
        if head.smoothing:
            g = jnp.where(blk.fresh, g - eps / head.classes, 0.0)
        g = jnp.where((blk.cols == yi[:, None]) & blk.fresh, g_y_i[:, None], g)
        g = g * live_i[:, None]
        t_loss = tangent(blk, g, hi, dwj, dbj)
        if not head.lse_tangent:
            return t_loss, jnp.zeros_like(t_loss)
        return t_loss, tangent(blk, p * live_i[:, None], hi, dwj, dbj)

    # Checkpointed, so that reverse mode recomputes each block's logits, not store them.
    chunk_tangents = jax.checkpoint(chunk_tangents, prevent_cse=False)

    def body(acc, j):
        wj, bj = _weight_block(head, w, b, j)
        # The tangents' blocks in the compute dtype: their cotangents accumulate over the token
        # chunks in it.
        dwj = head.columns(dw, j).astype(ct) if use_w else None
        dbj = lax.dynamic_slice_in_dim(db, head.start(j), head.block).astype(ct) if use_b else None
        t_loss, t_lse = head.over_tokens(
            lambda i: chunk_tangents(i, wj, bj, dwj, dbj, j), h.shape[0]
        )
        return (acc[0] + t_loss, acc[1] + t_lse), None

    if use_w or use_b or use_cap:
        body = jax.checkpoint(body, prevent_cse=False)
        zeros = (jnp.zeros_like(t_loss), jnp.zeros_like(t_lse))
        if head.axis is not None:
            zeros = _varying(zeros, h, w, b, y, live, cap, dw, db, dcap)
        (s_loss, s_lse), _ = lax.scan(body, zeros, jnp.arange(head.n_blocks, dtype=jnp.int32))
        t_loss, t_lse = t_loss + head.psum(s_loss), t_lse + head.psum(s_lse)
    if not isinstance(deps, SymbolicZero) and head.smoothing:
        gap = jnp.where(st.z_y == st.m, 0.0, st.m - st.z_y)
        t_loss = t_loss + live_c * (st.spread / head.classes - gap) * deps
    if not isinstance(dzl, SymbolicZero) and head.z_loss:
        t_loss = t_loss + live_c * lse * lse * dzl
    return (loss, lse), (t_loss, t_lse)


def _positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 1)


def _blocks(n: int, vocab: int, block_size: object) -> tuple[int, int]:
    """``(tokens per chunk, vocabulary columns per block)`` from ``block_size``.

    The token chunk is the largest divisor of ``n`` at most the requested size and at least half
    of it (token chunks are reshaped, not sliced with a masked tail); else all tokens at once.
    """
    if block_size is None:
        tokens, cols = DEFAULT_TOKENS, DEFAULT_BLOCK
    elif _positive_int(block_size):
        tokens, cols = DEFAULT_TOKENS, int(block_size)  # type: ignore[call-overload]
    elif (
        isinstance(block_size, tuple)
        and len(block_size) == 2
        and all(_positive_int(v) for v in block_size)
    ):
        tokens, cols = block_size
    else:
        raise ValueError(
            "`block_size` must be a positive int (vocabulary columns per block), a pair "
            f"(tokens, columns) of positive ints, or None; got {block_size!r}."
        )
    tokens = int(tokens)
    chunk = next((t for t in range(min(tokens, n), tokens // 2, -1) if n % t == 0), n)
    return chunk, min(vocab, int(cols))


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
    block_size: int | tuple[int, int] | None = None,
    weight_layout: str = "dv",
    axis_name: str | tuple[str, ...] | None = None,
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
    ``block_size`` vocabulary columns, each in chunks of tokens, so that at most one
    ``[chunk, block]`` block of logits exists at a time, in the value, the gradient and forward
    mode. The row statistics
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
      block_size: vocabulary columns per block (default 1024; the vocabulary need not be a
        multiple of it), or a pair ``(tokens, columns)``: each block is also computed in
        chunks of about ``tokens`` tokens (default 1024; a divisor of the token count).
      weight_layout: ``"dv"`` (``weight`` is ``[D, V]``) or ``"vd"`` (``[V, D]``). Pass a
        tied embedding ``[V, D]`` itself with ``"vd"``, not ``embedding.T``: XLA keeps a
        loop's operands in their default layout, so under ``jit`` ``embedding.T`` is copied
        into a ``[D, V]`` array (and its gradient copied back), two weight-sized buffers.
      axis_name: inside ``jax.shard_map``, the mesh axis the vocabulary is split over:
        ``weight`` (and ``bias``) are this device's contiguous slice of the vocabulary, in
        mesh-axis order, ``hidden`` and ``labels`` the same on every device of the axis, and
        ``labels`` index the whole vocabulary. Each device computes its slice's row
        statistics; they are combined with ``[tokens]``-sized collectives (the shard's max
        and ``S'`` gathered, combined as blocks are, the target logit from the shard that
        holds it), so tiny losses keep their digits across shards. The loss is the same on
        every device of the axis; the hidden state's gradient is all-reduced over it and the
        weight's stays sharded. Forward mode works too. Needs a JAX with varying-axis types
        in ``shard_map`` (``lax.pcast``; tested with 0.10). Under explicit sharding
        (``jax.sharding.AxisType.Explicit`` meshes, ``jax.set_mesh``) a ``weight`` whose
        vocabulary dimension is sharded is handled so without ``axis_name``: the call wraps
        itself in ``shard_map`` over those axes. Under plain ``jit`` with ``NamedSharding``
        inputs the sharding is not visible at trace time and XLA gathers the weight.

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
    h = floating_input("hidden", hidden)
    w = floating_input("weight", weight)
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
    shards = 1
    if axis_name is not None:
        try:
            shards = lax.axis_size(axis_name)
        except NameError:
            raise ValueError(
                f"`axis_name` {axis_name!r} is not a mapped axis here: pass it inside "
                "`jax.shard_map`, where `weight` is the device's slice of the vocabulary."
            ) from None
    elif (axes := _vocab_axes(h, w, rows)) is not None:
        # Explicit sharding with the vocabulary split: the same call, vocabulary-parallel.
        options = {
            "bias": bias,
            "ignore_index": ignore_index,
            "weights": weights,
            "label_smoothing": label_smoothing,
            "z_loss": z_loss,
            "logit_soft_cap": logit_soft_cap,
            "return_lse": return_lse,
            "block_size": block_size,
            "weight_layout": weight_layout,
        }
        return _vocab_parallel(axes, h, w, y, reduction, options)
    dtype = jnp.result_type(h.dtype, w.dtype)
    h, w = h.astype(dtype), w.astype(dtype)
    out_dtype = compute_dtype(dtype)
    b = None
    if bias is not None:
        b = floating_input("bias", bias)
        if tuple(b.shape) != (vocab,):
            raise ValueError(
                f"`bias` has shape {tuple(b.shape)}; expected ({vocab},), one per column of "
                "`weight`."
            )
    wt = None
    if weights is not None:
        wt = floating_input("weights", weights).astype(out_dtype)
        if tuple(wt.shape) != token_shape:
            raise ValueError(
                f"`weights` has shape {tuple(wt.shape)}; expected {token_shape} (one weight "
                f"per token, `labels`' shape)."
            )
        check_nonnegative("weights", wt)
    ignored, y = ignored_labels(ignore_index, y)
    check_class_indices("labels", y, vocab * shards)
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
    tokens, block = _blocks(math.prod(token_shape), vocab, block_size)
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
        tokens,
        vocab * shards,
        axis_name,
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


def _vocab_axes(h: jax.Array, w: jax.Array, rows: bool) -> tuple[str, ...] | None:
    """The mesh axes ``w``'s vocabulary dimension is split over under explicit sharding,
    when ``h``'s feature dimension is not split and its token dimensions avoid those axes
    (every device of the vocabulary axes then holds the same tokens); else None."""
    try:
        w_sharding, h_sharding = jax.typeof(w).sharding, jax.typeof(h).sharding
    except AttributeError:  # a JAX without sharding in types
        return None
    w_spec, h_spec = _spec(w_sharding, 2), _spec(h_sharding, h.ndim)
    if w_spec is None or h_spec is None:
        return None
    entry = w_spec[0 if rows else 1]
    axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    if not axes or w_spec[1 if rows else 0] is not None or h_spec[-1] is not None:
        return None
    used = {a for e in h_spec[:-1] if e is not None for a in (e if isinstance(e, tuple) else (e,))}
    mesh = w_sharding.mesh
    kinds = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ()), strict=False))
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if used & set(axes) or any(kinds.get(a) != explicit for a in axes):
        return None
    return tuple(axes)


def _spec(sharding, ndim: int):
    """A sharding-in-types ``PartitionSpec`` as a tuple of ``ndim`` entries, or None."""
    spec, mesh = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
    if spec is None or mesh is None or not getattr(mesh, "axis_names", ()):
        return None
    entries = tuple(spec)
    return entries + (None,) * (ndim - len(entries))


def _vocab_parallel(axes, h, w, y, reduction, options):
    """``linear_cross_entropy`` per token inside ``jax.shard_map`` over the vocabulary's mesh
    axes (``axis_name``), then weighted and reduced outside it by the partitioner."""
    mesh = jax.typeof(w).sharding.mesh
    tokens = P(*_spec(jax.typeof(h).sharding, h.ndim)[:-1])
    vocab = axes if len(axes) > 1 else axes[0]
    rows = options["weight_layout"] == "vd"
    named = {"hidden": h, "weight": w, "labels": y}
    specs = {"hidden": P(*tokens, None), "weight": P(vocab, None) if rows else P(None, vocab)}
    specs["labels"] = tokens
    for name, spec in (("bias", P(vocab)), ("weights", tokens)):
        if options[name] is not None:
            named[name], specs[name] = jnp.asarray(options[name]), spec
    static = {k: v for k, v in options.items() if k not in named}
    # labels, weights and bias placed as the tokens and the vocabulary are (a slice each).
    for name in ("labels", "bias", "weights"):
        if name in named:
            named[name] = jax.sharding.reshard(named[name], specs[name])

    def local(arrays):
        return linear_cross_entropy(**arrays, **static, reduction="none", axis_name=vocab)

    out_specs = (tokens, tokens) if options["return_lse"] else tokens
    out = jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=out_specs)(named)
    loss, lse = out if options["return_lse"] else (out, None)
    if reduction == "none":
        return out
    index = options["ignore_index"]
    ignored = None if index is None else y == index
    wt = named.get("weights")
    loss = _reduce_tokens(loss, lse, reduction, False, ignored, wt, loss.shape, applied=True)
    return (loss, lse) if options["return_lse"] else loss


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 12))
def _linear_ce(head, reduction, return_lse, h, w, b, y, ignored, wt, eps, zl, cap, shape):
    ct = compute_dtype(h.dtype)
    valid = (y >= 0) & (y < head.classes)
    live = valid if ignored is None else valid & ~ignored
    if head.axis is None:
        y = jnp.clip(y, 0, head.vocab - 1)
    else:
        # This shard's column of the target, -1 where another shard holds it.
        y = y - lax.axis_index(head.axis) * head.vocab
        y = jnp.where(valid & (y >= 0) & (y < head.vocab), y, -1)
    zero = jnp.zeros((), ct)
    loss, lse = _head_ce(
        head,
        h,
        w,
        b,
        y,
        live,
        zero if eps is None else eps,
        zero if zl is None else zl,
        cap,
    )
    loss = jnp.where(valid, loss, jnp.nan)
    return _reduce_tokens(loss, lse, reduction, return_lse, ignored, wt, shape)


def _reduce_tokens(loss, lse, reduction, return_lse, ignored, wt, shape, applied=False):
    """The per-token losses weighted (unless ``applied`` already) and reduced; ``lse`` per
    token (``shape``)."""
    if wt is not None and not applied:
        loss = safe_mul(nan_where(negative(wt), wt), loss)
    if reduction == "sum":
        loss = jnp.sum(loss)
    elif reduction == "mean":
        kept = jnp.ones_like(loss) if ignored is None else (~ignored).astype(loss.dtype)
        den = jnp.sum(kept if wt is None else kept * wt)
        loss = jnp.where(den > 0, jnp.sum(loss) / jnp.where(den > 0, den, 1.0), 0.0)
    else:
        loss = loss.reshape(shape)
    if return_lse:
        return loss, lse.reshape(shape)
    return loss

r"""Row statistics: the one place where jaxce reduces over the class axes.

Every softmax-type loss needs the same few quantities of a row of logits ``x``:

* ``m``, the row maximum (``-inf`` for an empty row), and ``x - m`` (exactly 0 at the arg-max);
* ``S'``, the sum of ``exp(x - m)`` over every class but *one* arg-max, so that a confident row
  keeps ``S' = 1e-30`` instead of rounding ``1 + S'`` to 1. Then ``log1p(S')`` is the
  log-normalizer ``logsumexp(x) - m``, ``p = exp(x - m) / (1 + S')`` and ``1 - p_j =
  S' / (1 + S')`` at a dominant class, all to full relative precision;
* compensated row sums (``s + c`` carries each addition's rounding error) of whatever else a
  loss adds up along the row.

How the sums are laid out for XLA is a :class:`Reduction`, chosen once per call from the
operands (:func:`reduction_for`) and passed down as a static argument. It sets only the speed:
with compensated additions the result does not depend on the order to within about one rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "FUSED",
    "STAGED",
    "STAGED_CHUNKED",
    "Pair",
    "Reduction",
    "RowStats",
    "pair_total",
    "reduction_for",
    "row_max",
    "row_stats",
    "row_sum",
    "row_sums",
    "shift_by_max",
    "two_sum",
    "zero_with_tangent",
]


# --------------------------------------------------------------------------------------------
# The reduction strategy
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reduction:
    """How row sums are staged: hashable, a static argument of the jitted loss cores.

    ``stages = 0`` is one variadic reduction over the row, its elementwise producer fused in
    (what GPU and TPU emitters do well). ``stages > 0`` first reduces over a few strided
    *lanes* (a major axis that XLA:CPU vectorizes along the row), at most ``stages`` times,
    before the final reduction. The first stage's width depends on how heavy the producer
    fused into it is: LLVM vectorizes a stage only when it fully unrolls the lanes.
    """

    stages: int = 0
    #: first-stage lanes of a sum of bare exponentials ``exp(x - m)`` (``S'``)
    exp_lanes: int = 16
    #: first-stage lanes of several arrays summed in one reduction
    lanes: int = 8
    #: first-stage lanes of a single sum with a heavy producer (KL terms, focal weights, ...)
    heavy_lanes: int = 4
    #: lanes of later stages, which read stored partial sums
    later_lanes: int = 16
    #: rows shorter than this go straight to the final reduction
    min_staged: int = 32
    #: whether ``S'`` gets its own reduction, apart from a loss's other row sums
    separate_mass: bool = False
    #: whether :meth:`RowStats.probabilities` scales the stored ``exp(x - m)`` in place
    #: instead of recomputing it
    reuse_exp: bool = False
    #: the row is first cut into this many contiguous chunks (fewer: the largest power of two
    #: dividing its length), each staged on its own. Strided stages of a whole row mix the
    #: shards of a sharded class axis (GSPMD gathers them); within chunks, a class axis sharded
    #: over up to this many devices stays local until a ``[rows, chunks]`` combine
    chunks: int = 1
    #: chunks are halved until each is at least this long
    min_chunk: int = 512

    def first_lanes(self, n_arrays: int, bare_exp: bool) -> int:
        if bare_exp:
            return self.exp_lanes
        return self.lanes if n_arrays > 1 else self.heavy_lanes


#: GPU / TPU: one pass per row sum, producer fused; gradients recompute ``exp(x - m)``.
FUSED = Reduction()
#: XLA:CPU: strided stages (see ``benchmarks/README.md`` for the measurements).
STAGED = Reduction(stages=3, separate_mass=True, reuse_exp=True)
#: XLA:CPU with several devices: the stages within up to 64 contiguous chunks of the row, so
#: that a sharded class axis partitions (5–20 % slower on one device: not the default there).
STAGED_CHUNKED = dataclasses.replace(STAGED, chunks=64)
# 16-bit logits: their conversion to float32 in the producer stops a 16-lane first stage from
# vectorizing.
_STAGED_16BIT = dataclasses.replace(STAGED, exp_lanes=8)
_STAGED_16BIT_CHUNKED = dataclasses.replace(STAGED_CHUNKED, exp_lanes=8)


def reduction_for(x: jax.Array, dtype: jnp.dtype | None = None) -> Reduction:
    """The strategy for logits ``x`` (given in ``dtype``, default ``x.dtype``).

    From the platform ``x`` lives on when it is a concrete array, else (traced under ``jit``)
    from the default backend, where jit places the computation. On CPU, rows are staged in
    contiguous chunks when ``x`` spans several devices, or when traced and the backend has
    several (its sharding is not known at trace time).
    """
    if isinstance(x, jax.core.Tracer):
        platform, devices = jax.default_backend(), jax.device_count()
    else:
        platform, devices = next(iter(x.devices())).platform, len(x.devices())
    if platform != "cpu":
        return FUSED
    if jnp.dtype(dtype or x.dtype).itemsize < 4:
        return _STAGED_16BIT_CHUNKED if devices > 1 else _STAGED_16BIT
    return STAGED_CHUNKED if devices > 1 else STAGED


# --------------------------------------------------------------------------------------------
# Compensated sums
# --------------------------------------------------------------------------------------------


class Pair(NamedTuple):
    """A compensated sum: the running sum ``s`` and its accumulated rounding error ``c``.

    The sum is ``s + c`` up to ``O(u^2)`` relative to the sum of absolute values. A non-finite
    ``s`` comes with a NaN ``c``.
    """

    s: jax.Array
    c: jax.Array


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``s = fl(a + b)`` and its rounding error: ``s + e == a + b`` exactly (Knuth).

    Branch-free, for any order of magnitudes; a non-finite ``s`` gives a NaN ``e``.
    """
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


def pair_total(pair: Pair) -> jax.Array:
    """``s + c``; a non-finite ``s`` (an inf or NaN term) stays as it is."""
    return jnp.where(jnp.isfinite(pair.s), pair.s + pair.c, pair.s)


def _reduce(parts: tuple[Pair | jax.Array, ...], axis: int) -> tuple[Pair, ...]:
    """One variadic reduction over ``axis``: compensated for each pair, plain for a bare array
    (returned with ``c = 0``)."""
    dtype = (parts[0].s if isinstance(parts[0], Pair) else parts[0]).dtype
    widths = [2 if isinstance(p, Pair) else 1 for p in parts]
    flat = tuple(a for p in parts for a in (p if isinstance(p, Pair) else (p,)))

    def combine(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        out: list[jax.Array] = []
        i = 0
        for w in widths:
            if w == 2:
                s, e = two_sum(a[i], b[i])
                out.extend((s, (a[i + 1] + b[i + 1]) + e))
            else:
                out.append(a[i] + b[i])
            i += w
        return tuple(out)

    res = jax.lax.reduce(flat, (jnp.zeros((), dtype),) * len(flat), combine, (axis,))
    out: list[Pair] = []
    i = 0
    for w in widths:
        out.append(Pair(res[i], res[i + 1]) if w == 2 else Pair(res[i], jnp.zeros_like(res[i])))
        i += w
    return tuple(out)


def _stage_width(n: int, preferred: int) -> int:
    """The divisor of ``n`` in ``[preferred/2, 2·preferred]`` nearest to ``preferred`` (the
    larger on a tie), else ``preferred`` with padding: a pad copies the whole array."""
    divisors = [d for d in range(max(preferred // 2, 2), 2 * preferred + 1) if n % d == 0]
    if not divisors:
        return preferred
    return min(divisors, key=lambda d: (abs(d - preferred), -d))


def _sums(
    arrays: tuple[jax.Array, ...],
    axes: tuple[int, ...],
    reduction: Reduction,
    plain_first: tuple[bool, ...],
    bare_exp: bool,
) -> tuple[Pair, ...]:
    """Compensated sums over ``axes`` (dims kept) of same-shaped arrays, in one reduction.

    An array flagged in ``plain_first`` (non-negative terms only) is added plainly within the
    first stage's lanes and compensated after it: each partial sum is then within
    ``(lanes - 1)·u`` of exact, and the total within the same relative bound.
    """
    nd = arrays[0].ndim
    axes = tuple(sorted(ax % nd for ax in axes))
    batch = tuple(ax for ax in range(nd) if ax not in axes)
    n_lead = len(batch)

    def flatten(a: jax.Array) -> jax.Array:
        if axes != tuple(range(nd - len(axes), nd)):
            a = a.transpose(batch + axes)
        return a.reshape((*a.shape[:n_lead], math.prod(a.shape[n_lead:])))

    flags = plain_first + (False,) * (len(arrays) - len(plain_first))
    flat = tuple(map(flatten, arrays))
    n = flat[0].shape[-1]
    # Contiguous chunks first: GSPMD maps a sharded class axis onto the chunk axis, so the
    # stages stay local to a device. (One reduction over the row partitions by itself.)
    chunks = math.gcd(n, reduction.chunks)
    while chunks > 1 and n // chunks < reduction.min_chunk:
        chunks //= 2
    if chunks > 1:
        flat = tuple(f.reshape((*f.shape[:-1], chunks, n // chunks)) for f in flat)
    n_chunk_lead = n_lead + (chunks > 1)
    pairs = tuple(Pair(f, jnp.zeros_like(f)) for f in flat)
    lead = pairs[0].s.shape[:n_chunk_lead]
    preferred = reduction.first_lanes(len(arrays), bare_exp)
    for stage in range(reduction.stages):
        n = pairs[0].s.shape[-1]
        if n < reduction.min_staged:
            break
        width = _stage_width(n, preferred)
        preferred = reduction.later_lanes
        pad = (-n) % width
        shape = (*lead, width, (n + pad) // width)
        widths = [(0, 0)] * n_chunk_lead + [(0, pad)]

        def restage(a: jax.Array) -> jax.Array:
            return (jnp.pad(a, widths) if pad else a).reshape(shape)  # noqa: B023

        staged: tuple[Pair | jax.Array, ...] = tuple(
            restage(p.s) if plain and stage == 0 else Pair(restage(p.s), restage(p.c))
            for p, plain in zip(pairs, flags, strict=True)
        )
        pairs = _reduce(staged, n_chunk_lead)
    pairs = _reduce(pairs, n_chunk_lead)
    if chunks > 1:
        pairs = _reduce(pairs, n_lead)
    return tuple(Pair(jnp.expand_dims(p.s, axes), jnp.expand_dims(p.c, axes)) for p in pairs)


def row_sums(
    arrays: tuple[jax.Array, ...],
    axes: tuple[int, ...],
    reduction: Reduction,
    plain_first: tuple[bool, ...] = (),
    bare_exp: bool = False,
) -> tuple[Pair, ...]:
    """Compensated sums over ``axes`` (dims kept) of same-shaped arrays, one pass over each.

    The only row sum in jaxce: every addition carries its rounding error, so the result is
    within about one rounding of the exact sum for any row length and any order the backend
    picks (a plain sum was 5 ulps off for the 999 entries of 1e-4 of a smoothed label).
    ``plain_first`` flags arrays of non-negative terms whose first stage may add plainly;
    ``bare_exp`` says the arrays are bare exponentials (a light producer). Derivative: the
    sum of the tangents, with ``c``'s tangent 0.
    """
    return _row_sums(tuple(arrays), axes, reduction, plain_first, bare_exp, False)


def row_sum(
    a: jax.Array, axes: tuple[int, ...], reduction: Reduction, keepdims: bool = False
) -> jax.Array:
    """The compensated sum of one array over ``axes`` (:func:`row_sums`), as one value."""
    (total,) = _row_sums((a,), axes, reduction, (), False, True)
    return total if keepdims else jnp.squeeze(total, axes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def _row_sums(arrays, axes, reduction, plain_first, bare_exp, totals):
    pairs = _sums(arrays, axes, reduction, plain_first, bare_exp)
    # The total is formed inside the rule: formed outside it, XLA:CPU kept more partial sums
    # for the gradient pass (benchmarks/README.md).
    return tuple(map(pair_total, pairs)) if totals else pairs


@_row_sums.defjvp
def _row_sums_jvp(axes, reduction, plain_first, bare_exp, totals, primals, tangents):
    (arrays,), (dots,) = primals, tangents
    out = _row_sums(arrays, axes, reduction, plain_first, bare_exp, totals)
    sums = tuple(jnp.sum(d, axis=axes, keepdims=True) for d in dots)
    if totals:
        return out, sums
    return out, tuple(Pair(t, jnp.zeros_like(p.c)) for t, p in zip(sums, out, strict=True))


# --------------------------------------------------------------------------------------------
# Max, shift, and the statistics of a row
# --------------------------------------------------------------------------------------------


@jax.custom_jvp
def zero_with_tangent(a: jax.Array) -> jax.Array:
    """Zeros shaped like ``a`` whose tangent is ``a``'s (``a - stop_gradient(a)`` without the
    subtraction, and without NaN for infinite ``a``)."""
    return jnp.zeros_like(a)


@zero_with_tangent.defjvp
def _zero_with_tangent_jvp(primals, tangents):
    return jnp.zeros_like(primals[0]), tangents[0]


def row_max(
    x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """``(xm, m)``: the row with ``-inf`` at masked classes, and its max (dims kept)."""
    xm = x if where is None else jnp.where(where, x, -jnp.inf)
    return xm, jnp.max(xm, axis=axes, keepdims=True, initial=-jnp.inf)


def _select_shift(xm: jax.Array, m: jax.Array, shifted: jax.Array) -> jax.Array:
    zero = jnp.zeros((), xm.dtype)
    neg_inf = jnp.array(-jnp.inf, xm.dtype)
    # The arg-max's 0 comes from the comparison: XLA:CPU may contract a fused ``x * c - m``
    # into an FMA, which leaves the product's rounding error. The 0 keeps the tangent of
    # ``x - m``, which tied maxima need for Hessians (``jnp.max`` spreads its tangent).
    top = jnp.where(
        jnp.isfinite(m), zero_with_tangent(shifted), jnp.where(m == jnp.inf, zero, neg_inf)
    )
    rest = jnp.where(m == jnp.inf, neg_inf, shifted)
    return jnp.where(xm == m, top, rest)


def shift_by_max(xm: jax.Array, m: jax.Array) -> jax.Array:
    """``xm - m`` without ``inf - inf``; exactly 0 at the arg-max.

    An empty row (``m = -inf``) stays ``-inf``; a ``+inf`` row maps its ``+inf`` entries to 0
    (they share the probability) and the rest to ``-inf``; a NaN row stays NaN.
    """
    return _select_shift(xm, m, xm - jnp.where(jnp.isfinite(m), m, jnp.zeros((), xm.dtype)))


def _exp_again(xm: jax.Array, m: jax.Array) -> jax.Array:
    """``exp(shift_by_max(xm, m))``, the same bits, written as a different expression.

    ``-(m - x) == x - m`` in IEEE arithmetic; the different form keeps XLA from merging a
    gradient pass's exponential with the one stored for a reduction (storing it costs more
    memory traffic than recomputing it).
    """
    m_shift = jnp.where(jnp.isfinite(m), m, jnp.zeros((), xm.dtype))
    return jnp.exp(_select_shift(xm, m, -(m_shift - xm)))


def _mass(pair: Pair, m: jax.Array) -> jax.Array:
    """``S' = (s - 1) + c``: ``s - 1`` is exact (Sterbenz, or ``s >= 2``); 0 for empty rows."""
    zero = jnp.zeros((), pair.s.dtype)
    return jnp.where(m == -jnp.inf, zero, jnp.maximum((pair.s - 1.0) + pair.c, zero))


class RowStats(NamedTuple):
    """The statistics of a row of logits (reductions keep their dims).

    ``xm`` the row with ``-inf`` at masked classes, ``m`` its max, ``shifted = x - m``,
    ``e = exp(shifted)``, ``s1 = S'`` (>= 0; 0 for an empty row), the class ``axes`` and the
    ``reduction`` strategy.
    Plain jnp throughout: JAX differentiates it to any order with the right derivatives (the
    arg-max is left out of ``S'``'s tangent, so its reverse-mode derivative there is ``-S'``
    exactly, not ``1 - (1 + S')``).
    """

    xm: jax.Array
    m: jax.Array
    shifted: jax.Array
    e: jax.Array
    s1: jax.Array
    axes: tuple[int, ...]
    reduction: Reduction

    @property
    def log_norm(self) -> jax.Array:
        """``logsumexp(x) - m = log1p(S')``."""
        return jnp.log1p(self.s1)

    @property
    def log_p(self) -> jax.Array:
        """``log softmax(x) = (x - m) - log1p(S')``."""
        return self.shifted - self.log_norm

    @property
    def p(self) -> jax.Array:
        """``softmax(x) = e / (1 + S')``, from ``e``."""
        return self.e / (1.0 + self.s1)

    @property
    def top(self) -> jax.Array:
        """The arg-max entries of non-empty rows."""
        return (self.xm == self.m) & (self.m > -jnp.inf)

    @property
    def n_top(self) -> jax.Array:
        """The number of arg-max entries (exact: a count)."""
        return jnp.sum(self.top, axis=self.axes, keepdims=True, dtype=self.m.dtype)

    @property
    def shift_error(self) -> jax.Array:
        """The rounding error of ``shifted``: ``x - m == shifted + shift_error`` exactly (0 at
        the arg-max and where ``shifted`` is not finite; no derivative)."""
        zero = jnp.zeros((), self.m.dtype)
        live = jnp.isfinite(self.shifted) & jnp.isfinite(self.m) & (self.xm != self.m)
        m_shift = jnp.where(live, self.m, zero)
        _, lo = two_sum(jnp.where(live, self.xm, zero), -m_shift)
        return jax.lax.stop_gradient(jnp.where(live, lo, zero))

    def exp_again(self) -> jax.Array:
        """``exp(x - m)`` recomputed for a second elementwise pass (same bits as ``e``)."""
        return _exp_again(self.xm, self.m)

    def probabilities(self) -> jax.Array:
        """``p`` for a gradient pass: the stored ``e`` scaled in place where the strategy
        says so (XLA:CPU), else recomputed (:meth:`exp_again`)."""
        e = self.e if self.reduction.reuse_exp else self.exp_again()
        return e * (1.0 / (1.0 + self.s1))


def row_stats(
    x: jax.Array,
    where: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
    *,
    row_max_of: tuple[jax.Array, jax.Array] | None = None,
    also: tuple[jax.Array, ...] = (),
    plain_first: tuple[bool, ...] = (),
) -> tuple[RowStats, tuple[Pair, ...]]:
    """The :class:`RowStats` of ``x`` and the compensated row sums of ``also``.

    ``row_max_of`` passes ``row_max(x, where, axes)`` when the caller needed it first (to form
    the arrays of ``also``). The sums of ``also`` share ``S'``'s reduction unless the strategy
    keeps ``S'`` apart; ``plain_first`` flags their non-negative ones (see :func:`row_sums`).
    """
    xm, m = row_max_of if row_max_of is not None else row_max(x, where, axes)
    shifted = shift_by_max(xm, m)
    e = jnp.exp(shifted)
    # The arg-max's own term (exactly 1) carries no tangent: S' is the sum of the others.
    e_sum = jnp.exp(jnp.where(xm == m, jax.lax.stop_gradient(shifted), shifted))
    if not also:
        (e_pair,) = row_sums((e_sum,), axes, reduction, (), True)
        pairs: tuple[Pair, ...] = ()
    elif reduction.separate_mass:
        (e_pair,) = row_sums((e_sum,), axes, reduction, (), True)
        pairs = row_sums(also, axes, reduction, plain_first)
    else:
        e_pair, *rest = row_sums((e_sum, *also), axes, reduction, (False, *plain_first))
        pairs = tuple(rest)
    return RowStats(xm, m, shifted, e, _mass(e_pair, m), axes, reduction), pairs

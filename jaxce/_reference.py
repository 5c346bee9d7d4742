"""Reference values and condition numbers for jaxce's accuracy tests.

This module is the yardstick of the accuracy standard (``docs/numerics.md``): it computes the
exact value ``r`` and the condition number ``κ`` of every quantity that jaxce returns, so that a
computed value ``v`` can be scored in condition-scaled ulps, ``e = |v − r| / (u·(|r| + κ))`` (see
:func:`condition_scaled_error`). It imports only numpy (and mpmath, lazily); never JAX.

Two families with the same semantics:

* ``mp_*``: mpmath at ``dps`` significant digits (default 60) on ONE row, a 1-D float64 array
  whose entries are exactly the inputs (``±inf`` allowed). Results are mpmath ``mpf`` (a scalar), or
  Python lists of ``mpf`` (one per class). Infinite results are ``mpmath.inf`` / ``-mpmath.inf``.
  Elementwise functions take a float (→ ``mpf`` fields) or an array (flattened → lists of ``mpf``).
* ``np_*``: float64 numpy, vectorised over ``[..., V]`` (class axis last; elementwise functions
  take any shape). They use stable formulas (arg-max exclusion, ``log1p``, error-free ``x_k − m``)
  and are accurate to a few float64 ulps of ``|r| + κ``: plenty to score float32 / bfloat16 results.

Every function returns a :class:`Ref` ``(value, grad, kappa, kappa_grad, grad_t)``.

Semantics (the project's convention)
------------------------------------
Notation: row ``x`` of length V, optional boolean mask ``where`` (False = class absent),
``p = softmax(x)``, ``q_j = 1 − p_j``, ``T = Σ_{unmasked} t_k``,
``n_j = |x_j|·q_j + Σ_{k≠j} p_k·|x_k|`` (a term with ``p_k = 0`` is 0, even when ``x_k = −inf``).

* A masked class is removed entirely: it is not in the normaliser nor in any sum; its log p is
  −inf, its p is 0 and every gradient component on it is exactly 0. An entry ``x_k = −inf`` has
  ``p_k = 0``.
* Empty row (every class masked or −inf): logsumexp = −inf, log_softmax = −inf, softmax = 0, all
  gradients of logsumexp 0.
* Row with ``+inf`` entries: logsumexp = +inf; the ``n_inf`` entries equal to +inf share probability
  equally (``p = 1/n_inf``, ``log p = −log n_inf``); every other class has ``p = 0``. Perturbing a
  logit does not move any output, so ``n_j = 0`` in such rows (κ = 0: outputs must be exact to
  rounding).
* NaN in an unmasked logit of a row: every output of that row is NaN (masked entries included), its
  κ is 0. NaN targets / labels are not supported.
* Where ``x_j = −inf`` in a finite row, ``n_j = +inf`` (the log-probability there is −inf, so that
  κ never matters); every product with ``p_j = 0`` or ``t_j = 0`` is taken as 0. Masked classes
  have κ 0.
* numpy results whose magnitude is below the float64 normal range (2.2e-308) are only accurate in
  absolute terms (subnormals); the mpmath results have no exponent limit.

=================================  =================================  ==============================
function                           value, its κ                       gradient wrt logits, its κ
=================================  =================================  ==============================
logsumexp(x)                       lse; Σ p_k|x_k|                    p_j; p_j·n_j
log_softmax(x)                     log p_j; n_j                       —
softmax(x)                         p_j; p_j·n_j                       —
softmax_cross_entropy(x, t)        Σ t_k·(−log p_k); Σ t_k·n_k        T·p_j − t_j;
                                                                      T·p_j·n_j + min(T·p_j,
                                                                      |T − t_j| + T·q_j)
…_with_integer_labels(x, y)        −log p_y; n_y                      as above with t = one-hot(y)
softplus(x)                        log1p(eˣ); |x|·σ(x)                σ(x); σ(x)σ(−x)|x|
log_sigmoid(x)                     −softplus(−x); |x|·σ(−x)           σ(−x); σ(x)σ(−x)|x|
sigmoid(x)                         σ(x); |x|·σ(x)σ(−x)                σ(x)σ(−x);
                                                                      σ(x)σ(−x)·|σ(−x) − σ(x)|·|x|
sigmoid_binary_cross_entropy(x,t)  (1−t)·sp(x) + t·sp(−x); |x·g|,     g = (1−t)σ(x) − t·σ(−x);
                                   g = σ(x) − t                       σ(x)σ(−x)|x| + min(σ(x) + t,
                                                                      (1−t)σ(x) + t·σ(−x))
kl_divergence(lp, t)               Σ t_k(log t_k − lp_k); Σ t_k|lp_k|  −t_j; |t_j|
kl_divergence_with_log_targets     Σ e^{lt_k}(lt_k − lp_k);           −e^{lt_j}; e^{lt_j}
(lp, lt)                           Σ e^{lt_k}|lp_k|
=================================  =================================  ==============================

Details:

* Targets outside ``[0, 1]``: the cross-entropies (and the focal loss / PolyLoss) are linear in
  their targets, so any real target has an exact value. A row whose targets are all ``>= 0`` (or
  all ``<= 0``) has the κ of the table; a row with targets of both signs is scored as the
  difference of its halves ``t = t⁺ − t⁻``, each held to the table's bound on its own:
  ``|r| + κ = (|r⁺| + κ⁺) + (|r⁻| + κ⁻)`` (:func:`_mp_signed`). Binary CE takes any real ``t``
  with the table's κ (its min(…) term in absolute values).
* Cross-entropy: a class with ``t_k = 0`` contributes 0 to the value even when ``p_k = 0``; a class
  with ``t_k > 0`` and ``p_k = 0`` makes the value +inf. Empty row: value 0 if ``T == 0`` else +inf,
  gradient ``−t`` on unmasked classes. ``grad_t`` (not scored) is ``−log p_k`` on unmasked classes,
  0 where ``t_k == 0`` and ``p_k == 0`` and on masked classes.
* Integer labels: exactly soft CE with ``t = one-hot(y)`` on the masked row (so a masked label gives
  value 0 and gradient 0); ``y`` outside ``[0, V)`` gives NaN value and gradient (κ 0).
* Binary CE: each product is 0 when its coefficient (``1 − t`` or ``t``) is 0, so
  ``(x, t) = (+inf, 1)`` gives 0 and ``(+inf, 0)`` gives +inf; the gradient stays finite.
  ``softplus(±inf)`` is ``+inf`` / 0 with derivative 1 / 0.
* KL: a term with ``t_k == 0`` (``lt_k == −inf``) is 0, even when ``lp_k = −inf``; a term with
  ``t_k > 0`` and ``lp_k = −inf`` is +inf. The gradient wrt ``lp`` is ``−t`` (``−e^{lt}``) whose
  only rounding is in ``exp``; κ_grad is ``|t_j|`` (``e^{lt_j}``) so its error is relative.
  ``grad_t`` (not scored) is ``log t_k − lp_k + 1`` for ``t_k > 0`` (``e^{lt_k}(lt_k − lp_k + 1)``
  for log targets), 0 elsewhere. Targets enter no κ: they are exact inputs.

Accuracy notes (mpmath): nothing small is obtained by cancellation. With m the row max and j* one
arg-max (the label, for integer labels, when it ties the max), ``S' = Σ_{k≠j*} e^{x_k − m}``,
``lse = m + log1p(S')``, ``−log p_k = (m − x_k) + log1p(S')`` (a sum of two non-negative numbers),
``q_{j*} = S'/(1 + S')``, ``T − t_{j*} = Σ_{k≠j*} t_k``. For ``n_j`` we use one O(V) pass:
``A = Σ_k p_k|x_k|`` and ``B = Σ_{k≠j*} p_k|x_k|`` (both summed directly), then
``n_{j*} = |x_{j*}|·q_{j*} + B`` and ``n_j = |x_j|·q_j + (A − p_j|x_j|)`` for ``j ≠ j*``. That
subtraction is harmless at any precision: for ``j ≠ j*``, ``p_j ≤ 1/2 ≤ q_j``, hence ``n_j ≥ A``,
so its rounding error (≤ 10^-dps·A) is ≤ 10^-dps·n_j. The other differences (``T·p_j − t_j``,
``σ(x) − t``, ``log t − lp``, ``m + log1p(S')``) are likewise small relative to ``|r| + κ``, so
no digits beyond ``dps`` are needed and ``dps`` is never raised internally.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Ref",
    "condition_scaled_error",
    "flush_floor",
    "mp_kl_divergence",
    "mp_kl_divergence_with_log_targets",
    "mp_log_sigmoid",
    "mp_log_softmax",
    "mp_logsumexp",
    "mp_sigmoid",
    "mp_sigmoid_binary_cross_entropy",
    "mp_softmax",
    "mp_softmax_cross_entropy",
    "mp_softmax_cross_entropy_with_integer_labels",
    "mp_softplus",
    "np_kl_divergence",
    "np_kl_divergence_with_log_targets",
    "np_log_sigmoid",
    "np_log_softmax",
    "np_logsumexp",
    "np_sigmoid",
    "np_sigmoid_binary_cross_entropy",
    "np_softmax",
    "np_softmax_cross_entropy",
    "np_softmax_cross_entropy_with_integer_labels",
    "np_softplus",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]

DEFAULT_DPS = 60
FLOAT32_TINY = 1.1754944e-38


@dataclasses.dataclass(frozen=True)
class Ref:
    """Reference result: exact value, gradient, and their condition numbers.

    ``mp_*`` functions fill the fields with ``mpf`` / lists of ``mpf``; ``np_*`` functions with
    float64 arrays. ``grad`` / ``kappa_grad`` are None where no gradient is defined; ``grad_t`` is
    the (unscored) gradient wrt the targets where one is returned.
    """

    value: Any
    grad: Any
    kappa: Any
    kappa_grad: Any
    grad_t: Any = None


# ----------------------------------------------------------------------------------------------
# mpmath helpers
# ----------------------------------------------------------------------------------------------


def _mpmath() -> Any:
    import mpmath

    return mpmath


@contextmanager
def _workdps(dps: int) -> Iterator[Any]:
    mp = _mpmath()
    with mp.workdps(dps):
        yield mp


def _as_row(x: npt.ArrayLike, name: str = "x") -> FloatArray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    return a


def _as_mask(where: npt.ArrayLike | None, shape: tuple[int, ...]) -> BoolArray:
    if where is None:
        return np.ones(shape, dtype=bool)
    w = np.asarray(where, dtype=bool)
    return np.broadcast_to(w, shape)


@dataclasses.dataclass
class _MpRow:
    """Softmax quantities of one row as raw mpmath.libmp tuples (see the module docstring).

    The hot loops work on raw ``(sign, man, exp, bc)`` tuples with ``mpmath.libmp`` (about twice
    as fast as mpf objects in pure Python); results are wrapped into ``mpf`` on the way out.
    """

    kind: str  # "finite", "posinf", "empty" or "nan"
    act: list[bool]
    zp: list[bool]  # p_k == 0 exactly (masked, −inf, or not +inf in a +inf row)
    p: list[Any]
    q: list[Any]
    nlp: list[Any]  # −log p_k (+inf where p_k == 0, masked included)
    n: list[Any]
    lse: Any
    A: Any  # Σ p_k|x_k|
    jstar: int  # -1 where there is no distinguished arg-max
    big: bool  # p_{j*} > 1/2


def _libmp() -> Any:
    import mpmath.libmp

    return mpmath.libmp


def _mp_core(
    x: FloatArray,
    where: npt.ArrayLike | None,
    mp: Any,
    prefer: int | None = None,
    need_nlp: bool = True,
    need_n: bool = True,
) -> _MpRow:
    lib = _libmp()
    fzero, fone, finf, fninf = lib.fzero, lib.fone, lib.finf, lib.fninf
    prec, rnd = mp.mp.prec, lib.round_nearest
    add, sub, mul = lib.mpf_add, lib.mpf_sub, lib.mpf_mul
    V = x.shape[0]
    actm = _as_mask(where, x.shape)
    act = [bool(a) for a in actm]
    xa = np.where(actm, x, -np.inf)
    if bool(np.any(actm & np.isnan(x))):
        nan = lib.fnan
        return _MpRow("nan", act, [False] * V, [nan] * V, [nan] * V, [nan] * V, [fzero] * V,
                      nan, fzero, -1, False)  # fmt: skip
    isposinf = [bool(v) for v in xa == np.inf]
    n_inf = sum(isposinf)
    if n_inf > 0:
        pinf = lib.mpf_div(fone, lib.from_int(n_inf), prec, rnd)
        qinf = sub(fone, pinf, prec, rnd)
        linf = lib.mpf_log(lib.from_int(n_inf), prec, rnd)
        zp = [not b for b in isposinf]
        p = [fzero if z else pinf for z in zp]
        q = [fone if z else qinf for z in zp]
        nlp_i = [finf if z else linf for z in zp]
        jstar = int(np.argmax(xa)) if n_inf == 1 else -1
        return _MpRow("posinf", act, zp, p, q, nlp_i, [fzero] * V, finf, fzero, jstar, n_inf == 1)
    m_f = float(np.max(xa))
    if m_f == -np.inf:
        return _MpRow("empty", act, [True] * V, [fzero] * V, [fone] * V, [finf] * V,
                      [fzero] * V, fninf, fzero, -1, False)  # fmt: skip
    jstar = int(np.argmax(xa))
    if prefer is not None and 0 <= prefer < V and xa[prefer] == m_f:
        jstar = int(prefer)
    zp = [bool(v) for v in xa == -np.inf]
    xs = [lib.from_float(v) for v in xa.tolist()]
    mt = lib.from_float(m_f)
    exp = lib.mpf_exp
    e = [fzero if zp[k] else exp(sub(xs[k], mt, prec, rnd), prec, rnd) for k in range(V)]
    e[jstar] = fone
    S1 = lib.mpf_sum(e[:jstar] + e[jstar + 1 :], prec, rnd)
    L = mp.log1p(mp.make_mpf(S1))._mpf_
    invS = lib.mpf_div(fone, add(fone, S1, prec, rnd), prec, rnd)
    p = [fzero if zp[k] else mul(e[k], invS, prec, rnd) for k in range(V)]
    p[jstar] = invS
    q = [sub(fone, pk, prec, rnd) for pk in p]
    q[jstar] = mul(S1, invS, prec, rnd)
    nlp: list[Any] = []
    if need_nlp:
        nlp = [finf if zp[k] else add(sub(mt, xs[k], prec, rnd), L, prec, rnd) for k in range(V)]
        nlp[jstar] = L
    n: list[Any] = []
    A = fzero
    if need_n:
        ax = [lib.mpf_abs(v) for v in xs]
        pax = [fzero if zp[k] else mul(p[k], ax[k], prec, rnd) for k in range(V)]
        A = lib.mpf_sum(pax, prec, rnd)
        B = lib.mpf_sum(pax[:jstar] + pax[jstar + 1 :], prec, rnd)
        n = [
            fzero
            if not act[k]
            else finf
            if zp[k]
            else add(mul(ax[k], q[k], prec, rnd), sub(A, pax[k], prec, rnd), prec, rnd)
            for k in range(V)
        ]
        n[jstar] = add(mul(ax[jstar], q[jstar], prec, rnd), B, prec, rnd)
    lse = add(mt, L, prec, rnd)
    big = lib.mpf_lt(S1, fone)
    return _MpRow("finite", act, zp, p, q, nlp, n, lse, A, jstar, bool(big))


def _mp_nan_ref(mp: Any, V: int, with_grad: bool = True) -> Ref:
    nan, zero = mp.nan, mp.mpf(0)
    if with_grad:
        return Ref(nan, [nan] * V, zero, [zero] * V)
    return Ref([nan] * V, None, [zero] * V, None)


def _mp_pn(c: _MpRow, mp: Any) -> list[Any]:
    """p_j·n_j (0 where p_j == 0) as mpf."""
    lib = _libmp()
    mk, prec, rnd = mp.make_mpf, mp.mp.prec, lib.round_nearest
    zero = mp.mpf(0)
    return [
        zero if c.zp[k] else mk(lib.mpf_mul(c.p[k], c.n[k], prec, rnd)) for k in range(len(c.p))
    ]


# ----------------------------------------------------------------------------------------------
# mpmath: softmax family
# ----------------------------------------------------------------------------------------------


def mp_logsumexp(
    x: npt.ArrayLike, where: npt.ArrayLike | None = None, dps: int = DEFAULT_DPS
) -> Ref:
    """logsumexp of one row: value, gradient p, κ = Σ p_k|x_k|, κ_grad_j = p_j·n_j."""
    xr = _as_row(x)
    with _workdps(dps) as mp:
        c = _mp_core(xr, where, mp, need_nlp=False)
        if c.kind == "nan":
            return _mp_nan_ref(mp, xr.shape[0])
        mk = mp.make_mpf
        return Ref(mk(c.lse), [mk(v) for v in c.p], mk(c.A), _mp_pn(c, mp))


def mp_log_softmax(
    x: npt.ArrayLike, where: npt.ArrayLike | None = None, dps: int = DEFAULT_DPS
) -> Ref:
    """log_softmax of one row: value log p_j (list), κ_j = n_j; no gradient."""
    xr = _as_row(x)
    with _workdps(dps) as mp:
        c = _mp_core(xr, where, mp)
        if c.kind == "nan":
            return _mp_nan_ref(mp, xr.shape[0], with_grad=False)
        mk, neg = mp.make_mpf, _libmp().mpf_neg
        return Ref([mk(neg(v)) for v in c.nlp], None, [mk(v) for v in c.n], None)


def mp_softmax(x: npt.ArrayLike, where: npt.ArrayLike | None = None, dps: int = DEFAULT_DPS) -> Ref:
    """softmax of one row: value p_j (list), κ_j = p_j·n_j; no gradient."""
    xr = _as_row(x)
    with _workdps(dps) as mp:
        c = _mp_core(xr, where, mp, need_nlp=False)
        if c.kind == "nan":
            return _mp_nan_ref(mp, xr.shape[0], with_grad=False)
        return Ref([mp.make_mpf(v) for v in c.p], None, _mp_pn(c, mp), None)


def _mp_soft_ce(c: _MpRow, t: FloatArray, mp: Any) -> Ref:
    V = len(c.act)
    if c.kind == "nan":
        nan, zero = mp.nan, mp.mpf(0)
        return Ref(nan, [nan] * V, zero, [zero] * V, [nan] * V)
    lib = _libmp()
    fzero, finf = lib.fzero, lib.finf
    prec, rnd = mp.mp.prec, lib.round_nearest
    add, sub, mul, absf, lt = lib.mpf_add, lib.mpf_sub, lib.mpf_mul, lib.mpf_abs, lib.mpf_lt
    mk = mp.make_mpf
    tf = [float(v) if c.act[k] else 0.0 for k, v in enumerate(t.tolist())]
    pos = [tk != 0 for tk in tf]
    ts = [lib.from_float(tk) if pk else fzero for tk, pk in zip(tf, pos, strict=True)]
    T = lib.mpf_sum(ts, prec, rnd)
    # A class with t_k ≠ 0 and p_k == 0 makes the value (and κ) +inf.
    # (κ is then +inf where x_k = −inf, 0 in empty / +inf rows: it does not matter there.)
    idx = [k for k in range(V) if pos[k]]
    if any(c.zp[k] for k in idx):
        value = finf
    else:
        value = lib.mpf_sum([mul(ts[k], c.nlp[k], prec, rnd) for k in idx], prec, rnd)
    if any(c.n[k] == finf for k in idx):
        kappa = finf
    else:
        kappa = lib.mpf_sum([mul(ts[k], c.n[k], prec, rnd) for k in idx], prec, rnd)
    j0 = c.jstar
    Tm = lib.mpf_sum(ts[:j0] + ts[j0 + 1 :], prec, rnd) if j0 >= 0 else fzero
    T_zero = not lib.mpf_sign(T)
    g: list[Any] = []
    kg: list[Any] = []
    gt: list[Any] = []
    for j in range(V):
        if not c.act[j]:
            g.append(fzero)
            kg.append(fzero)
            gt.append(fzero)
            continue
        Tp_zero = c.zp[j] or T_zero
        Tp = fzero if Tp_zero else mul(T, c.p[j], prec, rnd)
        Tq = mul(T, c.q[j], prec, rnd)
        if j == j0:
            TmTj = Tm
            gj = sub(Tm, Tq, prec, rnd) if c.big else sub(Tp, ts[j], prec, rnd)
        else:
            TmTj = absf(sub(T, ts[j], prec, rnd))
            gj = sub(Tp, ts[j], prec, rnd)
        g.append(gj)
        alt = add(TmTj, Tq, prec, rnd)
        mn = Tp if lt(Tp, alt) else alt
        kg.append(mn if Tp_zero else add(mul(Tp, c.n[j], prec, rnd), mn, prec, rnd))
        gt.append(fzero if (c.zp[j] and not pos[j]) else c.nlp[j])
    return Ref(mk(value), [mk(v) for v in g], mk(kappa), [mk(v) for v in kg], [mk(v) for v in gt])


def _split(t: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``t⁺ = max(t, 0)`` and ``t⁻ = max(−t, 0)``, so that ``t = t⁺ − t⁻``."""
    return np.where(t > 0, t, 0.0), np.where(t < 0, -t, 0.0)


def _mp_signed(fn: Any, t: FloatArray, mp: Any) -> Ref:
    """The reference of a loss linear in its targets, for a row whose targets have both signs.

    ``r(t) = r(t⁺) − r(t⁻)``, and each half is held to the standard on its own: the error is
    scored against ``(|r⁺| + κ⁺) + (|r⁻| + κ⁻)``, i.e. ``κ`` is that sum minus ``|r|`` (for
    the value and every gradient component alike). Where the targets share one sign this is
    the half's own ``|r| + κ``. The difference of two cross-entropies can cancel far below the
    rounding of either (``t = [1, -1, 0]``, ``x = [0, 1e-3, 100]``: ``r = 1e-3``), which no
    formulation shifted by the row max avoids, nor optax's ``log_softmax``.
    """
    pos, neg = _split(t)
    a, b = fn(pos), fn(neg)

    def comb(ra: Any, ka: Any, rb: Any, kb: Any) -> tuple[Any, Any]:
        v = ra - rb
        if not mp.isfinite(v):
            return v, mp.mpf(0)
        return v, abs(ra) + ka + abs(rb) + kb - abs(v)

    value, kappa = comb(a.value, a.kappa, b.value, b.kappa)
    grad = kg = None
    if a.grad is not None:
        pairs = [
            comb(ga, ka, gb, kb)
            for ga, ka, gb, kb in zip(a.grad, a.kappa_grad, b.grad, b.kappa_grad, strict=True)
        ]
        grad, kg = [g for g, _ in pairs], [k for _, k in pairs]
    grad_t = None
    if a.grad_t is not None:
        grad_t = [gb if tk < 0 else ga for ga, gb, tk in zip(a.grad_t, b.grad_t, t, strict=True)]
    return Ref(value, grad, kappa, kg, grad_t)


def _np_signed(fn: Any, t: FloatArray) -> Ref:
    """:func:`_mp_signed` for the numpy references: rows ``[..., V]`` with targets of both
    signs are scored as the difference of their halves; the other rows are unchanged."""
    pos, neg = _split(t)
    a, b = fn(pos), fn(neg)
    signed = np.any(neg > 0, axis=-1)

    def comb(ra: Any, ka: Any, rb: Any, kb: Any, rows: Any) -> tuple[Any, Any]:
        with np.errstate(invalid="ignore"):
            v = ra - rb
            k = np.where(np.isfinite(v), np.abs(ra) + ka + np.abs(rb) + kb - np.abs(v), 0.0)
        return np.where(rows, v, ra), np.where(rows, k, ka)

    value, kappa = comb(a.value, a.kappa, b.value, b.kappa, signed)
    grad = kg = grad_t = None
    if a.grad is not None:
        grad, kg = comb(a.grad, a.kappa_grad, b.grad, b.kappa_grad, signed[..., None])
    if a.grad_t is not None:
        grad_t = np.where(t < 0, b.grad_t, a.grad_t)
    return Ref(value, grad, kappa, kg, grad_t)


def mp_softmax_cross_entropy(
    x: npt.ArrayLike,
    t: npt.ArrayLike,
    where: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """Soft-label softmax cross-entropy of one row (any real targets); grad_t = −log p.

    Targets of both signs are scored as the difference of their halves (:func:`_mp_signed`).
    """
    xr = _as_row(x)
    tr = _as_row(t, "t")
    if tr.shape != xr.shape:
        raise ValueError("x and t must have the same shape")
    with _workdps(dps) as mp:
        core = _mp_core(xr, where, mp)
        if np.any(tr < 0):
            return _mp_signed(lambda half: _mp_soft_ce(core, half, mp), tr, mp)
        return _mp_soft_ce(core, tr, mp)


def mp_softmax_cross_entropy_with_integer_labels(
    x: npt.ArrayLike,
    y: int,
    where: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """Integer-label softmax cross-entropy of one row: soft CE with one-hot(y); κ = n_y.

    ``y`` outside ``[0, V)`` gives NaN value and gradient; a masked ``y`` gives 0 and 0.
    """
    xr = _as_row(x)
    V = xr.shape[0]
    y = int(y)
    with _workdps(dps) as mp:
        if not 0 <= y < V:
            return _mp_nan_ref(mp, V)
        t = np.zeros(V)
        t[y] = 1.0
        r = _mp_soft_ce(_mp_core(xr, where, mp, prefer=y), t, mp)
        return Ref(r.value, r.grad, r.kappa, r.kappa_grad)


# ----------------------------------------------------------------------------------------------
# mpmath: elementwise
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _MpSig:
    fin: bool  # x finite: no 0·inf anywhere, plain products are safe
    s: Any  # σ(x)
    sn: Any  # σ(−x)
    sp: Any  # softplus(x)      (None unless asked for)
    spn: Any  # softplus(−x)    (None unless asked for)
    ss: Any  # σ(x)σ(−x)
    th: Any  # |σ(−x) − σ(x)| = tanh(|x|/2)  (None unless asked for)
    ax: Any  # |x|


def _mp_sig(xf: float, mp: Any, need_sp: bool = True, need_th: bool = False) -> _MpSig:
    zero, one, inf = mp.mpf(0), mp.mpf(1), mp.inf
    if xf == np.inf:
        return _MpSig(False, one, zero, inf, zero, zero, one, inf)
    if xf == -np.inf:
        return _MpSig(False, zero, one, zero, inf, zero, one, inf)
    x = mp.mpf(xf)
    a = abs(x)
    en = mp.exp(-a)
    d = one + en
    big = one / d
    small = en * big
    s, sn = (big, small) if xf >= 0 else (small, big)
    sp = spn = th = None
    if need_sp:
        lg = mp.log1p(en)
        sp, spn = (x + lg, lg) if xf >= 0 else (lg, lg - x)
    if need_th:
        th = mp.tanh(a / 2)
    return _MpSig(True, s, sn, sp, spn, small * big, th, a)


def _mul(a: Any, b: Any, fin: bool) -> Any:
    """a·b, with 0·inf = 0 when an infinity may be involved."""
    if fin:
        return a * b
    return _mpmath().mpf(0) if (a == 0 or b == 0) else a * b


def _mp_elementwise(fn: Any, *args: npt.ArrayLike) -> Ref:
    arrs = [np.asarray(a, dtype=np.float64) for a in args]
    if all(a.ndim == 0 for a in arrs):
        r: Ref = fn(*[float(a) for a in arrs])
        return r
    bs = np.broadcast_arrays(*arrs)
    flat = [b.ravel() for b in bs]
    refs = [fn(*[float(f[i]) for f in flat]) for i in range(flat[0].shape[0])]
    return Ref(
        [r.value for r in refs],
        [r.grad for r in refs],
        [r.kappa for r in refs],
        [r.kappa_grad for r in refs],
    )


def mp_softplus(x: npt.ArrayLike, dps: int = DEFAULT_DPS) -> Ref:
    """softplus: value log1p(eˣ), grad σ(x), κ = |x|σ(x), κ_grad = σ(x)σ(−x)|x|."""
    with _workdps(dps) as mp:

        def one(xf: float) -> Ref:
            if math.isnan(xf):
                return Ref(mp.nan, mp.nan, mp.mpf(0), mp.mpf(0))
            s = _mp_sig(xf, mp)
            return Ref(s.sp, s.s, _mul(s.ax, s.s, s.fin), _mul(s.ss, s.ax, s.fin))

        return _mp_elementwise(one, x)


def mp_log_sigmoid(x: npt.ArrayLike, dps: int = DEFAULT_DPS) -> Ref:
    """log σ(x) = −softplus(−x): grad σ(−x), κ = |x|σ(−x), κ_grad = σ(x)σ(−x)|x|."""
    with _workdps(dps) as mp:

        def one(xf: float) -> Ref:
            if math.isnan(xf):
                return Ref(mp.nan, mp.nan, mp.mpf(0), mp.mpf(0))
            s = _mp_sig(xf, mp)
            return Ref(-s.spn, s.sn, _mul(s.ax, s.sn, s.fin), _mul(s.ss, s.ax, s.fin))

        return _mp_elementwise(one, x)


def mp_sigmoid(x: npt.ArrayLike, dps: int = DEFAULT_DPS) -> Ref:
    """σ(x): grad σ(x)σ(−x), κ = |x|σσ(−x), κ_grad = σσ(−x)·|σ(−x) − σ(x)|·|x|."""
    with _workdps(dps) as mp:

        def one(xf: float) -> Ref:
            if math.isnan(xf):
                return Ref(mp.nan, mp.nan, mp.mpf(0), mp.mpf(0))
            s = _mp_sig(xf, mp, need_sp=False, need_th=True)
            k = _mul(s.ss, s.ax, s.fin)
            return Ref(s.s, s.ss, k, _mul(k, s.th, s.fin))

        return _mp_elementwise(one, x)


def mp_sigmoid_binary_cross_entropy(
    x: npt.ArrayLike, t: npt.ArrayLike, dps: int = DEFAULT_DPS
) -> Ref:
    """Binary CE from logits, elementwise over broadcast (x, t), any real t."""
    with _workdps(dps) as mp:
        zero = mp.mpf(0)

        def one(xf: float, tf: float) -> Ref:
            if math.isnan(xf) or math.isnan(tf):
                return Ref(mp.nan, mp.nan, zero, zero)
            s = _mp_sig(xf, mp)
            t = mp.mpf(tf)
            omt = 1 - t
            value = _mul(omt, s.sp, s.fin) + _mul(t, s.spn, s.fin)
            m1 = abs(omt) * s.s + abs(t) * s.sn  # magnitude bound of (1−t)σ(x) − tσ(−x)
            m2 = s.s + abs(t)  # magnitude bound of the σ(x) − t form
            g = omt * s.s - t * s.sn if m1 <= m2 else s.s - t
            kappa = _mul(s.ax, abs(s.s - t), s.fin)
            kg = _mul(s.ss, s.ax, s.fin) + min(m1, m2)
            return Ref(value, g, kappa, kg)

        return _mp_elementwise(one, x, t)


# ----------------------------------------------------------------------------------------------
# mpmath: KL
# ----------------------------------------------------------------------------------------------


def mp_kl_divergence(
    lp: npt.ArrayLike,
    t: npt.ArrayLike,
    where: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """KL(t ‖ exp(lp)) = Σ t_k(log t_k − lp_k) of one row; grad −t, κ_grad |t|."""
    lr = _as_row(lp, "lp")
    tr = _as_row(t, "t")
    if tr.shape != lr.shape:
        raise ValueError("lp and t must have the same shape")
    act = _as_mask(where, lr.shape)
    with _workdps(dps) as mp:
        zero = mp.mpf(0)
        terms: list[Any] = []
        kap: list[Any] = []
        g: list[Any] = []
        kg: list[Any] = []
        gt: list[Any] = []
        for k in range(lr.shape[0]):
            tk = float(tr[k])
            if act[k] and tk == 0 and math.isnan(float(lr[k])):
                terms.append(mp.nan)  # 0 · NaN is NaN: a NaN input is never hidden
            if not act[k] or tk == 0:
                g.append(zero if not act[k] else -mp.mpf(tk))
                kg.append(zero)
                gt.append(zero)
                continue
            tm, lm = mp.mpf(tk), mp.mpf(float(lr[k]))
            d = mp.log(tm) - lm
            terms.append(tm * d)
            kap.append(tm * abs(lm))
            g.append(-tm)
            kg.append(abs(tm))
            gt.append(d + 1)
        value = _mp_sum(terms, mp)
        kappa = _mp_sum(kap, mp)
        return Ref(value, g, kappa, kg, gt)


def mp_kl_divergence_with_log_targets(
    lp: npt.ArrayLike,
    lt: npt.ArrayLike,
    where: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """Σ e^{lt_k}(lt_k − lp_k) of one row; grad −e^{lt}, κ_grad e^{lt}; grad_t wrt lt."""
    lr = _as_row(lp, "lp")
    ltr = _as_row(lt, "lt")
    if ltr.shape != lr.shape:
        raise ValueError("lp and lt must have the same shape")
    act = _as_mask(where, lr.shape)
    with _workdps(dps) as mp:
        zero = mp.mpf(0)
        terms: list[Any] = []
        kap: list[Any] = []
        g: list[Any] = []
        kg: list[Any] = []
        gt: list[Any] = []
        for k in range(lr.shape[0]):
            lk = float(ltr[k])
            if act[k] and lk == -np.inf and math.isnan(float(lr[k])):
                terms.append(mp.nan)  # 0 · NaN is NaN: a NaN input is never hidden
            if not act[k] or lk == -np.inf:
                g.append(zero)
                kg.append(zero)
                gt.append(zero)
                continue
            ltm, lpm = mp.mpf(lk), mp.mpf(float(lr[k]))
            w = mp.exp(ltm)
            d = ltm - lpm
            terms.append(w * d)
            kap.append(w * abs(lpm))
            g.append(-w)
            kg.append(w)
            gt.append(w * (d + 1))
        return Ref(_mp_sum(terms, mp), g, _mp_sum(kap, mp), kg, gt)


def _mp_sum(terms: list[Any], mp: Any) -> Any:
    if not terms:
        return mp.mpf(0)
    if any(mp.isnan(v) for v in terms):
        return mp.nan
    infs = [v for v in terms if mp.isinf(v)]
    if infs:
        return infs[0] if all(v == infs[0] for v in infs) else mp.nan
    return mp.fsum(terms)


# ----------------------------------------------------------------------------------------------
# numpy float64: softmax family
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _NpCore:
    act: BoolArray  # [N, V]
    p: FloatArray  # [N, V]
    q: FloatArray
    nlp: FloatArray  # −log p (+inf where p == 0 exactly, masked included)
    n: FloatArray
    lse: FloatArray  # [N]
    A: FloatArray  # [N]
    jstar: IntArray  # [N]
    has_j: BoolArray  # [N]
    big: BoolArray  # [N]
    nan_row: BoolArray  # [N]


def _np_2d(x: npt.ArrayLike, where: npt.ArrayLike | None) -> tuple[FloatArray, BoolArray]:
    xa = np.asarray(x, dtype=np.float64)
    if xa.ndim < 1 or xa.shape[-1] < 1:
        raise ValueError(f"x must have a non-empty class axis, got shape {xa.shape}")
    act = _as_mask(where, xa.shape)
    V = xa.shape[-1]
    return xa.reshape(-1, V), np.ascontiguousarray(act).reshape(-1, V)


def _np_core(x2: FloatArray, act: BoolArray, prefer: IntArray | None = None) -> _NpCore:
    N, V = x2.shape
    rows = np.arange(N)
    nan_row = np.any(act & np.isnan(x2), axis=-1)
    xa = np.where(act & ~nan_row[:, None], x2, -np.inf)
    posinf = xa == np.inf
    n_inf = posinf.sum(axis=-1)
    m = xa.max(axis=-1)
    fin = np.isfinite(m)
    infrow = n_inf > 0
    jstar = np.argmax(xa, axis=-1).astype(np.intp)
    if prefer is not None:
        ok = (prefer >= 0) & (prefer < V)
        pc = np.clip(prefer, 0, V - 1)
        tie = ok & fin & (xa[rows, pc] == m)
        jstar = np.where(tie, pc, jstar).astype(np.intp)
    ms = np.where(fin, m, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        # x_k − m with its rounding error (Knuth's TwoSum): dh + dl = x_k − m exactly.
        c = -ms[:, None]
        dh = xa + c
        bp = dh - xa
        ap = dh - bp
        dl = (xa - ap) + (c - bp)
    dl = np.where(np.isfinite(dh), dl, 0.0)
    dh = np.where(fin[:, None] & np.isfinite(dh), dh, -np.inf)
    eh = np.exp(dh)
    e = eh + eh * dl
    e[rows, jstar] = np.where(fin, 1.0, e[rows, jstar])
    ex = e.copy()
    ex[rows, jstar] = 0.0
    S1 = ex.sum(axis=-1)
    S = 1.0 + S1
    L = np.log1p(S1)
    p = e / S[:, None]
    q = 1.0 - p
    q[rows, jstar] = S1 / S
    with np.errstate(invalid="ignore"):
        nlp = (L[:, None] - dh) - dl
    nlp[rows, jstar] = L
    lse = m + L
    # n_j: see the module docstring.
    ax = np.abs(xa)
    with np.errstate(invalid="ignore"):
        pax = np.where(p > 0, p * ax, 0.0)
        A = pax.sum(axis=-1)
        pex = pax.copy()
        pex[rows, jstar] = 0.0
        B = pex.sum(axis=-1)
        rest = np.maximum(A[:, None] - pax, 0.0)
        rest[rows, jstar] = B
        n = np.where(q > 0, ax * q, 0.0) + rest
    n = np.where(act & fin[:, None], n, 0.0)
    A = np.where(fin, A, 0.0)
    big = fin & (S1 < 1.0)
    has_j = fin.copy()
    # Rows with +inf entries.
    if np.any(infrow):
        ninf = np.maximum(n_inf, 1).astype(np.float64)[:, None]
        pinf = np.where(posinf, 1.0 / ninf, 0.0)
        ir = infrow[:, None]
        p = np.where(ir, pinf, p)
        q = np.where(ir, 1.0 - pinf, q)
        nlp = np.where(ir, np.where(posinf, np.log(ninf), np.inf), nlp)
        lse = np.where(infrow, np.inf, lse)
        big = np.where(infrow, n_inf == 1, big)
        has_j = np.where(infrow, n_inf == 1, has_j)
    # Empty rows (and NaN rows, whose outputs are overwritten by the callers).
    empty = m == -np.inf
    if np.any(empty):
        er = empty[:, None]
        p = np.where(er, 0.0, p)
        q = np.where(er, 1.0, q)
        nlp = np.where(er, np.inf, nlp)
        lse = np.where(empty, -np.inf, lse)
    return _NpCore(act, p, q, nlp, n, lse, A, jstar, has_j, big, nan_row)


def _nan_rows(a: FloatArray, nan_row: BoolArray) -> FloatArray:
    if a.ndim == 2:
        return np.where(nan_row[:, None], np.nan, a)
    return np.where(nan_row, np.nan, a)


def _zero_rows(a: FloatArray, nan_row: BoolArray) -> FloatArray:
    if a.ndim == 2:
        return np.where(nan_row[:, None], 0.0, a)
    return np.where(nan_row, 0.0, a)


def _np_pn(p: FloatArray, n: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore"):
        return np.where(p > 0, p * n, 0.0)


def np_logsumexp(x: npt.ArrayLike, where: npt.ArrayLike | None = None) -> Ref:
    """logsumexp over the last axis: value [...], grad p [..., V], kappa [...], kappa_grad."""
    xa = np.asarray(x, dtype=np.float64)
    x2, act = _np_2d(xa, where)
    c = _np_core(x2, act)
    lead = xa.shape[:-1]
    value = _nan_rows(c.lse, c.nan_row).reshape(lead)
    grad = _nan_rows(c.p, c.nan_row).reshape(xa.shape)
    kappa = _zero_rows(c.A, c.nan_row).reshape(lead)
    kg = _zero_rows(_np_pn(c.p, c.n), c.nan_row).reshape(xa.shape)
    return Ref(value, grad, kappa, kg)


def np_log_softmax(x: npt.ArrayLike, where: npt.ArrayLike | None = None) -> Ref:
    """log_softmax over the last axis: value log p [..., V], kappa n [..., V]."""
    xa = np.asarray(x, dtype=np.float64)
    x2, act = _np_2d(xa, where)
    c = _np_core(x2, act)
    value = _nan_rows(-c.nlp, c.nan_row).reshape(xa.shape)
    kappa = _zero_rows(c.n, c.nan_row).reshape(xa.shape)
    return Ref(value, None, kappa, None)


def np_softmax(x: npt.ArrayLike, where: npt.ArrayLike | None = None) -> Ref:
    """softmax over the last axis: value p [..., V], kappa p·n [..., V]."""
    xa = np.asarray(x, dtype=np.float64)
    x2, act = _np_2d(xa, where)
    c = _np_core(x2, act)
    value = _nan_rows(c.p, c.nan_row).reshape(xa.shape)
    kappa = _zero_rows(_np_pn(c.p, c.n), c.nan_row).reshape(xa.shape)
    return Ref(value, None, kappa, None)


def _np_soft_ce(c: _NpCore, t2: FloatArray) -> tuple[FloatArray, ...]:
    N = t2.shape[0]
    rows = np.arange(N)
    act = c.act
    ts = np.where(act, t2, 0.0)
    T = ts.sum(axis=-1)
    pos = act & (ts != 0)
    with np.errstate(invalid="ignore"):
        value = _np_rowsum(np.where(pos, ts * c.nlp, 0.0))
        kappa = np.where(pos, ts * c.n, 0.0).sum(axis=-1)
    tex = ts.copy()
    tex[rows, c.jstar] = 0.0
    Tm = tex.sum(axis=-1)  # T − t_{j*}, summed directly
    Tp = T[:, None] * c.p
    g = Tp - ts
    gj = Tm - T * c.q[rows, c.jstar]
    use = c.has_j & c.big
    g[rows, c.jstar] = np.where(use, gj, g[rows, c.jstar])
    TmTj = np.abs(T[:, None] - ts)
    TmTj[rows, c.jstar] = np.where(c.has_j, Tm, TmTj[rows, c.jstar])
    kg = _np_pn(Tp, c.n) + np.minimum(Tp, TmTj + T[:, None] * c.q)
    g = np.where(act, g, 0.0)
    kg = np.where(act, kg, 0.0)
    absent = (ts == 0) & (c.nlp == np.inf)
    grad_t = np.where(act & ~absent, c.nlp, 0.0)
    nr = c.nan_row
    return (
        _nan_rows(value, nr),
        _nan_rows(g, nr),
        _zero_rows(kappa, nr),
        _zero_rows(kg, nr),
        _nan_rows(grad_t, nr),
    )


def np_softmax_cross_entropy(
    x: npt.ArrayLike, t: npt.ArrayLike, where: npt.ArrayLike | None = None
) -> Ref:
    """Soft-label softmax CE over the last axis: value [...], grad [..., V], grad_t [..., V]."""
    xa = np.asarray(x, dtype=np.float64)
    ta = np.broadcast_to(np.asarray(t, dtype=np.float64), xa.shape)
    x2, act = _np_2d(xa, where)
    core = _np_core(x2, act)
    t2 = ta.reshape(x2.shape)
    if np.any(t2 < 0):
        r = _np_signed(lambda h: Ref(*_np_soft_ce(core, h)), t2)
        value, g, kappa, kg, gt = r.value, r.grad, r.kappa, r.kappa_grad, r.grad_t
    else:
        value, g, kappa, kg, gt = _np_soft_ce(core, t2)
    lead = xa.shape[:-1]
    return Ref(
        value.reshape(lead),
        g.reshape(xa.shape),
        kappa.reshape(lead),
        kg.reshape(xa.shape),
        gt.reshape(xa.shape),
    )


def np_softmax_cross_entropy_with_integer_labels(
    x: npt.ArrayLike, y: npt.ArrayLike, where: npt.ArrayLike | None = None
) -> Ref:
    """Integer-label softmax CE: x [..., V], y [...] ints; soft CE with one-hot(y), κ = n_y."""
    xa = np.asarray(x, dtype=np.float64)
    x2, act = _np_2d(xa, where)
    N, V = x2.shape
    ya = np.broadcast_to(np.asarray(y), xa.shape[:-1]).reshape(N).astype(np.int64)
    ok = (ya >= 0) & (ya < V)
    t2 = (np.arange(V)[None, :] == ya[:, None]).astype(np.float64)
    value, g, kappa, kg, _ = _np_soft_ce(_np_core(x2, act, prefer=ya.astype(np.intp)), t2)
    value = np.where(ok, value, np.nan)
    g = np.where(ok[:, None], g, np.nan)
    kappa = np.where(ok, kappa, 0.0)
    kg = np.where(ok[:, None], kg, 0.0)
    lead = xa.shape[:-1]
    return Ref(value.reshape(lead), g.reshape(xa.shape), kappa.reshape(lead), kg.reshape(xa.shape))


# ----------------------------------------------------------------------------------------------
# numpy float64: elementwise
# ----------------------------------------------------------------------------------------------


def _np_sig(x: FloatArray) -> dict[str, FloatArray]:
    ax = np.abs(x)
    en = np.exp(-ax)
    d = 1.0 + en
    big, small = 1.0 / d, en / d
    lg = np.log1p(en)
    nonneg = x >= 0
    with np.errstate(invalid="ignore"):
        return {
            "s": np.where(nonneg, big, small),
            "sn": np.where(nonneg, small, big),
            "sp": np.maximum(x, 0.0) + lg,
            "spn": np.maximum(-x, 0.0) + lg,
            "ss": small / d,
            "th": np.tanh(ax / 2),
            "ax": ax,
        }


def _np_mul0(a: FloatArray, b: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore"):
        return np.where((a == 0) | (b == 0), 0.0, a * b)


def _nan_where(mask: BoolArray, *arrs: FloatArray) -> list[FloatArray]:
    return [np.where(mask, np.nan, a) for a in arrs]


def np_softplus(x: npt.ArrayLike) -> Ref:
    """softplus elementwise (any shape); see :func:`mp_softplus`."""
    xa = np.asarray(x, dtype=np.float64)
    s = _np_sig(xa)
    kappa = _np_mul0(s["ax"], s["s"])
    kg = _np_mul0(s["ss"], s["ax"])
    v, g = _nan_where(np.isnan(xa), s["sp"], s["s"])
    return Ref(v, g, np.where(np.isnan(xa), 0.0, kappa), np.where(np.isnan(xa), 0.0, kg))


def np_log_sigmoid(x: npt.ArrayLike) -> Ref:
    """log σ elementwise (any shape); see :func:`mp_log_sigmoid`."""
    xa = np.asarray(x, dtype=np.float64)
    s = _np_sig(xa)
    kappa = _np_mul0(s["ax"], s["sn"])
    kg = _np_mul0(s["ss"], s["ax"])
    v, g = _nan_where(np.isnan(xa), -s["spn"], s["sn"])
    return Ref(v, g, np.where(np.isnan(xa), 0.0, kappa), np.where(np.isnan(xa), 0.0, kg))


def np_sigmoid(x: npt.ArrayLike) -> Ref:
    """σ elementwise (any shape); see :func:`mp_sigmoid`."""
    xa = np.asarray(x, dtype=np.float64)
    s = _np_sig(xa)
    kappa = _np_mul0(s["ss"], s["ax"])
    kg = _np_mul0(kappa, s["th"])
    v, g = _nan_where(np.isnan(xa), s["s"], s["ss"])
    return Ref(v, g, np.where(np.isnan(xa), 0.0, kappa), np.where(np.isnan(xa), 0.0, kg))


def np_sigmoid_binary_cross_entropy(x: npt.ArrayLike, t: npt.ArrayLike) -> Ref:
    """Binary CE from logits elementwise over broadcast (x, t); see the module docstring."""
    xb, tb = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64))
    s = _np_sig(xb)
    omt = 1.0 - tb
    value = _np_mul0(omt, s["sp"]) + _np_mul0(tb, s["spn"])
    m1 = np.abs(omt) * s["s"] + np.abs(tb) * s["sn"]
    m2 = s["s"] + np.abs(tb)
    g = np.where(m1 <= m2, omt * s["s"] - tb * s["sn"], s["s"] - tb)
    kappa = _np_mul0(s["ax"], np.abs(s["s"] - tb))
    kg = _np_mul0(s["ss"], s["ax"]) + np.minimum(m1, m2)
    bad = np.isnan(xb) | np.isnan(tb)
    value, g = _nan_where(bad, value, g)
    return Ref(value, g, np.where(bad, 0.0, kappa), np.where(bad, 0.0, kg))


# ----------------------------------------------------------------------------------------------
# numpy float64: KL
# ----------------------------------------------------------------------------------------------


def _np_rowsum(terms: FloatArray) -> FloatArray:
    """Correctly rounded row sums (math.fsum), falling back to np.sum on non-finite rows."""
    out: FloatArray = terms.sum(axis=-1)
    finite = np.all(np.isfinite(terms), axis=-1)
    for i in np.flatnonzero(finite):
        with suppress(OverflowError):
            out[i] = math.fsum(terms[i].tolist())
    return out


def np_kl_divergence(
    lp: npt.ArrayLike, t: npt.ArrayLike, where: npt.ArrayLike | None = None
) -> Ref:
    """Σ t(log t − lp) over the last axis; grad −t, κ_grad |t|, grad_t log t − lp + 1."""
    la = np.asarray(lp, dtype=np.float64)
    tb = np.broadcast_to(np.asarray(t, dtype=np.float64), la.shape)
    l2, act = _np_2d(la, where)
    t2 = tb.reshape(l2.shape)
    pos = act & (t2 != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log(np.where(pos, t2, 1.0)) - l2
        terms = np.where(pos, t2 * d, 0.0)
        kap = np.where(pos, t2 * np.abs(l2), 0.0)
    g = np.where(act, -t2, 0.0)
    kg = np.where(act, np.abs(t2), 0.0)
    gt = np.where(pos, d + 1.0, 0.0)
    lead = la.shape[:-1]
    # 0 · NaN is NaN: a NaN log-prediction makes its row NaN, also under a zero target.
    nan_row = np.any(act & np.isnan(l2), axis=-1)
    return Ref(
        np.where(nan_row, np.nan, _np_rowsum(terms)).reshape(lead),
        g.reshape(la.shape),
        _np_rowsum(kap).reshape(lead),
        kg.reshape(la.shape),
        gt.reshape(la.shape),
    )


def _np_exp_times(lt: FloatArray, d: FloatArray) -> FloatArray:
    """``e^{lt}·d`` for finite ``lt``, also where ``e^{lt}`` alone underflows (lt < -708):
    there as ``sign(d)·exp(lt + log|d|)`` (relative error ~1e-13, plenty for float32 scoring;
    the mpmath reference has no exponent limit). ``d = ±inf`` gives ``±inf``, ``d = 0`` 0."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        w = np.exp(lt)
        direct = w * d
        logged = np.sign(d) * np.exp(lt + np.log(np.abs(d)))
        out = np.where(w >= _FLOAT64_TINY, direct, logged)
        out = np.where(np.isinf(d) & np.isfinite(lt), d, out)
        return np.where(d == 0, 0.0, out)


def np_kl_divergence_with_log_targets(
    lp: npt.ArrayLike, lt: npt.ArrayLike, where: npt.ArrayLike | None = None
) -> Ref:
    """Σ e^{lt}(lt − lp) over the last axis; grad −e^{lt}, κ_grad e^{lt}, grad_t wrt lt."""
    la = np.asarray(lp, dtype=np.float64)
    ltb = np.broadcast_to(np.asarray(lt, dtype=np.float64), la.shape)
    l2, act = _np_2d(la, where)
    lt2 = ltb.reshape(l2.shape)
    pos = act & (lt2 != -np.inf)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        w = np.where(pos, np.exp(lt2), 0.0)
        d = lt2 - l2
        terms = np.where(pos, _np_exp_times(lt2, d), 0.0)
        kap = np.where(pos, _np_exp_times(lt2, np.abs(l2)), 0.0)
        gt = np.where(pos, _np_exp_times(lt2, d + 1.0), 0.0)
    lead = la.shape[:-1]
    # 0 · NaN is NaN: a NaN log-prediction makes its row NaN, also under a -inf log target.
    nan_row = np.any(act & np.isnan(l2), axis=-1)
    return Ref(
        np.where(nan_row, np.nan, _np_rowsum(terms)).reshape(lead),
        (-w).reshape(la.shape),
        _np_rowsum(kap).reshape(lead),
        w.reshape(la.shape),
        gt.reshape(la.shape),
    )


# ----------------------------------------------------------------------------------------------
# The error measure
# ----------------------------------------------------------------------------------------------


def _is_mp(v: Any) -> bool:
    return type(v).__module__.startswith("mpmath")


def _mp_error(v: Any, r: Any, kappa: Any, u: float, tiny: float, mp: Any) -> float:
    vm = v if _is_mp(v) else mp.mpf(float(v))
    rm = r if _is_mp(r) else mp.mpf(float(r))
    km = kappa if _is_mp(kappa) else mp.mpf(float(kappa))
    if mp.isnan(rm):
        return 0.0 if mp.isnan(vm) else math.inf
    if mp.isnan(vm):
        return math.inf
    if mp.isinf(rm):
        return 0.0 if vm == rm else math.inf
    if mp.isinf(vm):
        return math.inf
    if abs(rm) < tiny and vm == 0:
        return 0.0
    if abs(vm - rm) < tiny:
        return 0.0
    den = u * (abs(rm) + km)
    if den == 0:
        return 0.0 if vm == rm else math.inf
    return float(abs(vm - rm) / den)


_FLOAT64_TINY = 2.2250738585072014e-308


def _np_error(
    va: FloatArray, ra: FloatArray, ka: FloatArray, u: float, tiny: float | FloatArray
) -> FloatArray:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        den = u * (np.abs(ra) + ka)
        e = np.abs(va - ra) / den
        e = np.where(den == 0, np.where(va == ra, 0.0, np.inf), e)
        e = np.where((np.abs(ra) < tiny) & (va == 0), 0.0, e)
        e = np.where(np.abs(va - ra) < tiny, 0.0, e)
        e = np.where(np.isinf(va), np.inf, e)
        e = np.where(np.isinf(ra), np.where(va == ra, 0.0, np.inf), e)
        e = np.where(np.isnan(va), np.inf, e)
        e = np.where(np.isnan(ra), np.where(np.isnan(va), 0.0, np.inf), e)
    return e


def _mp_list_error(
    vf: FloatArray, rl: list[Any], kl: list[Any], u: float, tiny: float | FloatArray
) -> FloatArray:
    """Elementwise error against lists of exact (mpf) references.

    For u ≥ 2^-45 (float32, bfloat16) the references are rounded to float64 first where that is
    harmless (finite, normal or exactly zero): it moves e by at most 2^-53/u relative, below
    1e-8 ulps. Everything else (u = 2^-53, and references outside the float64 range) is
    evaluated in mpmath.
    """
    n = vf.shape[0]
    tiny_a = np.broadcast_to(np.asarray(tiny, np.float64), (n,))
    rf = np.array([float(a) for a in rl], dtype=np.float64)
    kf = np.array([float(a) for a in kl], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        safe = np.isfinite(rf) & np.isfinite(kf) & (np.abs(rf) >= _FLOAT64_TINY)
    if u < 2.0**-45:
        safe[:] = False
    for i in np.flatnonzero(np.isfinite(rf) & (rf == 0) & np.isfinite(kf)):
        if u >= 2.0**-45 and rl[i] == 0:
            safe[i] = True
    out = np.zeros(n, dtype=np.float64)
    if safe.any():
        out[safe] = _np_error(vf[safe], rf[safe], kf[safe], u, tiny_a[safe])
    rest = np.flatnonzero(~safe)
    if rest.size:
        with _workdps(30) as mp:
            for i in rest:
                out[i] = _mp_error(vf[i], rl[i], kl[i], u, float(tiny_a[i]), mp)
    return out


def flush_floor(t: npt.ArrayLike, tiny: float) -> FloatArray:
    """The flush floor of a soft-label gradient ``T·p_j − t_j`` per row of targets ``t``
    (``[..., V]``, kept dims): ``tiny·max(1, Σ|t_k|)``. XLA flushes a subnormal ``p_j`` to 0, so
    ``T·p_j`` can be 0 where its exact value is as large as ``|T|·tiny`` (targets above 1)."""
    ta = np.abs(np.asarray(t, np.float64))
    return tiny * np.maximum(1.0, np.sum(np.where(np.isfinite(ta), ta, 0.0), -1, keepdims=True))


def condition_scaled_error(
    v: Any, r: Any, kappa: Any, u: float, tiny: float | FloatArray = FLOAT32_TINY
) -> float | FloatArray:
    """Condition-scaled error ``e = |v − r| / (u·(|r| + κ))`` (``docs/numerics.md``).

    Rules, in order of precedence: r NaN → 0 iff v is NaN, else inf (an extension: where the
    reference itself is NaN, a NaN result is correct); v NaN → inf; r = ±inf → 0 iff v == r, else
    inf; v = ±inf → inf; ``|r| < tiny`` and v == 0 → 0 (XLA flushes subnormals); ``|v − r| < tiny``
    → 0 (the same flush, applied to an intermediate: a term whose exact value is subnormal, e.g.
    ``T·p_j = 1e-39`` inside the gradient ``T·p_j − t_j`` with ``t_j = 2e-37``, comes back as 0, an
    absolute error no flush-to-zero arithmetic can resolve); r == 0 and κ == 0 → 0 iff v == 0,
    else inf. ``tiny`` may be an array broadcastable to ``v``: a flushed intermediate scaled by
    a coefficient of the inputs (``T·p_j`` with ``|T| > 1``: the flushed ``p_j`` costs up to
    ``|T|·tiny``) is scored with that scaled floor (:func:`flush_floor`).

    ``v`` is the computed value (float, numpy scalar/array of any float dtype; upcast exactly).
    A scalar mpf ``r`` against an array ``v`` is broadcast (an array comes back).
    If ``r`` or ``kappa`` is an mpmath number, or ``r`` is a list/tuple (or object array) of
    them, the error is computed against the exact reference (a float, or an array of floats for
    lists; for u ≥ 2^-45 normal references go through float64, which changes e by < 1e-8);
    otherwise it is computed vectorised in float64 over broadcast arrays (a float for scalar
    inputs).
    """
    if _is_mp(r) or (_is_mp(kappa) and not isinstance(r, (list, tuple, np.ndarray))):
        va = np.asarray(v)
        if va.ndim == 0 or va.size == 1:
            with _workdps(30) as mp:
                e1 = _mp_error(va.reshape(-1)[0], r, kappa, u, float(np.max(tiny)), mp)
            return e1 if va.ndim == 0 else np.full(va.shape, e1)
        r = [r] * va.size
    if isinstance(r, np.ndarray) and r.dtype == object:
        r = list(r.ravel())
    if isinstance(r, np.ndarray) and isinstance(kappa, (list, tuple)):
        r = list(r.ravel())
    if isinstance(r, (list, tuple)):
        va = np.asarray(v)
        n = len(r)
        vf = va.astype(np.float64).ravel() if va.ndim else np.full(n, float(va))
        kl = list(kappa) if isinstance(kappa, (list, tuple, np.ndarray)) else [kappa] * n
        if vf.shape[0] != n or len(kl) != n:
            raise ValueError("v, r and kappa must have the same length")
        out = _mp_list_error(vf, list(r), kl, u, tiny)
        return out.reshape(va.shape if va.ndim else (n,))
    va = np.asarray(v).astype(np.float64)
    ra = np.asarray(r, dtype=np.float64)
    ka = np.asarray(kappa, dtype=np.float64)
    va, ra, ka = np.broadcast_arrays(va, ra, ka)
    e = _np_error(va, ra, ka, u, tiny)
    if e.ndim == 0:
        return float(e)
    return e


# ----------------------------------------------------------------------------------------------
# Softmax family (issue 3): focal loss and PolyLoss, mpmath
# ----------------------------------------------------------------------------------------------


def _mp_focal_terms(
    s: dict[int, Any], a: list[Any], gamma: Any, eps: Any, kind: str, V: int, mp: Any
) -> tuple[list[Any], list[Any], Any, list[Any]]:
    """``(p, q, value, c)`` of the focal loss / PolyLoss from ``s[k] = Σ_{j≠k}
    e^{x_j - x_k}`` for the live classes (``-log p_k = log1p(s_k)``, ``q_k = s_k/(1 + s_k)``);
    ``c_k = q_k^γ (1 + γ p_k (-log p_k)/q_k)`` is the focal gradient's factor (0 for poly)."""
    nlp = [mp.inf] * V
    p = [mp.mpf(0)] * V
    q = [mp.mpf(1)] * V
    for k, sk in s.items():
        nlp[k] = mp.log1p(sk)
        p[k] = 1 / (1 + sk)
        q[k] = sk / (1 + sk)
    value = mp.mpf(0)
    c = [mp.mpf(0)] * V
    for k in s:
        if a[k] == 0:
            continue
        if kind == "focal":
            mod = q[k] ** gamma if gamma != 0 else mp.mpf(1)
            value += a[k] * mod * nlp[k]
            h = nlp[k] / q[k] if q[k] != 0 else mp.mpf(1)
            c[k] = mod * (1 + gamma * p[k] * h)
        else:
            value += a[k] * (nlp[k] + eps * q[k])
    return p, q, value, c


def _mp_focal_value_grad(
    x: list[Any], a: list[Any], gamma: Any, eps: Any, kind: str, mp: Any
) -> tuple[Any, list[Any], list[Any]]:
    """Value, gradient and per-class term magnitudes of the focal loss (kind "focal",
    -Σ a_k q_k^γ log p_k) or PolyLoss (kind "poly", Σ a_k(-log p_k + ε q_k)) of one finite row.

    Classes with ``x_k = -inf`` (p_k = 0) must have ``a_k = 0``. Small quantities are formed
    directly: q_j = Σ_{k≠j} p_k, -log p_j = log1p(Σ_{k≠j} e^{x_k - x_j}).
    """
    V = len(x)
    live = [k for k in range(V) if x[k] != -mp.inf]
    e = {k: {j: mp.exp(x[j] - x[k]) for j in live if j != k} for k in live}
    others = {k: mp.fsum(e[k].values()) for k in live}
    p, q, value, c = _mp_focal_terms(others, a, gamma, eps, kind, V, mp)
    A = mp.fsum(a[k] * c[k] for k in live)
    grad = [mp.mpf(0)] * V
    mag = [mp.mpf(0)] * V
    if kind == "focal":
        for j in live:
            R = mp.fsum(a[k] * c[k] for k in live if k != j)
            grad[j] = p[j] * R - a[j] * c[j] * q[j]
            mag[j] = min(p[j] * A + a[j] * c[j], p[j] * R + a[j] * c[j] * q[j])
    else:
        T = mp.fsum(a[k] for k in live)
        for j in live:
            # CE part T p_j - a_j, poly part eps p_j (P - a_j); P - a_j = Σ_{k≠j} a_k p_k - a_j q_j
            Pm = mp.fsum(a[k] * p[k] for k in live if k != j) - a[j] * q[j]
            Tm = mp.fsum(a[k] for k in live if k != j)
            grad[j] = (Tm - T * q[j]) + eps * p[j] * Pm
            mag[j] = min(T * p[j] + a[j], Tm + T * q[j]) + abs(eps) * p[j] * (
                mp.fsum(a[k] * p[k] for k in live if k != j) + a[j] * q[j]
            )
    return value, grad, mag


def mp_softmax_focal_loss(
    x: npt.ArrayLike,
    t: npt.ArrayLike,
    gamma: float = 2.0,
    alpha: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
    *,
    kind: str = "focal",
    epsilon: float = 0.0,
) -> Ref:
    """Focal loss ``-Σ α_k t_k (1 - p_k)^γ log p_k`` of one row (or PolyLoss with
    ``kind="poly"``), with κ = Σ_k |x_k ∂r/∂x_k| and κ_grad_j = Σ_k |x_k ∂g_j/∂x_k| (central
    differences of the exact gradient at ``dps`` digits) plus the magnitude of the smaller of
    the two forms of the gradient's final difference (the ``min(...)`` term of
    ``docs/numerics.md``).

    Rows with ``+inf``, NaN or a positive target on a ``-inf`` logit are not supported.
    """
    xr = _as_row(x)
    tr = _as_row(t, "t")
    V = xr.shape[0]
    al = np.ones(V) if alpha is None else np.broadcast_to(np.asarray(alpha, np.float64), (V,))
    with _workdps(dps) as mp:
        xs = [mp.mpf(float(v)) if np.isfinite(v) else -mp.inf for v in xr.tolist()]
        g_ = mp.mpf(gamma)
        eps = mp.mpf(epsilon)

        def half(th: FloatArray) -> Ref:
            a = [mp.mpf(float(al[k])) * mp.mpf(float(th[k])) for k in range(V)]
            return _mp_focal_ref(_mp_focal_value_grad, xs, a, g_, eps, kind, mp, dps)

        # Linear in the targets: signed rows are scored as the difference of their halves.
        return _mp_signed(half, tr, mp) if np.any(tr < 0) else half(tr)


def mp_poly_loss_cross_entropy(
    x: npt.ArrayLike, t: npt.ArrayLike, epsilon: float = 2.0, dps: int = DEFAULT_DPS
) -> Ref:
    """PolyLoss ``Σ t_k(-log p_k) + ε Σ t_k (1 - p_k)`` of one row; see
    :func:`mp_softmax_focal_loss` for κ."""
    return mp_softmax_focal_loss(x, t, dps=dps, kind="poly", epsilon=epsilon)


# Information measures (issue 3, divergences): generalized KL, entropy, KL and Jensen-Shannon
# divergence from logits. mpmath values and gradients; the gradients' condition numbers need
# the Hessian (O(V^2) terms), summed in float64 numpy in O(V log V): they are scales, a few
# correct digits are plenty.
# ----------------------------------------------------------------------------------------------


def _abs_affine_sums(w: FloatArray, e: FloatArray, c: FloatArray) -> FloatArray:
    """``out_j = Σ_i w_i·|c_j + e_i|`` for all j in O(V log V) (w >= 0; e ignored where w = 0)."""
    w = np.where(w > 0, w, 0.0)
    e = np.where(w > 0, e, 0.0)
    order = np.argsort(e)
    es, ws = e[order], w[order]
    cw = np.concatenate([[0.0], np.cumsum(ws)])
    cwe = np.concatenate([[0.0], np.cumsum(ws * es)])
    s = np.searchsorted(es, -c, side="left")  # e_i < -c_j for i < s
    lo_w, lo_we = cw[s], cwe[s]
    hi_w, hi_we = cw[-1] - lo_w, cwe[-1] - lo_we
    return np.abs(c * (hi_w - lo_w) + (hi_we - lo_we))


def _sum_excluding(w: FloatArray) -> FloatArray:
    """``Σ_{i≠j} w_i`` for every j (w >= 0): ``total − w_j``, except at the largest ``w_j``
    (the only one that can be most of the total), summed directly there."""
    out = np.sum(w) - w
    j = int(np.argmax(w))
    out[j] = np.sum(np.delete(w, j))
    return np.maximum(out, 0.0)


def _abs_affine_sums_excl(w: FloatArray, e: FloatArray, c: FloatArray) -> FloatArray:
    """``Σ_{i≠j} w_i·|c_j + e_i|``, the dominant j recomputed without its own term."""
    w = np.where(w > 0, w, 0.0)
    e = np.where(w > 0, e, 0.0)
    out = np.maximum(_abs_affine_sums(w, e, c) - w * np.abs(c + e), 0.0)
    j = int(np.argmax(w))
    w2 = w.copy()
    w2[j] = 0.0
    out[j] = _abs_affine_sums(w2, e, c[j : j + 1])[0]
    return out


def _mp_floats(vals: list[Any]) -> FloatArray:
    return np.array([float(v) for v in vals], dtype=np.float64)


def _fin_abs(x: FloatArray) -> FloatArray:
    """|x| with 0 for non-finite entries (their coefficients are 0 where they occur)."""
    return np.where(np.isfinite(x), np.abs(x), 0.0)


def mp_generalized_kl_divergence(
    lp: npt.ArrayLike,
    t: npt.ArrayLike,
    where: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """Σ t_k(log t_k − lp_k) − t_k + e^{lp_k} of one row (t ≥ 0 unnormalized masses).

    Gradient wrt lp: e^{lp} − t; κ = Σ|lp_k|·|e^{lp_k} − t_k|; κ_grad_k = |lp_k|·e^{lp_k}.
    Conventions: t_k = 0 → term e^{lp_k} (0 at lp = −inf, gradient 0 there); t_k > 0 with
    lp_k = −inf → +inf (gradient −t_k); NaN lp → NaN; masked → 0. ``grad_t``: log t − lp
    (0 where t = 0).
    """
    lr = _as_row(lp, "lp")
    tr = _as_row(t, "t")
    if tr.shape != lr.shape:
        raise ValueError("lp and t must have the same shape")
    act = _as_mask(where, lr.shape)
    with _workdps(dps) as mp:
        zero = mp.mpf(0)
        terms: list[Any] = []
        kap: list[Any] = []
        g: list[Any] = []
        kg: list[Any] = []
        gt: list[Any] = []
        for k in range(lr.shape[0]):
            if not act[k]:
                g.append(zero)
                kg.append(zero)
                gt.append(zero)
                continue
            lk, tk = float(lr[k]), float(tr[k])
            if math.isnan(lk):
                terms.append(mp.nan)
                g.append(mp.nan)
                kg.append(zero)
                gt.append(mp.nan)
                continue
            lm, tm = mp.mpf(lk), mp.mpf(tk)
            v = mp.exp(lm) if lk != -np.inf else zero
            if tk == 0:
                terms.append(v)
                gt.append(zero)
            elif lk == -np.inf:
                terms.append(mp.inf)
                gt.append(mp.inf)
            else:
                r = mp.log(tm) - lm
                terms.append(tm * (mp.expm1(-r) + r))
                gt.append(r)
            g.append(v - tm)
            fin = lk != -np.inf
            kap.append(abs(lm) * abs(v - tm) if fin else zero)
            kg.append(abs(lm) * v if fin else zero)
        return Ref(_mp_sum(terms, mp), g, _mp_sum(kap, mp), kg, gt)


def mp_entropy(x: npt.ArrayLike, where: npt.ArrayLike | None = None, dps: int = DEFAULT_DPS) -> Ref:
    """H(softmax(x)) = Σ p_k(−log p_k) of one row; grad p_j(ℓ_j − H) with ℓ = −log p.

    κ = Σ_j |x_j g_j|; κ_grad_j = Σ_i |x_i ∂g_j/∂x_i| with ∂g_j/∂x_i =
    p_j[(δ_ij − p_i)(ℓ_j − H − 1) − p_i(ℓ_i − H)]. Empty rows: 0; +inf rows: log n_inf, grad 0;
    NaN rows: NaN.
    """
    xr = _as_row(x)
    V = xr.shape[0]
    with _workdps(dps) as mp:
        c = _mp_core(xr, where, mp, need_n=False)
        zero = mp.mpf(0)
        if c.kind == "nan":
            return _mp_nan_ref(mp, V)
        mk = mp.make_mpf
        p = [mk(v) for v in c.p]
        ell = [mk(v) for v in c.nlp]
        if c.kind == "empty":
            return Ref(zero, [zero] * V, zero, [zero] * V)
        omp = _mp_floats([mk(v) for v in c.q])  # 1 − p, exact also for the top class
        H = mp.fsum(p[k] * ell[k] for k in range(V) if not c.zp[k])
        ell_h = [zero if c.zp[k] else ell[k] - H for k in range(V)]
        g = [zero if c.zp[k] else p[k] * ell_h[k] for k in range(V)]
        if c.kind == "posinf":
            return Ref(H, g, zero, [zero] * V)
    xa = np.where(_as_mask(where, xr.shape), xr, -np.inf)
    ax = _fin_abs(xa)
    pf = _mp_floats(p)
    gf = _mp_floats(g)
    kappa = float(np.sum(ax * np.abs(gf)))
    ei = np.where(pf > 0, _mp_floats(ell_h), 0.0)  # ℓ − H, from mpmath (no cancellation)
    cj = ei - 1.0
    off = _abs_affine_sums_excl(ax * pf, ei, cj)
    diag = np.abs(omp * cj - pf * ei)
    kg = pf * (off + ax * diag)
    return Ref(H, g, mp.mpf(kappa), [mp.mpf(float(v)) for v in kg])


def _mp_two_rows(a: npt.ArrayLike, b: npt.ArrayLike, where: npt.ArrayLike | None, mp: Any):
    ar, br = _as_row(a, "a"), _as_row(b, "b")
    if ar.shape != br.shape:
        raise ValueError("a and b must have the same shape")
    ca = _mp_core(ar, where, mp, need_n=False)
    cb = _mp_core(br, where, mp, need_n=False)
    return ar, br, ca, cb


def _mp_centered(p: list[Any], d: list[Any], mean: Any, mp: Any) -> list[Any]:
    """``d_k - mean`` on p's support (0 elsewhere), ``mean = sum_k p_k d_k``.

    At a dominant class ``j`` (``p_j > 1/2``) the difference cancels to about ``1 - p_j`` of
    its operands (``1e-57`` for a 130-nat gap: more digits than ``dps`` holds), so it is
    formed as ``sum_{k != j} p_k (d_j - d_k)`` instead, which has no cancellation.
    """
    zero = mp.mpf(0)
    out = [d[k] - mean if p[k] > 0 else zero for k in range(len(p))]
    half = mp.mpf(0.5)
    for j in range(len(p)):
        if p[j] > half:
            out[j] = mp.fsum(p[k] * (d[j] - d[k]) for k in range(len(p)) if k != j and p[k] > 0)
    return out


def mp_kl_divergence_with_logits(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    where: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """KL(softmax(a) ‖ softmax(b)) of one row pair; ``grad`` is [∂/∂a (V), ∂/∂b (V)] (2V).

    With δ = log p − log q: value Σ_{p>0} p δ (+inf if some p_k > 0 = q_k); ∂/∂a_j =
    p_j(δ_j − KL), ∂/∂b_j = q_j − p_j. κ = Σ|a_j ∂_{a_j}| + Σ|b_j ∂_{b_j}|; κ_grad from the
    Hessian: ∂²/∂a_i∂a_j = p_j[(δ_ij − p_i)(δ_j − KL + 1) − p_i(δ_i − KL)],
    ∂²/∂b_i∂a_j = −p_j(δ_ij − p_i), ∂²/∂b_i∂b_j = q_j(δ_ij − q_i). Rows with a NaN give NaN
    (κ 0); an infinite KL (q_k = 0 < p_k) has ∂/∂a = ±inf on p's support (the limit: +inf
    where q = 0, −inf elsewhere) and the finite ∂/∂b = q − p.
    """
    with _workdps(dps) as mp:
        ar, br, ca, cb = _mp_two_rows(a, b, where, mp)
        V = ar.shape[0]
        zero = mp.mpf(0)
        if "nan" in (ca.kind, cb.kind):
            return Ref(mp.nan, [mp.nan] * (2 * V), zero, [zero] * (2 * V))
        mk = mp.make_mpf
        p, q = [mk(v) for v in ca.p], [mk(v) for v in cb.p]
        omp, omq = _mp_floats([mk(v) for v in ca.q]), _mp_floats([mk(v) for v in cb.q])
        lp = [-mk(v) for v in ca.nlp]
        lq = [-mk(v) for v in cb.nlp]
        infinite = any((p[k] > 0) and q[k] == 0 for k in range(V))
        d = [lp[k] - lq[k] if (p[k] > 0 and q[k] > 0) else zero for k in range(V)]
        K = mp.inf if infinite else mp.fsum(p[k] * d[k] for k in range(V) if p[k] > 0)
        omp_m, omq_m = [mk(v) for v in ca.q], [mk(v) for v in cb.q]
        half = mp.mpf(0.5)
        # q − p; as (1 − p) − (1 − q) where both are dominant (no cancellation at dps digits).
        gb = [
            omp_m[k] - omq_m[k] if (p[k] > half and q[k] > half) else q[k] - p[k] for k in range(V)
        ]
        if infinite:  # the limit as q_k -> 0: +inf where q_k = 0 < p_k, -inf elsewhere on p
            ga = [(mp.inf if q[k] == 0 else -mp.inf) if p[k] > 0 else zero for k in range(V)]
        else:
            dk = _mp_centered(p, d, K, mp)
            ga = [p[k] * dk[k] for k in range(V)]
    act = _as_mask(where, ar.shape)
    axa = _fin_abs(np.where(act, ar, 0.0))
    axb = _fin_abs(np.where(act, br, 0.0))
    pf, qf = _mp_floats(p), _mp_floats(q)
    gbf = _mp_floats(gb)
    n_a = axa * omp + _sum_excluding(axa * pf)  # Σ_i |a_i|·|δ_ij − p_i|
    n_b = axb * omq + _sum_excluding(axb * qf)
    kg_b = pf * n_a + qf * n_b
    if infinite:
        kappa = float(np.sum(axb * np.abs(gbf)))
        return Ref(K, ga + gb, mp.mpf(kappa), [zero] * V + [mp.mpf(float(v)) for v in kg_b])
    gaf = _mp_floats(ga)
    kappa = float(np.sum(axa * np.abs(gaf)) + np.sum(axb * np.abs(gbf)))
    ei = _mp_floats(dk)  # δ − KL, from mpmath (no cancellation at the dominant class)
    cj = ei + 1.0
    wa = axa * pf
    off = _abs_affine_sums_excl(wa, ei, cj)
    diag = np.abs(omp * cj - pf * ei)
    n_ab = axb * omp + _sum_excluding(axb * pf)  # Σ_i |b_i|·|δ_ij − p_i|
    kg_a = pf * (off + axa * diag) + pf * n_ab
    with _workdps(dps) as mp:
        kgl = [mp.mpf(float(v)) for v in np.concatenate([kg_a, kg_b])]
        return Ref(K, ga + gb, mp.mpf(kappa), kgl)


def _js_kappa_grad_side(
    pf: FloatArray,
    qf: FloatArray,
    dpf: FloatArray,
    kp: float,
    axa: FloatArray,
    axb: FloatArray,
    omp: FloatArray,
    omq: FloatArray,
) -> FloatArray:
    """κ of g^a_j = ½p_j(dp_j − Kp) (dp = log(p/m)), from the Hessian (see mp_jensen_shannon).

    ``dpf`` holds dp − Kp (exact, from mpmath) and ``kp`` is then 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        s = pf + qf
        rho = np.where(s > 0, qf / s, 0.0)  # q/(p+q)
        sig = np.where(s > 0, pf / s, 0.0)  # p/(p+q)
    R = float(np.sum(pf * rho))
    dk = np.where(pf > 0, dpf, 0.0)  # log(p/m) − KL(p‖m), from mpmath
    c = dk + rho
    e = dk + (rho - R)
    wa = axa * pf
    off_a = _abs_affine_sums_excl(wa, e, c)
    diag_a = np.abs(omp * c - pf * e)
    c2 = rho - R
    wb = axb * qf
    off_b = _abs_affine_sums_excl(wb, sig, c2)
    diag_b = np.abs(-omq * rho + pf * rho - qf * R)
    return 0.5 * pf * (off_a + axa * diag_a + off_b + axb * diag_b)


def mp_jensen_shannon_divergence(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    where: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """JS(softmax(a), softmax(b)) = ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2, of one row pair.

    ``grad`` is [∂/∂a (V), ∂/∂b (V)]: ∂/∂a_j = ½p_j(log(p_j/m_j) − KL(p‖m)), symmetrically
    for b. κ = Σ|a_j ∂_{a_j}| + Σ|b_j ∂_{b_j}|; κ_grad from the Hessian, with
    ρ_j = q_j/(p_j+q_j), R = Σ p_k ρ_k, C_j = log(p_j/m_j) − KL(p‖m) + ρ_j, e_i = C_i − R:
    ∂²/∂a_i∂a_j = ½p_j[(δ_ij − p_i)C_j − p_i e_i] and ∂²/∂b_i∂a_j =
    ½p_j[−(δ_ij − q_i)ρ_j + p_iρ_i − q_iR]. NaN rows give NaN.
    """
    with _workdps(dps) as mp:
        ar, br, ca, cb = _mp_two_rows(a, b, where, mp)
        V = ar.shape[0]
        zero = mp.mpf(0)
        if "nan" in (ca.kind, cb.kind):
            return Ref(mp.nan, [mp.nan] * (2 * V), zero, [zero] * (2 * V))
        mk = mp.make_mpf
        p, q = [mk(v) for v in ca.p], [mk(v) for v in cb.p]
        omp, omq = _mp_floats([mk(v) for v in ca.q]), _mp_floats([mk(v) for v in cb.q])
        lp = [-mk(v) for v in ca.nlp]
        lq = [-mk(v) for v in cb.nlp]
        log2 = mp.log(2)

        def eps(k: int, own: list[Any], other: list[Any], lo: list[Any], lot: list[Any]) -> Any:
            # log 2 − log(own/m) = log(1 + other/own), from the log-probabilities.
            if own[k] == 0 or other[k] == 0:
                return zero
            return mp.log1p(mp.exp(lot[k] - lo[k]))

        def dlog(k: int, own: list[Any], other: list[Any], lo: list[Any], lot: list[Any]) -> Any:
            # log(own/m) = -log1p(expm1(lot - lo)/2): no log 2 - (log 2 - tiny) cancellation.
            if own[k] == 0:
                return zero
            if other[k] == 0:
                return log2
            return -mp.log1p(mp.expm1(lot[k] - lo[k]) / 2)

        def kl_to_mixture(own: list[Any], other: list[Any], d: list[Any]) -> Any:
            # Bregman form sum_{own>0} own·phi(d) + sum_{own=0} m, phi(d) = expm1(-d) + d >= 0:
            # the same sum as sum own·d, without its cancellation (JS = 4.7e-54 from terms of
            # 1e-48 lost 8 of the 60 digits that way).
            return mp.fsum(
                own[k] * (mp.expm1(-d[k]) + d[k]) if own[k] > 0 else other[k] / 2 for k in range(V)
            )

        dp = [dlog(k, p, q, lp, lq) for k in range(V)]
        dq = [dlog(k, q, p, lq, lp) for k in range(V)]
        js = (kl_to_mixture(p, q, dp) + kl_to_mixture(q, p, dq)) / 2
        # Gradients in the eps form, eps = log 2 − log(p/m) (small where the supports barely
        # overlap): log(p_j/m_j) − KL(p‖m) = Σ_k p_k eps_k − eps_j, as Σ p = 1.
        ep = [eps(k, p, q, lp, lq) for k in range(V)]
        eq = [eps(k, q, p, lq, lp) for k in range(V)]
        sp = mp.fsum(p[k] * ep[k] for k in range(V))
        sq = mp.fsum(q[k] * eq[k] for k in range(V))
        cp, cq = _mp_centered(p, ep, sp, mp), _mp_centered(q, eq, sq, mp)
        ga = [-p[k] * cp[k] / 2 if p[k] > 0 else zero for k in range(V)]
        gb = [-q[k] * cq[k] / 2 if q[k] > 0 else zero for k in range(V)]
    act = _as_mask(where, ar.shape)
    axa = _fin_abs(np.where(act, ar, 0.0))
    axb = _fin_abs(np.where(act, br, 0.0))
    pf, qf = _mp_floats(p), _mp_floats(q)
    kappa = float(np.sum(axa * np.abs(_mp_floats(ga))) + np.sum(axb * np.abs(_mp_floats(gb))))
    dpk = _mp_floats([2 * v / p[k] if p[k] > 0 else v for k, v in enumerate(ga)])
    dqk = _mp_floats([2 * v / q[k] if q[k] > 0 else v for k, v in enumerate(gb)])
    kg_a = _js_kappa_grad_side(pf, qf, dpk, 0.0, axa, axb, omp, omq)
    kg_b = _js_kappa_grad_side(qf, pf, dqk, 0.0, axb, axa, omq, omp)
    with _workdps(dps) as mp:
        kgl = [mp.mpf(float(v)) for v in np.concatenate([kg_a, kg_b])]
        return Ref(js, ga + gb, mp.mpf(kappa), kgl)


# Sigmoid / probability-input family (issue 3, binary part): weighted BCE, focal loss,
# binary CE from probabilities, logit. mpmath, elementwise over broadcast inputs.
# ----------------------------------------------------------------------------------------------


def mp_weighted_sigmoid_binary_cross_entropy(
    x: npt.ArrayLike, t: npt.ArrayLike, pos_weight: npt.ArrayLike, dps: int = DEFAULT_DPS
) -> Ref:
    """(1 − t)·sp(x) + p_w·t·sp(−x); grad (1 − t)σ(x) − p_w·t·σ(−x) (PyTorch's pos_weight).

    Any real t. κ = |x·g|; κ_grad = (|1 − t| + p_w|t|)σ(x)σ(−x)|x| + (|1 − t|σ(x) +
    p_w|t|σ(−x)) (the two
    summands of the gradient are computed separately; with p_w = 1 the BCE row's min(...) form
    may be smaller, this one is the one the weighted form reaches).
    """
    with _workdps(dps) as mp:
        zero = mp.mpf(0)

        def one(xf: float, tf: float, wf: float) -> Ref:
            if math.isnan(xf) or math.isnan(tf):
                return Ref(mp.nan, mp.nan, zero, zero)
            s = _mp_sig(xf, mp)
            t, pw = mp.mpf(tf), mp.mpf(wf)
            a, b = 1 - t, pw * t
            value = _mul(a, s.sp, s.fin) + _mul(b, s.spn, s.fin)
            g = a * s.s - b * s.sn
            kappa = _mul(s.ax, abs(g), s.fin)
            kg = _mul((abs(a) + abs(b)) * s.ss, s.ax, s.fin) + abs(a) * s.s + abs(b) * s.sn
            return Ref(value, g, kappa, kg)

        return _mp_elementwise(one, x, t, pos_weight)


def mp_sigmoid_focal_loss(
    x: npt.ArrayLike,
    t: npt.ArrayLike,
    alpha: float | None = None,
    gamma: float = 2.0,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """α_t·(1 − p_t)^γ·BCE(x, t), 1 − p_t = tσ(−x) + (1 − t)σ(x), α_t = αt + (1 − α)(1 − t).

    grad = α_t w [(1 − t)σ(x) − tσ(−x) + γ(1 − 2t) r BCE], w = (1 − p_t)^γ,
    r = σ(x)σ(−x)/(1 − p_t). κ = |x·grad|; κ_grad = |x·∂grad/∂x| + α_t w (|(1 − t)σ(x) −
    tσ(−x)| bound min(σ + t, (1 − t)σ + tσ(−x)) + γ|1 − 2t| r BCE) (the magnitudes of the two
    summands, which can cancel for soft labels). ∂grad/∂x by mpmath's numerical
    differentiation at the working precision. At ±inf every field is the exact limit, κ = 0.
    Labels outside [0, 1] are allowed; where they make ``1 − p_t < 0`` the focal weight
    ``(1 − p_t)^γ`` is not real for ``γ > 0`` and every field is NaN (as optax's log-space
    form gives); ``γ = 0`` is the weight 1 there too.
    """
    with _workdps(dps) as mp:
        zero, one_ = mp.mpf(0), mp.mpf(1)
        gam = mp.mpf(gamma)

        def parts(xm: Any, t: Any) -> tuple[Any, Any, Any, Any]:
            s, sn = 1 / (1 + mp.exp(-xm)), 1 / (1 + mp.exp(xm))
            sp, spn = mp.log1p(mp.exp(-abs(xm))) + max(xm, zero), mp.log1p(mp.exp(-abs(xm)))
            spn = spn + max(-xm, zero)
            ce = (1 - t) * sp + t * spn
            q = t * sn + (1 - t) * s
            return s, sn, ce, q

        def one(xf: float, tf: float) -> Ref:
            if math.isnan(xf) or math.isnan(tf):
                return Ref(mp.nan, mp.nan, zero, zero)
            t = mp.mpf(tf)
            at = one_ if alpha is None else mp.mpf(alpha) * t + (1 - mp.mpf(alpha)) * (1 - t)
            if math.isinf(xf):
                # Wrong-side label mass c: the loss is c·inf·(c^γ) -> inf if c > 0, else 0.
                c = (1 - t) if xf > 0 else t
                if c < 0 and gam != 0:  # 1 - p_t = c < 0: (1 - p_t)^γ is not real
                    return Ref(mp.nan, mp.nan, zero, zero)
                # BCE = c·inf: the value is at·c^γ·c·inf (0 where c or at is 0).
                value = mp.sign(at * c) * mp.inf if c != 0 and at != 0 else zero
                g = zero if c == 0 else (at * c**gam * (1 if xf > 0 else -1) * c)
                # (1 - t)σ - tσ(-x) at +inf is 1 - t = c; at -inf it is -t = -c; r·ce -> 0.
                return Ref(value, g, zero, zero)
            xm = mp.mpf(xf)

            def grad(xv: Any) -> Any:
                s, sn, ce, q = parts(xv, t)
                w = q**gam if q > 0 else (one_ if gam == 0 else zero)
                r = s * sn / q
                return at * w * ((1 - t) * s - t * sn + gam * (1 - 2 * t) * r * ce)

            s, sn, ce, q = parts(xm, t)
            if q < 0 and gam != 0:
                return Ref(mp.nan, mp.nan, zero, zero)
            w = q**gam
            r = s * sn / q
            value = at * w * ce
            g = grad(xm)
            h = mp.diff(grad, xm)
            kappa = abs(xm * g)
            bce_mag = min(s + abs(t), abs(1 - t) * s + abs(t) * sn)
            kg = abs(xm * h) + abs(at) * w * (bce_mag + gam * abs(1 - 2 * t) * r * abs(ce))
            return Ref(value, g, kappa, kg)

        return _mp_elementwise(one, x, t)


def mp_binary_cross_entropy_probs(
    p: npt.ArrayLike, t: npt.ArrayLike, dps: int = DEFAULT_DPS
) -> Ref:
    """−t log p − (1 − t) log(1 − p) on probabilities, any real t; grad −t/p + (1 − t)/(1 − p).

    κ = |p·grad| (a relative perturbation of p); κ_grad = p·(|t|/p² + |1 − t|/(1 − p)²) +
    (|t|/p + |1 − t|/(1 − p)) (the magnitudes of the two summands of the gradient, which cancel
    near p = t). Zero coefficients remove their terms (0·log 0 = 0); a non-zero one on a zero
    argument gives an infinite value (of the coefficient's sign) and an infinite gradient (κ 0:
    exact).
    """
    with _workdps(dps) as mp:
        zero = mp.mpf(0)

        def one(pf: float, tf: float) -> Ref:
            if math.isnan(pf) or math.isnan(tf):
                return Ref(mp.nan, mp.nan, zero, zero)
            p, t = mp.mpf(pf), mp.mpf(tf)
            q, u = 1 - p, 1 - t
            if t != 0 and p == 0:  # -t·log 0 = sign(t)·inf
                return Ref(mp.sign(t) * mp.inf, -mp.sign(t) * mp.inf, zero, zero)
            if u != 0 and q == 0:
                return Ref(mp.sign(u) * mp.inf, mp.sign(u) * mp.inf, zero, zero)
            value = (-t * mp.log(p) if t != 0 else zero) + (-u * mp.log1p(-p) if u != 0 else zero)
            a = t / p if t != 0 else zero
            b = u / q if u != 0 else zero
            g = b - a
            h = (abs(t) / p**2 if t != 0 else zero) + (abs(u) / q**2 if u != 0 else zero)
            return Ref(value, g, abs(p * g), p * h + abs(a) + abs(b))

        return _mp_elementwise(one, p, t)


def mp_logit(p: npt.ArrayLike, dps: int = DEFAULT_DPS) -> Ref:
    """log(p/(1 − p)); grad 1/(p(1 − p)); κ = 1/(1 − p); κ_grad = |1 − 2p|/(p(1 − p)²)."""
    with _workdps(dps) as mp:
        zero = mp.mpf(0)

        def one(pf: float) -> Ref:
            if math.isnan(pf) or pf < 0 or pf > 1:
                return Ref(mp.nan, mp.nan, zero, zero)
            if pf in (0.0, 1.0):
                return Ref(-mp.inf if pf == 0 else mp.inf, mp.inf, zero, zero)
            p = mp.mpf(pf)
            q = 1 - p
            return Ref(mp.log(p) - mp.log1p(-p), 1 / (p * q), 1 / q, abs(1 - 2 * p) / (p * q**2))

        return _mp_elementwise(one, p)


def mp_categorical_cross_entropy_probs(
    p: npt.ArrayLike,
    t: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    where: npt.ArrayLike | None = None,
    dps: int = DEFAULT_DPS,
) -> Ref:
    """−Σ_k w_k t_k log p_k on ONE row of probabilities (used as given, not renormalized).

    Targets of both signs are scored as the difference of their halves (:func:`_mp_signed`).

    grad_k = −w_k t_k / p_k. κ = Σ_k w_k t_k (= Σ |p_k·grad_k|, a relative perturbation of
    every p_k); κ_grad_k = |p_k·∂grad_k/∂p_k| = w_k t_k / p_k = |grad_k| (each component is
    one quotient: it is scored relative to itself). A class with ``w_k t_k == 0`` or masked
    (``where`` False) contributes 0 to the value and its gradient is 0, even at ``p_k = 0``; a
    positive ``w_k t_k`` on ``p_k = 0`` gives value +inf and gradient −inf there (κ 0). A NaN
    in an unmasked p or t makes the row NaN.
    """
    pa = _as_row(p, "p")
    ta = np.broadcast_to(np.asarray(t, dtype=np.float64), pa.shape)
    if np.any(ta < 0):
        # Linear in the targets: a signed row is scored as the difference of its halves.
        with _workdps(dps) as mp:
            half = functools.partial(
                mp_categorical_cross_entropy_probs, pa, weights=weights, where=where, dps=dps
            )
            return _mp_signed(half, np.array(ta), mp)
    wa = (
        np.ones(pa.shape)
        if weights is None
        else np.broadcast_to(np.asarray(weights, dtype=np.float64), pa.shape)
    )
    act = _as_mask(where, pa.shape)
    with _workdps(dps) as mp:
        zero = mp.mpf(0)
        v = pa.shape[0]
        if any(act[k] and (math.isnan(pa[k]) or math.isnan(ta[k])) for k in range(v)):
            return Ref(mp.nan, [mp.nan] * v, zero, [zero] * v)
        value = zero
        kappa = zero
        grad: list[Any] = []
        for k in range(v):
            c = mp.mpf(float(wa[k])) * mp.mpf(float(ta[k]))
            if not act[k] or c == 0:
                grad.append(zero)
                continue
            kappa += c
            if pa[k] == 0:
                value = mp.inf
                grad.append(-mp.inf)
                continue
            pk = mp.mpf(float(pa[k]))
            if value != mp.inf:
                value -= c * mp.log(pk)
            grad.append(-c / pk)
        kg = [abs(g) if mp.isfinite(g) else zero for g in grad]
        if value == mp.inf:
            kappa = zero
        return Ref(value, grad, kappa, kg)


# ----------------------------------------------------------------------------------------------
# Softmax family (issue 3): focal loss and PolyLoss, mpmath, O(V) exponentials per evaluation
# (for V >= 100; the functions above form all V^2 ratios e^{x_j - x_k})
# ----------------------------------------------------------------------------------------------


def _mp_exclusive_sums(vals: list[Any], mp: Any) -> list[Any]:
    """``[Σ_{k≠j} vals_k for j]`` of non-negative terms, from prefix and suffix sums (no
    subtraction, so no cancellation)."""
    V = len(vals)
    pre = [mp.mpf(0)] * (V + 1)
    suf = [mp.mpf(0)] * (V + 1)
    for k in range(V):
        pre[k + 1] = pre[k] + vals[k]
        suf[V - 1 - k] = suf[V - k] + vals[V - 1 - k]
    return [pre[j] + suf[j + 1] for j in range(V)]


def _mp_focal_value_grad_linear(
    x: list[Any], a: list[Any], gamma: Any, eps: Any, kind: str, mp: Any
) -> tuple[Any, list[Any], list[Any]]:
    """Same quantities as :func:`_mp_focal_value_grad`, with ``e^{x_j - x_k} = E_j / E_k``
    (``E_j = e^{x_j - m}``) and the "all classes but one" sums as prefix + suffix sums of
    non-negative terms: O(V) exponentials and O(V) arithmetic per evaluation."""
    V = len(x)
    live = [k for k in range(V) if x[k] != -mp.inf]
    m = max(x[k] for k in live)
    E = [mp.exp(x[k] - m) if k in live else mp.mpf(0) for k in range(V)]
    others = _mp_exclusive_sums(E, mp)
    ratios = {k: others[k] / E[k] for k in live}
    p, q, value, c = _mp_focal_terms(ratios, a, gamma, eps, kind, V, mp)
    grad = [mp.mpf(0)] * V
    mag = [mp.mpf(0)] * V
    if kind == "focal":
        ac = [a[k] * c[k] for k in range(V)]
        A = mp.fsum(ac)
        R = _mp_exclusive_sums(ac, mp)
        for j in live:
            grad[j] = p[j] * R[j] - ac[j] * q[j]
            mag[j] = min(p[j] * A + ac[j], p[j] * R[j] + ac[j] * q[j])
    else:
        T = mp.fsum(a[k] for k in live)
        Tm = _mp_exclusive_sums([a[k] if k in live else mp.mpf(0) for k in range(V)], mp)
        Pm_plus = _mp_exclusive_sums([a[k] * p[k] for k in range(V)], mp)
        for j in live:
            Pm = Pm_plus[j] - a[j] * q[j]
            grad[j] = (Tm[j] - T * q[j]) + eps * p[j] * Pm
            mag[j] = min(T * p[j] + a[j], Tm[j] + T * q[j]) + abs(eps) * p[j] * (
                Pm_plus[j] + a[j] * q[j]
            )
    return value, grad, mag


def mp_softmax_focal_loss_linear(
    x: npt.ArrayLike,
    t: npt.ArrayLike,
    gamma: float = 2.0,
    dps: int = DEFAULT_DPS,
    *,
    kind: str = "focal",
    epsilon: float = 0.0,
) -> Ref:
    """:func:`mp_softmax_focal_loss` (``alpha=None``) / :func:`mp_poly_loss_cross_entropy`
    (``kind="poly"``) with the O(V)-per-evaluation core: O(V^2) instead of O(V^3) for the
    central-difference κ of the gradient, for rows with V >= 100. Same value, gradient and κ."""
    xr = _as_row(x)
    tr = _as_row(t, "t")
    V = xr.shape[0]
    with _workdps(dps) as mp:
        xs = [mp.mpf(float(v)) if np.isfinite(v) else -mp.inf for v in xr.tolist()]
        g_ = mp.mpf(gamma)
        eps = mp.mpf(epsilon)

        def half(th: FloatArray) -> Ref:
            a = [mp.mpf(float(th[k])) for k in range(V)]
            return _mp_focal_ref(_mp_focal_value_grad_linear, xs, a, g_, eps, kind, mp, dps)

        return _mp_signed(half, tr, mp) if np.any(tr < 0) else half(tr)


def _mp_focal_ref(value_grad: Any, xs, a, g_, eps, kind: str, mp: Any, dps: int) -> Ref:
    """Value, gradient and κ of a focal/poly row from ``value_grad``: the gradient's κ adds to
    its magnitudes central differences of the exact gradient (step 10^-(dps/3) relative)."""
    V = len(xs)
    value, grad, mag = value_grad(xs, a, g_, eps, kind, mp)
    kappa = mp.fsum(abs(xs[k] * grad[k]) for k in range(V) if grad[k] != 0)
    kg = list(mag)
    for k in range(V):
        if xs[k] == -mp.inf or xs[k] == 0:
            continue
        h = abs(xs[k]) * mp.mpf(10) ** (-(dps // 3))
        up = list(xs)
        dn = list(xs)
        up[k] += h
        dn[k] -= h
        gu = value_grad(up, a, g_, eps, kind, mp)[1]
        gd = value_grad(dn, a, g_, eps, kind, mp)[1]
        for j in range(V):
            kg[j] += abs(xs[k] * (gu[j] - gd[j]) / (2 * h))
    return Ref(value, grad, kappa, kg)

"""Losses from probabilities (binary_cross_entropy, categorical_cross_entropy) and logit/log_odds.

Accuracy against mpmath in condition-scaled ulps (the scorer of tests/test_accuracy.py) in
float32 and float64, each docstring's edge-case table row by row, the Keras/TF 1e-7 clip
compared, jit/vmap/grad/jvp/hessian, 16-bit inputs, trace-time argument errors and value
checks (eager ValueError, NaN under jit, jaxce.checked).

The default run scores a subsample of each grid (every edge kept); ``--run-slow`` scores all.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import _reference as ref
from jaxce._grid import REAL_BINARY_LABELS, TARGET_KINDS, softmax_grid
from tests.derivatives import derivative_check
from tests.test_accuracy import TINY, U, _cast, _errors

INF = math.inf
NAN = math.nan
bce = jaxce.binary_cross_entropy
cce = jaxce.categorical_cross_entropy

VALUE_BOUND, GRAD_BOUND = 4.0, 8.0


def _slow(request) -> bool:
    return bool(request.config.getoption("--run-slow"))


def _flush(a: np.ndarray, dtype: str) -> np.ndarray:
    """Cast to ``dtype`` (back in float64) with subnormals flushed to 0, as XLA:CPU reads them."""
    c = _cast(a, dtype)
    return np.where(np.abs(c) < TINY[dtype], 0.0, c)


# The probabilities where the usual formulas break: 0 and 1 exactly, the float32 and float64
# tails near 0 (down to the smallest normal) and near 1 (1 - 2^-24, 1 - 2^-53), Keras' 1e-7
# clip point on both sides, the logit's branch points 1/4 and 3/4, and p close to the labels.
_EDGE_P = [
    0.0,
    1.0,
    1e-300,
    1e-38,
    1e-30,
    2.0**-24,
    1e-7,
    0.1,
    0.25,
    0.3,
    0.49999,
    0.5,
    0.50001,
    0.7,
    0.75,
    0.9,
    1.0 - 1e-7,
    1.0 - 2.0**-24,
    1.0 - 2.0**-53,
]


def prob_grid(dtype: str, slow: bool) -> np.ndarray:
    """Probabilities as ``dtype`` represents them (float64 values), subnormals removed."""
    tails = np.concatenate([np.logspace(-300, -0.5, 80), 1.0 - np.logspace(-16, -0.5, 40)])
    if not slow:
        tails = tails[::4]
    g = _cast(np.concatenate([tails, _EDGE_P]), dtype)
    return np.unique(g[(g == 0) | (g >= TINY[dtype])])


def _labels(slow: bool) -> np.ndarray:
    """Labels in [0, 1] and outside it (the loss is affine in its label)."""
    if not slow:
        return REAL_BINARY_LABELS
    rng = np.random.default_rng(7)
    return np.concatenate([REAL_BINARY_LABELS, rng.uniform(size=8), [0.3, 0.7, 1e-30]])


@functools.partial(jax.jit, static_argnums=(0,))
def _value_and_grad(fn, p, t):
    value, vjp = jax.vjp(lambda a: fn(a, t), p)
    (grad,) = vjp(jnp.ones_like(value))
    return value, grad


def _np(a) -> np.ndarray:
    return np.asarray(a, np.float64)


# --------------------------------------------------------------------------------------------
# Accuracy against mpmath (condition-scaled ulps)
# --------------------------------------------------------------------------------------------


def _bce_call(p, t):
    return jaxce.binary_cross_entropy(p, t)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_accuracy(dtype, x64, request):
    slow = _slow(request)
    ps, ts = np.meshgrid(prob_grid(dtype, slow), _labels(slow), indexing="ij")
    ps, ts = ps.ravel(), _flush(ts.ravel(), dtype)
    v, g = _value_and_grad(_bce_call, jnp.asarray(ps, dtype), jnp.asarray(ts, dtype))
    r = ref.mp_binary_cross_entropy_probs(ps, ts)
    ev, eg = _errors(_np(v), r.value, r.kappa, dtype), _errors(_np(g), r.grad, r.kappa_grad, dtype)
    print(f"binary_cross_entropy {dtype}: value {ev.max():.3g}, grad {eg.max():.3g}")
    assert ev.max() <= VALUE_BOUND, (ps[ev.argmax()], ts[ev.argmax()], ev.max())
    assert eg.max() <= GRAD_BOUND, (ps[eg.argmax()], ts[eg.argmax()], eg.max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_gradient_is_relative_accurate_near_p_equals_t(dtype, x64):
    """The rule's (p - t)/(p(1 - p)): exactly 0 at p = t, accurate relative to itself nearby.

    Autodiff of the value forms -t/p + (1 - t)/(1 - p), the difference of two quotients of
    size ~1/p that cancel near p = t; it is checked here to fail the same bound.
    """
    u = U[dtype]
    t = _cast(np.array([0.3, 0.7, 0.1, 1e-3, 0.999]), dtype)
    steps = np.array([0.0, 1.0, -1.0, 3.0, -7.0, 64.0])
    ps = _cast((t[:, None] * (1.0 + steps[None, :] * u)).ravel(), dtype)
    ts = np.repeat(t, steps.size)
    pj, tj = jnp.asarray(ps, dtype), jnp.asarray(ts, dtype)
    _, g = _value_and_grad(_bce_call, pj, tj)
    naive = jax.jit(lambda p, t: -t / p + (1 - t) / (1 - p))(pj, tj)
    exact = np.array([float(a) for a in ref.mp_binary_cross_entropy_probs(ps, ts).grad])
    scale = np.where(exact == 0, 1.0, np.abs(exact))
    rel = np.abs(_np(g) - exact) / (u * scale)
    rel_naive = np.abs(_np(naive) - exact) / (u * scale)
    assert np.all(_np(g)[ps == ts] == 0.0)
    assert rel.max() <= 8.0, (ps[rel.argmax()], ts[rel.argmax()], rel.max())
    assert rel_naive.max() > 1e3  # the cancelling form loses every digit here


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logit_accuracy(dtype, x64, request):
    ps = prob_grid(dtype, _slow(request))
    x = jnp.asarray(ps, dtype)
    v = jax.jit(jaxce.logit)(x)
    g = jax.jit(jax.vmap(jax.grad(jaxce.logit)))(x)
    r = ref.mp_logit(ps)
    ev, eg = _errors(_np(v), r.value, r.kappa, dtype), _errors(_np(g), r.grad, r.kappa_grad, dtype)
    print(f"logit {dtype}: value {ev.max():.3g}, grad {eg.max():.3g}")
    assert ev.max() <= VALUE_BOUND, (ps[ev.argmax()], ev.max())
    assert eg.max() <= GRAD_BOUND, (ps[eg.argmax()], eg.max())


def _categorical_batch(dtype: str, slow: bool, kind: str):
    """Every row of the softmax grid (p = softmax(x), cast) padded to one width: one call.

    Returns ``(names, p, labels, where, weights)``; padding classes are masked (``where``
    False). Integer labels, or the soft label kinds stacked (every kind with ``--run-slow``).
    """
    classes = (2, 3, 10, 100, 1000) if slow else (3, 10, 100)
    kinds = ["int"] if kind == "int" else (
        list(TARGET_KINDS) if slow else ["smoothed", "sparse-dirichlet", "advantage", "signed"]
    )  # fmt: skip
    width = max(classes)
    names, ps, labels, masks = [], [], [], []
    for batch in softmax_grid(classes=classes, rows=2 if slow else 1, seed=0):
        v = batch.num_classes
        p = _flush(ref.np_softmax(batch.x, batch.where).value, dtype)
        where = np.ones_like(p, bool) if batch.where is None else batch.where
        for k in kinds:
            for i in range(p.shape[0]):
                names.append(f"{batch.name} {k} row {i}")
                ps.append(np.pad(p[i], (0, width - v)))
                masks.append(np.pad(where[i], (0, width - v)))
                if k == "int":
                    labels.append(batch.y[i])
                else:
                    labels.append(np.pad(_flush(batch.soft[k][i], dtype), (0, width - v)))
    weights = _cast(np.random.default_rng(3).uniform(0.0, 3.0, size=width), dtype)
    return names, np.array(ps), np.array(labels), np.array(masks), weights


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("labels_kind", ["int", "soft"])
def test_categorical_cross_entropy_accuracy(labels_kind, dtype, x64, request):
    """Integer labels with class weights, soft labels without (both ways with --run-slow)."""
    slow = _slow(request)
    names, p, labels, where, weights = _categorical_batch(dtype, slow, labels_kind)
    integer = labels_kind == "int"
    lab = jnp.asarray(labels, jnp.int32 if integer else dtype)
    worst_v, worst_g = (0.0, ""), (0.0, "")
    for w in [weights, None] if slow else [weights if integer else None]:
        cw = None if w is None else jnp.asarray(w, dtype)
        v, g = _cce_value_and_grad(jnp.asarray(p, dtype), lab, jnp.asarray(where), cw)
        v, g = _np(v), _np(g)
        for i, name in enumerate(names):
            t = np.eye(p.shape[1])[labels[i]] if integer else labels[i]
            if w is not None:
                # The weighted target w_k·t_k is formed first; where it is subnormal XLA flushes
                # it to 0 (docs/numerics.md's subnormal rule, applied to that intermediate): the
                # class is then absent, also at p_k = 0 (gradient 0 instead of -inf).
                t = np.where(np.abs(w * t) < TINY[dtype], 0.0, t)
            r = ref.mp_categorical_cross_entropy_probs(p[i], t, w, where[i])
            ev = float(np.max(_errors(v[i], r.value, r.kappa, dtype)))
            eg = float(np.max(_errors(g[i], r.grad, r.kappa_grad, dtype)))
            worst_v = max(worst_v, (ev, name))
            worst_g = max(worst_g, (eg, name))
    print(f"categorical_cross_entropy {labels_kind} {dtype}: value {worst_v}, grad {worst_g}")
    assert worst_v[0] <= VALUE_BOUND, worst_v
    assert worst_g[0] <= GRAD_BOUND, worst_g


@jax.jit
def _cce_value_and_grad(p, labels, where, weights):
    value, vjp = jax.vjp(lambda a: cce(a, labels, where=where, weights=weights), p)
    (grad,) = vjp(jnp.ones_like(value))
    return value, grad


# --------------------------------------------------------------------------------------------
# Edge-case tables, row by row
# --------------------------------------------------------------------------------------------


def _entropy(t: float) -> float:
    return -t * math.log(t) - (1 - t) * math.log1p(-t)


# binary_cross_entropy's table: (p, t, w, value, d/dp, d2/dp2)
BINARY_EDGES = {
    "p=0, t=0": (0.0, 0.0, 1.0, 0.0, 1.0, 1.0),
    "p=0, t=1": (0.0, 1.0, 1.0, INF, -INF, INF),
    "p=0, soft t": (0.0, 0.3, 1.0, INF, -INF, INF),
    "p=1, t=1": (1.0, 1.0, 1.0, 0.0, -1.0, 1.0),
    "p=1, t=0": (1.0, 0.0, 1.0, INF, INF, INF),
    "p=1, soft t": (1.0, 0.3, 1.0, INF, INF, INF),
    "p=t soft": (0.3, 0.3, 1.0, _entropy(0.3), 0.0, 1 / 0.21),
    "p=1e-30, t=1 (Keras: 16.12, 0)": (1e-30, 1.0, 1.0, 69.07755278982137, -1e30, INF),
    "p=1e-30, t=0": (1e-30, 0.0, 1.0, 1e-30, 1.0, 1.0),
    "weights=0 on an infinite loss": (0.0, 1.0, 0.0, 0.0, 0.0, 0.0),
    "weighted p=0, t=0": (0.0, 0.0, 2.5, 0.0, 2.5, 2.5),
    "weighted p=1, t=1": (1.0, 1.0, 2.5, 0.0, -2.5, 2.5),
    "subnormal p (float32) as p=0": (1e-45, 1.0, 1.0, INF, -INF, INF),
}


@jax.jit
@jax.vmap
def _bce_row(p, t, w):
    """Value, d/dp and d2/dp2 of one element (vmapped over the table: one compile)."""

    def f(a):
        return bce(a[None], t[None], weights=w[None])[0]

    return f(p), jax.grad(f)(p), jax.hessian(f)(p)


@functools.cache
def _binary_table():
    p, t, w = (jnp.array([r[i] for r in BINARY_EDGES.values()], jnp.float32) for i in range(3))
    with jax.debug_nans(True):
        return [_np(a) for a in _bce_row(p, t, w)]


@pytest.mark.parametrize("row", list(BINARY_EDGES))
def test_binary_cross_entropy_edge_table(row):
    i = list(BINARY_EDGES).index(row)
    *_, value, grad, hess = BINARY_EDGES[row]
    v, g, h = _binary_table()
    np.testing.assert_allclose(v[i], value, rtol=1e-6)
    np.testing.assert_allclose(g[i], grad, rtol=1e-6)
    np.testing.assert_allclose(h[i], hess, rtol=1e-6)


def test_binary_cross_entropy_nan_rows():
    """NaN prob: ValueError eagerly (not in [0, 1]); a NaN label only in strict mode (otherwise
    NaN for its element, as any NaN input); NaN value and gradient under jit."""
    with pytest.raises(ValueError, match="`probs` holds nan"):
        bce(jnp.array([0.5, NAN]), jnp.array([1.0, 1.0]))
    with jaxce.target_checks(), pytest.raises(ValueError, match="`labels` holds nan"):
        bce(jnp.array([0.5, 0.5]), jnp.array([1.0, NAN]))
    assert np.isnan(bce(jnp.array([0.5, 0.5]), jnp.array([1.0, NAN]))[1])
    p, t = jnp.array([0.5, NAN, 0.5]), jnp.array([1.0, 1.0, NAN])
    v = jax.jit(lambda a, b: bce(a, b).sum())(p, t)
    out = jax.jit(bce)(p, t)
    assert np.isnan(out[1:]).all()
    assert np.isfinite(out[0])
    gg = jax.jit(jax.grad(lambda a: bce(a, t).sum()))(p)
    assert np.isnan(gg[1:]).all()
    assert float(gg[0]) == -2.0
    assert np.isnan(v)


# logit's table: (p, value, derivative)
LOGIT_EDGES = {
    "0": (0.0, -INF, INF),
    "1": (1.0, INF, INF),
    "1/2": (0.5, 0.0, 4.0),
    "1 - 2**-24": (1.0 - 2.0**-24, math.log(2.0**24 - 1), 1 / ((1 - 2.0**-24) * 2.0**-24)),
    "1e-30": (1e-30, math.log(1e-30) - math.log1p(-1e-30), 1e30),
    "NaN": (NAN, NAN, NAN),
    "<0": (-0.5, NAN, NAN),
    ">1": (1.5, NAN, NAN),
}


@jax.jit
@jax.vmap
def _logit_row(p):
    return jaxce.logit(p), jax.grad(jaxce.logit)(p), jax.hessian(jaxce.logit)(p)


@functools.cache
def _logit_table():
    p = jnp.array([r[0] for r in LOGIT_EDGES.values()], jnp.float32)
    eager = _np(jaxce.logit(p))  # the public call (its own jit) agrees with the vmapped one
    return [eager, *(_np(a) for a in _logit_row(p))]


@pytest.mark.parametrize("row", list(LOGIT_EDGES))
def test_logit_edge_table(row):
    i = list(LOGIT_EDGES).index(row)
    _, value, deriv = LOGIT_EDGES[row]
    eager, v, g, _ = _logit_table()
    np.testing.assert_allclose(eager[i], value, rtol=1e-6)
    np.testing.assert_allclose(v[i], value, rtol=1e-6)
    np.testing.assert_allclose(g[i], deriv, rtol=1e-6)


def test_log_odds_is_logit():
    assert jaxce.log_odds is jaxce.logit


def test_logit_second_derivative_stays_finite_where_true_one_is():
    """d2/dp2 logit = -(1 - 2p)/(p(1 - p))^2, from the rule's output: finite at p = 1e-19
    (about -1e38 in float32), where the quotient rule's (p(1 - p))^2 underflows."""
    p = jnp.array([1e-19, 0.5, 0.25, 1.0 - 2.0**-24, 0.0, 1.0], jnp.float32)
    h = _np(_logit_row(p)[2])
    pf = _np(p)
    with np.errstate(divide="ignore"):
        exact = -(1 - 2 * pf) / (pf * (1 - pf)) ** 2
    np.testing.assert_allclose(h[:4], exact[:4], rtol=1e-5)
    assert h[4] == -INF
    assert h[5] == INF


def _row(*a):
    return jnp.array([a])


# categorical_cross_entropy's table: (p, labels, where, weights, value, d/dp)
CATEGORICAL_EDGES = {
    "zero target on p_k=0": (
        _row(0.5, 0.5, 0.0), _row(1.0, 0.0, 0.0), None, None, math.log(2.0), [-2.0, 0.0, 0.0]
    ),
    "positive target on p_k=0": (
        _row(1.0, 0.0, 0.0), _row(0.0, 1.0, 0.0), None, None, INF, [0.0, -INF, 0.0]
    ),
    "p_y=1 (integer label)": (
        _row(1.0, 0.0, 0.0), jnp.array([0]), None, None, 0.0, [-1.0, 0.0, 0.0]
    ),
    "p_y=1, weighted": (
        _row(1.0, 0.0, 0.0), jnp.array([0]), None, jnp.array([2.0, 3.0, 4.0]), 0.0,
        [-2.0, 0.0, 0.0],
    ),
    "masked class": (
        _row(0.5, 0.3, 0.2), _row(0.5, 0.0, 0.5), _row(True, True, False), None,
        0.5 * math.log(2.0), [-1.0, 0.0, 0.0],
    ),
    "target class masked": (
        _row(0.5, 0.3, 0.2), jnp.array([2]), _row(True, True, False), None, 0.0, [0.0] * 3
    ),
    "all masked": (
        _row(0.5, 0.3, 0.0), _row(0.2, 0.3, 0.5), _row(False, False, False), None, 0.0, [0.0] * 3
    ),
    "NaN prob on a masked class": (
        _row(0.5, NAN, 0.5), _row(1.0, 0.0, 0.0), _row(True, False, True), None,
        math.log(2.0), [-2.0, 0.0, 0.0],
    ),
    "zero weight on a positive target at p_k=0": (
        _row(1.0, 0.0, 0.0), _row(0.5, 0.5, 0.0), None, jnp.array([1.0, 0.0, 1.0]), 0.0,
        [-0.5, 0.0, 0.0],
    ),
}  # fmt: skip


@jax.jit
@jax.vmap
def _cce_row(p, labels, where, weights):
    """Value and gradient of one example (vmapped over the table's rows)."""

    def f(a):
        return cce(a[None], labels[None], where=where[None], weights=weights)[0]

    return jax.value_and_grad(f)(p)


@functools.cache
def _categorical_table():
    """The table in two calls (integer and probability labels); None masks/weights as ones."""
    out = {}
    for integer in (True, False):
        rows = [k for k, r in CATEGORICAL_EDGES.items() if (r[1].ndim == 1) == integer]
        cols = list(zip(*(CATEGORICAL_EDGES[k][:4] for k in rows), strict=True))
        p = jnp.concatenate(cols[0])
        labels = jnp.concatenate(cols[1])
        where = jnp.concatenate([jnp.ones((1, 3), bool) if m is None else m for m in cols[2]])
        w = jnp.stack([jnp.ones(3) if c is None else c for c in cols[3]])
        with jax.debug_nans(True):
            v, g = _cce_row(p, labels, where, w)
        out.update({k: (_np(v)[i], _np(g)[i]) for i, k in enumerate(rows)})
    return out


@pytest.mark.parametrize("row", list(CATEGORICAL_EDGES))
def test_categorical_cross_entropy_edge_table(row):
    *_, value, grad = CATEGORICAL_EDGES[row]
    v, g = _categorical_table()[row]
    np.testing.assert_allclose(v, value, rtol=1e-6)
    np.testing.assert_allclose(g, grad, rtol=1e-6)


def test_categorical_integer_labels_equal_one_hot():
    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.dirichlet(np.ones(5), size=4), jnp.float32)
    y = jnp.array([0, 4, 2, 2])
    cw = jnp.array([1.0, 2.0, 0.5, 0.0, 3.0])

    @jax.jit
    def both(a):
        oh = jax.nn.one_hot(y, 5)
        return [
            jax.value_and_grad(lambda b, lab=lab: cce(b, lab, weights=cw).sum())(a)
            for lab in (y, oh)
        ] + [cce(a.reshape(4, 1, 5), y, axis=(1, 2)), cce(a, y)]

    (vi, gi), (vo, go), tuple_axis, flat = both(p)
    np.testing.assert_array_equal(vi, vo)
    np.testing.assert_array_equal(gi, go)
    # Tuple axis: the integer label is the flat (row-major) index over the class axes.
    np.testing.assert_allclose(tuple_axis, flat, rtol=1e-7)


# --------------------------------------------------------------------------------------------
# Keras/TF clipping: the gradient is flattened to 0 below 1e-7; jaxce's is not
# --------------------------------------------------------------------------------------------


def _keras_style_bce(p, t, eps=1e-7):
    """Keras 3 ``binary_crossentropy`` on probabilities: clip to [eps, 1 - eps], then the logs."""
    pc = jnp.clip(p, eps, 1.0 - eps)
    return -(t * jnp.log(pc) + (1.0 - t) * jnp.log(1.0 - pc))


@jax.jit
def _keras_and_jaxce(p, t, pc, tc):
    def vg(f, a):
        return jax.value_and_grad(lambda b: f(b).sum())(a)

    return (
        vg(lambda a: _keras_style_bce(a, t), p),
        vg(lambda a: bce(a, t), p),
        vg(lambda a: -(tc * jnp.log(jnp.clip(a, 1e-7, 1 - 1e-7))), pc),
        vg(lambda a: cce(a, tc), pc),
        _keras_style_bce(p, t),
        bce(p, t),
    )


def test_keras_clip_flattens_the_gradient_below_1e_7():
    p = jnp.array([1e-12, 1e-9, 5e-8, 2e-7, 1e-3], jnp.float32)
    pc = jnp.array([[1e-9, 1.0 - 1e-9]], jnp.float32)
    tc = jnp.array([[1.0, 0.0]])
    (_, g_keras), (_, g_ours), (_, gk), (_, g), v_keras, v_ours = _keras_and_jaxce(
        p, jnp.ones_like(p), pc, tc
    )
    g_keras, g_ours, v_keras, v_ours = _np(g_keras), _np(g_ours), _np(v_keras), _np(v_ours)
    below = _np(p) < 1e-7
    assert np.all(g_keras[below] == 0.0)  # the clip: no signal to raise p
    np.testing.assert_allclose(g_ours, -1.0 / _np(p), rtol=1e-6)  # exact -1/p everywhere
    np.testing.assert_allclose(g_keras[~below], g_ours[~below], rtol=1e-5)
    # And the loss saturates at -log(1e-7) = 16.118 under the clip; jaxce's is -log p.
    np.testing.assert_allclose(v_keras[below], -math.log(np.float32(1e-7)), rtol=1e-5)
    np.testing.assert_allclose(v_ours, -np.log(_np(p)), rtol=1e-6)
    # Categorical: the same clip, the same flat gradient; jaxce's -t/p.
    assert float(gk[0, 0]) == 0.0
    np.testing.assert_allclose(float(g[0, 0]), -1e9, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Transformations: jit, vmap, grad, jvp, hessian
# --------------------------------------------------------------------------------------------


def test_binary_transforms(x64, request):
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.uniform(0.05, 0.95, size=(3, 4)), jnp.float64)
    t = jnp.asarray(rng.uniform(0.05, 0.95, size=(3, 4)), jnp.float64)  # FD steps stay in [0, 1]
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=(4,)), jnp.float64)

    def f(a, b):
        return bce(a, b, weights=w)

    np.testing.assert_allclose(jax.jit(f)(p, t), f(p, t), rtol=1e-15)
    np.testing.assert_allclose(jax.vmap(f)(p, t), f(p, t), rtol=1e-15)
    # Derivatives in p, t and w (orders 1 and 2, forward and reverse) against differences.
    derivative_check(lambda a, b, c: bce(a, b, weights=c), (p, t, w), full=_slow(request))

    # jvp == grad, and the Hessian at the extremes: finite wherever the loss is.
    @jax.jit
    def extremes(pe, te):
        _, jv = jax.jvp(lambda a: bce(a, te), (pe,), (jnp.ones_like(pe),))
        gr = jax.grad(lambda a: bce(a, te).sum())(pe)
        return jv, gr, jax.hessian(lambda a: bce(a, te).sum())(pe)

    pe = jnp.array([0.0, 1.0, 1e-300, 1.0 - 2.0**-53, 0.5, 1e-30])
    te = jnp.array([0.0, 1.0, 0.0, 1.0, 0.5, 1e-3])
    jv, gr, h = extremes(pe, te)
    np.testing.assert_array_equal(jv, gr)
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(np.diag(h)[:4], 1.0, rtol=1e-15)


def test_logit_transforms(x64, request):
    p = jnp.array([0.1, 0.3, 0.5, 0.8, 0.6], jnp.float64)
    derivative_check(jaxce.logit, (p,), full=_slow(request))
    np.testing.assert_array_equal(jax.vmap(jaxce.logit)(p), jaxce.logit(p))
    # logit inverts sigmoid (in the range where sigmoid is well conditioned).
    x = jnp.array([-30.0, -3.0, 0.0, 2.0, 3.0])
    np.testing.assert_allclose(jaxce.logit(jaxce.sigmoid(x)), x, rtol=1e-14)


def test_categorical_transforms(x64, request):
    rng = np.random.default_rng(2)
    p = jnp.asarray(rng.dirichlet(np.ones(4), size=3), jnp.float64)
    t = jnp.asarray(rng.dirichlet(np.ones(4), size=3), jnp.float64)
    cw = jnp.array([1.0, 0.5, 2.0, 1.5])
    mask = jnp.array([[True, True, True, False]] * 3)

    def f(a, b):
        return cce(a, b, where=mask, weights=cw)

    np.testing.assert_allclose(jax.jit(f)(p, t), f(p, t), rtol=1e-15)
    np.testing.assert_allclose(jax.vmap(lambda a, b: cce(a, b, weights=cw))(p, t),
                               cce(p, t, weights=cw), rtol=1e-15)  # fmt: skip
    if _slow(request):
        # Against finite differences to order 2. The default run scores the gradient
        # against mpmath (test_categorical_cross_entropy_accuracy) and the Hessian below.
        derivative_check(f, (p, t))
    # Hessian diag(w t / p^2); a zero target on p = 0 contributes nothing, even to the Hessian.
    pe = jnp.array([[0.5, 0.5, 0.0]])
    te = jnp.array([[0.25, 0.75, 0.0]])
    h = jax.jit(jax.hessian(lambda a: cce(a, te).sum()))(pe)[0, :, 0, :]
    np.testing.assert_allclose(h, np.diag([1.0, 3.0, 0.0]), rtol=1e-15)


# --------------------------------------------------------------------------------------------
# 16-bit inputs
# --------------------------------------------------------------------------------------------


@jax.jit
def _all_three(p, t):
    """Each function's value and gradient, from inputs of any float dtype."""
    y = jnp.array([1])
    return (
        jax.value_and_grad(lambda a: bce(a, t).sum())(p),
        jax.value_and_grad(lambda a: cce(a, y).sum())(p[:, 1:3]),
        jax.value_and_grad(lambda a: jaxce.logit(a).sum())(p[0, 1:3]),
        bce(p, t),
        cce(p[:, 1:3], y),
        jaxce.logit(p[0, 1:3]),
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16bit_inputs(dtype):
    p = jnp.array([[0.0, 0.25, 0.5, 1.0]], dtype)
    t = jnp.array([[0.0, 1.0, 0.5, 1.0]], dtype)
    (_, g), (_, gc), (_, gl), out, c, lg = _all_three(p, t)
    assert out.dtype == jnp.float32
    assert c.dtype == jnp.float32
    assert lg.dtype == dtype
    assert g.dtype == gc.dtype == gl.dtype == dtype
    # Computed in float32 on the exactly upcast inputs.
    (_, g32), (_, gc32), _, out32, c32, lg32 = _all_three(
        p.astype(jnp.float32), t.astype(jnp.float32)
    )
    np.testing.assert_array_equal(out, out32)
    np.testing.assert_array_equal(c, c32)
    np.testing.assert_array_equal(_np(lg), _np(lg32.astype(dtype)))
    np.testing.assert_array_equal(_np(g), [[1.0, -4.0, 0.0, -1.0]])
    np.testing.assert_array_equal(_np(g), _np(g32.astype(dtype)))
    np.testing.assert_array_equal(_np(gc), _np(gc32.astype(dtype)))


# --------------------------------------------------------------------------------------------
# Trace-time argument errors
# --------------------------------------------------------------------------------------------


def test_binary_argument_errors():
    p = jnp.full((4, 3), 0.5)
    with pytest.raises(TypeError, match="`probs` must be a floating-point"):
        bce(jnp.zeros((4, 3), jnp.int32), p)
    with pytest.raises(ValueError, match=r"`labels` has shape \(3,\)"):
        bce(p, jnp.ones(3))  # rank differs: no silent broadcast
    with pytest.raises(ValueError, match=r"`weights` has shape \(4,\).*\(4, 3\)"):
        bce(p, p, weights=jnp.ones(4))
    with pytest.raises(TypeError, match="`weights` must be a floating-point"):
        bce(p, p, weights=jnp.ones(3, jnp.int32))


def test_categorical_argument_errors():
    p = jnp.full((4, 3), 1 / 3)
    with pytest.raises(TypeError, match="`probs` must be a floating-point"):
        cce(jnp.zeros((4, 3), jnp.int32), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"`labels` has shape \(3,\).*one class index"):
        cce(p, jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="`labels` must be integer class indices or floating"):
        cce(p, jnp.zeros((4, 3), bool))
    with pytest.raises(ValueError, match=r"`weights` has shape \(4,\); expected one weight"):
        cce(p, jnp.zeros(4, jnp.int32), weights=jnp.ones(4))
    with pytest.raises(ValueError, match="axis"):
        cce(p, jnp.zeros(4, jnp.int32), axis=2)
    with pytest.raises(ValueError, match="where"):
        cce(p, jnp.zeros(4, jnp.int32), where=jnp.ones((2, 3), bool))


def test_logit_argument_errors():
    with pytest.raises(TypeError, match="`p` must be a floating-point"):
        jaxce.logit(jnp.array([0, 1]))


# --------------------------------------------------------------------------------------------
# Value checks: eager ValueError, NaN (value and gradient) under jit, jaxce.checked
# --------------------------------------------------------------------------------------------


def test_binary_value_checks_eager_and_jit():
    p = jnp.array([0.2, 1.5, 0.7])
    t = jnp.array([1.0, 1.0, -0.5])
    good = jnp.array([0.2, 0.5, 0.7])
    ones = jnp.ones(3)
    neg_w = jnp.array([-1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"`probs` holds 1.5 at position \(1,\)"):
        bce(p, ones)
    with jaxce.target_checks(), pytest.raises(ValueError, match=r"`labels` holds -0.5 at posi"):
        bce(good, t)
    with pytest.raises(ValueError, match=r"`weights` holds -1.0 at position \(0,\)"):
        bce(good, ones, weights=neg_w)
    # Under jit: NaN for the bad element only, in the value and the gradient (a label outside
    # [0, 1] in strict mode only: a fresh function traced inside the block).
    with jaxce.target_checks():
        strict = jax.jit(lambda *a: _bce_vg(*a))
        for a, b, w, bad in ((p, ones, ones, 1), (good, t, ones, 2), (good, ones, neg_w, 0)):
            out, g = strict(a, b, w)
            ok = np.arange(3) != bad
            assert np.isnan(out[bad])
            assert np.isnan(g[bad])
            assert np.isfinite(_np(out)[ok]).all()
            assert np.isfinite(_np(g)[ok]).all()
    err, _ = jaxce.checked(lambda a: bce(a, ones))(p)
    assert "`probs` holds" in err.get()
    # By default a label outside [0, 1] is the exact (affine) extension, under jit too.
    out, g = _bce_value_and_grad_weighted(good, t, ones)
    expected = -t * jnp.log(good) - (1 - t) * jnp.log1p(-good)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert np.isfinite(_np(g)).all()


def _bce_vg(p, t, w):
    value, vjp = jax.vjp(lambda a: bce(a, t, weights=w), p)
    return value, vjp(jnp.ones_like(value))[0]


_bce_value_and_grad_weighted = jax.jit(_bce_vg)


def test_categorical_value_checks_eager_and_jit():
    p = jnp.array([[0.2, 0.8], [1.5, -0.5]])
    y = jnp.array([0, 1])
    good = jnp.array([[0.2, 0.8], [0.5, 0.5]])
    w1 = jnp.ones(2)
    with pytest.raises(ValueError, match=r"`probs` holds 1.5 at position \(1, 0\)"):
        cce(p, y)
    with pytest.raises(ValueError, match=r"`labels` holds 2 at position \(1,\)"):
        cce(good, jnp.array([0, 2]))
    with jaxce.target_checks(), pytest.raises(ValueError, match=r"`labels` holds 1.2"):
        cce(good, jnp.array([[1.2, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(  # by default the exact (linear) extension
        cce(good, jnp.array([[1.2, 0.0], [0.0, 1.0]]))[0], -1.2 * math.log(0.2), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"`weights` holds -1.0"):
        cce(good, y, weights=jnp.array([1.0, -1.0]))
    # A masked class is not checked.
    np.testing.assert_allclose(cce(p, y, where=jnp.array([[True, True], [False, False]]))[0],
                               -math.log(0.2), rtol=1e-6)  # fmt: skip
    # Under jit the bad example is NaN, value and every gradient component; the other is not.
    # A bad probability on a zero-target class (the second case) poisons its example too.
    p0 = jnp.array([[0.2, 0.8], [1.5, 0.5]])
    for a, lab in ((p, y), (p0, y), (good, jnp.array([0, 2]))):
        out, g = _cce_value_and_grad(a, lab, None, w1)
        assert np.isnan(out[1])
        assert np.isnan(g[1]).all()
        assert np.isfinite(out[0])
        assert np.isfinite(g[0]).all()
    with jaxce.target_checks():  # strict: a soft label outside [0, 1] poisons its example
        out = jax.jit(lambda a, b: cce(a, b))(good, jnp.array([[0.5, 0.5], [-0.5, 1.5]]))
    assert np.isnan(out[1])
    assert np.isfinite(out[0])
    out, _ = _cce_value_and_grad(good, jnp.array([[0.5, 0.5], [-0.5, 1.5]]), None, w1)
    np.testing.assert_allclose(out[1], -1.5 * math.log(0.5) + 0.5 * math.log(0.5), rtol=1e-6)
    # A negative class weight: every example is NaN (0·NaN stays NaN, as in jaxce.safe_mul).
    out, _ = _cce_value_and_grad(good, y, None, jnp.array([1.0, -1.0]))
    assert np.isnan(out).all()
    err, _ = jaxce.checked(lambda a: cce(a, y))(p)
    assert "`probs` holds" in err.get()

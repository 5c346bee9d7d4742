"""Sigmoid losses (``jaxce._sigmoid``): binary cross-entropy (edge table, optax parity, bad
input, compiled memory, its keyword extensions) and the sigmoid focal loss.

Edge tables row by row, accuracy against mpmath in condition-scaled ulps (the project scorer of
tests/test_accuracy.py), optax parity, transforms, 16-bit inputs, argument and value checks.
optax's own test classes for both losses run in tests/test_optax_suite.py.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxce
from jaxce import _reference as ref
from jaxce._grid import REAL_BINARY_LABELS, elementwise_grid
from tests.derivatives import derivative_check
from tests.test_accuracy import TINY, _cast, _errors

INF = math.inf

# (logit, label, value, d/dlogit)
EDGES = [
    (INF, 1.0, 0.0, 0.0),
    (INF, 0.0, INF, 1.0),
    (-INF, 0.0, 0.0, 0.0),
    (-INF, 1.0, INF, -1.0),
    (INF, 0.5, INF, 0.5),
    (0.0, 1.0, math.log(2.0), -0.5),
    (1e4, 0.0, 1e4, 1.0),
    (-40.0, 0.0, math.exp(-40.0), math.exp(-40.0)),  # tiny loss, relative precision
    (40.0, 1.0, math.exp(-40.0), -math.exp(-40.0)),
]


@pytest.mark.parametrize(("x", "t", "value", "grad"), EDGES)
def test_edge_table(x, t, value, grad):
    """pytorch #49844 / optax: NaN at +-inf logits; jaxce gives the exact limits."""
    fn = jaxce.sigmoid_binary_cross_entropy
    xa, ta = jnp.array([x], jnp.float32), jnp.array([t], jnp.float32)
    with jax.debug_nans(True):
        v = fn(xa, ta)
        g = jax.jit(jax.grad(lambda a: jnp.sum(fn(a, ta))))(xa)
    np.testing.assert_allclose(float(v[0]), value, rtol=1e-6)
    np.testing.assert_allclose(float(g[0]), grad, rtol=1e-6)


def test_optax_is_nan_at_infinite_logits():
    x, t = jnp.array([INF, -INF]), jnp.array([1.0, 0.0])
    assert np.all(np.isnan(optax.sigmoid_binary_cross_entropy(x, t)))
    assert np.all(jaxce.sigmoid_binary_cross_entropy(x, t) == 0)


def test_matches_optax_on_ordinary_inputs():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 5)) * 4).astype(np.float32)
    t = rng.uniform(size=(8, 5)).astype(np.float32)
    np.testing.assert_allclose(
        jaxce.sigmoid_binary_cross_entropy(x, t),
        optax.sigmoid_binary_cross_entropy(x, t),
        rtol=2e-6,
        atol=1e-7,
    )
    g1 = jax.grad(lambda a: jnp.sum(jaxce.sigmoid_binary_cross_entropy(a, t)))(x)
    np.testing.assert_allclose(g1, jax.nn.sigmoid(x) - t, rtol=1e-5, atol=1e-7)


def test_hessian_is_sigmoid_derivative():
    x = jnp.array([-3.0, 0.0, 2.5, 1e4, -1e4])
    t = jnp.array([0.2, 1.0, 0.0, 1.0, 0.0])
    h = jax.hessian(lambda a: jnp.sum(jaxce.sigmoid_binary_cross_entropy(a, t)))(x)
    s = jax.nn.sigmoid(x)
    np.testing.assert_allclose(h, jnp.diag(s * (1 - s)), atol=1e-7)


def test_labels_broadcast_same_rank_only():
    x = jnp.zeros((4, 3))
    out = jaxce.sigmoid_binary_cross_entropy(x, jnp.ones((1, 3)))
    assert out.shape == (4, 3)
    with pytest.raises(ValueError, match=r"`labels` has shape \(3,\)"):
        jaxce.sigmoid_binary_cross_entropy(x, jnp.ones(3))
    with pytest.raises(TypeError, match="`logits` must be a floating-point"):
        jaxce.sigmoid_binary_cross_entropy(jnp.zeros(3, jnp.int32), jnp.ones(3))


def test_summed_value_and_gradient_store_at_most_one_array():
    """The value ends in one select, so XLA:CPU's reduction of a summed loss reads one stored
    array: compiled temp memory of ``value_and_grad(sum of the loss)`` is at most one array of
    the logits' size. Written as ``(1 - t)·softplus(x) + t·softplus(-x)``, the reduction took
    the products into itself and stored their four operands (4 arrays; optax's stores 3)."""
    shape = (64, 4096)
    x = jnp.linspace(-30.0, 30.0, shape[0] * shape[1]).reshape(shape)
    t = jnp.abs(jnp.sin(x))
    f = jax.jit(
        jax.value_and_grad(
            lambda a, b: jaxce.sigmoid_binary_cross_entropy(a, b).sum(), argnums=(0, 1)
        )
    )
    temp = f.lower(x, t).compile().memory_analysis().temp_size_in_bytes
    assert temp <= 4 * shape[0] * shape[1], temp


bce = jaxce.sigmoid_binary_cross_entropy
focal = jaxce.sigmoid_focal_loss


def _value_and_grad(fn, x, t, **kw):
    value, grad = _jit_value_and_grad(functools.partial(fn, **kw), x, t)
    return np.asarray(value, np.float64), np.asarray(grad, np.float64)


@functools.partial(jax.jit, static_argnums=(0,))
def _jit_value_and_grad(fn, x, t):
    value, vjp = jax.vjp(lambda a: fn(a, t), x)
    (grad,) = vjp(jnp.ones_like(value))
    return value, grad


# --------------------------------------------------------------------------------------------
# sigmoid_binary_cross_entropy extensions
# --------------------------------------------------------------------------------------------

# (logit, label, pos_weight, weight, value, d/dlogit)
BCE_EXT_EDGES = [
    (INF, 1.0, 2.0, 1.0, 0.0, 0.0),
    (INF, 0.0, 2.0, 1.0, INF, 1.0),
    (-INF, 0.0, 2.0, 1.0, 0.0, 0.0),
    (-INF, 1.0, 2.0, 1.0, INF, -2.0),
    (-INF, 1.0, 0.0, 1.0, 0.0, 0.0),  # pos_weight 0 removes the positive term
    (INF, 0.0, 1.0, 0.0, 0.0, 0.0),  # weight 0 on an infinite loss
    (0.0, 1.0, 3.0, 2.0, 6 * math.log(2.0), -3.0),
    (40.0, 1.0, 5.0, 1.0, 5 * math.exp(-40.0), -5 * math.exp(-40.0)),
]


@functools.cache
def _bce_ext_table():
    """Every row of the table in one call (one compile), under debug_nans."""
    x, t, pw, w = (jnp.array(c) for c in list(zip(*BCE_EXT_EDGES, strict=True))[:4])
    with jax.debug_nans(True):
        return _value_and_grad(bce, x, t, pos_weight=pw, weights=w)


@pytest.mark.parametrize("row", range(len(BCE_EXT_EDGES)))
def test_bce_extensions_edge_table(row):
    _, _, _, _, value, grad = BCE_EXT_EDGES[row]
    v, g = _bce_ext_table()
    np.testing.assert_allclose(v[row], value, rtol=1e-6)
    np.testing.assert_allclose(g[row], grad, rtol=1e-6)


def test_bce_defaults_take_the_plain_path():
    x = jnp.array([[-3.0, 0.5, INF]])
    t = jnp.array([[0.2, 1.0, 1.0]])
    plain = bce(x, t)
    np.testing.assert_array_equal(bce(x, t, label_smoothing=0.0), plain)
    np.testing.assert_array_equal(bce(x, t, label_smoothing=0), plain)
    # The extended path with neutral values gives the same numbers.
    np.testing.assert_array_equal(bce(x, t, pos_weight=1.0, weights=1.0), plain)
    np.testing.assert_array_equal(bce(x, t, label_smoothing=jnp.float32(0.0)), plain)


def test_bce_pos_weight_broadcasts_over_last_axis():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 3)) * 3, jnp.float32)
    t = jnp.asarray(rng.uniform(size=(5, 3)), jnp.float32)
    pw = jnp.array([0.5, 2.0, 10.0])
    w = jnp.asarray(rng.uniform(size=(5, 1)), jnp.float32)
    got = bce(x, t, pos_weight=pw, weights=w)
    xn, tn, pn, wn = (np.asarray(a, np.float64) for a in (x, t, pw, w))
    expected = wn * ((1 - tn) * np.logaddexp(0, xn) + pn[None] * tn * np.logaddexp(0, -xn))
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)


def test_bce_label_smoothing_is_keras_rule():
    x = jnp.array([-2.0, 0.0, 3.0, INF])
    t = jnp.array([0.0, 1.0, 1.0, 1.0])
    eps = 0.1
    ts = t * (1 - eps) + eps / 2
    smoothed = bce(x, t, label_smoothing=eps)
    np.testing.assert_allclose(smoothed[:3], bce(x, ts)[:3], rtol=1e-6)
    # Smoothing moves mass to the other side: an infinite logit now costs +inf.
    assert smoothed[3] == INF


def test_bce_temperature_and_soft_cap():
    x = jnp.array([-30.0, -1.0, 0.5, 20.0, INF, -INF])
    t = jnp.array([0.0, 0.3, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(bce(x, t, temperature=2.0), bce(x / 2.0, t), rtol=1e-6)
    c = 5.0
    capped = jnp.where(jnp.isneginf(x), x, c * jnp.tanh(x / c))
    np.testing.assert_allclose(bce(x, t, logit_soft_cap=c), bce(capped, t), rtol=1e-6)
    g = jax.grad(lambda a: jnp.sum(bce(a, t, logit_soft_cap=c, temperature=2.0)))(x)
    assert np.all(np.isfinite(g))
    assert float(g[4]) == 0.0  # +inf capped to c: derivative 0
    with pytest.raises(ValueError, match="`temperature` holds"):
        bce(x, t, temperature=0.0)
    with pytest.raises(ValueError, match="`logit_soft_cap` holds"):
        bce(x, t, logit_soft_cap=-1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pos_weight", [0.25, 3.0])
def test_bce_pos_weight_accuracy(dtype, pos_weight, x64):
    """Labels in [0, 1] and outside it (the loss is affine in its label)."""
    xs, ts = np.meshgrid(elementwise_grid(), REAL_BINARY_LABELS, indexing="ij")
    xs, ts = _cast(xs.ravel(), dtype), _cast(ts.ravel(), dtype)
    pw = np.full_like(xs, pos_weight)
    v, g = _value_and_grad(
        bce, jnp.asarray(xs, dtype), jnp.asarray(ts, dtype), pos_weight=jnp.asarray(pw, dtype)
    )
    r = ref.mp_weighted_sigmoid_binary_cross_entropy(xs, ts, pw)
    ev, eg = _errors(v, r.value, r.kappa, dtype), _errors(g, r.grad, r.kappa_grad, dtype)
    # p_w·softplus(-x) whose softplus factor is subnormal (XLA flushes it): exact value below
    # p_w·tiny may come back as 0 (the subnormal rule of docs/numerics.md, applied to the factor).
    flushed = (np.abs(np.array([float(a) for a in r.value])) < pos_weight * TINY[dtype]) & (v == 0)
    ev = np.where(flushed, 0.0, ev)
    gflushed = (np.abs(np.array([float(a) for a in r.grad])) < pos_weight * TINY[dtype]) & (g == 0)
    eg = np.where(gflushed, 0.0, eg)
    print(f"bce pos_weight={pos_weight} {dtype}: value {ev.max():.3g}, grad {eg.max():.3g}")
    assert ev.max() <= 4.0, (xs[ev.argmax()], ts[ev.argmax()], ev.max())
    assert eg.max() <= 8.0, (xs[eg.argmax()], ts[eg.argmax()], eg.max())


def test_bce_extension_argument_errors():
    x = jnp.zeros((4, 3))
    t = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"`pos_weight` has shape \(4,\).*\(4, 3\)"):
        bce(x, t, pos_weight=jnp.ones(4))
    with pytest.raises(ValueError, match=r"`weights` has shape \(2, 3\)"):
        bce(x, t, weights=jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="`pos_weight` must be a floating-point"):
        bce(x, t, pos_weight=jnp.ones(3, jnp.int32))
    with pytest.raises(TypeError, match="`label_smoothing` must be a real scalar"):
        bce(x, t, label_smoothing=jnp.ones(3))


def test_bce_extension_value_checks_eager_and_jit():
    x = jnp.zeros((2, 3))
    t = jnp.full((2, 3), 0.5)
    bad_pw = jnp.array([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match=r"`pos_weight` holds -1.0 at position \(1,\)"):
        bce(x, t, pos_weight=bad_pw)
    with pytest.raises(ValueError, match="`weights` holds"):
        bce(x, t, weights=jnp.array([[1.0], [-2.0]]))
    with pytest.raises(ValueError, match=r"`label_smoothing` holds 1\.5"):
        bce(x, t, label_smoothing=1.5)
    out = jax.jit(lambda p: bce(x, t, pos_weight=p))(bad_pw)
    assert np.isnan(out[:, 1]).all()
    assert np.isfinite(out[:, [0, 2]]).all()
    out = jax.jit(lambda e: bce(x, t, label_smoothing=e))(1.5)
    assert np.isnan(out).all()
    err, _ = jaxce.checked(lambda p: bce(x, t, pos_weight=p))(bad_pw)
    assert "`pos_weight` holds" in err.get()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_bce_extensions_16bit(dtype):
    x = jnp.array([[-3.0, 0.5, 7.0]], dtype)
    t = jnp.array([[0.0, 1.0, 0.3]], dtype)
    out = bce(x, t, pos_weight=jnp.array([1.0, 2.0, 3.0], dtype), label_smoothing=0.1)
    assert out.dtype == jnp.float32
    g = jax.grad(lambda a: jnp.sum(bce(a, t, pos_weight=2.0, temperature=2.0)))(x)
    assert g.dtype == dtype
    ref32 = bce(x.astype(jnp.float32), t.astype(jnp.float32), pos_weight=jnp.array([1.0, 2, 3]),
                label_smoothing=0.1)  # fmt: skip
    np.testing.assert_allclose(out, ref32, rtol=1e-6)


def test_bce_extensions_transforms(x64, request):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 4)) * 3, jnp.float64)
    t = jnp.asarray(rng.uniform(size=(3, 4)), jnp.float64)
    pw = jnp.array([1.0, 2.0, 0.5, 4.0])

    def f(a, b):
        return bce(a, b, pos_weight=pw, label_smoothing=0.05, temperature=1.5)

    np.testing.assert_allclose(jax.jit(f)(x, t), f(x, t), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(x, t), f(x, t), rtol=1e-6)
    if request.config.getoption("--run-slow"):
        # Against finite differences to order 2 (every mode). The default run checks the
        # gradient and the (diagonal) Hessian against their closed forms below.
        derivative_check(lambda a: f(a, t), (x,))

    @jax.jit
    def grad_and_hessian_diagonal(a):
        grad = jax.grad(lambda b: jnp.sum(f(b, t)))
        return grad(a), jax.jvp(grad, (a,), (jnp.ones_like(a),))[1]

    g, hd = (np.asarray(o) for o in grad_and_hessian_diagonal(x))
    xs = np.asarray(x) / 1.5
    ts = 0.95 * np.asarray(t) + 0.025
    pwn = np.asarray(pw)
    sig, sig_neg = 1 / (1 + np.exp(-xs)), 1 / (1 + np.exp(xs))
    np.testing.assert_allclose(g, ((1 - ts) * sig - pwn * ts * sig_neg) / 1.5, rtol=1e-12)
    np.testing.assert_allclose(hd, ((1 - ts) + pwn * ts) * sig * sig_neg / 1.5**2, rtol=1e-12)
    h = jax.jit(jax.hessian(lambda a: jnp.sum(f(a, t[:1]))))(jnp.array([[1e4, -1e4, INF, -INF]]))
    assert np.all(np.isfinite(h))


# --------------------------------------------------------------------------------------------
# sigmoid_focal_loss
# --------------------------------------------------------------------------------------------

# (logit, label, alpha, gamma, value, d/dlogit)
FOCAL_EDGES = [
    (INF, 1.0, None, 2.0, 0.0, 0.0),
    (-INF, 0.0, None, 0.5, 0.0, 0.0),
    (INF, 0.0, None, 2.0, INF, 1.0),
    (-INF, 1.0, 0.25, 2.0, INF, -0.25),
    (INF, 0.25, None, 0.5, INF, 0.75**1.5),  # soft label at +inf: finite gradient
    (100.0, 1.0, None, 0.5, 0.0, 0.0),  # underflows to 0 in float32 (exact ~ e^-150)
    (0.0, 1.0, None, 2.0, 0.25 * math.log(2.0), -0.25 * 0.5 + 2 * -0.25 * math.log(2.0) * 0.5),
    (0.0, 1.0, 0.25, 0.0, 0.25 * math.log(2.0), -0.125),  # gamma 0: alpha-weighted BCE
]


def _focal_scalar_value_and_grad(x, t, alpha, gamma):
    """Value and d/dlogit of one element; ``alpha`` None or a traced scalar, ``gamma`` traced."""
    v, g = jax.value_and_grad(lambda a: focal(a[None], t[None], alpha=alpha, gamma=gamma)[0])(x)
    return v, g


_focal_rows_alpha = jax.jit(jax.vmap(_focal_scalar_value_and_grad))
_focal_rows_no_alpha = jax.jit(
    jax.vmap(lambda x, t, g: _focal_scalar_value_and_grad(x, t, None, g))
)


@functools.cache
def _focal_table():
    """Every row of the table (two compiles: with and without alpha), under debug_nans."""
    v, g = np.zeros(len(FOCAL_EDGES)), np.zeros(len(FOCAL_EDGES))
    rows = np.arange(len(FOCAL_EDGES))
    has_alpha = np.array([r[2] is not None for r in FOCAL_EDGES])
    x, t, _, gamma, _, _ = (np.array([r[i] for r in FOCAL_EDGES]) for i in range(6))
    alpha = np.array([0.0 if r[2] is None else r[2] for r in FOCAL_EDGES])
    with jax.debug_nans(True):
        for sel, fn, extra in (
            (has_alpha, _focal_rows_alpha, (alpha,)),
            (~has_alpha, _focal_rows_no_alpha, ()),
        ):
            args = (x[sel], t[sel], *(a[sel] for a in extra), gamma[sel])
            out = fn(*(jnp.asarray(a, jnp.float32) for a in args))
            v[rows[sel]], g[rows[sel]] = (np.asarray(o, np.float64) for o in out)
    return v, g


@pytest.mark.parametrize("row", range(len(FOCAL_EDGES)))
def test_focal_edge_table(row):
    """optax #1267 / optax 0.2.8: NaN at +inf with label 1; jaxce gives exact limits."""
    _, _, _, _, value, grad = FOCAL_EDGES[row]
    v, g = _focal_table()
    np.testing.assert_allclose(v[row], value, rtol=1e-6)
    np.testing.assert_allclose(g[row], grad, rtol=1e-6, atol=1e-30)


def test_focal_optax_is_nan_where_jaxce_is_exact():
    x, t = jnp.array([INF]), jnp.array([1.0])
    theirs, ours = jax.jit(
        lambda a, b: (optax.losses.sigmoid_focal_loss(a, b, gamma=0.5), focal(a, b, gamma=0.5))
    )(x, t)
    assert np.isnan(theirs).all()
    assert float(ours[0]) == 0.0


@jax.jit
def _gamma_zero_paths(x, t, traced_gamma):
    """The literal gamma = 0.0 (the BCE path, also inside jit) beside BCE, and a traced 0."""
    a = jnp.float32(0.3)
    at = (1 - a) + (2 * a - 1) * t  # alpha_t = alpha t + (1 - alpha)(1 - t), fewest roundings
    return (
        focal(x, t, gamma=0.0),
        bce(x, t),
        focal(x, t, gamma=0.0, alpha=0.3),
        jaxce.safe_mul(at, bce(x, t)),
        focal(x, t, gamma=traced_gamma),
        jax.grad(lambda b: jnp.sum(focal(b, t, gamma=0.0)))(x),
        jax.grad(lambda b: jnp.sum(bce(b, t)))(x),
    )


def test_focal_gamma_zero_is_exactly_weighted_bce():
    rng = np.random.default_rng(3)
    x = jnp.asarray(np.concatenate([rng.normal(size=20) * 10, [INF, -INF, 1e4]]), jnp.float32)
    t = jnp.asarray(rng.uniform(size=23), jnp.float32)
    t = t.at[20].set(1.0).at[21].set(0.0)
    f0, b, fa, ab, traced, gf, gb = _gamma_zero_paths(x, t, jnp.float32(0.0))
    np.testing.assert_array_equal(f0, b)
    np.testing.assert_array_equal(fa, ab)
    np.testing.assert_array_equal(focal(x, t, gamma=0.0), b)  # eager: the same path
    # A traced gamma = 0 runs the focal rule: equal to rounding.
    np.testing.assert_allclose(traced, b, rtol=3e-7)
    np.testing.assert_allclose(gf, gb, rtol=1e-7, atol=0)


OPTAX_CONFIGS = ((None, 2.0), (0.25, 2.0), (0.6, 0.5), (None, 1.0))


@jax.jit
def _focal_and_optax(x, t):
    """Values and gradients of jaxce and optax for every config, in one compiled program."""
    out = []
    for alpha, gamma in OPTAX_CONFIGS:
        for fn in (focal, optax.losses.sigmoid_focal_loss):
            f = functools.partial(fn, alpha=alpha, gamma=gamma)
            out.append((f(x, t), jax.grad(lambda a, f=f: jnp.sum(f(a, t)))(x)))
    return out


def test_focal_matches_optax_on_ordinary_inputs():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(6, 5)) * 4, jnp.float32)
    t = jnp.asarray(rng.uniform(size=(6, 5)), jnp.float32)
    out = _focal_and_optax(x, t)
    for i, config in enumerate(OPTAX_CONFIGS):
        (ours, go), (theirs, gt) = out[2 * i], out[2 * i + 1]
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-7, err_msg=str(config))
        np.testing.assert_allclose(go, gt, rtol=2e-4, atol=1e-6, err_msg=str(config))


def test_focal_derivatives_wrt_labels_alpha_gamma(x64, request):
    x = jnp.array([2.0, -1.0, 0.3], jnp.float64)
    t = jnp.array([0.3, 0.8, 0.5], jnp.float64)
    derivative_check(
        lambda a, b, al, g: focal(a, b, alpha=al, gamma=g),
        (x, t, jnp.float64(0.3), jnp.float64(1.5)),
        full=request.config.getoption("--run-slow"),
    )


HESSIAN_X = jnp.array([INF, -INF, 1e4, -1e4, 100.0, -100.0, 75.0, 0.0, INF, 30.0])
HESSIAN_T = jnp.array([1.0, 0.0, 1.0, 0.0, 0.9, 0.1, 1.0, 0.5, 0.3, 1.0])


@jax.jit
def _focal_derivatives_at_extremes(gamma):
    def f(a):
        return jnp.sum(focal(a, HESSIAN_T, gamma=gamma, alpha=0.25))

    _, jv = jax.jvp(lambda a: focal(a, HESSIAN_T, gamma=gamma), (HESSIAN_X,),
                    (jnp.ones_like(HESSIAN_X),))  # fmt: skip
    return jax.grad(f)(HESSIAN_X), jax.hessian(f)(HESSIAN_X), jv


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 1.5, 2.0])
def test_focal_finite_hessian_at_extremes(gamma):
    """gamma < 2: the naive (1 - p_t)^gamma has an infinite derivative where 1 - p_t = 0."""
    with jax.debug_nans(True):  # outputs of the compiled program: no NaN anywhere
        g, h, jv = _focal_derivatives_at_extremes(jnp.float32(gamma))
    assert np.all(np.isfinite(g))
    assert np.all(np.isfinite(h))
    assert np.all(np.isfinite(jv))


FOCAL_CONFIGS = [(None, 2.0), (0.25, 0.5), (None, 0.0), (0.75, 1.0)]


@jax.jit
def _focal_accuracy_kernel(x, t, gamma, alpha=None):
    value, vjp = jax.vjp(lambda a: focal(a, t, alpha=alpha, gamma=gamma), x)
    (grad,) = vjp(jnp.ones_like(value))
    return value, grad


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("alpha", "gamma"), FOCAL_CONFIGS)
def test_focal_accuracy(alpha, gamma, dtype, x64, request):
    slow = request.config.getoption("--run-slow")
    grid = elementwise_grid()
    if not slow:
        grid = grid[::3]  # a third of the logits (still ±inf, ±1e8, tails) by default
        grid = np.unique(np.concatenate([grid, [-np.inf, np.inf, 0.0, 88.0, -88.0, 1e8, -1e8]]))
    xs, ts = np.meshgrid(grid, REAL_BINARY_LABELS, indexing="ij")
    xs, ts = _cast(xs.ravel(), dtype), _cast(ts.ravel(), dtype)
    x, t = jnp.asarray(xs, dtype), jnp.asarray(ts, dtype)
    if gamma == 0:  # the literal 0.0: the (alpha-weighted) BCE path users get
        v, g = _value_and_grad(focal, x, t, alpha=alpha, gamma=gamma)
    else:  # traced alpha and gamma: one compile per dtype serves these configs
        g_ = jnp.asarray(gamma, dtype)
        out = (
            _focal_accuracy_kernel(x, t, g_)
            if alpha is None
            else _focal_accuracy_kernel(x, t, g_, jnp.asarray(alpha, dtype))
        )
        v, g = (np.asarray(o, np.float64) for o in out)
    a = None if alpha is None else float(np.asarray(alpha, np.dtype(dtype)))
    r = ref.mp_sigmoid_focal_loss(xs, ts, a, gamma, dps=40)
    ev, eg = _errors(v, r.value, r.kappa, dtype), _errors(g, r.grad, r.kappa_grad, dtype)
    print(f"focal alpha={alpha} gamma={gamma} {dtype}: value {ev.max():.3g}, grad {eg.max():.3g}")
    assert ev.max() <= 4.0, (xs[ev.argmax()], ts[ev.argmax()], ev.max())
    assert eg.max() <= 8.0, (xs[eg.argmax()], ts[eg.argmax()], eg.max())


def test_focal_argument_and_value_checks():
    x, t = jnp.zeros(3), jnp.full(3, 0.5)
    with pytest.raises(TypeError, match="`gamma` must be a real scalar"):
        focal(x, t, gamma=jnp.ones(2))
    with pytest.raises(TypeError, match="`alpha` must be a real scalar"):
        focal(x, t, alpha=jnp.ones(2))
    with pytest.raises(ValueError, match=r"`gamma` holds -1\.0"):
        focal(x, t, gamma=-1.0)
    with pytest.raises(ValueError, match=r"`alpha` holds 2\.0"):
        focal(x, t, alpha=2.0)
    with jaxce.target_checks(), pytest.raises(ValueError, match=r"`labels` holds 1.5 at posi"):
        focal(x, jnp.array([0.5, 1.5, 0.0]))
    with pytest.raises(ValueError, match=r"`labels` has shape \(2,\)"):
        focal(x, jnp.ones(2))
    with pytest.raises(TypeError, match="`logits` must be a floating-point"):
        focal(jnp.zeros(3, jnp.int32), t)
    assert np.isnan(jax.jit(lambda g: focal(x, t, gamma=g))(-1.0)).all()
    assert np.isnan(jax.jit(lambda a: focal(x, t, alpha=a))(2.0)).all()
    # A label outside [0, 1] is the exact extension by default (x = 0: 1 - p_t = 1/2, finite),
    # NaN under jit in strict mode.
    assert np.isfinite(jax.jit(focal)(x, jnp.array([0.5, 1.5, 0.0]))).all()
    with jaxce.target_checks():  # read at trace time: a function traced inside the block
        out = jax.jit(lambda a, b: focal(a, b))(x, jnp.array([0.5, 1.5, 0.0]))
    assert np.isnan(out[1])
    assert np.isfinite(np.asarray(out)[[0, 2]]).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_focal_16bit(dtype):
    x = jnp.array([-3.0, 0.5, 7.0, 60.0], dtype)
    t = jnp.array([0.0, 1.0, 0.3, 1.0], dtype)
    out = focal(x, t, gamma=0.5)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(
        out, focal(x.astype(jnp.float32), t.astype(jnp.float32), gamma=0.5)
    )
    g = jax.grad(lambda a: jnp.sum(focal(a, t)))(x)
    assert g.dtype == dtype
    assert np.all(np.isfinite(np.asarray(g, np.float32)))


def test_focal_jit_vmap():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(4, 3)) * 5, jnp.float32)
    t = jnp.asarray(rng.uniform(size=(4, 3)), jnp.float32)
    f = lambda a, b: focal(a, b, alpha=0.25, gamma=1.5)  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(x, t), f(x, t), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(x, t), f(x, t), rtol=1e-6)

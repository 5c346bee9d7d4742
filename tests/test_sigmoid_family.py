"""sigmoid_binary_cross_entropy keyword extensions and sigmoid_focal_loss.

Edge tables row by row, accuracy against mpmath in condition-scaled ulps (the project scorer of
tests/test_accuracy.py), optax parity and optax's own test classes, transforms, 16-bit inputs,
argument and value checks.
"""

from __future__ import annotations

import importlib.util
import io
import math
import pathlib
import types
import unittest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxce
from jaxce import _reference as ref
from jaxce._grid import BINARY_LABELS, elementwise_grid
from tests.test_accuracy import TINY, _cast, _errors

INF = math.inf
bce = jaxce.sigmoid_binary_cross_entropy
focal = jaxce.sigmoid_focal_loss


def _value_and_grad(fn, x, t, **kw):
    value = jax.jit(lambda a, b: fn(a, b, **kw))(x, t)
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b, **kw))))(x, t)
    return np.asarray(value, np.float64), np.asarray(grad, np.float64)


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


@pytest.mark.parametrize(("x", "t", "pw", "w", "value", "grad"), BCE_EXT_EDGES)
def test_bce_extensions_edge_table(x, t, pw, w, value, grad):
    kw = {"pos_weight": jnp.array([pw]), "weights": jnp.array([w])}
    xa, ta = jnp.array([x]), jnp.array([t])
    with jax.debug_nans(True):
        v, g = _value_and_grad(bce, xa, ta, **kw)
    np.testing.assert_allclose(v[0], value, rtol=1e-6)
    np.testing.assert_allclose(g[0], grad, rtol=1e-6)


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
    expected = w * ((1 - t) * jax.nn.softplus(x) + pw[None] * t * jax.nn.softplus(-x))
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)


def test_bce_label_smoothing_is_keras_rule():
    x = jnp.array([-2.0, 0.0, 3.0, INF])
    t = jnp.array([0.0, 1.0, 1.0, 1.0])
    eps = 0.1
    ts = t * (1 - eps) + eps / 2
    np.testing.assert_allclose(
        bce(x[:3], t[:3], label_smoothing=eps), bce(x[:3], ts[:3]), rtol=1e-6
    )
    # Smoothing moves mass to the other side: an infinite logit now costs +inf.
    assert bce(x, t, label_smoothing=eps)[3] == INF


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
    xs, ts = np.meshgrid(elementwise_grid(), BINARY_LABELS, indexing="ij")
    xs, ts = _cast(xs.ravel(), dtype), _cast(ts.ravel(), dtype)
    pw = np.full_like(xs, pos_weight)
    v, g = _value_and_grad(
        bce, jnp.asarray(xs, dtype), jnp.asarray(ts, dtype), pos_weight=jnp.asarray(pw, dtype)
    )
    r = ref.mp_weighted_sigmoid_binary_cross_entropy(xs, ts, pw)
    ev, eg = _errors(v, r.value, r.kappa, dtype), _errors(g, r.grad, r.kappa_grad, dtype)
    # p_w·softplus(-x) whose softplus factor is subnormal (XLA flushes it): exact value below
    # p_w·tiny may come back as 0 (the subnormal rule of NUMERICS.md, applied to the factor).
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


def test_bce_extensions_transforms(x64):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 4)) * 3, jnp.float64)
    t = jnp.asarray(rng.uniform(size=(3, 4)), jnp.float64)
    pw = jnp.array([1.0, 2.0, 0.5, 4.0])

    def f(a, b):
        return bce(a, b, pos_weight=pw, label_smoothing=0.05, temperature=1.5)

    np.testing.assert_allclose(jax.jit(f)(x, t), f(x, t), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(x, t), f(x, t), rtol=1e-6)
    check_grads(lambda a: f(a, t), (x,), order=2, modes=["fwd", "rev"])
    h = jax.hessian(lambda a: jnp.sum(f(a, t[:1])))(jnp.array([[1e4, -1e4, INF, -INF]]))
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


@pytest.mark.parametrize(("x", "t", "alpha", "gamma", "value", "grad"), FOCAL_EDGES)
def test_focal_edge_table(x, t, alpha, gamma, value, grad):
    """optax #1267 / optax 0.2.8: NaN at +inf with label 1; jaxce gives exact limits."""
    xa, ta = jnp.array([x]), jnp.array([t])
    with jax.debug_nans(True):
        v, g = _value_and_grad(focal, xa, ta, alpha=alpha, gamma=gamma)
    np.testing.assert_allclose(v[0], value, rtol=1e-6)
    np.testing.assert_allclose(g[0], grad, rtol=1e-6, atol=1e-30)


def test_focal_optax_is_nan_where_jaxce_is_exact():
    x, t = jnp.array([INF]), jnp.array([1.0])
    theirs = optax.losses.sigmoid_focal_loss(x, t, gamma=0.5)
    assert np.isnan(theirs).all()
    assert float(focal(x, t, gamma=0.5)[0]) == 0.0


def test_focal_gamma_zero_is_exactly_weighted_bce():
    rng = np.random.default_rng(3)
    x = jnp.asarray(np.concatenate([rng.normal(size=20) * 10, [INF, -INF, 1e4]]), jnp.float32)
    t = jnp.asarray(rng.uniform(size=23), jnp.float32)
    t = t.at[20].set(1.0).at[21].set(0.0)
    np.testing.assert_array_equal(focal(x, t, gamma=0.0), bce(x, t))
    a = jnp.float32(0.3)
    at = (1 - a) + (2 * a - 1) * t  # alpha_t = alpha t + (1 - alpha)(1 - t), fewest roundings
    np.testing.assert_array_equal(focal(x, t, gamma=0.0, alpha=0.3), jaxce.safe_mul(at, bce(x, t)))
    # A traced gamma = 0 runs the focal rule: equal to rounding.
    np.testing.assert_allclose(jax.jit(lambda g: focal(x, t, gamma=g))(0.0), bce(x, t), rtol=3e-7)
    gf = jax.grad(lambda a: jnp.sum(focal(a, t, gamma=0.0)))(x)
    gb = jax.grad(lambda a: jnp.sum(bce(a, t)))(x)
    np.testing.assert_allclose(gf, gb, rtol=1e-7, atol=0)


def test_focal_matches_optax_on_ordinary_inputs():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(6, 5)) * 4, jnp.float32)
    t = jnp.asarray(rng.uniform(size=(6, 5)), jnp.float32)
    for alpha, gamma in [(None, 2.0), (0.25, 2.0), (0.6, 0.5), (None, 1.0)]:
        ours = focal(x, t, alpha=alpha, gamma=gamma)
        theirs = optax.losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma)
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-7)
        go = jax.grad(lambda a: jnp.sum(focal(a, t, alpha=alpha, gamma=gamma)))(x)  # noqa: B023
        gt = jax.grad(
            lambda a: jnp.sum(optax.losses.sigmoid_focal_loss(a, t, alpha=alpha, gamma=gamma))  # noqa: B023
        )(x)
        np.testing.assert_allclose(go, gt, rtol=2e-4, atol=1e-6)


def test_focal_derivatives_wrt_labels_alpha_gamma(x64):
    x = jnp.array([2.0, -1.0, 0.3], jnp.float64)
    t = jnp.array([0.3, 0.8, 0.5], jnp.float64)
    check_grads(
        lambda a, b, al, g: focal(a, b, alpha=al, gamma=g),
        (x, t, jnp.float64(0.3), jnp.float64(1.5)),
        order=2,
        modes=["fwd", "rev"],
    )


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 1.5, 2.0])
def test_focal_finite_hessian_at_extremes(gamma):
    """gamma < 2: the naive (1 - p_t)^gamma has an infinite derivative where 1 - p_t = 0."""
    x = jnp.array([INF, -INF, 1e4, -1e4, 100.0, -100.0, 75.0, 0.0, INF, 30.0])
    t = jnp.array([1.0, 0.0, 1.0, 0.0, 0.9, 0.1, 1.0, 0.5, 0.3, 1.0])
    with jax.debug_nans(True):
        g = jax.grad(lambda a: jnp.sum(focal(a, t, gamma=gamma, alpha=0.25)))(x)
    if True:  # the Hessian's unselected branches may hold NaN; the result must not
        h = jax.hessian(lambda a: jnp.sum(focal(a, t, gamma=gamma, alpha=0.25)))(x)
    assert np.all(np.isfinite(g))
    assert np.all(np.isfinite(h))
    _, jv = jax.jvp(lambda a: focal(a, t, gamma=gamma), (x,), (jnp.ones_like(x),))
    assert np.all(np.isfinite(jv))


FOCAL_CONFIGS = [(None, 2.0), (0.25, 0.5), (None, 0.0), (0.75, 1.0)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("alpha", "gamma"), FOCAL_CONFIGS)
def test_focal_accuracy(alpha, gamma, dtype, x64, request):
    slow = request.config.getoption("--run-slow")
    grid = elementwise_grid()
    if not slow:
        grid = grid[::3]  # a third of the logits (still ±inf, ±1e8, tails) by default
        grid = np.unique(np.concatenate([grid, [-np.inf, np.inf, 0.0, 88.0, -88.0, 1e8, -1e8]]))
    xs, ts = np.meshgrid(grid, BINARY_LABELS, indexing="ij")
    xs, ts = _cast(xs.ravel(), dtype), _cast(ts.ravel(), dtype)
    v, g = _value_and_grad(
        focal, jnp.asarray(xs, dtype), jnp.asarray(ts, dtype), alpha=alpha, gamma=gamma
    )
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
    with pytest.raises(ValueError, match=r"`labels` holds 1.5 at position \(1,\)"):
        focal(x, jnp.array([0.5, 1.5, 0.0]))
    with pytest.raises(ValueError, match=r"`labels` has shape \(2,\)"):
        focal(x, jnp.ones(2))
    with pytest.raises(TypeError, match="`logits` must be a floating-point"):
        focal(jnp.zeros(3, jnp.int32), t)
    assert np.isnan(jax.jit(lambda g: focal(x, t, gamma=g))(-1.0)).all()
    assert np.isnan(jax.jit(lambda a: focal(x, t, alpha=a))(2.0)).all()
    out = jax.jit(focal)(x, jnp.array([0.5, 1.5, 0.0]))
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


# --------------------------------------------------------------------------------------------
# optax's own tests (run ad hoc; the lead wires them into tests/test_optax_suite.py)
# --------------------------------------------------------------------------------------------


def _upstream_module():
    path = pathlib.Path(optax.__file__).parent / "losses" / "_classification_test.py"
    spec = importlib.util.spec_from_file_location("jaxce_sigmoid_upstream", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = ("sigmoid_binary_cross_entropy", "sigmoid_focal_loss")
    mod._classification = types.SimpleNamespace(**{n: getattr(jaxce, n) for n in names})
    return mod


@pytest.mark.parametrize("cls", ["SigmoidFocalLossTest", "SigmoidCrossEntropyTest"])
def test_optax_upstream_sigmoid_tests_pass_against_jaxce(cls):
    mod = _upstream_module()
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(getattr(mod, cls))
    result = unittest.TextTestRunner(verbosity=0, stream=io.StringIO()).run(suite)
    assert result.testsRun > 0
    assert result.wasSuccessful(), [str(e) for e in result.failures + result.errors]

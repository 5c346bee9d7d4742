"""sigmoid_binary_cross_entropy keyword extensions and sigmoid_focal_loss.

Edge tables row by row, accuracy against mpmath in condition-scaled ulps (the project scorer of
tests/test_accuracy.py), optax parity and optax's own test classes, transforms, 16-bit inputs,
argument and value checks.
"""

from __future__ import annotations

import functools
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
from jax.flatten_util import ravel_pytree

import jaxce
from jaxce import _reference as ref
from jaxce._grid import REAL_BINARY_LABELS, elementwise_grid
from tests.test_accuracy import TINY, U, _cast, _errors

INF = math.inf
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


def derivative_check(f, args, *, full=True, rtol=1e-6, step=1e-6):
    """What ``jax.test_util.check_grads(f, args, order=2, modes=["fwd", "rev"])`` checks, in
    one compiled program (check_grads compiles a few dozen, ~20 s on a 2-core machine).

    For ``s(z) = Σ v·f(args(z))`` (random ``v``; ``z`` the flat float64 arguments):
    reverse-mode ``grad`` and forward-mode ``jvp`` against central differences of ``s``, and
    the Hessian (forward-over-reverse, as ``jax.hessian``) against central differences of
    ``grad``; with ``full`` (``--run-slow``) also reverse-over-reverse and forward-over-forward.
    """
    flat, unravel = ravel_pytree(args)
    out = jax.eval_shape(lambda z: f(*unravel(z)), flat)
    v = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, size=out.shape), flat.dtype)
    n = flat.shape[0]

    def s(z):
        return jnp.sum(v * f(*unravel(z)))

    @jax.jit
    def run(z):
        eye = jnp.eye(n, dtype=z.dtype)
        h = step * jnp.maximum(jnp.abs(z), 1.0)[:, None] * eye
        grad = jax.grad(s)
        zs = jnp.broadcast_to(z[None, :], (n, n))
        fd1 = (jax.vmap(s)(zs + h) - jax.vmap(s)(zs - h)) / (2 * jnp.diag(h))
        fd2 = (jax.vmap(grad)(zs + h) - jax.vmap(grad)(zs - h)) / (2 * jnp.diag(h))[:, None]
        fwd = jax.vmap(lambda e: jax.jvp(s, (z,), (e,))[1])(eye)
        hessians = {"fwd-over-rev": jax.jacfwd(grad)(z)}
        if full:
            hessians["rev-over-rev"] = jax.jacrev(grad)(z)
            hessians["fwd-over-fwd"] = jax.jacfwd(jax.jacfwd(s))(z)
        return grad(z), fwd, fd1, hessians, fd2

    g, fwd, fd1, hessians, fd2 = (jax.tree.map(np.asarray, a) for a in run(flat))
    scale1 = np.max(np.abs(fd1)) + 1.0
    np.testing.assert_allclose(g, fd1, rtol=rtol, atol=rtol * scale1, err_msg="grad (rev)")
    np.testing.assert_allclose(fwd, fd1, rtol=rtol, atol=rtol * scale1, err_msg="jvp (fwd)")
    scale2 = np.max(np.abs(fd2)) + 1.0
    for name, hess in hessians.items():
        np.testing.assert_allclose(hess, fd2, rtol=rtol, atol=rtol * scale2, err_msg=name)


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
def test_soft_cap_derivative_accuracy_far_beyond_the_cap(dtype, x64):
    """The cap's derivative sech²(x/c) in condition-scaled ulps against mpmath, out to
    |x| = 60c, and through a loss. JAX's own derivative of tanh, (1 - t)(1 + t) from the rounded
    t, cancels: with c = 30 in float32, 7.3 condition-scaled ulps at x = 81 (and a jit-vs-eager
    flake of test_ext_jit_matches_eager), 700 at x = 150, and exactly 0 from x ≈ 9c, where t
    rounds to 1."""
    from jaxce._transforms import scale_logits

    mp = pytest.importorskip("mpmath")
    u = U[dtype]
    c = 30.0
    xs = _cast(np.concatenate([np.linspace(-60 * c, 60 * c, 2001), [-81.33, 81.33, 1e-3]]), dtype)
    v, g = jax.vmap(jax.value_and_grad(lambda a: scale_logits(a, logit_soft_cap=c)))(
        jnp.asarray(xs, dtype)
    )
    errs_v, errs_g = [], []
    with mp.workdps(60):
        for xi, vi, gi in zip(
            xs, np.asarray(v, np.float64), np.asarray(g, np.float64), strict=True
        ):
            w = mp.mpf(float(xi)) / c
            th, s2 = mp.tanh(w), mp.sech(w) ** 2
            # κ of c·tanh(x/c): |x|·sech²; of sech²(x/c): |x|·|2 sech² tanh / c|
            errs_v.append(ref.condition_scaled_error(vi, c * th, abs(w) * c * s2, u, TINY[dtype]))
            errs_g.append(
                ref.condition_scaled_error(gi, s2, abs(w) * 2 * s2 * abs(th), u, TINY[dtype])
            )
        sech2 = float(mp.sech(10) ** 2)
        expected = float(mp.sigmoid(c * mp.tanh(10))) * sech2
    print("soft cap worst value / derivative ulps", dtype, max(errs_v), max(errs_g))
    assert max(errs_g) <= 4, max(errs_g)
    i = int(np.argmax(errs_v))
    assert max(errs_v) <= 4, (max(errs_v), xs[i], np.asarray(v)[i])
    # Through the loss: d/dx bce(c·tanh(x/c), t) = (σ(x') - t)·sech²(x/c), nonzero at x = 10c.
    x = jnp.asarray([300.0, -300.0], dtype)
    t = jnp.asarray([0.0, 1.0], dtype)
    gl = np.asarray(jax.grad(lambda a: jnp.sum(bce(a, t, logit_soft_cap=c)))(x), np.float64)
    np.testing.assert_allclose(gl, [expected, -expected], rtol=8e-6)
    assert gl[0] > 0


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


@pytest.mark.slow  # ~7 s of compiles; their default-run home is tests/test_optax_suite.py
@pytest.mark.parametrize("cls", ["SigmoidFocalLossTest", "SigmoidCrossEntropyTest"])
def test_optax_upstream_sigmoid_tests_pass_against_jaxce(cls):
    mod = _upstream_module()
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(getattr(mod, cls))
    result = unittest.TextTestRunner(verbosity=0, stream=io.StringIO()).run(suite)
    assert result.testsRun > 0
    assert result.wasSuccessful(), [str(e) for e in result.failures + result.errors]

"""KL divergences: the zero conventions, optax parity, bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxce
from jaxce import _reference as ref

INF = math.inf
NAN = math.nan


def test_zero_targets_with_neg_inf_log_predictions():
    """optax PR #1786: NaN gradient wrt targets at t = 0; jaxce: 0 (the term is absent)."""
    lp = jnp.array([-INF, -0.1, math.log(1 - math.exp(-0.1))])
    t = jnp.array([0.0, 0.6, 0.4])
    with jax.debug_nans(True):
        v = jaxce.kl_divergence(lp, t)
        g_lp, g_t = jax.jit(jax.grad(jaxce.kl_divergence, argnums=(0, 1)))(lp, t)
    assert np.isfinite(v)
    np.testing.assert_allclose(g_lp, -t, rtol=1e-6)
    assert float(g_t[0]) == 0.0
    np.testing.assert_allclose(g_t[1:], np.log(t[1:]) - lp[1:] + 1, rtol=1e-6)
    assert np.isnan(jax.grad(optax.losses.kl_divergence, argnums=1)(lp, t)[0])


def test_positive_target_on_zero_probability_is_inf():
    assert float(jaxce.kl_divergence(jnp.array([-INF, 0.0]), jnp.array([0.5, 0.5]))) == INF


def test_log_targets_neg_inf():
    """optax: exp(-inf) * (-inf - lp) = 0 * -inf = NaN; jaxce: the term is 0."""
    lp = jnp.array([-1.0, -0.5, -2.0])
    lt = jnp.array([-INF, 0.0, -INF])
    with jax.debug_nans(True):
        v = jaxce.kl_divergence_with_log_targets(lp, lt)
        g_lp, g_lt = jax.jit(jax.grad(jaxce.kl_divergence_with_log_targets, argnums=(0, 1)))(lp, lt)
    np.testing.assert_allclose(float(v), 0.5, rtol=1e-6)
    np.testing.assert_allclose(g_lp, [0.0, -1.0, 0.0])
    np.testing.assert_allclose(g_lt, [0.0, 1.5, 0.0], rtol=1e-6)
    assert np.isnan(optax.losses.kl_divergence_with_log_targets(lp, lt))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_match_optax_on_ordinary_inputs(axis):
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(6), size=4)).astype(np.float32)
    t = rng.dirichlet(np.ones(6), size=4).astype(np.float32)
    np.testing.assert_allclose(
        jaxce.kl_divergence(lp, t, axis=axis),
        optax.losses.kl_divergence(lp, t, axis=axis),
        1e-5,
        1e-6,
    )
    np.testing.assert_allclose(
        jaxce.kl_divergence_with_log_targets(lp, np.log(t), axis=axis),
        optax.losses.kl_divergence_with_log_targets(lp, np.log(t), axis=axis),
        1e-5,
        1e-6,
    )


def test_where_equals_boolean_indexing():
    rng = np.random.default_rng(1)
    lp = rng.normal(size=7).astype(np.float32)
    t = rng.dirichlet(np.ones(7)).astype(np.float32)
    w = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    np.testing.assert_allclose(
        jaxce.kl_divergence(lp, t, where=w), jaxce.kl_divergence(lp[w], t[w]), rtol=1e-6
    )
    g = jax.grad(jaxce.kl_divergence)(lp, t, where=w)
    assert np.all(g[~w] == 0)


def test_bad_input():
    with pytest.raises(ValueError, match=r"`log_predictions` of shape \(4, 3\) and `targets`"):
        jaxce.kl_divergence(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match="`targets` must be a floating-point"):
        jaxce.kl_divergence(jnp.zeros(3), jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="`log_targets` must be a floating-point"):
        jaxce.kl_divergence_with_log_targets(jnp.zeros(3), jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("log_targets", [False, True])
def test_nan_log_prediction_is_not_hidden_by_a_zero_target(log_targets):
    """0 * NaN is NaN: a NaN input poisons its example even on a class with target 0."""
    t = jnp.array([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])
    lp = jnp.log(jnp.array([[0.2, 0.4, 0.4], [0.2, 0.4, 0.4]])).at[0, 0].set(jnp.nan)
    fn = jaxce.kl_divergence_with_log_targets if log_targets else jaxce.kl_divergence
    out = fn(lp, jnp.log(t) if log_targets else t)
    assert np.isnan(out[0])
    assert np.isfinite(out[1])


def test_log_targets_absent_class_with_minus_inf_prediction_is_zero():
    lp = jnp.array([-jnp.inf, jnp.log(0.5), jnp.log(0.5)])
    lt = jnp.log(jnp.array([0.0, 0.5, 0.5]))
    value, grad = jax.value_and_grad(jaxce.kl_divergence_with_log_targets)(lp, lt)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, [0.0, -0.5, -0.5])


# --------------------------------------------------------------------------------------------
# generalized_kl_divergence / convex_kl_divergence
# --------------------------------------------------------------------------------------------


def _gkl_f64(lp, t):
    lp, t = np.asarray(lp, np.float64), np.asarray(t, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        xlogx = np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0)
        tlp = np.where(t > 0, t * lp, 0.0)
    return np.sum(xlogx - tlp - t + np.exp(lp), axis=-1)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_generalized_kl_matches_optax_on_ordinary_inputs(axis):
    rng = np.random.default_rng(3)
    lp = rng.normal(size=(4, 6)).astype(np.float32)  # unnormalized log-masses
    t = rng.uniform(0.0, 2.0, size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(
        jaxce.generalized_kl_divergence(lp, t, axis=axis),
        optax.losses.generalized_kl_divergence(lp, t, axis=axis),
        rtol=1e-5,
        atol=1e-6,
    )


def test_generalized_kl_zero_conventions():
    """t = 0 terms are e^{lp} (0 at lp = -inf) with zero derivative wrt t; t > 0 on lp = -inf
    is +inf with gradient -t; no NaN anywhere (optax PR #1786: NaN gradient wrt t at t = 0)."""
    lp = jnp.array([-INF, -1.0, 0.3, -2.0])
    t = jnp.array([0.0, 0.5, 1.2, 0.0])
    with jax.debug_nans(True):
        v = jaxce.generalized_kl_divergence(lp, t)
        g_lp, g_t = jax.grad(jaxce.generalized_kl_divergence, argnums=(0, 1))(lp, t)
        h = jax.hessian(jaxce.generalized_kl_divergence)(lp, t)
    np.testing.assert_allclose(float(v), _gkl_f64(lp, t), rtol=1e-6)
    np.testing.assert_allclose(g_lp, np.exp(np.asarray(lp, np.float64)) - t, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(g_t)[[0, 3]], 0.0)
    np.testing.assert_allclose(g_t[1:3], np.log(t[1:3]) - lp[1:3], rtol=1e-6)
    np.testing.assert_allclose(np.diag(h), np.exp(np.asarray(lp, np.float64)), rtol=1e-6)
    assert np.isnan(jax.grad(optax.losses.generalized_kl_divergence, argnums=1)(lp, t)[0])
    inf_case = jaxce.generalized_kl_divergence(jnp.array([-INF, 0.0]), jnp.array([0.5, 0.5]))
    assert float(inf_case) == INF
    g = jax.grad(jaxce.generalized_kl_divergence)(jnp.array([-INF, 0.0]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(g, [-0.5, 0.5])
    nan_case = jaxce.generalized_kl_divergence(jnp.array([NAN, 0.0]), jnp.array([0.0, 1.0]))
    assert np.isnan(float(nan_case))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rel", [1e-2, 1e-4, 1e-6])
def test_generalized_kl_nearly_equal_no_cancellation(rel, dtype, x64):
    """p ≈ t: every term is ~(p - t)^2 / 2t; jaxce within 4 condition-scaled ulps of mpmath
    (kappa = sum |lp| |p - t|), gradient p - t within 8; optax's KL + sum(p - t) cancels."""
    rng = np.random.default_rng(9)
    U = {"float32": 2.0**-24, "float64": 2.0**-53}[dtype]
    t64 = np.asarray(rng.dirichlet(np.ones(50)), dtype).astype(np.float64)
    lp64 = np.asarray(np.log(t64) + rel * rng.normal(size=50), dtype).astype(np.float64)
    r = ref.mp_generalized_kl_divergence(lp64, t64)
    lp, t = jnp.asarray(lp64, dtype), jnp.asarray(t64, dtype)
    v = jaxce.generalized_kl_divergence(lp, t)
    g = jax.grad(jaxce.generalized_kl_divergence)(lp, t)
    ev = ref.condition_scaled_error(np.float64(v), r.value, r.kappa, U)
    eg = ref.condition_scaled_error(np.asarray(g, np.float64), r.grad, r.kappa_grad, U)
    assert ev <= 4.0, ev
    assert np.max(eg) <= 8.0, np.max(eg)
    if rel <= 1e-4:  # optax's KL + sum(p - t) cancels once the terms are this small
        theirs = optax.losses.generalized_kl_divergence(lp, t)
        assert ref.condition_scaled_error(np.float64(theirs), r.value, r.kappa, U) > 16 * ev + 16


def test_generalized_kl_where_and_bad_targets():
    rng = np.random.default_rng(2)
    lp = rng.normal(size=7).astype(np.float32)
    t = rng.uniform(size=7).astype(np.float32)
    w = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    np.testing.assert_allclose(
        jaxce.generalized_kl_divergence(lp, t, where=w),
        jaxce.generalized_kl_divergence(lp[w], t[w]),
        rtol=1e-6,
    )
    assert np.all(np.asarray(jax.grad(jaxce.generalized_kl_divergence)(lp, t, where=w))[~w] == 0)
    bad = t.copy()
    bad[2] = -0.5
    with pytest.raises(ValueError, match=r"`targets` holds -0.5 at position \(2,\)"):
        jaxce.generalized_kl_divergence(lp, bad)
    rows = np.stack([t, bad])
    out = jax.jit(jaxce.generalized_kl_divergence)(np.stack([lp, lp]), rows)
    assert np.isfinite(out[0])
    assert np.isnan(out[1])
    err, _ = jax.jit(jaxce.checked(jaxce.generalized_kl_divergence))(lp, bad)
    assert "`targets` holds -0.5" in err.get()
    # Unnormalized masses above 1 are fine (no [0, 1] check).
    assert np.isfinite(float(jaxce.generalized_kl_divergence(lp, t * 5)))
    with pytest.raises(TypeError, match="`targets` must be a floating-point"):
        jaxce.generalized_kl_divergence(lp, np.ones(7, np.int32))


def test_convex_kl_divergence_is_the_deprecated_alias():
    lp = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    t = jnp.array([0.1, 0.6, 0.3])
    with pytest.warns(DeprecationWarning, match="use generalized_kl_divergence"):
        v = jaxce.convex_kl_divergence(lp, t)
    assert float(v) == float(jaxce.generalized_kl_divergence(lp, t))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_generalized_kl_16bit(dtype):
    lp = jnp.asarray([-1.0, -0.5, -2.0], dtype)
    t = jnp.asarray([0.25, 0.5, 0.25], dtype)
    out = jaxce.generalized_kl_divergence(lp, t)
    assert out.dtype == jnp.float32
    assert jax.grad(jaxce.generalized_kl_divergence)(lp, t).dtype == dtype


def test_generalized_kl_check_grads_order_2(x64):
    from jax.test_util import check_grads

    rng = np.random.default_rng(4)
    lp = rng.normal(size=(2, 5))
    t = rng.uniform(0.1, 1.0, size=(2, 5))
    with jaxce.target_checks(False):
        check_grads(jaxce.generalized_kl_divergence, (lp, t), order=2, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Issue 5, bug 2: kl_divergence_with_log_targets dropped log targets whose exp underflows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_targets_underflowing_target_on_impossible_class_is_inf(dtype, x64):
    """log_predictions [-inf, 0], log_targets [-200, 0] (f32) / [-800, 0] (f64): the target has
    mass e^lt > 0 on a class the prediction calls impossible: +inf (was 0); gradient finite."""
    lt0 = -200.0 if dtype == "float32" else -800.0
    lp = jnp.asarray([-INF, 0.0], dtype)
    lt = jnp.asarray([lt0, 0.0], dtype)
    assert float(jaxce.kl_divergence_with_log_targets(lp, lt)) == INF
    g = jax.grad(jaxce.kl_divergence_with_log_targets)(lp, lt)
    np.testing.assert_array_equal(g, [0.0, -1.0])  # -e^lt underflows to 0


def test_log_targets_underflowing_target_representable_product():
    """lt = -100 (e^lt = 3.7e-44, subnormal), lp = -3e38: the term e^lt (lt - lp) = 1.1e-5 is
    representable and returned to a few ulps (was 0)."""
    lp = jnp.asarray([-3e38, 0.0], jnp.float32)
    lt = jnp.asarray([-100.0, 0.0], jnp.float32)
    r = ref.mp_kl_divergence_with_log_targets(
        np.asarray(lp, np.float64), np.asarray(lt, np.float64)
    )
    v = jaxce.kl_divergence_with_log_targets(lp, lt)
    assert ref.condition_scaled_error(np.float64(v), r.value, r.kappa, 2.0**-24) <= 4.0
    g = jax.grad(jaxce.kl_divergence_with_log_targets, argnums=(0, 1))(lp, lt)
    assert all(np.all(np.isfinite(x)) for x in g)


@pytest.mark.parametrize("lt0", [-87.26, -87.0, -86.9, -80.0])
def test_log_targets_gradient_near_the_underflow_margin(lt0):
    """Just above float32's log(tiny) = -87.34 the value takes the scaled branch (a margin of
    0.34 decided on lt, one exponential), but the gradient comes from the explicit rule:
    wrt lp it is -e^lt, normal there, also when lp = -inf (a threshold of log(tiny) + 1 on
    the value's own derivative gave 0 at lt = -87.26, found by the accuracy grid)."""
    lt = jnp.asarray([lt0, math.log1p(-math.exp(lt0))], jnp.float32)
    for lp0 in (-INF, -3.0):
        lp = jnp.asarray([lp0, -0.1], jnp.float32)
        g_lp, g_lt = jax.grad(jaxce.kl_divergence_with_log_targets, argnums=(0, 1))(lp, lt)
        w = math.exp(float(lt[0]))
        assert w >= float(jnp.finfo(jnp.float32).tiny)
        np.testing.assert_allclose(float(g_lp[0]), -w, rtol=4 * 2.0**-23)
        if lp0 == -INF:
            assert float(g_lt[0]) == INF  # e^lt (lt - lp + 1) with lp = -inf
        else:
            exact = w * (float(lt[0]) - lp0 + 1.0)
            np.testing.assert_allclose(float(g_lt[0]), exact, rtol=8 * 2.0**-23)


def test_log_targets_value_and_gradient_do_not_store_intermediates():
    """The explicit derivative rule recomputes e^lt in the gradient pass: compiled temp
    memory is the reduction's partial sums only (two quarter-size arrays, and no [B, V]
    boolean of the underflow case: that was 0.75 of a float32 array), below one [B, V]
    float32 array (JAX's derivative of the where-chains stored e^lt and two masks: 112 MiB
    at 512 x 32768)."""
    shape = (64, 4096)
    lp = jax.nn.log_softmax(jnp.linspace(-3.0, 3.0, shape[0] * shape[1]).reshape(shape))
    for argnums in ((0, 1), 0):
        f = jax.jit(
            jax.value_and_grad(
                lambda a, b: jaxce.kl_divergence_with_log_targets(a, b).sum(), argnums=argnums
            )
        )
        compiled = f.lower(lp, lp[::-1]).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < 0.6 * 4 * shape[0] * shape[1], (argnums, temp)


def test_references_nan_log_prediction_under_zero_target():
    """The KL references follow jaxce's NaN policy: a NaN log-prediction under a zero target
    (or a -inf log target) makes the value NaN; the gradient wrt lp stays -t."""
    lp = np.array([NAN, -0.5, -1.0])
    t = np.array([0.0, 0.6, 0.4])
    for r in (ref.np_kl_divergence(lp, t), ref.mp_kl_divergence(lp, t)):
        assert np.isnan(float(r.value))
    with np.errstate(divide="ignore"):
        lt = np.log(t)
    for r in (
        ref.np_kl_divergence_with_log_targets(lp, lt),
        ref.mp_kl_divergence_with_log_targets(lp, lt),
    ):
        assert np.isnan(float(r.value))
    assert np.isnan(float(jaxce.kl_divergence(jnp.asarray(lp), jnp.asarray(t))))


def test_np_reference_log_targets_below_exp_range():
    """np_kl_divergence_with_log_targets was NaN for lt < -745 with lp = -inf (0 · inf); now
    +inf, and a representable product below exp's range is kept (lt = -800, lp = -1e308)."""
    r = ref.np_kl_divergence_with_log_targets(np.array([-INF, 0.0]), np.array([-800.0, 0.0]))
    assert float(r.value) == INF
    r = ref.np_kl_divergence_with_log_targets(np.array([-1e308, 0.0]), np.array([-800.0, 0.0]))
    exact = math.exp(-800.0 + math.log(1e308 - 800.0))
    np.testing.assert_allclose(float(r.value), exact, rtol=1e-12)
    assert exact > 1e-40

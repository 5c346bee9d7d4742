"""Real-valued targets as training code passes them: jaxce computes what optax computes.

Every cross-entropy is linear in its targets and the KL divergences hold ``t·log t`` for any
``t >= 0``, so targets outside ``[0, 1]`` have an exact value, and code written against optax
relies on it. Each pattern below is checked against optax 0.2.8 (or the formula where optax
has no such loss) under ``jit``, ``grad`` and ``vmap``, with no error and no NaN:

* advantage-weighted cross-entropy (policy gradient): one-hot actions times signed advantages;
* per-example weights folded into the targets (``one_hot * w``, ``w > 1``);
* binary labels outside ``[0, 1]`` (label-noise and distillation tricks);
* KL divergences with unnormalized targets and log-targets above 0;
* finite-difference gradient checks that step the targets (as optax's own ``test_gradient``).

The accuracy of these values (condition-scaled ulps against mpmath) is measured on the hard
grid in ``tests/test_accuracy.py`` (target kinds ``weighted``, ``advantage`` and ``signed``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

import jaxce
import jaxce.torch as jt

optax = pytest.importorskip("optax")

B, V = 6, 5
LOGITS = jax.random.normal(jax.random.key(0), (B, V)) * 2.0
ACTIONS = jnp.array([0, 3, 1, 4, 2, 0])
ADVANTAGES = jnp.array([1.5, -0.7, 0.0, -3.0, 2.2, -0.01])
ONE_HOT = jax.nn.one_hot(ACTIONS, V)
WEIGHTS = jnp.array([1.0, 2.5, 7.0, 1.2, 3.0, 10.0])  # > 1: not probabilities
RTOL = 2e-6


def _assert_close(ours, theirs, rtol=RTOL):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert np.all(np.isfinite(ours)), ours
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.max(np.abs(theirs)))


def _value_grad(fn, x, t):
    """Per-example value, and the gradients of the summed loss wrt logits and targets."""
    value = jax.jit(fn)(x, t)
    gx, gt = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b)), argnums=(0, 1)))(x, t)
    return value, gx, gt


def _matches_optax(name: str, x, t, rtol=RTOL):
    """jaxce.name == optax.losses.name: value and gradients wrt logits and targets, jitted;
    returns jaxce's ``(value, grad_x, grad_t)``."""
    ours = _value_grad(getattr(jaxce, name), x, t)
    theirs = _value_grad(getattr(optax.losses, name), x, t)
    for a, b in zip(ours, theirs, strict=True):
        _assert_close(a, b, rtol=rtol)
    return ours


@pytest.mark.parametrize(
    "name", ["softmax_cross_entropy", "safe_softmax_cross_entropy", "poly_loss_cross_entropy"]
)
def test_advantage_weighted_cross_entropy_matches_optax(name):
    """REINFORCE / actor-critic: softmax_cross_entropy(logits, one_hot(a) * A[:, None])."""
    targets = ONE_HOT * ADVANTAGES[:, None]
    ours = _matches_optax(name, LOGITS, targets)
    # vmap over examples == the batched call
    per_row = jax.vmap(getattr(jaxce, name))(LOGITS, targets)
    np.testing.assert_allclose(per_row, ours[0], rtol=RTOL)
    # the signed loss is A times the cross-entropy of the action
    ce = jaxce.softmax_cross_entropy_with_integer_labels(LOGITS, ACTIONS)
    if name != "poly_loss_cross_entropy":
        np.testing.assert_allclose(ours[0], ADVANTAGES * ce, rtol=RTOL, atol=1e-7)


def test_policy_gradient_training_step_matches_optax():
    """A jitted policy-gradient step with optax.adam: the same loss and parameters."""
    w0 = {"w": jax.random.normal(jax.random.key(1), (3, V)) * 0.3}
    obs = jax.random.normal(jax.random.key(2), (B, 3))
    opt = optax.adam(1e-2)

    def make_step(loss_fn):
        @jax.jit
        def step(params, state):
            def loss(p):
                return jnp.mean(loss_fn(obs @ p["w"], ONE_HOT * ADVANTAGES[:, None]))

            value, g = jax.value_and_grad(loss)(params)
            updates, state = opt.update(g, state, params)
            return optax.apply_updates(params, updates), state, value

        return step

    results = []
    for loss_fn in (jaxce.softmax_cross_entropy, optax.losses.softmax_cross_entropy):
        params, state, step = w0, opt.init(w0), make_step(loss_fn)
        values = []
        for _ in range(5):
            params, state, value = step(params, state)
            values.append(float(value))
        results.append((np.array(values), params["w"]))
    assert np.all(np.isfinite(results[0][0]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["softmax_cross_entropy", "safe_softmax_cross_entropy", "poly_loss_cross_entropy"],
)
def test_weights_folded_into_targets_match_optax(name):
    _matches_optax(name, LOGITS, ONE_HOT * WEIGHTS[:, None])
    smoothed = optax.smooth_labels(ONE_HOT, 0.1) * WEIGHTS[:, None]
    _assert_close(
        jaxce.softmax_cross_entropy(LOGITS, smoothed),
        optax.losses.softmax_cross_entropy(LOGITS, smoothed),
    )


def test_softmax_focal_loss_is_linear_in_signed_targets():
    """No optax counterpart: the focal loss of a * t is a times that of t, under jit and grad."""
    t = jax.nn.softmax(jax.random.normal(jax.random.key(3), (B, V)))
    scale = ADVANTAGES[:, None]
    f = jax.jit(lambda x, tt: jaxce.softmax_focal_loss(x, tt, gamma=2.0))
    np.testing.assert_allclose(
        f(LOGITS, t * scale), ADVANTAGES * f(LOGITS, t), rtol=RTOL, atol=1e-8
    )
    g = jax.grad(lambda x: jnp.sum(f(x, t * scale)))(LOGITS)
    g1 = jax.grad(lambda x: jnp.sum(ADVANTAGES * f(x, t)))(LOGITS)
    np.testing.assert_allclose(g, g1, rtol=1e-5, atol=1e-7)


BINARY_LOGITS = jnp.array([[-30.0, -2.0, -0.1, 0.0], [0.3, 4.0, 25.0, 88.0]])
BINARY_LABELS = jnp.array([[-0.5, 1.5, 2.0, -1.0], [3.0, -0.2, 1.1, 1.0001]])


def test_binary_labels_outside_unit_interval_match_optax():
    ours = _matches_optax("sigmoid_binary_cross_entropy", BINARY_LOGITS, BINARY_LABELS, 1e-5)
    # the same through the options path (pos_weight = 1, weights = 1) and jaxce.torch
    opt = jaxce.sigmoid_binary_cross_entropy(
        BINARY_LOGITS, BINARY_LABELS, pos_weight=jnp.ones(4), weights=jnp.ones(4)
    )
    _assert_close(opt, ours[0], rtol=1e-5)
    torch_like = jt.binary_cross_entropy_with_logits(BINARY_LOGITS, BINARY_LABELS, reduction="none")
    _assert_close(torch_like, ours[0], rtol=1e-5)
    # vmap over rows == the batched call
    np.testing.assert_allclose(
        jax.vmap(jaxce.sigmoid_binary_cross_entropy)(BINARY_LOGITS, BINARY_LABELS),
        ours[0],
        rtol=RTOL,
    )


def test_binary_cross_entropy_from_probabilities_takes_real_labels():
    """Probabilities must be in [0, 1]; labels need not: -t log p - (1 - t) log(1 - p)."""
    p = jnp.array([[0.1, 0.45, 0.9], [1e-3, 0.6, 0.999]])
    t = jnp.array([[-0.5, 1.5, 2.0], [3.0, -0.2, 1.1]])
    expected = -t * jnp.log(p) - (1 - t) * jnp.log1p(-p)
    _assert_close(jax.jit(jaxce.binary_cross_entropy)(p, t), expected, rtol=1e-5)
    g = jax.grad(lambda a: jnp.sum(jaxce.binary_cross_entropy(a, t)))(p)
    _assert_close(g, -t / p + (1 - t) / (1 - p), rtol=1e-5)
    with pytest.raises(ValueError, match=r"`probs` holds 1\.5"):
        jaxce.binary_cross_entropy(jnp.array([0.5, 1.5]), jnp.array([2.0, 0.0]))


def test_categorical_cross_entropy_takes_real_labels():
    p = jax.nn.softmax(LOGITS)
    targets = ONE_HOT * ADVANTAGES[:, None]
    expected = -jnp.sum(targets * jnp.log(p), axis=-1)
    _assert_close(jax.jit(jaxce.categorical_cross_entropy)(p, targets), expected, rtol=1e-5)


def test_kl_divergences_with_unnormalized_targets_match_optax():
    lp = jax.nn.log_softmax(LOGITS)
    t = jax.nn.softmax(LOGITS * 0.5) * WEIGHTS[:, None]  # masses above 1
    for name, target in (
        ("kl_divergence", t),
        ("generalized_kl_divergence", t),
        ("kl_divergence_with_log_targets", jnp.log(t)),  # log-targets above 0
    ):
        _matches_optax(name, lp, target, rtol=1e-5)


@pytest.mark.parametrize(
    "fn",
    [
        jaxce.softmax_cross_entropy,
        jaxce.safe_softmax_cross_entropy,
        jaxce.poly_loss_cross_entropy,
        jaxce.softmax_focal_loss,
        jaxce.sigmoid_binary_cross_entropy,
    ],
    ids=lambda f: f.__name__,
)
def test_finite_difference_checks_that_step_the_targets(fn):
    """jax.test_util.check_grads with respect to one-hot targets: the steps go below 0 and
    above 1 (optax's own test_gradient does this), forward and reverse, second order."""
    x = LOGITS[:3]
    t = ONE_HOT[:3]
    with jax.enable_x64(True):
        x64, t64 = jnp.asarray(x, jnp.float64), jnp.asarray(t, jnp.float64)
        jtu.check_grads(fn, (x64, t64), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_finite_difference_checks_of_kl_targets_above_zero():
    lp = jax.nn.log_softmax(LOGITS[:3])
    t = jax.nn.softmax(LOGITS[:3] * 0.5)
    with jax.enable_x64(True):
        args = (jnp.asarray(lp, jnp.float64), jnp.asarray(t, jnp.float64))
        for fn in (jaxce.kl_divergence, jaxce.generalized_kl_divergence):
            # t·log t has a third derivative of -1/t²: a small step keeps the central
            # difference's own error (eps²/t²) below the tolerance.
            jtu.check_grads(fn, args, order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-6)


def test_torch_cross_entropy_with_signed_probability_targets():
    """PyTorch's cross_entropy takes any real probability target too (mean over N)."""
    targets = ONE_HOT * ADVANTAGES[:, None]
    expected = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(LOGITS), axis=-1))
    _assert_close(jt.cross_entropy(LOGITS, targets), expected, rtol=1e-5)

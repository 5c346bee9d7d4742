"""Value checks (jaxce/_validate.py): eager errors, NaN under jit, checked mode, the switch.

The policy table is in the module docstring and the README; every row is pinned here for every
loss it applies to.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxce

X = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
GOOD_T = jnp.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
LP = jax.nn.log_softmax(X)

# name -> (call, good second argument, bad second argument, bad value, its position, domain)
BAD_T = GOOD_T.at[1, 2].set(1.5)
CASES = {
    "softmax_cross_entropy_with_integer_labels": (
        jaxce.softmax_cross_entropy_with_integer_labels,
        X,
        jnp.array([0, 2, 1]),
        jnp.array([0, -1, 1]),
        "-1",
        "(1,)",
        r"\[0, 3\)",
    ),
    "softmax_cross_entropy": (
        jaxce.softmax_cross_entropy,
        X,
        GOOD_T,
        BAD_T,
        "1.5",
        "(1, 2)",
        r"\[0, 1\]",
    ),
    "safe_softmax_cross_entropy": (
        jaxce.safe_softmax_cross_entropy,
        X,
        GOOD_T,
        BAD_T,
        "1.5",
        "(1, 2)",
        r"\[0, 1\]",
    ),
    "kl_divergence": (jaxce.kl_divergence, LP, GOOD_T, BAD_T, "1.5", "(1, 2)", r"\[0, 1\]"),
    "kl_divergence_with_log_targets": (
        jaxce.kl_divergence_with_log_targets,
        LP,
        jnp.log(GOOD_T),
        jnp.log(GOOD_T).at[1, 2].set(0.25),
        "0.25",
        "(1, 2)",
        r"\[-inf, 0\]",
    ),
    "sigmoid_binary_cross_entropy": (
        jaxce.sigmoid_binary_cross_entropy,
        X,
        GOOD_T,
        GOOD_T.at[1, 2].set(-0.5),
        "-0.5",
        "(1, 2)",
        r"\[0, 1\]",
    ),
}


def test_every_loss_has_a_value_check():
    assert set(CASES) == set(jaxce.CORE_LOSSES)


@pytest.mark.parametrize("name", list(CASES))
def test_eager_bad_value_raises_naming_value_and_position(name):
    fn, x, _, bad, value, position, domain = CASES[name]
    arg = "targets" if name.startswith("kl_divergence") else "labels"
    if name == "kl_divergence_with_log_targets":
        arg = "log_targets"
    match = re.escape(f"`{arg}` holds {value} at position {position}")
    with pytest.raises(ValueError, match=match + r".*outside " + domain):
        fn(x, bad)


@pytest.mark.parametrize("name", list(CASES))
def test_under_jit_bad_example_is_nan_and_the_others_untouched(name):
    fn, x, good, bad, *_ = CASES[name]
    clean = jax.jit(fn)(x, good)
    out = jax.jit(fn)(x, bad)
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b))))(x, bad)
    # the bad value sits in row 1 (element (1, 2) of the element-wise binary CE)
    bad_example = (1, 2) if name == "sigmoid_binary_cross_entropy" else (1,)
    assert np.isnan(out[bad_example])
    assert np.isnan(grad[1]).any()
    keep = np.ones(out.shape, bool)
    keep[bad_example] = False
    np.testing.assert_array_equal(np.asarray(out)[keep], np.asarray(clean)[keep])
    assert np.all(np.isfinite(grad[0]))
    assert np.all(np.isfinite(grad[2]))


@pytest.mark.parametrize("name", list(CASES))
def test_checked_mode_reports_from_inside_jit(name):
    fn, x, good, bad, value, *_ = CASES[name]
    checked = jax.jit(jaxce.checked(fn))
    err, out = checked(x, good)
    assert err.get() is None
    np.testing.assert_allclose(out, fn(x, good), rtol=1e-6)
    err, _ = checked(x, bad)
    message = err.get()
    assert message is not None
    assert f"holds {value}" in message
    with pytest.raises(checkify.JaxRuntimeError):
        err.throw()


def test_checked_mode_wraps_a_training_step():
    @jax.jit
    @jaxce.checked
    def step(w, y):
        return jax.grad(lambda v: jaxce.softmax_cross_entropy_with_integer_labels(v, y).mean())(w)

    err, _ = step(X, jnp.array([0, 1, 2]))
    assert err.get() is None
    err, _ = step(X, jnp.array([0, 1, 3]))
    assert "holds 3 at flat position 2" in err.get()


def test_masked_classes_are_not_checked():
    where = jnp.array([[True, True, True], [True, True, False], [True, True, True]])
    out = jaxce.softmax_cross_entropy(X, BAD_T, where=where)  # the 1.5 sits on a masked class
    assert np.all(np.isfinite(out))


def test_target_checks_switch_accepts_the_linear_extension():
    with jaxce.target_checks(False):
        eager = jaxce.softmax_cross_entropy(X, BAD_T)
        # a function traced here (not one jit already traced outside the block: the setting
        # is read at trace time)
        jitted = jax.jit(lambda a, b: jaxce.softmax_cross_entropy(a, b))(X, BAD_T)
    expected = -jnp.sum(BAD_T * jax.nn.log_softmax(X), axis=-1)
    np.testing.assert_allclose(eager, expected, rtol=1e-6)
    np.testing.assert_allclose(jitted, expected, rtol=1e-6)
    # restored afterwards
    with pytest.raises(ValueError, match="outside"):
        jaxce.softmax_cross_entropy(X, BAD_T)


def test_integer_labels_are_always_checked():
    with jaxce.target_checks(False), pytest.raises(ValueError, match="holds 5"):
        jaxce.softmax_cross_entropy_with_integer_labels(X, jnp.array([0, 5, 1]))


def test_nan_target_is_outside_the_domain():
    with pytest.raises(ValueError, match="holds nan"):
        jaxce.sigmoid_binary_cross_entropy(X, GOOD_T.at[0, 0].set(jnp.nan))


def test_empty_batch_needs_no_check():
    out = jaxce.softmax_cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0, 3)))
    assert out.shape == (0,)

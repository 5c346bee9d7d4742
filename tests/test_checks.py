"""Argument handling shared by every loss (``jaxce._checks``): dtypes, axes, broadcasting, masks
and weights, each refused with a message naming the argument, what it got and what it expects."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxce import _checks as checks


def test_float_array_upcasts_16_bit_and_names_the_argument():
    assert checks.float_array("logits", jnp.ones(3, jnp.bfloat16)).dtype == jnp.float32
    assert checks.float_array("logits", jnp.ones(3, jnp.float16)).dtype == jnp.float32
    assert checks.float_array("logits", jnp.ones(3)).dtype == jnp.float32
    with pytest.raises(TypeError, match=r"`logits` must be a floating-point array .* int32"):
        checks.float_array("logits", jnp.ones(3, jnp.int32))


def test_integer_array_refuses_float_and_bool_labels():
    assert checks.integer_array("labels", jnp.arange(3)).dtype == jnp.int32
    for bad in (jnp.ones(3), jnp.ones(3, bool)):
        with pytest.raises(TypeError, match="`labels` must hold integer class indices"):
            checks.integer_array("labels", bad)


@pytest.mark.parametrize(
    ("axis", "expected"), [(-1, (2,)), (0, (0,)), ((2, 0), (2, 0)), ([1], (1,)), (None, (0, 1, 2))]
)
def test_canonical_axes_keeps_the_order(axis, expected):
    assert checks.canonical_axes(axis, 3) == expected


@pytest.mark.parametrize(
    ("axis", "error", "message"),
    [
        (3, ValueError, r"`axis`=3 is out of range .* expected values in \[-3, 2\]"),
        ((0, -3), ValueError, "repeats an axis"),
        ((), ValueError, "at least one axis"),
        (1.0, TypeError, "must be an int, a tuple of ints or None; got 1.0"),
    ],
)
def test_canonical_axes_errors(axis, error, message):
    with pytest.raises(error, match=message):
        checks.canonical_axes(axis, 3)


def test_same_rank_broadcast_refuses_rank_promotion():
    """[batch] labels against [batch, classes] logits must not broadcast along classes."""
    out = checks.same_rank_broadcast("labels", jnp.ones((4, 1)), (4, 4))
    assert out.shape == (4, 4)
    with pytest.raises(ValueError, match=r"`labels` has shape \(4,\), .* same number of dim"):
        checks.same_rank_broadcast("labels", jnp.ones(4), (4, 4))


def test_broadcast_pair_same_rank_only():
    a, b = checks.broadcast_pair("a", jnp.ones((2, 1)), "b", jnp.ones((1, 3)))
    assert a.shape == b.shape == (2, 3)
    with pytest.raises(ValueError, match=r"`a` of shape \(2,\) and `b` of shape \(2, 3\)"):
        checks.broadcast_pair("a", jnp.ones(2), "b", jnp.ones((2, 3)))


def test_mask_array_expands_a_per_example_mask():
    m = checks.mask_array(jnp.array([True, False]), (2, 3), (1,))
    assert m is not None
    np.testing.assert_array_equal(m, [[True] * 3, [False] * 3])
    assert checks.mask_array(None, (2, 3), (1,)) is None
    with pytest.raises(TypeError, match="`where` must be a boolean mask"):
        checks.mask_array(jnp.ones((2, 3)), (2, 3), (1,))
    with pytest.raises(ValueError, match=r"`where` has shape \(4,\), which fits neither"):
        checks.mask_array(jnp.ones(4, bool), (2, 3), (1,))


def test_class_weights_along_the_class_axes():
    w = checks.class_weights("weights", jnp.array([1.0, 2.0, 3.0]), (2, 3), (1,), jnp.float32)
    np.testing.assert_array_equal(w, [[1, 2, 3], [1, 2, 3]])
    # a tuple axis: the class dims' shape, or the flat vector in the labels' index order
    flat = jnp.arange(6.0)
    w2 = checks.class_weights("weights", flat, (4, 2, 3), (1, 2), jnp.float32)
    np.testing.assert_array_equal(w2[0], np.arange(6.0).reshape(2, 3))
    w3 = checks.class_weights("weights", flat, (3, 4, 2), (2, 0), jnp.float32)
    np.testing.assert_array_equal(w3[:, 0, :], np.arange(6.0).reshape(2, 3).T)
    with pytest.raises(ValueError, match=r"expected one weight per class, shape \(3,\)"):
        checks.class_weights("weights", jnp.ones(4), (2, 3), (1,), jnp.float32)


def test_classes_last_flattens_in_axis_order():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    moved, mask = checks.classes_last(x, None, (0, 2))
    assert mask is None
    np.testing.assert_array_equal(moved, np.asarray(x).transpose(1, 0, 2).reshape(3, 8))


def test_elementwise_weights_numpy_rules_and_non_negative():
    w = checks.elementwise_weights("pos_weight", jnp.array([1.0, 2.0]), (3, 2), jnp.float32)
    assert w.shape == (3, 2)
    with pytest.raises(ValueError, match=r"`pos_weight` has shape \(3,\), which does not"):
        checks.elementwise_weights("pos_weight", jnp.ones(3), (3, 2), jnp.float32)
    with pytest.raises(ValueError, match="`pos_weight`"):
        checks.elementwise_weights("pos_weight", jnp.array([1.0, -1.0]), (3, 2), jnp.float32)

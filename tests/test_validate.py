"""Value checks (jaxce/_validate.py): eager errors, NaN under jit, checked mode, strict mode.

The policy table is in the module docstring and docs/accuracy.md; every row is pinned here for every
loss it applies to. Two kinds of bad value: those always checked (integer labels, probabilities
given as inputs, weights and scales, negative KL targets) and targets outside their probability
range, which are the exact extension by default and checked only in checked mode
(``jaxce.checked``) or strict mode (``with jaxce.target_checks():``).
"""

from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxce
import jaxce.torch as jt

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


#: The cases whose bad value is a target outside its probability range: checked in strict
#: mode only (the others are always checked).
STRICT_CASES = {n for n in CASES if n != "softmax_cross_entropy_with_integer_labels"}


def _strict_if(strict: bool) -> contextlib.AbstractContextManager:
    """Strict mode where the bad value is a target (checked there only), else no change."""
    return jaxce.target_checks() if strict else contextlib.nullcontext()


def test_every_loss_has_a_value_check():
    assert set(CASES) == set(jaxce.CORE_LOSSES)


@pytest.mark.parametrize("name", list(CASES))
def test_eager_bad_value_raises_naming_value_and_position(name):
    fn, x, _, bad, value, position, domain = CASES[name]
    arg = "targets" if name.startswith("kl_divergence") else "labels"
    if name == "kl_divergence_with_log_targets":
        arg = "log_targets"
    match = re.escape(f"`{arg}` holds {value} at position {position}")
    strict = _strict_if(name in STRICT_CASES)
    with strict, pytest.raises(ValueError, match=match + r".*outside " + domain):
        fn(x, bad)


@pytest.mark.parametrize("name", list(CASES))
def test_under_jit_bad_example_is_nan_and_the_others_untouched(name):
    fn, x, good, bad, *_ = CASES[name]
    # traced inside the block: fresh functions (the mode is read at trace time)
    with _strict_if(name in STRICT_CASES):
        clean = jax.jit(lambda a, b: fn(a, b))(x, good)
        out = jax.jit(lambda a, b: fn(a, b))(x, bad)
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


@pytest.mark.parametrize("name", sorted(STRICT_CASES))
def test_target_outside_its_range_is_the_exact_extension_by_default(name):
    """No error, no NaN: eager, under jit and its gradient, the same numbers."""
    fn, x, _, bad, *_ = CASES[name]
    eager = fn(x, bad)
    jitted = jax.jit(lambda a, b: fn(a, b))(x, bad)
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b))))(x, bad)
    assert np.all(np.isfinite(eager))
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", list(CASES))
def test_checked_mode_reports_from_inside_jit(name):
    fn, x, good, bad, value, *_ = CASES[name]
    checked = jax.jit(jaxce.checked(fn))
    err, out = checked(x, good)
    assert err.get() is None
    np.testing.assert_allclose(out, fn(x, good), rtol=1e-6)
    err, out = checked(x, bad)
    message = err.get()
    assert message is not None
    assert f"holds {value}" in message
    with pytest.raises(checkify.JaxRuntimeError):
        err.throw()
    if name in STRICT_CASES:
        # reported, not changed: the output is the exact extension
        np.testing.assert_allclose(out, fn(x, bad), rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_checked_mode_without_targets_reports_only_the_always_checked(name):
    fn, x, _, bad, value, *_ = CASES[name]
    err, _ = jax.jit(jaxce.checked(fn, targets=False))(x, bad)
    if name in STRICT_CASES:
        assert err.get() is None
    else:
        assert f"holds {value}" in err.get()


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
    with jaxce.target_checks():  # the 1.5 sits on a masked class
        out = jaxce.softmax_cross_entropy(X, BAD_T, where=where)
    assert np.all(np.isfinite(out))


def test_strict_mode_switch_is_read_at_trace_time_and_restored():
    expected = -jnp.sum(BAD_T * jax.nn.log_softmax(X), axis=-1)
    np.testing.assert_allclose(jaxce.softmax_cross_entropy(X, BAD_T), expected, rtol=1e-6)
    outside = jax.jit(lambda a, b: jaxce.softmax_cross_entropy(a, b))
    np.testing.assert_allclose(outside(X, BAD_T), expected, rtol=1e-6)
    with jaxce.target_checks():
        with pytest.raises(ValueError, match="outside"):
            jaxce.softmax_cross_entropy(X, BAD_T)
        # traced outside the block: keeps its (default) semantics
        np.testing.assert_allclose(outside(X, BAD_T), expected, rtol=1e-6)
        inside = jax.jit(lambda a, b: jaxce.softmax_cross_entropy(a, b))(X, BAD_T)
        assert np.isnan(inside[1])
        assert np.isfinite(np.asarray(inside)[[0, 2]]).all()
        with jaxce.target_checks(False):  # off again inside an outer strict block
            np.testing.assert_allclose(jaxce.softmax_cross_entropy(X, BAD_T), expected, rtol=1e-6)
        with pytest.raises(ValueError, match="outside"):
            jaxce.softmax_cross_entropy(X, BAD_T)
    np.testing.assert_allclose(jaxce.softmax_cross_entropy(X, BAD_T), expected, rtol=1e-6)


def test_integer_labels_are_always_checked():
    with jaxce.target_checks(False), pytest.raises(ValueError, match="holds 5"):
        jaxce.softmax_cross_entropy_with_integer_labels(X, jnp.array([0, 5, 1]))


@pytest.mark.parametrize(
    "fn", [jaxce.kl_divergence, jaxce.generalized_kl_divergence], ids=lambda f: f.__name__
)
def test_negative_kl_targets_are_always_checked(fn):
    """t·log t is not real for t < 0: an error eagerly and NaN under jit, in every mode (as
    optax's NaN), while targets above 1 are accepted."""
    bad = GOOD_T.at[1, 2].set(-0.5)
    with pytest.raises(ValueError, match=r"`targets` holds -0.5 at position \(1, 2\)"):
        fn(LP, bad)
    out = jax.jit(fn)(LP, bad)
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b))))(LP, bad)
    assert np.isnan(out[1])
    assert np.isfinite(np.asarray(out)[[0, 2]]).all()
    assert np.isnan(grad[1]).any()
    assert np.isfinite(np.asarray(grad)[[0, 2]]).all()
    assert np.isfinite(fn(LP, 3.0 * GOOD_T)).all()


def test_nan_target_is_outside_the_domain():
    with jaxce.target_checks(), pytest.raises(ValueError, match="holds nan"):
        jaxce.sigmoid_binary_cross_entropy(X, GOOD_T.at[0, 0].set(jnp.nan))
    # by default a NaN label is NaN for its element only, as any NaN input
    out = jaxce.sigmoid_binary_cross_entropy(X, GOOD_T.at[0, 0].set(jnp.nan))
    assert np.isnan(out[0, 0])
    assert np.isfinite(np.asarray(out).ravel()[1:]).all()


def test_empty_batch_needs_no_check():
    out = jaxce.softmax_cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0, 3)))
    assert out.shape == (0,)


# --------------------------------------------------------------------------------------------
# Every loss of jaxce.LOSSES and jaxce.torch (issue 5): value checks and trace-time errors
# --------------------------------------------------------------------------------------------

P = jax.nn.softmax(X)
Y = jnp.array([0, 2, 1])
C3 = jnp.array([1.0, -2.0, 1.0])  # a negative per-class weight at class 1
ROW1, ALL, ELEM = (1,), "all", (1, 2)
ONE = jnp.ones(())
_IDX = "ignore_index_case"


# id -> (fn, good args, bad args, argument, value, position, bad examples of the output)
# fn(*args) returns per-example losses; the bad value sits in row 1 (element (1, 2) for
# elementwise losses) or, for scalar options, affects every example (ALL).
VALUE_CASES: dict[str, tuple] = {
    "softmax_cross_entropy-weights": (
        lambda x, w: jaxce.softmax_cross_entropy(x, GOOD_T, weights=w),
        (X, jnp.ones(3)),
        (X, C3),
        "weights",
        "-2.0",
        "(1,)",
        ALL,
    ),
    "softmax_cross_entropy-temperature": (
        lambda x, s: jaxce.softmax_cross_entropy(x, GOOD_T, temperature=s),
        (X, ONE),
        (X, jnp.zeros(())),
        "temperature",
        "0.0",
        "()",
        ALL,
    ),
    "softmax_cross_entropy-logit_soft_cap": (
        lambda x, s: jaxce.softmax_cross_entropy(x, GOOD_T, logit_soft_cap=s),
        (X, 5 * ONE),
        (X, -ONE),
        "logit_soft_cap",
        "-1.0",
        "()",
        ALL,
    ),
    "softmax_cross_entropy-label_smoothing": (
        lambda x, s: jaxce.softmax_cross_entropy(x, GOOD_T, label_smoothing=s),
        (X, 0.1 * ONE),
        (X, 1.5 * ONE),
        "label_smoothing",
        "1.5",
        "()",
        ALL,
    ),
    "softmax_cross_entropy-z_loss": (
        lambda x, s: jaxce.softmax_cross_entropy(x, GOOD_T, z_loss=s),
        (X, 0.1 * ONE),
        (X, -ONE),
        "z_loss",
        "-1.0",
        "()",
        ALL,
    ),
    "softmax_cross_entropy_with_integer_labels-ignore_index": (
        lambda x, y: jaxce.softmax_cross_entropy_with_integer_labels(x, y, ignore_index=-100),
        (X, jnp.array([0, -100, 1])),
        (X, jnp.array([0, 3, 1])),
        "labels",
        "3",
        "(1,)",
        ROW1,
    ),
    "softmax_cross_entropy_with_integer_labels-temperature": (
        lambda x, s: jaxce.softmax_cross_entropy_with_integer_labels(x, Y, temperature=s),
        (X, ONE),
        (X, -ONE),
        "temperature",
        "-1.0",
        "()",
        ALL,
    ),
    "sigmoid_binary_cross_entropy-pos_weight": (
        lambda x, w: jaxce.sigmoid_binary_cross_entropy(x, GOOD_T, pos_weight=w),
        (X, jnp.ones(3)),
        (X, C3),
        "pos_weight",
        "-2.0",
        "(1,)",
        "col1",
    ),
    "sigmoid_binary_cross_entropy-weights": (
        lambda x, w: jaxce.sigmoid_binary_cross_entropy(x, GOOD_T, weights=w),
        (X, jnp.ones(3)),
        (X, C3),
        "weights",
        "-2.0",
        "(1,)",
        "col1",
    ),
    "sigmoid_focal_loss-labels": (
        jaxce.sigmoid_focal_loss,
        (X, GOOD_T),
        (X, BAD_T),
        "labels",
        "1.5",
        "(1, 2)",
        ELEM,
    ),
    "sigmoid_focal_loss-alpha": (
        lambda x, a: jaxce.sigmoid_focal_loss(x, GOOD_T, alpha=a),
        (X, 0.25 * ONE),
        (X, 1.5 * ONE),
        "alpha",
        "1.5",
        "()",
        ALL,
    ),
    "sigmoid_focal_loss-gamma": (
        lambda x, g: jaxce.sigmoid_focal_loss(x, GOOD_T, gamma=g),
        (X, 2 * ONE),
        (X, -ONE),
        "gamma",
        "-1.0",
        "()",
        ALL,
    ),
    "poly_loss_cross_entropy-labels": (
        jaxce.poly_loss_cross_entropy,
        (X, GOOD_T),
        (X, BAD_T),
        "labels",
        "1.5",
        "(1, 2)",
        ROW1,
    ),
    "generalized_kl_divergence-targets": (
        jaxce.generalized_kl_divergence,
        (LP, GOOD_T),
        (LP, GOOD_T.at[1, 2].set(-0.5)),
        "targets",
        "-0.5",
        "(1, 2)",
        ROW1,
    ),
    "convex_kl_divergence-targets": (
        jaxce.convex_kl_divergence,
        (LP, GOOD_T),
        (LP, GOOD_T.at[1, 2].set(-0.5)),
        "targets",
        "-0.5",
        "(1, 2)",
        ROW1,
    ),
    "softmax_focal_loss-labels": (
        jaxce.softmax_focal_loss,
        (X, GOOD_T),
        (X, BAD_T),
        "labels",
        "1.5",
        "(1, 2)",
        ROW1,
    ),
    "softmax_focal_loss-alpha": (
        lambda x, a: jaxce.softmax_focal_loss(x, GOOD_T, alpha=a),
        (X, jnp.ones(3)),
        (X, C3),
        "alpha",
        "-2.0",
        "(1,)",
        ALL,
    ),
    "softmax_focal_loss-gamma": (
        lambda x, g: jaxce.softmax_focal_loss(x, GOOD_T, gamma=g),
        (X, 2 * ONE),
        (X, -ONE),
        "gamma",
        "-1.0",
        "()",
        ALL,
    ),
    "binary_cross_entropy-probs": (
        jaxce.binary_cross_entropy,
        (P, GOOD_T),
        (P.at[1, 2].set(1.5), GOOD_T),
        "probs",
        "1.5",
        "(1, 2)",
        ELEM,
    ),
    "binary_cross_entropy-labels": (
        jaxce.binary_cross_entropy,
        (P, GOOD_T),
        (P, BAD_T),
        "labels",
        "1.5",
        "(1, 2)",
        ELEM,
    ),
    "binary_cross_entropy-weights": (
        lambda p, w: jaxce.binary_cross_entropy(p, GOOD_T, weights=w),
        (P, jnp.ones(3)),
        (P, C3),
        "weights",
        "-2.0",
        "(1,)",
        "col1",
    ),
    "categorical_cross_entropy-probs": (
        jaxce.categorical_cross_entropy,
        (P, GOOD_T),
        (P.at[1, 2].set(-0.5), GOOD_T),
        "probs",
        "-0.5",
        "(1, 2)",
        ROW1,
    ),
    "categorical_cross_entropy-labels": (
        jaxce.categorical_cross_entropy,
        (P, GOOD_T),
        (P, BAD_T),
        "labels",
        "1.5",
        "(1, 2)",
        ROW1,
    ),
    "categorical_cross_entropy-weights": (
        lambda p, w: jaxce.categorical_cross_entropy(p, GOOD_T, weights=w),
        (P, jnp.ones(3)),
        (P, C3),
        "weights",
        "-2.0",
        "(1,)",
        ALL,
    ),
    "torch.cross_entropy-labels": (
        lambda x, y: jt.cross_entropy(x, y, reduction="none"),
        (X, Y),
        (X, jnp.array([0, 3, 1])),
        "labels",
        "3",
        "(1,)",
        ROW1,
    ),
    "torch.cross_entropy-soft_labels": (
        lambda x, t: jt.cross_entropy(x, t, reduction="none"),
        (X, GOOD_T),
        (X, BAD_T),
        "labels",
        "1.5",
        "(1, 2)",
        ROW1,
    ),
    "torch.cross_entropy-weight": (
        lambda x, w: jt.cross_entropy(x, Y, weight=w, reduction="none"),
        (X, jnp.ones(3)),
        (X, C3),
        "weight",
        "-2.0",
        "(1,)",
        (2,),  # the label-1 example
    ),
    "torch.nll_loss-labels": (
        lambda lp, y: jt.nll_loss(lp, y, reduction="none"),
        (LP, Y),
        (LP, jnp.array([0, 3, 1])),
        "labels",
        "3",
        "(1,)",
        ROW1,
    ),
    "torch.nll_loss-weight": (
        lambda lp, w: jt.nll_loss(lp, Y, weight=w, reduction="none"),
        (LP, jnp.ones(3)),
        (LP, C3),
        "weight",
        "-2.0",
        "(1,)",
        (2,),  # the label-1 example
    ),
    "torch.binary_cross_entropy-probs": (
        lambda p, t: jt.binary_cross_entropy(p, t, reduction="none"),
        (P, GOOD_T),
        (P.at[1, 2].set(1.5), GOOD_T),
        "probs",
        "1.5",
        "(1, 2)",
        ELEM,
    ),
    "torch.binary_cross_entropy-labels": (
        lambda p, t: jt.binary_cross_entropy(p, t, reduction="none"),
        (P, GOOD_T),
        (P, BAD_T),
        "labels",
        "1.5",
        "(1, 2)",
        ELEM,
    ),
    "torch.binary_cross_entropy_with_logits-labels": (
        lambda x, t: jt.binary_cross_entropy_with_logits(x, t, reduction="none"),
        (X, GOOD_T),
        (X, BAD_T),
        "labels",
        "1.5",
        "(1, 2)",
        ELEM,
    ),
    "torch.binary_cross_entropy_with_logits-pos_weight": (
        lambda x, w: jt.binary_cross_entropy_with_logits(x, GOOD_T, pos_weight=w, reduction="none"),
        (X, jnp.ones(3)),
        (X, C3),
        "pos_weight",
        "-2.0",
        "(1,)",
        "col1",
    ),
    "torch.binary_cross_entropy_with_logits-weight": (
        lambda x, w: jt.binary_cross_entropy_with_logits(x, GOOD_T, weight=w, reduction="none"),
        (X, jnp.ones(3)),
        (X, C3),
        "weight",
        "-2.0",
        "(1,)",
        "col1",
    ),
}
# jaxce.torch checks `weight` under PyTorch's name; categorical_cross_entropy reports the
# position in the weights passed (not after broadcasting). Both were strict xfails once.
VALUE_PARAMS = list(VALUE_CASES)
#: The cases whose bad value is a target (soft or binary label) outside [0, 1]: an error in
#: strict mode only.
STRICT_VALUE_CASES = {
    "sigmoid_focal_loss-labels",
    "poly_loss_cross_entropy-labels",
    "softmax_focal_loss-labels",
    "binary_cross_entropy-labels",
    "categorical_cross_entropy-labels",
    "torch.cross_entropy-soft_labels",
    "torch.binary_cross_entropy-labels",
    "torch.binary_cross_entropy_with_logits-labels",
}


def test_every_loss_and_torch_function_has_value_checks():
    covered = {k.split("-")[0] for k in VALUE_CASES} | set(CASES)
    # entropy, kl_divergence_with_logits and jensen_shannon_divergence take logits only:
    # no value domain to check (their `base` is checked at trace time below).
    no_domain = {"entropy", "kl_divergence_with_logits", "jensen_shannon_divergence"}
    assert set(jaxce.LOSSES) - no_domain <= covered
    assert {f"torch.{n}" for n in jt.__all__ if n != "REDUCTIONS"} <= covered


def _bad_mask(shape, bad) -> np.ndarray:
    m = np.zeros(shape, bool)
    if bad == ALL:
        m[...] = True
    elif bad == "col1":
        m[..., 1] = True
    else:
        m[bad] = True
    return m


@pytest.mark.parametrize("case", VALUE_PARAMS)
def test_all_losses_eager_bad_value_raises_naming_argument_value_position(case):
    fn, _, bad, arg, value, position, _ = VALUE_CASES[case]
    match = re.escape(f"`{arg}` holds {value} at position {position}")
    strict = _strict_if(case in STRICT_VALUE_CASES)
    with strict, pytest.raises(ValueError, match=match + r".*outside"):
        fn(*bad)


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_all_losses_under_jit_bad_value_is_nan_for_its_examples_only(case):
    fn, good, bad, *_, where_bad = VALUE_CASES[case]
    with _strict_if(case in STRICT_VALUE_CASES):  # fresh functions: read at trace time
        clean = np.asarray(jax.jit(lambda *a: fn(*a))(*good))
        out = np.asarray(jax.jit(lambda *a: fn(*a))(*bad))
        g = None
        if np.issubdtype(bad[0].dtype, np.floating):
            g = np.asarray(jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a))))(*bad))
    m = _bad_mask(out.shape, where_bad)
    assert np.all(np.isnan(out[m])), out
    np.testing.assert_array_equal(out[~m], clean[~m])
    if g is not None:
        gm = np.broadcast_to(m if m.shape == g.shape else m[..., None], g.shape)
        assert np.isnan(g[gm]).any(), g
        assert np.all(np.isfinite(g[~gm])), g


#: sigmoid_focal_loss with label 1.5 at logit 2: 1 - p_t = 1.5·σ(-2) - 0.5·σ(2) < 0, so the
#: focal weight (1 - p_t)^γ is not real: NaN, as optax's log-space form gives.
UNDEFINED_BY_DEFAULT = {"sigmoid_focal_loss-labels"}


@pytest.mark.parametrize("case", sorted(STRICT_VALUE_CASES))
def test_all_losses_target_outside_range_is_the_exact_extension_by_default(case):
    fn, _, bad, *_, where_bad = VALUE_CASES[case]
    eager = np.asarray(fn(*bad))  # no error
    jitted = np.asarray(jax.jit(lambda *a: fn(*a))(*bad))
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    m = _bad_mask(eager.shape, where_bad)
    assert np.all(np.isfinite(eager[~m]))
    if case in UNDEFINED_BY_DEFAULT:
        optax = pytest.importorskip("optax")
        expected = np.asarray(optax.losses.sigmoid_focal_loss(*bad))
        assert np.isnan(expected[m]).all()
        assert np.isnan(eager[m]).all()
    else:
        assert np.all(np.isfinite(eager[m])), eager
        g = np.asarray(jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a))))(*bad))
        assert np.all(np.isfinite(g)), g


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_all_losses_checked_mode_reports_the_bad_value(case):
    fn, good, bad, arg, value, *_ = VALUE_CASES[case]
    checked = jax.jit(jaxce.checked(fn))
    err, out = checked(*good)
    assert err.get() is None
    np.testing.assert_allclose(out, fn(*good), rtol=1e-6)
    err, _ = checked(*bad)
    message = err.get()
    assert message is not None
    assert f"holds {value}" in message, message
    assert arg in message, message
    with pytest.raises(checkify.JaxRuntimeError):
        err.throw()


def test_logit_outside_unit_interval_is_nan_without_error():
    """Documented (edge-case table): NaN, < 0 and > 1 give NaN, eager and under jit."""
    p = jnp.array([0.25, -0.5, 1.5, jnp.nan])
    for out in (jaxce.logit(p), jax.jit(jaxce.logit)(p)):
        assert np.isfinite(out[0])
        assert np.all(np.isnan(out[1:]))


# id -> (thunk, exception, pieces the message must hold: argument, what it got, what expected)
TRACE_CASES: dict[str, tuple] = {
    "integer_logits-entropy": (
        lambda: jaxce.entropy(jnp.array([[1, 2]])),
        TypeError,
        ["`logits`", "int32", "floating-point"],
    ),
    "integer_logits-kl_divergence_with_logits": (
        lambda: jaxce.kl_divergence_with_logits(jnp.array([[1, 2]]), X[:1, :2]),
        TypeError,
        ["`p_logits`", "int32", "floating-point"],
    ),
    "integer_logits-softmax_focal_loss": (
        lambda: jaxce.softmax_focal_loss(jnp.array([[1, 2, 3]]), GOOD_T[:1]),
        TypeError,
        ["`logits`", "int32", "floating-point"],
    ),
    "integer_logits-sigmoid_focal_loss": (
        lambda: jaxce.sigmoid_focal_loss(jnp.array([[1, 2, 3]]), GOOD_T[:1]),
        TypeError,
        ["`logits`", "int32", "floating-point"],
    ),
    "integer_probs-binary_cross_entropy": (
        lambda: jaxce.binary_cross_entropy(jnp.array([0, 1]), jnp.array([0.0, 1.0])),
        TypeError,
        ["`probs`", "int32", "floating-point"],
    ),
    "integer_p-logit": (
        lambda: jaxce.logit(jnp.array([1, 0])),
        TypeError,
        ["`p`", "int32", "floating-point"],
    ),
    "integer_logits-torch.cross_entropy": (
        lambda: jt.cross_entropy(jnp.array([[1, 2, 3]]), Y[:1]),
        TypeError,
        ["`logits`", "int32", "floating-point"],
    ),
    "float_labels-integer_labels": (
        lambda: jaxce.softmax_cross_entropy_with_integer_labels(X, jnp.array([0.0, 1.0, 2.0])),
        TypeError,
        ["`labels`", "float32", "integer"],
    ),
    "float_labels-torch.nll_loss": (
        lambda: jt.nll_loss(LP, jnp.array([0.0, 1.0, 2.0]).astype(bool)),
        TypeError,
        ["`labels`", "bool", "integer"],
    ),
    "shape-kl_divergence_with_logits": (
        lambda: jaxce.kl_divergence_with_logits(X, X[:, :2]),
        ValueError,
        ["`p_logits`", "(3, 3)", "(3, 2)", "expected"],
    ),
    "shape-jensen_shannon_divergence": (
        lambda: jaxce.jensen_shannon_divergence(X, X[:2]),
        ValueError,
        ["`q_logits`", "(2, 3)", "expected"],
    ),
    "shape-binary_cross_entropy": (
        lambda: jaxce.binary_cross_entropy(P, GOOD_T[:, :2]),
        ValueError,
        ["`labels`", "(3, 2)", "expected"],
    ),
    "shape-poly_loss_cross_entropy": (
        lambda: jaxce.poly_loss_cross_entropy(X, GOOD_T[:2]),
        ValueError,
        ["`labels`", "(2, 3)", "expected"],
    ),
    "shape-categorical_cross_entropy": (
        lambda: jaxce.categorical_cross_entropy(P, GOOD_T[:, :2]),
        ValueError,
        ["`labels`", "(3, 2)", "expected"],
    ),
    "shape-generalized_kl_divergence": (
        lambda: jaxce.generalized_kl_divergence(LP, GOOD_T[:, :2]),
        ValueError,
        ["`targets`", "(3, 2)", "expected"],
    ),
    "weights_length-categorical_cross_entropy": (
        lambda: jaxce.categorical_cross_entropy(P, GOOD_T, weights=jnp.ones(4)),
        ValueError,
        ["`weights`", "(4,)", "expected one weight per class", "(3,)"],
    ),
    "weights_length-softmax_cross_entropy": (
        lambda: jaxce.softmax_cross_entropy(X, GOOD_T, weights=jnp.ones(4)),
        ValueError,
        ["`weights`", "(4,)", "expected", "(3,)"],
    ),
    "alpha_length-softmax_focal_loss": (
        lambda: jaxce.softmax_focal_loss(X, GOOD_T, alpha=jnp.ones(4)),
        ValueError,
        ["`alpha`", "(4,)", "expected", "(3,)"],
    ),
    "weight_length-torch.nll_loss": (
        lambda: jt.nll_loss(LP, Y, weight=jnp.ones(4)),
        ValueError,
        ["`weight`", "(4,)", "expected", "(3,)"],
    ),
    "axis-softmax_focal_loss": (
        lambda: jaxce.softmax_focal_loss(X, GOOD_T, axis=5),
        ValueError,
        ["`axis`=5", "out of range", "expected"],
    ),
    "axis-entropy": (
        lambda: jaxce.entropy(X, axis=(1, 1)),
        ValueError,
        ["`axis`=(1, 1)", "repeats"],
    ),
    "axis-generalized_kl_divergence": (
        lambda: jaxce.generalized_kl_divergence(LP, GOOD_T, axis=-3),
        ValueError,
        ["`axis`=-3", "expected"],
    ),
    "axis-torch.cross_entropy": (
        lambda: jt.cross_entropy(X, Y, axis=4),
        ValueError,
        ["`axis`=4", "expected"],
    ),
    "where_shape-categorical_cross_entropy": (
        lambda: jaxce.categorical_cross_entropy(P, GOOD_T, where=jnp.ones((2, 3), bool)),
        ValueError,
        ["`where`", "(2, 3)", "(3, 3)"],
    ),
    "where_dtype-entropy": (
        lambda: jaxce.entropy(X, where=jnp.ones((3, 3))),
        TypeError,
        ["`where`", "float32", "boolean"],
    ),
    "where_shape-jensen_shannon_divergence": (
        lambda: jaxce.jensen_shannon_divergence(X, X, where=jnp.ones((2, 3), bool)),
        ValueError,
        ["`where`", "(2, 3)"],
    ),
    "where_shape-softmax_focal_loss": (
        lambda: jaxce.softmax_focal_loss(X, GOOD_T, where=jnp.ones((4,), bool)),
        ValueError,
        ["`where`", "(4,)"],
    ),
    "base-entropy": (
        lambda: jaxce.entropy(X, base=-1.0),
        ValueError,
        ["`base`", "-1.0", "> 1"],
    ),
    "base-kl_divergence_with_logits": (
        lambda: jaxce.kl_divergence_with_logits(X, X, base=1.0),
        ValueError,
        ["`base`", "1.0", "> 1"],
    ),
}
for _name in ("cross_entropy", "nll_loss", "binary_cross_entropy",
              "binary_cross_entropy_with_logits"):  # fmt: skip
    _fn = getattr(jt, _name)
    _a = (X, Y) if _name in ("cross_entropy", "nll_loss") else (P, GOOD_T)
    TRACE_CASES[f"reduction-torch.{_name}"] = (
        lambda f=_fn, a=_a: f(*a, reduction="avg"),
        ValueError,
        ["`reduction`", "'avg'", "'none', 'mean', 'sum'"],
    )
TRACE_CASES["weight_length-torch.cross_entropy"] = (
    lambda: jt.cross_entropy(X, Y, weight=jnp.ones(4)),
    ValueError,
    ["`weight`", "(4,)", "expected", "(3,)"],
)
TRACE_PARAMS = list(TRACE_CASES)


@pytest.mark.parametrize("case", TRACE_PARAMS)
def test_all_losses_trace_time_error_names_argument_got_expected(case):
    thunk, exc, pieces = TRACE_CASES[case]
    with pytest.raises(exc) as info:
        thunk()
    for piece in pieces:
        assert piece in str(info.value), (piece, str(info.value))
    with pytest.raises(exc):  # the same error under jit (raised while tracing)
        jax.jit(thunk)()

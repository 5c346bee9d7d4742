"""The row-statistics layer (``jaxce._rows``): compensated row sums, ``S'``, the strategies."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import _rows
from jaxce._rows import (
    FUSED,
    STAGED,
    STAGED_CHUNKED,
    Pair,
    pair_total,
    row_stats,
    row_sum,
    row_sums,
)

STRATEGIES = {"STAGED": STAGED, "STAGED_CHUNKED": STAGED_CHUNKED, "FUSED": FUSED}

# --------------------------------------------------------------------------------------------
# Compensated sums
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_row_sums_of_several_arrays_equal_their_single_sums(strategy):
    """Several arrays summed in one reduction give each array's own sum bit for bit, within
    one rounding of the exact sum."""
    reduction = STRATEGIES[strategy]
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.exponential(size=(3, 1000)).astype(np.float32))
    b = jnp.asarray(rng.normal(size=(3, 1000)).astype(np.float32))
    pa, pb = jax.jit(lambda a, b: row_sums((a, b), (1,), reduction))(a, b)
    assert pa.s.shape == (3, 1)  # dims kept
    single = jax.jit(lambda a: row_sum(a, (1,), reduction, keepdims=True))
    if reduction.stages == 0:
        # One reduction per array or for both: the same order, the same bits.
        np.testing.assert_array_equal(pair_total(pa), single(a))
        np.testing.assert_array_equal(pair_total(pb), single(b))
    exact = np.array([math.fsum(r) for r in np.asarray(b, np.float64)])
    np.testing.assert_allclose(np.asarray(pair_total(pb), np.float64)[:, 0], exact, rtol=2**-23)


def test_staged_sums_reduce_every_array_in_one_reduction_per_stage():
    """XLA:CPU stages: V = 1000 with two arrays goes through an 8-lane stage (-> 125), a
    25-lane stage (-> 5), then the final reduction: three reductions for both arrays, not
    three per array. The fused strategy: one."""
    a = jnp.ones((3, 1000))

    def reductions(reduction):
        hlo = jax.jit(lambda a, b: row_sums((a, b), (1,), reduction)).lower(a, a).as_text()
        return hlo.count("stablehlo.reduce")

    assert reductions(STAGED) == 3
    assert reductions(FUSED) == 1


@pytest.mark.parametrize("chunks", [1, 64])
@pytest.mark.parametrize("lanes", [4, 8])
@pytest.mark.parametrize("v", [1000, 32768, 262144])
def test_plain_first_stage_on_non_negative_terms(v, lanes, chunks):
    """A flagged array of non-negative terms adds its first-stage lanes plainly, then
    compensates: the sum is still within 3 roundings of exact (float64 fsum), for smoothed
    labels (many equal small terms, the case that put a plain sum 5 ulps off) and for skewed
    exponential terms; the unflagged array's pair is unchanged bit for bit, and the first
    stage's reduction carries 3 operands instead of 4."""
    rng = np.random.default_rng(v)
    smoothed = np.full((2, v), 0.1 / v, np.float32)
    smoothed[:, 7] += 0.9
    skewed = (rng.exponential(size=(2, v)) ** 4).astype(np.float32)
    a = jnp.asarray(np.concatenate([smoothed, skewed]))
    b = jnp.asarray(rng.normal(size=a.shape).astype(np.float32))

    reduction = dataclasses.replace(STAGED, lanes=lanes, chunks=chunks)

    def sums(flags):
        return jax.jit(lambda a, b: row_sums((a, b), (1,), reduction, flags))

    (pa, pb), (_, qb) = sums((True, False))(a, b), sums(())(a, b)
    got = np.asarray(pair_total(pa), np.float64)[:, 0]
    exact = np.array([math.fsum(row) for row in np.asarray(a, np.float64)])
    assert np.all(np.abs(got - exact) <= 3 * 2.0**-24 * exact), (got - exact) / exact
    np.testing.assert_array_equal(np.asarray(pb.s), np.asarray(qb.s))
    np.testing.assert_array_equal(np.asarray(pb.c), np.asarray(qb.c))
    first = sums((True, False)).lower(a, b).as_text().split("stablehlo.reduce")[1]
    assert first.split("across")[0].count("init:") == 3, first[:200]


def test_stage_width_is_the_nearest_divisor():
    """A stage takes the divisor of the row length in [p/2, 2p] nearest to the preferred width
    p (no padded copy of the row): V = 1000 with 16 preferred goes 20 x 50 (not 8 x 125 with
    125 padded to 128), GPT-2's 50257 = 29 x 1733 needs no padding; a prime length pads."""
    widths = [_rows._stage_width(n, 16) for n in (1000, 32768, 250, 50257, 100, 1009)]
    assert widths == [20, 16, 10, 29, 20, 16]
    assert [_rows._stage_width(n, 4) for n in (1000, 32768, 250, 1010)] == [4, 4, 5, 5]


def test_padded_stage_sums_are_exact_on_a_prime_length():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 1009)).astype(np.float32))
    got = np.asarray(row_sum(x, (1,), STAGED), np.float64)
    exact = np.array([math.fsum(r) for r in np.asarray(x, np.float64)])
    np.testing.assert_allclose(got, exact, rtol=2**-23)


def test_row_sums_over_several_and_leading_axes():
    """Class axes anywhere (here the first and last of three): the sum over them, dims kept."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3, 40)).astype(np.float32))
    for reduction in (STAGED, STAGED_CHUNKED, FUSED):
        (p,) = row_sums((x,), (0, 2), reduction)
        assert p.s.shape == (1, 3, 1)
        exact = np.asarray(x, np.float64).sum(axis=(0, 2), keepdims=True)
        np.testing.assert_allclose(np.asarray(pair_total(p)), exact, rtol=2**-22)


def test_non_finite_terms_give_a_non_finite_total():
    x = jnp.array([[1.0, jnp.inf, 2.0], [1.0, jnp.nan, 2.0], [jnp.inf, -jnp.inf, 0.0]])
    got = np.asarray(row_sum(x, (1,), FUSED))
    assert got[0] == np.inf
    assert np.isnan(got[1])
    assert np.isnan(got[2])


def test_row_sums_derivative_is_the_sum_of_tangents():
    """Forward and reverse mode through the custom rule: the tangent of the sum is the sum of
    the tangents (``c`` has none), to second order."""
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 100)).astype(np.float32))
    for reduction in (STAGED, STAGED_CHUNKED, FUSED):

        def f(a, reduction=reduction):
            return jnp.sum(row_sum(a * a, (1,), reduction))

        np.testing.assert_allclose(jax.grad(f)(x), 2 * x, rtol=1e-6)
        _, tangent = jax.jvp(lambda a, r=reduction: row_sums((a,), (1,), r), (x,), (x,))
        np.testing.assert_allclose(tangent[0].s, jnp.sum(x, 1, keepdims=True), rtol=1e-6)
        assert not np.any(np.asarray(tangent[0].c))
        hv = jax.jvp(jax.grad(f), (x,), (jnp.ones_like(x),))[1]
        np.testing.assert_allclose(hv, 2 * jnp.ones_like(x), rtol=1e-6)


def test_two_sum_is_exact():
    rng = np.random.default_rng(4)
    a = rng.normal(size=1000).astype(np.float32) * np.float32(1e8)
    b = rng.normal(size=1000).astype(np.float32)
    s, e = _rows.two_sum(jnp.asarray(a), jnp.asarray(b))
    exact = a.astype(np.float64) + b.astype(np.float64)
    np.testing.assert_array_equal(np.asarray(s, np.float64) + np.asarray(e, np.float64), exact)


def test_pair_total_keeps_non_finite_sums():
    pair = Pair(jnp.array([jnp.inf, 1.0]), jnp.array([jnp.nan, 2.0**-20]))
    np.testing.assert_array_equal(pair_total(pair), [np.inf, 1.0 + 2.0**-20])


# --------------------------------------------------------------------------------------------
# Row statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_mass_beyond_the_top_keeps_tiny_mass_and_counts_ties(strategy):
    x = jnp.array(
        [
            [0.0, -70.0, -70.0, -80.0],
            [2.0, 2.0, 2.0, -jnp.inf],
            [-jnp.inf] * 4,
            [jnp.inf, 1, jnp.inf, 0],
        ]
    )
    stats, _ = row_stats(x, None, (1,), STRATEGIES[strategy])
    s1 = np.asarray(stats.s1)[:, 0]
    exact = 2 * math.exp(-70.0) + math.exp(-80.0)
    assert abs(s1[0] - exact) <= 2 * 2**-24 * exact  # not 0 (1 + S' rounds to 1)
    assert s1[1] == 2.0  # three tied maxima: n_top - 1
    assert s1[2] == 0.0  # empty row
    assert s1[3] == 1.0  # two +inf entries
    np.testing.assert_array_equal(np.asarray(stats.n_top)[:, 0], [1, 3, 0, 2])
    # derived quantities: log_norm = log1p(S'), p sums to 1, log_p <= 0
    np.testing.assert_allclose(stats.log_norm[0, 0], exact, rtol=2**-22)
    np.testing.assert_allclose(np.sum(np.asarray(stats.p)[[0, 1, 3]], 1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(stats.log_p)[[0, 1, 3]] <= 0)


def test_mask_removes_classes_from_the_statistics():
    x = jnp.array([[5.0, 0.0, -1.0]])
    where = jnp.array([[False, True, True]])
    stats, _ = row_stats(x, where, (1,), STAGED)
    assert float(stats.m[0, 0]) == 0.0
    np.testing.assert_allclose(stats.s1[0, 0], math.exp(-1.0), rtol=1e-7)
    assert float(stats.p[0, 0]) == 0.0


def test_shift_is_exact_at_the_max_and_its_error_is_exact():
    """``x - m`` is exactly 0 at the arg-max; ``shifted + shift_error == x - m`` exactly."""
    x = jnp.array([[1e8, 1.0 + 2**-20, 3.0, -jnp.inf], [jnp.inf, 3.0, jnp.inf, -jnp.inf]])
    stats, _ = row_stats(x, None, (1,), STAGED)
    assert float(stats.shifted[0, 0]) == 0.0
    xs = np.asarray(x, np.float64)[0, 1:3]
    got = np.asarray(stats.shifted, np.float64)[0, 1:3] + np.asarray(stats.shift_error)[0, 1:3]
    np.testing.assert_array_equal(got, xs - 1e8)
    np.testing.assert_array_equal(np.asarray(stats.shifted[1]), [0.0, -np.inf, 0.0, -np.inf])


def test_exp_again_gives_the_same_bits():
    """The recomputed ``exp(x - m)`` of a gradient pass is written differently but equal."""
    x = jnp.array([[1e30, -3e38, 0.5, -jnp.inf], [jnp.inf, 3.0, jnp.inf, -jnp.inf]])
    stats, _ = row_stats(x, None, (1,), STAGED)
    a, b = np.asarray(stats.e), np.asarray(stats.exp_again())
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_arg_max_is_left_out_of_the_mass_derivative():
    """The arg-max's own term carries no tangent: ``dS'/dx_top = -S'`` exactly (through the
    shift), not ``1 - (1 + S')``, which cancels for a confident row."""
    x = jnp.array([[0.0, -30.0, -40.0]])
    g = jax.grad(lambda a: row_stats(a, None, (1,), STAGED)[0].s1[0, 0])(x)
    s1 = math.exp(-30.0) + math.exp(-40.0)
    np.testing.assert_allclose(float(g[0, 0]), -s1, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The strategy: chosen in one place, only the speed depends on it
# --------------------------------------------------------------------------------------------


def test_reduction_for_reads_the_operands():
    x = jnp.ones((2, 3))
    assert _rows.reduction_for(x) is STAGED  # a concrete array on CPU
    assert _rows.reduction_for(x.astype(jnp.bfloat16)).exp_lanes == 8
    assert _rows.reduction_for(x, jnp.float16).exp_lanes == 8  # upcast 16-bit logits
    seen = []
    jax.jit(lambda a: seen.append(_rows.reduction_for(a)) or a)(x)
    assert seen == [STAGED]  # traced: the default backend (CPU here)
    assert hash(STAGED) != hash(FUSED)  # usable as a static argument


def _reductions(jaxpr) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(primitive, operand shape, reduced axes) of every reduction in a jaxpr, sub-jaxprs
    (jit, custom_jvp, custom_vjp) included."""
    out = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "reduce" or name.startswith("reduce_"):
            axes = eqn.params.get("dimensions", eqn.params.get("axes"))
            out.append((name, tuple(eqn.invars[0].aval.shape), tuple(axes)))
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out.extend(_reductions(inner))
    return out


ROW_LOSSES = {
    "softmax_cross_entropy": lambda x, a: jaxce.softmax_cross_entropy(x, a[0]),
    "softmax_cross_entropy_with_integer_labels": (
        lambda x, a: jaxce.softmax_cross_entropy_with_integer_labels(x, a[1])
    ),
    "label_smoothing": lambda x, a: jaxce.softmax_cross_entropy_with_integer_labels(
        x, a[1], label_smoothing=0.1, z_loss=1e-3
    ),
    "logsumexp": lambda x, a: jaxce.logsumexp(x, axis=-1),
    "log_softmax": lambda x, a: jaxce.log_softmax(x)[:, :3],
    "entropy": lambda x, a: jaxce.entropy(x),
    "kl_divergence": lambda x, a: jaxce.kl_divergence(jax.nn.log_softmax(x), a[0]),
    "kl_divergence_with_logits": lambda x, a: jaxce.kl_divergence_with_logits(x, a[2]),
    "jensen_shannon_divergence": lambda x, a: jaxce.jensen_shannon_divergence(x, a[2]),
    "softmax_focal_loss": lambda x, a: jaxce.softmax_focal_loss(x, a[0]),
    "poly_loss_cross_entropy": lambda x, a: jaxce.poly_loss_cross_entropy(x, a[0]),
    "categorical_cross_entropy": lambda x, a: jaxce.categorical_cross_entropy(
        jax.nn.softmax(x), a[0]
    ),
}


@pytest.mark.parametrize("name", list(ROW_LOSSES))
def test_fused_strategy_sums_each_row_in_one_reduction_with_the_same_results(name, monkeypatch):
    """Accelerators (``FUSED``): every row reduction of a loss and its gradient runs over the
    whole class axis of a ``[B, V]`` operand, one pass (no strided partial-sum stages, which
    exist for XLA:CPU's vectorizer), and values and gradients are those of the staged CPU
    path to a few ulps (the compensated sums hardly depend on the order). Checked on CPU by
    making ``reduction_for`` return the fused strategy; the fusion itself and the bandwidth
    need an accelerator."""
    B, V = 16, 1000
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, V)) * 4, jnp.float32)
    aux = (
        jax.nn.softmax(jnp.asarray(rng.normal(size=(B, V)) * 2, jnp.float32)),
        jnp.asarray(rng.integers(0, V, size=B)),
        jnp.asarray(rng.normal(size=(B, V)) * 4, jnp.float32),
    )
    loss = ROW_LOSSES[name]
    f = jax.value_and_grad(lambda z: jnp.sum(loss(z, aux)))

    def run():
        jax.clear_caches()
        return f(x), _reductions(jax.make_jaxpr(f)(x).jaxpr)

    try:
        (v0, g0), staged = run()
        monkeypatch.setattr(_rows, "STAGED", FUSED)
        monkeypatch.setattr(_rows, "_STAGED_16BIT", FUSED)
        (v1, g1), fused = run()
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    # Staged: [B, lanes, V / lanes] partial sums. Fused: every row reduction reads [B, V] (or
    # a [B, 1] column); the rest is the batch sum of the losses.
    assert any(len(shape) == 3 for _, shape, _ in staged), staged
    rows = [(shape, axes) for _, shape, axes in fused if len(shape) == 2 and shape != (B, 3)]
    assert rows
    assert all(shape in ((B, V), (B, 1)) and axes == (1,) for shape, axes in rows), rows
    u = float(np.finfo(np.float32).eps) / 2
    np.testing.assert_allclose(float(v1), float(v0), rtol=8 * u)
    gs = float(jnp.max(jnp.abs(g0)))
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=0, atol=8 * u * gs)


def test_only_the_row_layer_runs_compensated_reductions():
    """One row-statistics layer: no other module of the package builds its own reduction."""
    import pathlib

    pkg = pathlib.Path(jaxce.__file__).parent
    users = [p.name for p in sorted(pkg.rglob("*.py")) if "lax.reduce(" in p.read_text()]
    assert users == ["_rows.py"], users

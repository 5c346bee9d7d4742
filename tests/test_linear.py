"""jaxce.linear_cross_entropy: the LM-head loss computed over vocabulary blocks.

References are the materialized logits ``hidden @ weight`` in float64 and jaxce's integer-label
cross-entropy on them (itself checked against mpmath elsewhere). Vocabularies are chosen to be
multiples of no block, so every test also covers the masked tail.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce

U32 = 2.0**-24
# (tokens, D, V, block): V not a multiple of the block, V smaller than the block, one block
# and (tokens, columns) pairs: blocks computed in token chunks too
SHAPES = [
    (13, 8, 1000, 128),
    (7, 5, 257, 64),
    (5, 4, 50, 64),
    (6, 3, 64, 64),
    (12, 6, 301, (4, 64)),
    (12, 6, 301, (3, 128)),
]
OPTIONS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-2},
    "cap": {"logit_soft_cap": 2.5},
    "all": {"label_smoothing": 0.2, "z_loss": 1e-3, "logit_soft_cap": 4.0},
}


def draw(n, d, v, seed=0, dtype=jnp.float32, scale=1.0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(n, d)), dtype)
    w = jnp.asarray(rng.normal(size=(d, v)) * scale, dtype)
    b = jnp.asarray(rng.normal(size=(v,)), dtype)
    y = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    return h, w, b, y


def reference(h, w, b, y, *, reduction="mean", ignore_index=-100, weights=None, **opts):
    """The materialized loss in float64 (jaxce's integer-label CE on ``h @ w + b``)."""
    f64 = jnp.float64
    z = h.astype(f64) @ w.astype(f64)
    if b is not None:
        z = z + b.astype(f64)[None, :]
    ignored = y == ignore_index
    per = jaxce.softmax_cross_entropy_with_integer_labels(z, jnp.where(ignored, 0, y), **opts)
    per = jnp.where(ignored, 0.0, per)
    wt = jnp.ones_like(per) if weights is None else weights.astype(f64)
    if reduction == "none":
        return per
    if reduction == "sum":
        return jnp.sum(wt * per)
    den = jnp.sum(jnp.where(ignored, 0.0, wt))
    return jnp.where(den > 0, jnp.sum(wt * per) / jnp.where(den > 0, den, 1.0), 0.0)


def close(a, b, rtol, atol=0.0):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * np.max(np.abs(b)))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("opt", list(OPTIONS), ids=str)
def test_value_and_grads_match_the_materialized_loss(x64, shape, opt):
    n, d, v, block = shape
    h, w, b, y = draw(n, d, v, seed=n + v)
    kw = OPTIONS[opt]

    def ours(h, w, b):
        return jaxce.linear_cross_entropy(h, w, y, bias=b, block_size=block, **kw)

    def ref(h, w, b):
        return reference(h, w, b, y, **kw)

    args = (h, w, b)
    args64 = tuple(a.astype(jnp.float64) for a in args)
    close(ours(*args), ref(*args64), rtol=2e-6)
    got = jax.grad(ours, argnums=(0, 1, 2))(*args)
    want = jax.grad(ref, argnums=(0, 1, 2))(*args64)
    for g, r, a in zip(got, want, args, strict=True):
        assert g.dtype == a.dtype
        close(g, r, rtol=0, atol=2e-6)
    # float64 inputs are computed in float64: agreement to float64 roundoff
    close(ours(*args64), ref(*args64), rtol=1e-13)


@pytest.mark.parametrize("opt", list(OPTIONS), ids=str)
def test_forward_mode_and_linearize_match_the_materialized_jvp(x64, opt):
    n, d, v, block = SHAPES[0]
    h, w, b, y = draw(n, d, v, seed=3)
    kw = OPTIONS[opt]
    rng = np.random.default_rng(4)
    tangents = tuple(jnp.asarray(rng.normal(size=a.shape), a.dtype) for a in (h, w, b))

    def ours(h, w, b):
        return jaxce.linear_cross_entropy(h, w, y, bias=b, block_size=block, reduction="none", **kw)

    def ref(h, w, b):
        return reference(h, w, b, y, reduction="none", **kw)

    f64 = [a.astype(jnp.float64) for a in (h, w, b)]
    _, t_ref = jax.jvp(ref, f64, [t.astype(jnp.float64) for t in tangents])
    _, t_ours = jax.jvp(ours, (h, w, b), tangents)
    close(t_ours, t_ref, rtol=0, atol=1e-5)
    value, lin = jax.linearize(ours, h, w, b)
    close(lin(*tangents), t_ref, rtol=0, atol=1e-5)
    close(value, ref(*f64), rtol=2e-6)


def test_derivatives_in_the_scalar_options(x64):
    """z_loss, label_smoothing and the cap are differentiable, as in the materialized loss."""
    n, d, v, block = SHAPES[0]
    h, w, b, y = draw(n, d, v, seed=5)
    h64, w64, b64 = (a.astype(jnp.float64) for a in (h, w, b))

    def ours(eps, z, c):
        return jaxce.linear_cross_entropy(
            h64, w64, y, bias=b64, block_size=block, label_smoothing=eps, z_loss=z, logit_soft_cap=c
        )

    def ref(eps, z, c):
        return reference(h64, w64, b64, y, label_smoothing=eps, z_loss=z, logit_soft_cap=c)

    p = (jnp.float64(0.1), jnp.float64(1e-2), jnp.float64(3.0))
    close(jax.grad(ours, argnums=(0, 1, 2))(*p), jax.grad(ref, argnums=(0, 1, 2))(*p), rtol=1e-12)
    close(jax.jvp(ours, p, (1.0, 1.0, 1.0))[1], jax.jvp(ref, p, (1.0, 1.0, 1.0))[1], rtol=1e-12)


def _kappa_ce(z, y):
    """Condition numbers (the project's standard, docs/numerics.md) of the integer-label CE
    and of its gradient, componentwise in the logits ``z`` (float64 numpy, one row)."""
    z = np.asarray(z, np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    q = 1.0 - p
    others = np.sum(p * np.abs(z)) - p * np.abs(z)
    n = np.abs(z) * q + others
    t = np.zeros_like(p)
    t[y] = 1.0
    kappa_grad = p * n + np.minimum(p, np.abs(1.0 - t) + q)
    return n[y], kappa_grad


@pytest.mark.parametrize("block", [16, 64, 1000])
def test_accuracy_standard_on_exact_logits(block):
    """With dyadic inputs the float32 logits are exact, so the loss and its gradient with
    respect to the logits (the bias gradient of a single token) must be within a few
    condition-scaled ulps of the exact values, including confident tokens whose loss is
    1e-30 and whose ``1 - p_y`` is 1e-30."""
    rng = np.random.default_rng(7)
    d, v = 6, 999
    worst_value = worst_grad = 0.0
    for trial in range(12):
        h = rng.integers(-4, 5, size=(1, d)) / 4.0
        w = rng.integers(-8, 9, size=(d, v)).astype(np.float64)
        y = int(rng.integers(0, v))
        if trial % 2:  # a confident token: its logit far above the others
            h[0, 0] = 2.0
            w[:, y] = 0.0
            w[0, y] = 40.0 + trial
        z = h @ w
        hj, wj = jnp.asarray(h, jnp.float32), jnp.asarray(w, jnp.float32)
        bias = jnp.zeros((v,), jnp.float32)
        yj = jnp.asarray([y])

        def loss(bias, hj=hj, wj=wj, yj=yj):
            return jaxce.linear_cross_entropy(
                hj, wj, yj, bias=bias, reduction="sum", block_size=block
            )

        value, grad = jax.value_and_grad(loss)(bias)
        with jax.enable_x64(True):
            z64 = jnp.asarray(z[0], jnp.float64)
            r = float(jaxce.softmax_cross_entropy_with_integer_labels(z64, y))
            g = np.asarray(
                jax.grad(lambda z, y=y: jaxce.softmax_cross_entropy_with_integer_labels(z, y))(z64)
            )
        k_value, k_grad = _kappa_ce(z[0], y)
        if not (abs(r) < np.finfo(np.float32).tiny and float(value) == 0):
            worst_value = max(worst_value, abs(float(value) - r) / (U32 * (abs(r) + k_value)))
        got = np.asarray(grad, np.float64)
        e = np.abs(got - g) / (U32 * (np.abs(g) + k_grad))
        # below float32's smallest normal a 0 is exact (XLA flushes subnormals)
        e = np.where((np.abs(g) < np.finfo(np.float32).tiny) & (got == 0), 0.0, e)
        worst_grad = max(worst_grad, float(np.max(e)))
        if trial % 2:
            assert 0 < float(value) < 1e-12
            assert -1e-12 < float(grad[y]) < 0
    assert worst_value <= 4.0
    assert worst_grad <= 8.0


def test_tiny_losses_keep_their_digits_where_lse_minus_zy_gives_zero():
    h = jnp.eye(3, dtype=jnp.float32)  # token k reads row k of the weight
    y = jnp.array([7, 130, 299])
    w = jnp.zeros((3, 300), jnp.float32)
    for k in range(3):
        w = w.at[k, y[k]].set(60.0 + 10 * k)
    per = jaxce.linear_cross_entropy(h, w, y, reduction="none", block_size=64)
    want = jaxce.softmax_cross_entropy_with_integer_labels(h @ w, y)
    np.testing.assert_allclose(per, want, rtol=4 * U32)
    assert float(jnp.min(per)) > 0  # exp(-80) * 299: far below float32's epsilon
    naive = jax.nn.logsumexp(h @ w, axis=-1) - jnp.take_along_axis(h @ w, y[:, None], 1)[:, 0]
    assert float(jnp.max(naive)) == 0.0  # the usual formula rounds them all to 0
    gw = jax.grad(lambda w: jaxce.linear_cross_entropy(h, w, y, reduction="sum", block_size=64))(w)
    gref = jax.grad(lambda w: jaxce.softmax_cross_entropy_with_integer_labels(h @ w, y).sum())(w)
    rows = jnp.arange(3)
    np.testing.assert_allclose(gw[rows, y], gref[rows, y], rtol=8 * U32)
    gh = jax.grad(lambda h: jaxce.linear_cross_entropy(h, w, y, reduction="sum", block_size=64))(h)
    gh_ref = jax.grad(lambda h: jaxce.softmax_cross_entropy_with_integer_labels(h @ w, y).sum())(h)
    np.testing.assert_allclose(gh[rows, rows], gh_ref[rows, rows], rtol=8 * U32)
    assert float(jnp.max(gh[rows, rows])) < 0  # the hidden state's gradient keeps 1 - p_y too
    assert float(jnp.max(gw[rows, y])) < 0  # -(1 - p_y), not 0


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions_ignore_index_and_token_weights(x64, reduction):
    n, d, v, block = SHAPES[1]
    h, w, b, y = draw(n, d, v, seed=11)
    y = y.at[jnp.array([1, 4])].set(-100)
    h = h.at[1].set(jnp.nan)  # an ignored token's NaN never reaches the loss or gradients
    wt = jnp.asarray(np.random.default_rng(12).uniform(0, 2, n), jnp.float32)
    ct = jnp.asarray(np.random.default_rng(13).normal(size=n), jnp.float32)

    def ours(h, w):
        out = jaxce.linear_cross_entropy(
            h, w, y, bias=b, weights=wt, reduction=reduction, block_size=block
        )
        return jnp.sum(ct * out) if reduction == "none" else out

    def ref(h, w):
        out = reference(jnp.nan_to_num(h), w, b, y, weights=wt, reduction=reduction)
        if reduction == "none":
            out = out * wt.astype(jnp.float64)
            return jnp.sum(ct.astype(jnp.float64) * out)
        return out

    close(ours(h, w), ref(h.astype(jnp.float64), w.astype(jnp.float64)), rtol=2e-6)
    got = jax.grad(ours, argnums=(0, 1))(h, w)
    want = jax.grad(ref, argnums=(0, 1))(h.astype(jnp.float64), w.astype(jnp.float64))
    for g, r in zip(got, want, strict=True):
        assert bool(jnp.all(jnp.isfinite(g)))
        close(g, r, rtol=0, atol=2e-6)
    assert float(jnp.max(jnp.abs(got[0][jnp.array([1, 4])]))) == 0.0


def test_per_token_cotangents_with_reduction_none():
    """``reduction="none"`` keeps each token's cotangent: the gradient of ``sum c_n l_n`` is
    the sum of the per-token gradients scaled by ``c_n`` (a bug class of fused kernels)."""
    n, d, v, block = SHAPES[0]
    h, w, _, y = draw(n, d, v, seed=21)
    y = y.at[2].set(-100)
    c = jnp.arange(n, dtype=jnp.float32) - 4.0

    def per(h, w):
        return jaxce.linear_cross_entropy(h, w, y, reduction="none", block_size=block)

    _, vjp = jax.vjp(per, h, w)
    gh, gw = vjp(c)
    rows = [jax.grad(lambda h, w, k=k: per(h, w)[k], argnums=(0, 1))(h, w) for k in range(n)]
    np.testing.assert_allclose(gh, sum(c[k] * rows[k][0] for k in range(n)), atol=1e-6)
    np.testing.assert_allclose(gw, sum(c[k] * rows[k][1] for k in range(n)), atol=1e-6)


def test_all_ignored_batch_gives_zero_and_zero_gradients():
    h, w, b, _ = draw(4, 3, 70, seed=2)
    y = jnp.full((4,), -100)
    for reduction in ("mean", "sum"):
        f = functools.partial(
            jaxce.linear_cross_entropy, labels=y, bias=b, reduction=reduction, block_size=32
        )
        value, grads = jax.value_and_grad(lambda h, w, b, f=f: f(h, w, bias=b), argnums=(0, 1, 2))(
            h, w, b
        )
        assert float(value) == 0.0
        assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads)
    per = jaxce.linear_cross_entropy(h, w, y, reduction="none")
    assert per.shape == (4,)
    assert float(jnp.max(jnp.abs(per))) == 0.0


def test_leading_dims_are_tokens_and_vmap_works():
    h, w, _, y = draw(12, 4, 90, seed=8)
    h3, y3 = h.reshape(3, 4, 4), y.reshape(3, 4)
    per = jaxce.linear_cross_entropy(h3, w, y3, reduction="none", block_size=32)
    assert per.shape == (3, 4)
    np.testing.assert_allclose(
        per.reshape(-1),
        jaxce.linear_cross_entropy(h, w, y, reduction="none", block_size=32),
        rtol=1e-6,
    )
    batched = jax.vmap(lambda h, y: jaxce.linear_cross_entropy(h, w, y, block_size=32))(h3, y3)
    np.testing.assert_allclose(batched, per.mean(axis=1), rtol=1e-6)
    g = jax.vmap(jax.grad(lambda h, y: jaxce.linear_cross_entropy(h, w, y, block_size=32)))(h3, y3)
    assert g.shape == h3.shape
    assert bool(jnp.all(jnp.isfinite(g)))


def test_return_lse_is_the_logsumexp_and_differentiable(x64):
    n, d, v, block = SHAPES[0]
    h, w, b, y = draw(n, d, v, seed=9)
    y = y.at[0].set(-100)

    def lse_of(h, w, b):
        _, lse = jaxce.linear_cross_entropy(
            h, w, y, bias=b, return_lse=True, reduction="none", block_size=block, logit_soft_cap=5.0
        )
        return lse

    def ref(h, w, b):
        z = h @ w + b[None, :]
        z = 5.0 * jnp.tanh(z / 5.0)
        return jnp.where(y == -100, 0.0, jax.nn.logsumexp(z, axis=-1))

    f64 = [a.astype(jnp.float64) for a in (h, w, b)]
    close(lse_of(h, w, b), ref(*f64), rtol=2e-6)
    g = jax.grad(lambda *a: jnp.sum(lse_of(*a) ** 2), argnums=(0, 1, 2))(h, w, b)
    r = jax.grad(lambda *a: jnp.sum(ref(*a) ** 2), argnums=(0, 1, 2))(*f64)
    for a, c in zip(g, r, strict=True):
        close(a, c, rtol=0, atol=1e-5)


def test_tied_embedding_layout():
    """A ``[V, D]`` embedding with ``weight_layout="vd"`` gives the ``[D, V]`` results, its
    gradient in its own layout; ``embedding.T`` with the default layout gives them too."""
    h, w, b, y = draw(9, 5, 333, seed=10)
    emb = w.T
    f_dv = jax.value_and_grad(
        lambda h, w: jaxce.linear_cross_entropy(h, w, y, bias=b, block_size=64), (0, 1)
    )
    f_vd = jax.value_and_grad(
        lambda h, e: jaxce.linear_cross_entropy(h, e, y, bias=b, block_size=64, weight_layout="vd"),
        (0, 1),
    )
    (v1, (gh1, gw1)), (v2, (gh2, ge2)) = f_dv(h, w), f_vd(h, emb)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(gh1, gh2, atol=1e-6)
    assert ge2.shape == emb.shape
    np.testing.assert_allclose(gw1, ge2.T, atol=1e-6)
    v3 = jax.jit(lambda h, e: jaxce.linear_cross_entropy(h, e.T, y, bias=b))(h, emb)
    np.testing.assert_allclose(v1, v3, rtol=1e-6)


def _temp(f, *specs):
    c = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*specs).compile()
    return c.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["dv", "vd"])
def test_memory_holds_blocks_not_logits(dtype, layout):
    """Compile-only temp memory of value + gradients: a ceiling of a few blocks of logits
    plus ``[tokens, D]`` buffers, far below the materialized logits, and no weight-sized
    temporary (a float32 copy of a 16-bit weight, a layout copy)."""
    n, d, v, block = 256, 256, 32000, 512
    s = jax.ShapeDtypeStruct
    dt = jnp.dtype(dtype)
    wshape = (d, v) if layout == "dv" else (v, d)
    specs = (s((n, d), dt), s(wshape, dt), s((n,), jnp.int32))
    ours = _temp(
        lambda h, w, y: jaxce.linear_cross_entropy(h, w, y, block_size=block, weight_layout=layout),
        *specs,
    )
    logits = n * v * 4
    assert ours < 16 * n * block * 4 + 4 * n * d * 4
    assert ours < logits / 10
    assert ours < d * v * 2  # smaller than the 16-bit weight itself


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_token_chunks_bound_the_temporaries(dtype):
    """With ``block_size=(tokens, columns)`` a step holds one ``[tokens, columns]`` block: the
    temp memory stays near the chunked ceiling as the token count grows, where one chunk of all
    tokens needs several ``[N, columns]`` float32 blocks."""
    n, d, v, cols, tokens = 4096, 64, 8192, 512, 256
    s = jax.ShapeDtypeStruct
    dt = jnp.dtype(dtype)
    specs = (s((n, d), dt), s((d, v), dt), s((n,), jnp.int32))

    def temp(block):
        return _temp(lambda h, w, y: jaxce.linear_cross_entropy(h, w, y, block_size=block), *specs)

    chunked, whole = temp((tokens, cols)), temp((n, cols))
    # a few chunk-sized blocks plus [N, D] float32 buffers (hidden-gradient sums)
    assert chunked < 16 * tokens * cols * 4 + 6 * n * d * 4
    assert whole > 2 * n * cols * 4
    assert chunked < whole / 2


@pytest.mark.parametrize(
    ("n", "block", "want"),
    [
        (12, (5, 64), (4, 64)),  # the largest divisor of 12 in (5/2, 5]
        (13, (4, 64), (13, 64)),  # 13 has none: one chunk of all tokens
        (8192, None, (jaxce._linear.DEFAULT_TOKENS, 1000)),  # default chunk; V < default block
        (100, 4096, (100, 1000)),  # never wider than the vocabulary or taller than N
        (0, (8, 64), (0, 64)),
    ],
)
def test_block_size_gives_token_chunks_that_divide_the_tokens(n, block, want):
    assert jaxce._linear._blocks(n, 1000, block) == want


@pytest.mark.parametrize(("dtype", "ulp"), [("bfloat16", 2.0**-8), ("float16", 2.0**-11)])
def test_16_bit_inputs(dtype, ulp):
    h, w, b, y = draw(11, 16, 700, seed=14)
    hb, wb, bb = (a.astype(dtype) for a in (h, w, b))
    value, grads = jax.value_and_grad(
        lambda h, w, b: jaxce.linear_cross_entropy(
            h, w, y, bias=b, block_size=128, z_loss=1e-3, label_smoothing=0.1
        ),
        (0, 1, 2),
    )(hb, wb, bb)
    assert value.dtype == jnp.float32
    assert [g.dtype for g in grads] == [jnp.dtype(dtype)] * 3
    with jax.enable_x64(True):
        up = [a.astype(jnp.float64) for a in (hb, wb, bb)]
        r = reference(*up, y, z_loss=1e-3, label_smoothing=0.1)
        rg = jax.grad(
            lambda h, w, b: reference(h, w, b, y, z_loss=1e-3, label_smoothing=0.1), (0, 1, 2)
        )(*up)
    # logits of 16-bit inputs are products accumulated in float32: float32-level agreement
    close(value, r, rtol=1e-5)
    for g, c in zip(grads, rg, strict=True):
        close(g.astype(jnp.float32), c, rtol=0, atol=2 * ulp)
    fwd = jax.jvp(
        lambda h: jaxce.linear_cross_entropy(h, wb, y, block_size=128), (hb,), (jnp.ones_like(hb),)
    )[1]
    assert fwd.dtype == jnp.float32
    assert bool(jnp.isfinite(fwd))


def test_bad_labels_raise_eagerly_and_are_nan_under_jit():
    h, w, _, y = draw(4, 3, 40, seed=1)
    bad = y.at[2].set(40)
    with pytest.raises(ValueError, match="labels"):
        jaxce.linear_cross_entropy(h, w, bad)
    per = jax.jit(lambda h, w, y: jaxce.linear_cross_entropy(h, w, y, reduction="none"))(h, w, bad)
    assert bool(jnp.isnan(per[2]))
    assert bool(jnp.all(jnp.isfinite(per[jnp.array([0, 1, 3])])))
    assert bool(jnp.isnan(jax.jit(jaxce.linear_cross_entropy)(h, w, bad)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": np.zeros((4, 10), np.float32)}, ValueError, "weight"),
        ({"labels": np.zeros((3,), np.int32)}, ValueError, "labels"),
        ({"labels": np.zeros((5,), np.float32)}, TypeError, "labels"),
        ({"hidden": np.zeros((5, 3), np.int32)}, TypeError, "hidden"),
        ({"bias": np.zeros((9,), np.float32)}, ValueError, "bias"),
        ({"weights": np.zeros((4,), np.float32)}, ValueError, "weights"),
        ({"weights": -np.ones((5,), np.float32)}, ValueError, "weights"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"weight_layout": "kv"}, ValueError, "weight_layout"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"block_size": True}, ValueError, "block_size"),
        ({"block_size": (0, 64)}, ValueError, "block_size"),
        ({"block_size": (4, 64, 1)}, ValueError, "block_size"),
        ({"block_size": (4.0, 64)}, ValueError, "block_size"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
        ({"logit_soft_cap": 0.0}, ValueError, "logit_soft_cap"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index"),
        ({"return_lse": 1}, TypeError, "return_lse"),
        ({"axis_name": "model"}, ValueError, "axis_name"),  # not inside shard_map
    ],
)
def test_clear_errors(kwargs, error, match):
    args = {
        "hidden": np.zeros((5, 3), np.float32),
        "weight": np.zeros((3, 10), np.float32),
        "labels": np.zeros((5,), np.int32),
    }
    args.update(kwargs)
    h, w, y = args.pop("hidden"), args.pop("weight"), args.pop("labels")
    with pytest.raises(error, match=match):
        jaxce.linear_cross_entropy(h, w, y, **args)

"""Derivative checks that compile once (``jax.test_util.check_grads`` compiles a few dozen
programs per call, ~10-20 s each on a 2-core machine)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


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


def check_derivatives(f, args, *, params=(), order=2, modes=("fwd", "rev"), eps=1e-3, tol=2e-2):
    """What ``jax.test_util.check_grads(f, args, order, modes)`` checks, in one jitted program:
    along a random direction d (over every argument) and a random output cotangent, forward
    mode (jvp) and/or reverse mode (vjp) and — for order 2 — fwd-over-fwd and fwd-over-rev /
    rev-over-rev second derivatives, each against central differences of the order below.
    ``params`` (a tuple, or a list of tuples to check each) are extra traced arguments, not
    differentiated: one compiled program for every value.
    (check_grads runs eagerly and re-traces every evaluation: ~10 s a call on this machine.)"""
    flat, unravel = ravel_pytree(args)
    param_sets = params if isinstance(params, list) else [params]
    rng = np.random.default_rng(0)
    d = jnp.asarray(rng.normal(size=flat.shape), flat.dtype)
    out = jax.eval_shape(lambda v: f(*unravel(v), *param_sets[0]), flat)
    ct = jnp.asarray(rng.normal(size=out.shape), out.dtype)
    checks = [(m, "value") for m in modes]
    if order >= 2:
        checks += [("fwd-fwd", "fwd")] if "fwd" in modes else []
        checks += [("fwd-rev", "rev"), ("rev-rev", "rev")] if "rev" in modes else []
    wanted = {name for pair in checks for name in pair}

    @jax.jit
    def derivs(v, ps):
        s = lambda u: jnp.vdot(ct, f(*unravel(u), *ps))  # noqa: E731
        grad = jax.grad(s)
        fwd = lambda u: jax.jvp(s, (u,), (d,))[1]  # noqa: E731
        terms = {
            "value": lambda: s(v),
            "fwd": lambda: fwd(v),
            "rev": lambda: jnp.vdot(grad(v), d),
            "fwd-fwd": lambda: jax.jvp(fwd, (v,), (d,))[1],
            "fwd-rev": lambda: jnp.vdot(jax.jvp(grad, (v,), (d,))[1], d),
            "rev-rev": lambda: jnp.vdot(jax.grad(lambda u: jnp.vdot(grad(u), d))(v), d),
        }
        return {name: term() for name, term in terms.items() if name in wanted}

    for ps in param_sets:
        at, up, dn = derivs(flat, ps), derivs(flat + eps * d, ps), derivs(flat - eps * d, ps)
        for name, below in checks:
            numeric = (float(up[below]) - float(dn[below])) / (2 * eps)
            got = float(at[name])
            assert math.isfinite(got), name
            assert abs(got - numeric) <= tol * (1 + abs(numeric)), (name, ps, got, numeric)

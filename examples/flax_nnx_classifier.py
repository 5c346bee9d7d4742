"""Train a small Flax NNX classifier with optax and jaxce, on data made here (no downloads).

The one-line swap: ``optax.losses.softmax_cross_entropy_with_integer_labels`` becomes
``jaxce.softmax_cross_entropy_with_integer_labels``; nothing else in the step changes. The model
runs in bfloat16 (parameters in float32): jaxce computes the loss of 16-bit logits in float32.

    pip install ".[examples]" && python examples/flax_nnx_classifier.py

Runs in well under a minute on a 2-core CPU; exits non-zero if training does not learn.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxce

CLASSES, FEATURES, HIDDEN = 10, 32, 128


def make_data(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Gaussian clusters, one per class, with some overlap."""
    k_centres, k_labels, k_noise = jax.random.split(key, 3)
    centres = 0.4 * jax.random.normal(k_centres, (CLASSES, FEATURES))
    labels = jax.random.randint(k_labels, (n,), 0, CLASSES)
    x = centres[labels] + jax.random.normal(k_noise, (n, FEATURES))
    return x, labels


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        # bfloat16 activations, float32 parameters: the usual mixed-precision setup.
        self.hidden = nnx.Linear(FEATURES, HIDDEN, dtype=jnp.bfloat16, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, CLASSES, dtype=jnp.bfloat16, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = model(x)  # bfloat16
    # was: optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jaxce.softmax_cross_entropy_with_integer_labels(logits, y, label_smoothing=0.1).mean()


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def main() -> None:
    start = time.perf_counter()
    x, y = make_data(jax.random.key(0), 8192)
    x_test, y_test = x[-1024:], y[-1024:]
    x, y = x[:-1024], y[:-1024]
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)
    batch = 256
    losses = []
    for epoch in range(5):
        perm = jax.random.permutation(jax.random.key(epoch + 1), x.shape[0])
        for i in range(0, x.shape[0] - batch + 1, batch):
            idx = perm[i : i + batch]
            losses.append(float(train_step(model, optimizer, x[idx], y[idx])))
        acc = float(accuracy(model, x_test, y_test))
        print(f"epoch {epoch}: loss {losses[-1]:.4f}  test accuracy {acc:.3f}")
    print(f"{len(losses)} steps in {time.perf_counter() - start:.1f} s")
    # Fails loudly if a change breaks training (a NaN, or no learning).
    assert all(jnp.isfinite(jnp.asarray(losses))), "non-finite loss"
    assert losses[-1] < 0.7 * losses[0], f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert acc > 0.6, f"test accuracy {acc:.3f}"


if __name__ == "__main__":
    main()

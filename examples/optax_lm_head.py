"""Train a tiny next-token model with plain JAX + optax, its head loss from jaxce.

The vocabulary head uses ``jaxce.linear_cross_entropy(hidden, weight, labels)``: the loss of
``hidden @ weight`` computed over vocabulary blocks, so the ``[tokens, vocab]`` logits are never
stored (value or gradient). Padding tokens carry the label ``-100`` and are left out of the mean,
as in PyTorch. The tokens come from a random Markov chain made here (no downloads).

    pip install ".[examples]" && python examples/optax_lm_head.py

Runs in well under a minute on a 2-core CPU; exits non-zero if training does not learn.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax

import jaxce

VOCAB, DIM, SEQ, BATCH = 4096, 64, 32, 32


@jax.jit
def markov_chain(key: jax.Array) -> jax.Array:
    """[BATCH, SEQ + 1] token sequences in which each token has 4 equally likely successors."""
    k_start, k_pick = jax.random.split(key)
    successors = jax.random.randint(jax.random.key(7), (VOCAB, 4), 0, VOCAB)
    start = jax.random.randint(k_start, (BATCH,), 0, VOCAB)
    picks = jax.random.randint(k_pick, (SEQ, BATCH), 0, 4)

    def step(tok, pick):
        nxt = successors[tok, pick]
        return nxt, nxt

    _, rest = jax.lax.scan(step, start, picks)
    return jnp.concatenate([start[None], rest], axis=0).T


def init(key: jax.Array) -> dict[str, jax.Array]:
    k_emb, k_mix, k_head = jax.random.split(key, 3)
    return {
        "embed": 0.1 * jax.random.normal(k_emb, (VOCAB, DIM)),
        "mix": jax.random.normal(k_mix, (DIM, DIM)) / jnp.sqrt(DIM),
        "head": 0.1 * jax.random.normal(k_head, (DIM, VOCAB)),  # [D, V]
    }


def loss_fn(params: dict[str, jax.Array], tokens: jax.Array) -> jax.Array:
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    labels = labels.at[:, -4:].set(-100)  # pretend the tail is padding: ignored
    hidden = jnp.tanh(params["embed"][inputs] @ params["mix"])  # [batch, SEQ, D]
    # was: optax.losses.softmax_cross_entropy_with_integer_labels(hidden @ head, labels) + mask
    return jaxce.linear_cross_entropy(hidden, params["head"], labels, block_size=1024)


optimizer = optax.adam(1e-2)


@jax.jit
def train_step(params, state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss


def main() -> None:
    start = time.perf_counter()
    params = init(jax.random.key(0))
    state = optimizer.init(params)
    losses = []
    for step in range(200):
        tokens = markov_chain(jax.random.key(step + 1))
        params, state, loss = train_step(params, state, tokens)
        losses.append(float(loss))
        if step % 40 == 0 or step == 199:
            print(f"step {step:3d}: loss {losses[-1]:.3f}")
    print(f"{len(losses)} steps in {time.perf_counter() - start:.1f} s")
    # log(4) is the entropy of the chain: the best loss a model can reach.
    print(f"uniform over the vocabulary {jnp.log(VOCAB):.3f}, the chain's entropy {jnp.log(4):.3f}")
    assert all(jnp.isfinite(jnp.asarray(losses))), "non-finite loss"
    assert losses[-1] < 0.6 * losses[0], f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"


if __name__ == "__main__":
    main()

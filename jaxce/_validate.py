r"""Value checks: labels and targets outside their domain are never turned into a plausible number.

The policy, for every loss (the README has the same table):

=================================  =======================  =================  ==================
bad value                          eager (concrete inputs)  under ``jit``      ``jaxce.checked``
=================================  =======================  =================  ==================
integer label outside ``[0, C)``   ``ValueError`` naming    NaN loss and       checkify error,
                                   position and value       gradient for that  raised from inside
probability target outside         ``ValueError``           example; other     ``jit`` by
``[0, 1]`` (soft CE, KL, BCE)                               examples intact    ``err.throw()``
log-target ``> 0`` (KL, log        ``ValueError``           NaN                checkify error
targets)
=================================  =======================  =================  ==================

NaN targets count as outside the domain. Eager checks cost one reduction on the device and a
scalar transfer; under ``jit`` nothing is transferred: the NaN is part of the computation (an
elementwise select fused into the loss), so it costs no extra pass over the data.

Compare: optax 0.2.8 wraps a label of ``-1`` to the last class (a plausible, wrong number) and
gives NaN for ``-100``; TensorFlow raises on CPU and returns NaN on GPU (tensorflow #8484).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["checked", "target_checks"]

_STATE = threading.local()

F = TypeVar("F", bound=Callable[..., Any])


def _checking() -> bool:
    return bool(getattr(_STATE, "checking", False))


@contextlib.contextmanager
def _checking_scope() -> Iterator[None]:
    previous = _checking()
    _STATE.checking = True
    try:
        yield
    finally:
        _STATE.checking = previous


def targets_checked() -> bool:
    """Whether probability / log-probability targets are checked (see :func:`target_checks`)."""
    return bool(getattr(_STATE, "targets", True))


@contextlib.contextmanager
def target_checks(enabled: bool) -> Iterator[None]:
    """Turn the ``[0, 1]`` checks of probability targets off (or on) inside a ``with`` block.

    The losses are linear in their soft targets, so a target outside ``[0, 1]`` has a value
    (the linear extension) even though it is not a probability. Finite-difference gradient
    checks with respect to the targets (``jax.test_util.check_grads``, as optax's own tests do)
    step outside ``[0, 1]`` on purpose: wrap them in ``with jaxce.target_checks(False):``.
    Integer labels are always checked. The setting is read when a loss is traced: a function
    jitted and traced inside the block keeps it, one already traced outside keeps its own.

    Args:
      enabled: False to accept targets outside ``[0, 1]``.

    >>> import jax.numpy as jnp, jaxce
    >>> with jaxce.target_checks(False):
    ...     print(jaxce.softmax_cross_entropy(jnp.zeros(2), jnp.array([1.5, -0.5])))
    0.6931472
    """
    previous = targets_checked()
    _STATE.targets = bool(enabled)
    try:
        yield
    finally:
        _STATE.targets = previous


def checked(fn: Callable[..., Any]) -> Callable[..., tuple[checkify.Error, Any]]:
    """Checked mode: ``fn`` with jaxce's value checks reported from inside ``jit``.

    ``fn`` is any function that calls jaxce losses (a loss itself, or a whole training step).
    The returned function gives ``(error, output)`` like :func:`jax.experimental.checkify.checkify`
    (on which it is built); ``error.throw()`` raises a ``JaxRuntimeError`` naming the bad value
    and its position, ``error.get()`` returns the message or None. It composes with ``jit``
    either way round: ``jax.jit(jaxce.checked(f))``.

    Args:
      fn: the function to check.

    Returns:
      ``fn`` with checks, returning ``(error, fn's output)``.

    >>> import jax, jax.numpy as jnp, jaxce
    >>> f = jax.jit(jaxce.checked(jaxce.softmax_cross_entropy_with_integer_labels))
    >>> err, loss = f(jnp.zeros((2, 3)), jnp.array([0, 7]))
    >>> print(err.get().splitlines()[0])
    `labels` holds 7 at flat position 1, outside [0, 3) (the number of classes)...
    """

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with _checking_scope():
            return fn(*args, **kwargs)

    return checkify.checkify(traced, errors=checkify.user_checks)


def _is_concrete(a: jax.Array) -> bool:
    return not isinstance(a, jax.core.Tracer)


@jax.jit
def _first_bad(bad: jax.Array) -> tuple[jax.Array, jax.Array]:
    flat = bad.reshape(-1)
    return jnp.any(flat), jnp.argmax(flat)


def _report(name: str, values: jax.Array, bad: jax.Array, expected: str) -> None:
    """Raise (eagerly) or emit a checkify check (checked mode) if ``bad`` has a True entry."""
    if bad.size == 0:
        return
    if _checking():
        flat = bad.reshape(-1)
        first = jnp.argmax(flat)
        checkify.check(
            ~jnp.any(flat),
            f"`{name}` holds {{}} at flat position {{}}, outside {expected}",
            values.reshape(-1)[first],
            first,
        )
        return
    if not _is_concrete(bad):
        return  # concrete values combined with traced ones inside a jit trace
    any_bad, first = _first_bad(bad)
    if bool(any_bad):
        position = np.unravel_index(int(first), bad.shape)
        value = np.asarray(values.reshape(-1)[int(first)])
        raise ValueError(
            f"`{name}` holds {value} at position {tuple(int(i) for i in position)} (shape "
            f"{tuple(values.shape)}), outside {expected}. Under jit that example's loss would "
            "be NaN; wrap the loss with jaxce.checked to report it from inside jit."
        )


def _wanted(values: jax.Array) -> bool:
    """Check now: in checked mode, or eagerly. Under plain jit the loss itself makes the NaN,
    so nothing is traced here."""
    return _checking() or _is_concrete(values)


def check_class_indices(name: str, labels: jax.Array, num_classes: int) -> None:
    """Integer labels must lie in ``[0, num_classes)``."""
    if _wanted(labels):
        bad = (labels < 0) | (labels >= num_classes)
        _report(name, labels, bad, f"[0, {num_classes}) (the number of classes)")


def outside_unit_interval(t: jax.Array) -> jax.Array:
    """True where ``t`` is not a probability (outside ``[0, 1]``, or NaN)."""
    return ~((t >= 0) & (t <= 1))


def check_probabilities(name: str, t: jax.Array, mask: jax.Array | None = None) -> None:
    """Probability targets must lie in ``[0, 1]`` on the classes ``mask`` keeps (unless
    :func:`target_checks` is off)."""
    if targets_checked() and _wanted(t):
        bad = outside_unit_interval(t)
        _report(name, t, bad if mask is None else bad & mask, "[0, 1] (probabilities)")


def check_log_probabilities(name: str, lt: jax.Array, mask: jax.Array | None = None) -> None:
    """Log-probability targets must be ``<= 0`` on the classes ``mask`` keeps (unless
    :func:`target_checks` is off)."""
    if targets_checked() and _wanted(lt):
        bad = ~(lt <= 0)
        _report(name, lt, bad if mask is None else bad & mask, "[-inf, 0] (log-probabilities)")


def nan_where(bad: jax.Array, a: jax.Array) -> jax.Array:
    """``a`` with NaN where ``bad``: how an invalid value poisons its example under jit."""
    return jnp.where(bad, jnp.array(jnp.nan, a.dtype), a)


def negative(w: jax.Array) -> jax.Array:
    """True where ``w`` is not a non-negative number (negative, or NaN)."""
    return ~(w >= 0)


def check_nonnegative(name: str, w: jax.Array) -> None:
    """Weights (class weights, ``pos_weight``, per-example weights) must be ``>= 0``.

    Always checked (like integer labels; :func:`target_checks` does not switch it off). Under
    ``jit`` the core turns the affected examples NaN with :func:`nan_where` and :func:`negative`.
    """
    if _wanted(w):
        _report(name, w, negative(w), "[0, inf) (weights must be non-negative)")


def check_positive(name: str, v: jax.Array) -> None:
    """Scales (``temperature``, ``logit_soft_cap``) must be ``> 0``; NaN under ``jit``."""
    if _wanted(v):
        _report(name, v, ~(v > 0), "(0, inf] (a positive scale)")

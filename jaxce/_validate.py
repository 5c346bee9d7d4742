r"""Value checks: bad labels and inputs are never turned into a plausible number.

Two kinds of value are checked differently:

* **Always checked** (they are never meaningful): integer labels outside ``[0, C)``,
  probabilities given *as inputs* outside ``[0, 1]`` (``binary_cross_entropy`` and
  ``categorical_cross_entropy``'s ``probs``, ``logit``), negative weights and scales, and
  negative targets of the KL divergences (``t·log t`` is not real there).
* **Targets** (soft labels of the cross-entropies, binary labels, KL targets above 1,
  log-targets above 0) are *not* checked by default: every cross-entropy is linear in its
  targets and the KL divergences hold ``t·log t`` for any ``t >= 0``, so signed or ``> 1``
  targets have an exact value, which jaxce computes as optax and PyTorch do (advantage-weighted
  cross-entropy, weights folded into one-hot targets, finite-difference checks that step the
  targets). :func:`checked` reports them from inside ``jit``; :func:`target_checks` turns on
  the strict mode, where they are errors like the others.

=================================  =======================  =================  ==================
bad value                          eager (concrete inputs)  under ``jit``      ``jaxce.checked``
=================================  =======================  =================  ==================
always checked (see above)         ``ValueError`` naming    NaN loss and       checkify error,
                                   value and position       gradient for that  raised from inside
                                                            example; other     ``jit`` by
                                                            examples intact    ``err.throw()``
target outside its range           the exact value          the exact value    checkify error
(default)                                                                      (``targets=True``)
target outside its range, inside   ``ValueError``           NaN for that       checkify error
``with jaxce.target_checks():``                             example
=================================  =======================  =================  ==================

NaN values count as outside every domain. Eager checks cost one reduction on the device and a
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

__all__ = ["checked", "strict_targets", "target_checks"]

_STATE = threading.local()

F = TypeVar("F", bound=Callable[..., Any])


def _checking() -> bool:
    return getattr(_STATE, "checking", None) is not None


def _checking_targets() -> bool:
    return bool(getattr(_STATE, "checking", None))


@contextlib.contextmanager
def _checking_scope(targets: bool) -> Iterator[None]:
    previous = getattr(_STATE, "checking", None)
    _STATE.checking = bool(targets)  # None: not in checked mode
    try:
        yield
    finally:
        _STATE.checking = previous


def strict_targets() -> bool:
    """Whether the strict mode of :func:`target_checks` is on (read at trace time)."""
    return bool(getattr(_STATE, "strict", False))


@contextlib.contextmanager
def target_checks(enabled: bool = True) -> Iterator[None]:
    """Strict mode: targets outside their range are errors inside this ``with`` block.

    By default jaxce computes every real-valued target as optax and PyTorch do: the
    cross-entropies are linear in their targets (signed advantages, weights folded into
    one-hot targets, labels outside ``[0, 1]`` all have an exact value), the KL divergences
    take any target ``>= 0`` and any log-target. Inside ``with jaxce.target_checks():`` a soft
    label or binary label outside ``[0, 1]``, a KL target above 1 or a log-target above 0 raises
    a ``ValueError`` naming its value and position (concrete inputs), and makes its example
    NaN under ``jit``, for code that wants probability targets enforced. Integer labels,
    probabilities given as inputs and weights are checked either way; :func:`checked` reports
    targets from inside ``jit`` without changing the values.

    The setting is read when a loss is traced: a function jitted and traced inside the block
    keeps it, one already traced outside keeps its own.

    Args:
      enabled: True (the default) for the strict mode; False turns it off inside an outer
        strict block.

    >>> import jax.numpy as jnp, jaxce
    >>> print(jaxce.softmax_cross_entropy(jnp.zeros(2), jnp.array([1.5, -0.5])))
    0.6931472
    >>> with jaxce.target_checks():
    ...     jaxce.softmax_cross_entropy(jnp.zeros(2), jnp.array([1.5, -0.5]))
    Traceback (most recent call last):
    ...
    ValueError: `labels` holds 1.5 at position (0,) (shape (2,)), outside [0, 1] ...
    """
    previous = strict_targets()
    _STATE.strict = bool(enabled)
    try:
        yield
    finally:
        _STATE.strict = previous


def checked(
    fn: Callable[..., Any], *, targets: bool = True
) -> Callable[..., tuple[checkify.Error, Any]]:
    """Checked mode: ``fn`` with jaxce's value checks reported from inside ``jit``.

    ``fn`` is any function that calls jaxce losses (a loss itself, or a whole training step).
    The returned function gives ``(error, output)`` like :func:`jax.experimental.checkify.checkify`
    (on which it is built); ``error.throw()`` raises a ``JaxRuntimeError`` naming the bad value
    and its position, ``error.get()`` returns the message or None. It composes with ``jit``
    either way round: ``jax.jit(jaxce.checked(f))``.

    Reported: integer labels outside ``[0, C)``, probabilities outside ``[0, 1]``, negative
    weights and scales, negative KL targets and, with ``targets=True``, targets outside their
    probability range (soft or binary labels outside ``[0, 1]``, KL targets above 1,
    log-targets above 0). The outputs are those of ``fn`` unchecked: a signed target keeps its
    exact value and is only reported.

    Args:
      fn: the function to check.
      targets: also report targets outside their probability range (False for code that
        passes signed or scaled targets on purpose, e.g. advantage-weighted cross-entropy).

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
        with _checking_scope(targets):
            return fn(*args, **kwargs)

    return checkify.checkify(traced, errors=checkify.user_checks)


def is_concrete(a: jax.Array) -> bool:
    return not isinstance(a, jax.core.Tracer)


@jax.jit
def _first_bad(bad: jax.Array) -> tuple[jax.Array, jax.Array]:
    flat = bad.reshape(-1)
    return jnp.any(flat), jnp.argmax(flat)


def report(name: str, values: jax.Array, bad: jax.Array, expected: str) -> None:
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
    if not is_concrete(bad):
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


def wanted(values: jax.Array) -> bool:
    """Check now: in checked mode, or eagerly. Under plain jit the loss itself makes the NaN,
    so nothing is traced here."""
    return _checking() or is_concrete(values)


def check_class_indices(name: str, labels: jax.Array, num_classes: int) -> None:
    """Integer labels must lie in ``[0, num_classes)``."""
    if wanted(labels):
        bad = (labels < 0) | (labels >= num_classes)
        report(name, labels, bad, f"[0, {num_classes}) (the number of classes)")


def outside_unit_interval(t: jax.Array) -> jax.Array:
    """True where ``t`` is not a probability (outside ``[0, 1]``, or NaN)."""
    return ~((t >= 0) & (t <= 1))


def _masked(bad: jax.Array, mask: jax.Array | None) -> jax.Array:
    return bad if mask is None else bad & mask


def check_probabilities(name: str, p: jax.Array, mask: jax.Array | None = None) -> None:
    """Probabilities given as inputs (``probs``) must lie in ``[0, 1]`` on the kept classes.

    Always checked: a probability outside ``[0, 1]`` has no meaning."""
    if wanted(p):
        report(name, p, _masked(outside_unit_interval(p), mask), "[0, 1] (probabilities)")


def _targets_wanted(values: jax.Array) -> bool:
    """Target ranges are checked in checked mode (``targets=True``) or in strict mode."""
    if _checking():
        return _checking_targets() or strict_targets()
    return strict_targets() and is_concrete(values)


def check_probability_targets(name: str, t: jax.Array, mask: jax.Array | None = None) -> None:
    """Soft / binary labels outside ``[0, 1]``: reported in checked and strict mode only
    (by default they are the linear extension, see :func:`target_checks`)."""
    if _targets_wanted(t):
        report(name, t, _masked(outside_unit_interval(t), mask), "[0, 1] (probabilities)")


def check_log_probability_targets(name: str, lt: jax.Array, mask: jax.Array | None = None) -> None:
    """Log-targets above 0: reported in checked and strict mode only."""
    if _targets_wanted(lt):
        report(name, lt, _masked(~(lt <= 0), mask), "[-inf, 0] (log-probabilities)")


def check_nonnegative_targets(name: str, t: jax.Array, mask: jax.Array | None = None) -> None:
    """KL-type targets (``t·log t``) must be ``>= 0`` on the kept classes: always checked
    (the cores make such an example NaN under ``jit``)."""
    if wanted(t):
        report(name, t, _masked(negative(t), mask), "[0, inf) (non-negative targets)")


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
    if wanted(w):
        report(name, w, negative(w), "[0, inf) (weights must be non-negative)")

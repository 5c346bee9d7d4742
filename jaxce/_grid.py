"""The hard-input grid: where the usual formulas break, in one place.

Used by ``python -m jaxce`` (the self-check) and by the accuracy tests. Everything is built with
NumPy from a fixed seed, in float64; callers cast to the dtype under test and score against a
reference computed on the *cast* values (the exact inputs).

Rows cover confident-correct predictions with logit gaps 10…100 (losses down to 1e-30 and
below), confident-wrong ones, logit scales 1e-4…1e4, shared offsets up to 1e8, exact ties,
``-inf`` masks, ``±inf`` logits, ``where`` masks, and targets of every kind users pass: soft
labels (one-hot, smoothed, Dirichlet, sparse Dirichlet), weighted ones above 1, signed
advantages and rows of both signs, for class counts from 2 to 10^4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BINARY_LABELS",
    "NONNEGATIVE_KINDS",
    "OUTSIDE_BINARY_LABELS",
    "PROBABILITY_KINDS",
    "REAL_BINARY_LABELS",
    "SCALED_KINDS",
    "SIGNED_KINDS",
    "TARGET_KINDS",
    "RowBatch",
    "elementwise_grid",
    "softmax_grid",
]

DEFAULT_CLASSES = (2, 3, 10, 100, 1000, 10_000)


@dataclass(frozen=True)
class RowBatch:
    """A batch of rows with one kind of difficulty.

    ``x`` is ``[B, V]`` float64 logits, ``y`` ``[B]`` integer labels, ``where`` an optional
    ``[B, V]`` mask, and ``soft`` maps a target kind (:data:`TARGET_KINDS`) to ``[B, V]``
    float64 targets (every kind puts zero mass on masked and ``-inf`` classes unless the case
    is about exactly that).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    where: np.ndarray | None = None
    soft: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.x.shape[1])


#: Probability targets (non-negative, summing to 1).
PROBABILITY_KINDS = ("one-hot", "smoothed", "dirichlet", "sparse-dirichlet")
#: Non-negative targets that sum to more than 1: per-example weights folded into smoothed
#: labels (``w`` in ``[1, 10]``), the unnormalized targets of a KL divergence.
SCALED_KINDS = ("weighted",)
#: Signed targets: one-hot times a signed advantage (policy-gradient RL, ``|A|`` in
#: ``[0.01, 10]``), and rows of both signs (``one-hot + d₁ − d₂`` for two Dirichlet(1) draws).
SIGNED_KINDS = ("advantage", "signed")
#: Every kind: the targets of the losses that are linear in them (the cross-entropies).
TARGET_KINDS = PROBABILITY_KINDS + SCALED_KINDS + SIGNED_KINDS
#: The kinds a KL divergence takes (``t·log t`` needs ``t >= 0``).
NONNEGATIVE_KINDS = PROBABILITY_KINDS + SCALED_KINDS


def _soft_labels(
    rng: np.random.Generator, extra: np.random.Generator, y: np.ndarray, allowed: np.ndarray
) -> dict[str, np.ndarray]:
    """Targets of every kind in :data:`TARGET_KINDS` (zero on the classes not ``allowed``).

    The probability kinds draw from ``rng``, the others from ``extra`` (so that adding kinds
    leaves the rest of the grid as it was)."""
    b, v = allowed.shape
    one_hot = np.zeros((b, v))
    one_hot[np.arange(b), y] = 1.0
    spread = allowed / np.maximum(allowed.sum(axis=1, keepdims=True), 1)
    smoothed = 0.9 * one_hot + 0.1 * spread
    out = {"one-hot": one_hot, "smoothed": smoothed}

    def dirichlet(gen: np.random.Generator, alpha: float) -> np.ndarray:
        d = gen.gamma(alpha, size=(b, v)) * allowed
        d[np.arange(b), y] += 1e-3  # never an all-zero row
        return d / d.sum(axis=1, keepdims=True)

    for name, alpha in (("dirichlet", 1.0), ("sparse-dirichlet", 0.05)):
        out[name] = dirichlet(rng, alpha)
    out["weighted"] = smoothed * 10.0 ** extra.uniform(0.0, 1.0, size=(b, 1))
    sign = extra.choice([-1.0, 1.0], size=(b, 1))
    # (+ 0.0: no -0.0 targets)
    out["advantage"] = one_hot * sign * 10.0 ** extra.uniform(-2.0, 1.0, size=(b, 1)) + 0.0
    out["signed"] = one_hot + dirichlet(extra, 1.0) - dirichlet(extra, 1.0) + 0.0
    return out


def softmax_grid(
    classes: tuple[int, ...] = DEFAULT_CLASSES, rows: int = 2, seed: int = 0
) -> list[RowBatch]:
    """Rows for the softmax-family functions (logsumexp, log_softmax, softmax, the CE losses).

    Args:
      classes: the class counts V to build rows for.
      rows: rows per case and V (the largest V gets one row per case).
      seed: NumPy seed.
    """
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])
    batches: list[RowBatch] = []
    for v in classes:
        b = 1 if v >= 10_000 else rows
        ar = np.arange(b)

        def add(
            name: str,
            x: np.ndarray,
            y: np.ndarray,
            where: np.ndarray | None = None,
            allowed: np.ndarray | None = None,
            v: int = v,
        ) -> None:
            if allowed is None:
                allowed = np.isfinite(x) if where is None else where & np.isfinite(x)
                allowed[np.arange(len(y)), y] = True
            batches.append(
                RowBatch(f"{name} V={v}", x, y, where, _soft_labels(rng, extra, y, allowed))
            )

        base = rng.normal(size=(b, v))
        y = rng.integers(0, v, size=b)
        for scale in (1e-4, 1.0, 30.0, 1e4):
            add(f"scale {scale:g}", base * scale, y)
        for gap in (10.0, 30.0, 70.0, 100.0):
            x = rng.normal(size=(b, v))
            x[ar, y] = x.max(axis=1) + gap
            add(f"confident-correct gap {gap:g}", x, y)
        x = rng.normal(size=(b, v))
        x[ar, y] = x.min(axis=1) - 30.0
        add("confident-wrong gap 30", x, y)
        for offset in (1e4, 1e8):
            x = rng.normal(size=(b, v)) * 3 + offset
            add(f"offset {offset:g}", x, y)
        add("all tied", np.full((b, v), 2.5), y)
        if v >= 3:
            x = rng.normal(size=(b, v))
            top = x.max(axis=1)
            x[:, 0] = top + 5.0
            x[:, 1] = top + 5.0
            add("tied max", x, np.zeros(b, np.int64))
            x = rng.normal(size=(b, v)) * 3
            x[:, 1::2] = -np.inf
            yy = 2 * rng.integers(0, (v + 1) // 2, size=b)
            add("-inf masks", x, yy)
            x = rng.normal(size=(b, v))
            x[:, 0] = np.inf
            add("+inf, label on it", x, np.zeros(b, np.int64))
            add("+inf, label elsewhere", x.copy(), np.ones(b, np.int64))
            w = rng.uniform(size=(b, v)) < 0.6
            w[ar, y] = True
            add("where mask", rng.normal(size=(b, v)) * 5, y, where=w)
    return batches


def elementwise_grid() -> np.ndarray:
    """Logits for softplus / log_sigmoid / sigmoid / sigmoid BCE: signed logspace plus edges."""
    mags = np.concatenate(
        [
            np.logspace(-4, 4, 41),
            [0.0, 1e-30, 15.0, 17.0, 20.0, 30.0, 36.0, 50.0, 80.0, 88.0, 100.0, 700.0],
            [1e8, np.inf],
        ]
    )
    return np.unique(np.concatenate([mags, -mags]))


#: Binary labels that are probabilities.
BINARY_LABELS = np.array([0.0, 1.0, 0.5, 0.1, 0.9, 1e-7, 1.0 - 1e-7])
#: Binary labels outside [0, 1] (label-noise and distillation tricks, weights folded in,
#: finite-difference steps): binary cross-entropy is affine in its label.
OUTSIDE_BINARY_LABELS = np.array([-2.0, -0.5, -1e-5, 1.0 + 1e-5, 1.5, 3.0, 100.0])
#: Every binary label of the grid.
REAL_BINARY_LABELS = np.concatenate([BINARY_LABELS, OUTSIDE_BINARY_LABELS])

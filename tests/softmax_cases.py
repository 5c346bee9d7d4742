"""Shared by the softmax-family tests (test_softmax.py options, test_focal.py): the option set
and the rows both label kinds are evaluated on."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

INF = math.inf
W3 = np.array([0.5, 2.0, 1.5])
OPTIONS = {
    "weights": {"weights": W3},
    "label_smoothing": {"label_smoothing": 0.1},
    "weights+label_smoothing": {"weights": W3, "label_smoothing": 0.2},
    "z_loss": {"z_loss": 1e-3},
    "temperature": {"temperature": 2.5},
    "logit_soft_cap": {"logit_soft_cap": 3.0},
    "all": {
        "weights": W3,
        "label_smoothing": 0.1,
        "z_loss": 1e-2,
        "temperature": 0.7,
        "logit_soft_cap": 5.0,
    },
}
#: The grid case kept at V = 100 (--run-slow).
LARGE_V_CASE = "confident-correct gap 30"
ROWS = [
    ([2.0, 0.0, -1.0], 1, None),
    ([-INF, 0.0, 3.0], 2, None),
    ([-INF, 0.0, 3.0], 0, None),
    ([INF, 0.0, 1.0], 0, None),
    ([1e4, -1e4, 0.0], 1, None),
    ([30.0, 0.0, -5.0], 0, None),
    ([5.0, 0.0, 1.0], 1, [True, False, True]),
    ([5.0, 0.0, 1.0], 1, [False, False, False]),
]


def kw_for(opts, dtype=jnp.float32):
    return {k: (jnp.asarray(v, dtype) if k == "weights" else v) for k, v in opts.items()}

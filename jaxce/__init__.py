"""jaxce: numerically stable cross-entropy losses for JAX.

Drop-in, optax-compatible losses (same names and signatures as ``optax.losses``) whose values
and gradients stay finite and accurate at extreme logits, built on a small set of primitives
with custom derivative rules. See ``shared/NUMERICS.md`` in the project for the accuracy
standard (condition-scaled ulps).
"""

from jaxce._divergences import kl_divergence as kl_divergence
from jaxce._divergences import kl_divergence_with_log_targets as kl_divergence_with_log_targets
from jaxce._primitives import log_sigmoid as log_sigmoid
from jaxce._primitives import log_softmax as log_softmax
from jaxce._primitives import logsumexp as logsumexp
from jaxce._primitives import safe_mul as safe_mul
from jaxce._primitives import sigmoid as sigmoid
from jaxce._primitives import softmax as softmax
from jaxce._primitives import softplus as softplus
from jaxce._primitives import xlogy as xlogy
from jaxce._probabilities import binary_cross_entropy as binary_cross_entropy
from jaxce._probabilities import categorical_cross_entropy as categorical_cross_entropy
from jaxce._probabilities import log_odds as log_odds
from jaxce._probabilities import logit as logit
from jaxce._sigmoid import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from jaxce._sigmoid import sigmoid_focal_loss as sigmoid_focal_loss
from jaxce._softmax import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from jaxce._softmax import softmax_cross_entropy as softmax_cross_entropy
from jaxce._softmax import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from jaxce._validate import checked as checked
from jaxce._validate import target_checks as target_checks

__version__ = "0.1.0"

#: The optax-compatible losses (same names and signatures as ``optax.losses``).
LOSSES = (
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "kl_divergence",
    "kl_divergence_with_log_targets",
)

__all__ = [
    "LOSSES",
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "checked",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "log_odds",
    "log_sigmoid",
    "log_softmax",
    "logit",
    "logsumexp",
    "safe_mul",
    "safe_softmax_cross_entropy",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "softplus",
    "target_checks",
    "xlogy",
]

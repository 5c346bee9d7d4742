"""jaxce: numerically stable cross-entropy losses for JAX.

Drop-in, optax-compatible losses (same names and signatures as ``optax.losses``) whose values
and gradients stay finite and accurate at extreme logits, built on a small set of primitives
with custom derivative rules. See ``docs/numerics.md`` in the project for the accuracy
standard (condition-scaled ulps).
"""

from jaxce._divergences import convex_kl_divergence as convex_kl_divergence
from jaxce._divergences import generalized_kl_divergence as generalized_kl_divergence
from jaxce._divergences import kl_divergence as kl_divergence
from jaxce._divergences import kl_divergence_with_log_targets as kl_divergence_with_log_targets
from jaxce._focal import poly_loss_cross_entropy as poly_loss_cross_entropy
from jaxce._focal import softmax_focal_loss as softmax_focal_loss
from jaxce._information import entropy as entropy
from jaxce._information import jensen_shannon_divergence as jensen_shannon_divergence
from jaxce._information import kl_divergence_with_logits as kl_divergence_with_logits
from jaxce._linear import linear_cross_entropy as linear_cross_entropy
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
from jaxce._smoothing import smooth_labels as smooth_labels
from jaxce._softmax import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from jaxce._softmax import softmax_cross_entropy as softmax_cross_entropy
from jaxce._softmax import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from jaxce._validate import checked as checked
from jaxce._validate import target_checks as target_checks

__version__ = "0.1.0"

#: The losses of optax's cross-entropy family jaxce provides, with optax 0.2.8's names and
#: signatures (extras keyword-only); optax's own tests for them run against jaxce.
OPTAX_LOSSES = (
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "poly_loss_cross_entropy",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "generalized_kl_divergence",
    "convex_kl_divergence",
)

#: Every per-example loss of jaxce: optax's family plus the members no anchor has in stable
#: form. The generic test suites (jit, vmap, grad, hessian, 16-bit, bad input) run over these.
LOSSES = (
    *OPTAX_LOSSES,
    "softmax_focal_loss",
    "entropy",
    "kl_divergence_with_logits",
    "jensen_shannon_divergence",
    "binary_cross_entropy",
    "categorical_cross_entropy",
)

#: The core losses of the self-check (``python -m jaxce``) and the benchmark suite.
CORE_LOSSES = OPTAX_LOSSES[:4] + OPTAX_LOSSES[6:8]

__all__ = [
    "CORE_LOSSES",
    "LOSSES",
    "OPTAX_LOSSES",
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "checked",
    "convex_kl_divergence",
    "entropy",
    "generalized_kl_divergence",
    "jensen_shannon_divergence",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "kl_divergence_with_logits",
    "linear_cross_entropy",
    "log_odds",
    "log_sigmoid",
    "log_softmax",
    "logit",
    "logsumexp",
    "poly_loss_cross_entropy",
    "safe_mul",
    "safe_softmax_cross_entropy",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "smooth_labels",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "softmax_focal_loss",
    "softplus",
    "target_checks",
    "xlogy",
]

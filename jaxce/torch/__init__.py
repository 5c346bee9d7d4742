"""PyTorch semantics for people porting PyTorch code: ``torch.nn.functional``'s losses in JAX.

Same arguments and results as ``torch.nn.functional`` (reductions ``"none"``, ``"sum"``,
``"mean"``, class ``weight``, ``ignore_index``, ``label_smoothing``, ``pos_weight``), built on
jaxce's stable per-example losses, with the class axis last by default (the JAX convention;
``axis=1`` gives PyTorch's layout). One deliberate difference: a ``"mean"`` over a batch whose
targets are all ignored (or whose weights sum to 0) is 0 with a zero gradient, where PyTorch
returns NaN.

``jaxce.torch`` does not import PyTorch.
"""

from jaxce.torch._binary import binary_cross_entropy as binary_cross_entropy
from jaxce.torch._binary import (
    binary_cross_entropy_with_logits as binary_cross_entropy_with_logits,
)
from jaxce.torch._cross_entropy import cross_entropy as cross_entropy
from jaxce.torch._cross_entropy import nll_loss as nll_loss
from jaxce.torch._reduction import REDUCTIONS as REDUCTIONS

__all__ = [
    "REDUCTIONS",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "nll_loss",
]

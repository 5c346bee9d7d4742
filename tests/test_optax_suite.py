"""optax's own tests (shipped in the optax wheel) run against jaxce.

The upstream modules ``optax/losses/_classification_test.py`` and ``_smoothing_test.py`` are
loaded under private names and their ``_classification`` / ``_smoothing`` globals are replaced by
namespaces that hold jaxce's functions *only*: a test that reaches for a name jaxce does not
provide fails with AttributeError instead of silently testing optax. The test classes for the
functions jaxce provides are re-exported here, unmodified, so pytest collects them (they are
``absltest``/``unittest`` classes).
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import types
import unittest
import warnings

import optax
import pytest

import jaxce

_LOSSES = pathlib.Path(optax.__file__).parent / "losses"


def _load(filename: str, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, _LOSSES / filename)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


upstream = _load("_classification_test.py", "jaxce_upstream_optax_tests")
upstream_smoothing = _load("_smoothing_test.py", "jaxce_upstream_optax_smoothing_tests")

#: optax's cross-entropy family: the nine names of issues 2 and 3 (convex_kl_divergence is
#: optax's alias of generalized_kl_divergence).
PROVIDED = (
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
upstream._classification = types.SimpleNamespace(**{n: getattr(jaxce, n) for n in PROVIDED})
upstream_smoothing._smoothing = types.SimpleNamespace(smooth_labels=jaxce.smooth_labels)


# Every test class of every name jaxce provides, unmodified: no wrappers, no switches (optax's
# test_gradient steps the labels outside [0, 1] by finite differences, which jaxce computes as
# the exact linear extension, as optax does).
SoftmaxCrossEntropyTest = upstream.SoftmaxCrossEntropyTest
SafeSoftmaxCrossEntropyTest = upstream.SafeSoftmaxCrossEntropyTest
SoftmaxCrossEntropyWithIntegerLabelsTest = upstream.SoftmaxCrossEntropyWithIntegerLabelsTest
SigmoidCrossEntropyTest = upstream.SigmoidCrossEntropyTest
SigmoidFocalLossTest = upstream.SigmoidFocalLossTest
PolyLossTest = upstream.PolyLossTest
KLDivergenceTest = upstream.KLDivergenceTest
KLDivergenceWithLogTargetsTest = upstream.KLDivergenceWithLogTargetsTest
GeneralizedKLDivergenceTest = upstream.GeneralizedKLDivergenceTest
SmoothLabelsTest = upstream_smoothing.SmoothLabelsTest


def test_upstream_classes_cover_every_provided_name() -> None:
    """Each provided name is exercised by at least one upstream test method."""
    source = (_LOSSES / "_classification_test.py").read_text()
    for name in PROVIDED:
        assert f"_classification.{name}" in source, name
    assert "_smoothing.smooth_labels" in (_LOSSES / "_smoothing_test.py").read_text()


def test_upstream_uses_jaxce() -> None:
    assert upstream._classification.softmax_cross_entropy is jaxce.softmax_cross_entropy
    assert upstream_smoothing._smoothing.smooth_labels is jaxce.smooth_labels


def test_every_upstream_class_of_a_provided_name_is_collected_unmodified() -> None:
    """Each upstream TestCase that calls a provided name is collected here as the very class
    optax ships (not a subclass that could override a test)."""
    collected = {v for v in globals().values() if isinstance(v, type)}
    files = (
        (upstream, "_classification_test.py", "_classification", PROVIDED),
        (upstream_smoothing, "_smoothing_test.py", "_smoothing", ("smooth_labels",)),
    )
    for module, filename, prefix, names in files:
        source = (_LOSSES / filename).read_text()
        classes = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)]
        for node in classes:
            body = ast.get_source_segment(source, node) or ""
            if any(f"{prefix}.{n}(" in body for n in names):
                assert getattr(module, node.name) in collected, node.name


def test_assert_warns_survives_modules_that_warn_on_attribute_lookup() -> None:
    """The fresh-environment failure of optax's ``test_deprecated_alias`` (mpmath >= 1.4).

    ``unittest``'s ``assertWarns`` reads ``__warningregistry__`` of every module in
    ``sys.modules``; mpmath 1.4's deprecated ``rational`` and ``math2`` modules warn on any
    attribute lookup, which ``filterwarnings = error`` turned into a failure whenever mpmath
    had been imported first (CI hid it: torch pins an older mpmath). pyproject filters exactly
    those two deprecations; this test fails without the filters on mpmath >= 1.4.
    """
    mpmath = pytest.importorskip("mpmath")
    assert mpmath.mp.dps > 0  # imported, with its deprecated submodules
    case = unittest.TestCase()
    with case.assertWarnsRegex(DeprecationWarning, "ours"):
        warnings.warn("ours", DeprecationWarning, stacklevel=1)

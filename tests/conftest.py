"""Test-wide strictness and shared helpers."""

from __future__ import annotations

import contextlib

import jax
import pytest

# A silent broadcast between labels and logits is the bug class we most want to catch.
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="run long tests (V up to 10^4 on the whole accuracy grid, big hypothesis profiles)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long run: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def _x64_context():
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # older jax
        from jax.experimental import enable_x64 as ctx
    with ctx(True):
        yield


@pytest.fixture
def x64():
    """Run the test with float64 enabled (jax.enable_x64)."""
    with _x64_context():
        yield

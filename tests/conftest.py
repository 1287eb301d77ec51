"""Test configuration: float64, promotion rules, key fixtures.

Exactness tests compare rules to 1e-9 or tighter, which needs float64, so x64 is enabled at import (before
any test module builds an array). The target is ``RANK_PROMOTION = "raise"`` (catches a silently broadcast
trace or gradient) and ``DTYPE_PROMOTION = "strict"``; both stay permissive until the library runs under them:
``test_transforms.py::test_runs_under_strict_promotion`` runs every rule under both and pins what fails.
Flip the two constants when it passes.
"""

import jax
import pytest

RANK_PROMOTION = "allow"
DTYPE_PROMOTION = "standard"

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", RANK_PROMOTION)
jax.config.update("jax_numpy_dtype_promotion", DTYPE_PROMOTION)


@pytest.fixture
def key():
    """A fixed PRNG key (new-style typed key)."""
    return jax.random.key(0)


@pytest.fixture
def keys():
    """Eight independent fixed PRNG keys."""
    return jax.random.split(jax.random.key(1), 8)

"""Test configuration: float64, promotion rules, key fixtures.

Exactness tests compare rules to 1e-9 or tighter, which needs float64, so x64 is enabled at import (before
any test module builds an array). The target is ``RANK_PROMOTION = "raise"`` (it catches a silently
broadcast trace or gradient) and ``DTYPE_PROMOTION = "strict"``; both stay permissive until the library
traces under them: ``test_transforms.py::test_runs_under_strict_promotion`` traces every rule under each and
pins what fails. Flip ``RANK_PROMOTION`` when its ``rank_raise`` cases pass. Before flipping
``DTYPE_PROMOTION``, note that optax itself is not strict-clean (adam's bias correction computes
``decay ** count`` with an int32 count), so every test file that runs an optax optimiser must then trace it
under ``jax.numpy_dtype_promotion("standard")``, as ``test_transforms.py`` does.
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

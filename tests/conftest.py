"""Test configuration: float64, promotion rules, key fixtures.

Exactness tests compare rules to 1e-9 or tighter, which needs float64, so x64 is enabled at import (before
any test module builds an array). Rank promotion raises (it catches a silently broadcast trace or
gradient). Dtype promotion stays "standard" here because optax itself is not strict-clean (adam's bias
correction computes ``decay ** count`` with an int32 count); the library is:
``test_transforms.py::test_runs_under_strict_promotion`` traces every rule under "strict".

The tests check results and the compiled programs' structure (their HLO), never their speed, so XLA's CPU
backend compiles them with LLVM's quickest settings (``QUICK_COMPILE``, set before JAX starts its backend and
inherited by the notebooks' kernels): the HLO passes are the same, and compiling, which dominates the
suite's time, takes about a quarter less.
"""

import os

QUICK_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_COMPILE}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

RANK_PROMOTION = "raise"
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

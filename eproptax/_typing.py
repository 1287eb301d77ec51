"""Type aliases shared by the library (documentation only: nothing here is checked at run time)."""

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
Carry = Any  # a pytree of arrays: the state of one sequence
Targets = Any  # a pytree whose leaves have leading axes (batch, time) or (time,) per example

LossFn = Callable[[Array, Any], Array]  # (outputs_t, targets_t) -> scalar, one example, one step
GradFn = Callable[[Params, Array, Targets], tuple[Array, Params]]  # (params, inputs, targets) -> (loss, grads)

"""Backpropagation through time: the ground truth every other rule is measured against."""

import jax

from ._cell import Cell
from ._contract_check import check_cell
from ._engine import FiringRateReg, sequence_loss
from ._typing import GradFn, LossFn


def bptt(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None, unroll: int | None = None) -> GradFn:
    """Exact gradient by backpropagation through time: ``jax.value_and_grad`` of the unrolled loss.

    Memory grows with the sequence length ``T`` (the scan stores every step's state for the backward
    pass); time per step is about two forward passes. It is exact for every cell, including cells without
    the synapse / dynamics split, and is the reference every other rule is tested against.

    Args:
      model: a :class:`~eproptax.Cell`.
      loss: ``loss(outputs_t, targets_t) -> scalar`` for one example and one step.
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: time steps per iteration of the scan (``lax.scan``'s ``unroll``): the speed and the
        compile time, not the result. ``None``, the default: the platform's (:data:`eproptax.DEFAULT_UNROLL`),
        chosen when the function is lowered.

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``, the same as
      ``jax.value_and_grad(ep.sequence_loss(model, loss, reg=reg, unroll=unroll))``.

    Example::

      grad_fn = ep.bptt(model, loss)
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)
    """
    check_cell("bptt", model, "apply")
    return jax.value_and_grad(sequence_loss(model, loss, reg=reg, unroll=unroll))

"""NEST's update conventions: the learning window, ``average_gradient``, its losses, and the loss it reports.

NEST's legacy e-prop (``eprop_synapse_bsshslm_2020``) computes, per learning interval of ``T`` steps, the
gradient of the loss over the last ``learning_window`` steps plus the firing-rate regulariser, divided by
``learning_window`` when ``average_gradient`` is set, and it reports (in its recordings) the loss without the
regulariser. :func:`value_and_grad` is that computation with any eproptax rule.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _hyper
from .._cell import Cell
from .._engine import FiringRateReg, reg_value, sequence_loss, sequence_state
from .._registry import RULES, make_rule
from .._typing import Array, LossFn


class NestInfo(NamedTuple):
    """What :func:`value_and_grad` reports beside the objective (``objective = loss + reg``).

    Attributes:
      loss: the batch mean of the task loss over the learning window, with NEST's weights (``1 /
        learning_window`` per step when ``average_gradient``), the regulariser excluded: the loss NEST's
        recordings give.
      reg: the firing-rate regulariser's part of the objective (0 without ``reg``).
    """

    loss: Array
    reg: Array


def mean_squared_error(outputs_t: Array, targets_t: Array) -> Array:
    """NEST's ``loss = "mean_squared_error"`` for one step: ``0.5 * sum_m (y_m - y*_m)^2``; its gradient is NEST's
    error signal ``y - y*``. ``targets_t`` is the target signal, shape ``(n_out,)``."""
    return 0.5 * jnp.sum((outputs_t - targets_t.astype(outputs_t.dtype)) ** 2)


def cross_entropy(outputs_t: Array, targets_t: Array) -> Array:
    """NEST's ``loss = "cross_entropy"`` for one step: ``-sum_m y*_m log softmax(y)_m``; for a target that sums to
    one (NEST's one-hot target rates) its gradient is NEST's error signal ``softmax(y) - y*``. ``targets_t`` is
    the target signal, shape ``(n_out,)``."""
    return -jnp.sum(targets_t.astype(outputs_t.dtype) * jax.nn.log_softmax(outputs_t))


def firing_rate_reg(c_reg, f_target_hz, dt=1.0) -> FiringRateReg:
    """NEST's firing-rate regulariser (``c_reg``, ``f_target`` in Hz) as an :class:`~eproptax.FiringRateReg`.

    NEST adds ``c_reg (f_j - f_target dt / 1000) / T sum_t e_ji^t`` to the gradient of each recurrent synapse
    (``f_j``: neuron ``j``'s spikes per step over the interval of ``T`` steps): the e-prop gradient of
    ``(c_reg / 2) sum_j (f_j - f_target)^2``, which is eproptax's ``FiringRateReg(c_reg, f_target * dt / 1000)``.

    Args:
      c_reg: the regulariser's strength, finite and ``>= 0`` (NEST's ``c_reg``).
      f_target_hz: the target rate in Hz (NEST's ``f_target``), finite.
      dt: the time step in ms (NEST's ``resolution``), finite and ``> 0``.
    """
    _hyper.non_negative("firing_rate_reg", "c_reg", c_reg)
    _hyper.finite("firing_rate_reg", "f_target_hz", f_target_hz)
    _hyper.positive("firing_rate_reg", "dt", dt)
    return FiringRateReg(c_reg, f_target_hz / 1000.0 * dt)


def window_weights(time_steps: int, learning_window: int | None = None, *, average_gradient: bool = False, dtype=None):
    """NEST's weight of each step of a learning interval: 1 (or ``1 / learning_window`` with
    ``average_gradient``) on the last ``learning_window`` steps, 0 before; shape ``(time_steps,)``.

    Args:
      time_steps: the interval's steps (NEST's ``eprop_update_interval / resolution``), a positive int.
      learning_window: the steps at its end where the loss counts (NEST's ``eprop_learning_window /
        resolution``), an int in ``[1, time_steps]``; ``None``: the whole interval.
      average_gradient: NEST's ``average_gradient`` (a bool).
      dtype: the weights' dtype (``None``: NumPy's float64).
    """
    where = "window_weights"
    _hyper.positive_int(where, "time_steps", time_steps)
    window = _check_window(where, learning_window, time_steps)
    _hyper.boolean(where, "average_gradient", average_gradient)
    weights = (np.arange(time_steps) >= time_steps - window).astype(np.float64)
    if average_gradient:
        weights = weights / window
    return weights if dtype is None else weights.astype(dtype)


def _check_window(where, learning_window, time_steps=None) -> int | None:
    if learning_window is None:
        return time_steps
    _hyper.positive_int(where, "learning_window", learning_window)
    if time_steps is not None and learning_window > time_steps:
        raise ValueError(
            f"{where}: `learning_window` must be at most the sequence length ({time_steps} steps), "
            f"got {learning_window}."
        )
    return learning_window


def value_and_grad(
    model: Cell,
    loss: LossFn,
    *,
    rule: str = "eprop",
    learning_window: int | None = None,
    average_gradient: bool = False,
    reg: FiringRateReg | None = None,
    **options,
):
    """A rule's gradient with NEST's conventions, and NEST's loss reported apart from the regulariser.

    The objective of one sequence of ``T`` steps (one NEST learning interval) is::

      objective = sum_t w_t loss(outputs_t, targets_t) + s * reg,   w_t = s [t >= T - learning_window]

    with ``s = 1 / learning_window`` under ``average_gradient`` (NEST divides the whole gradient, the
    regulariser's part included, by the window) and ``s = 1`` otherwise, averaged over the batch (NEST's
    ``batch_size``). The returned function has the calling shape of ``jax.value_and_grad(objective,
    has_aux=True)``: it returns ``((objective, NestInfo(loss, reg)), grads)``, where ``NestInfo.loss`` is the
    part NEST's recordings report and ``NestInfo.reg`` the regulariser's part. The gradient is the rule's:
    ``rule="eprop"`` (with ``feedback=B`` for NEST's learning-signal weights) is NEST's
    ``eprop_synapse_bsshslm_2020``; ``"bptt"`` the exact gradient of the same objective; every rule of
    :func:`eproptax.rules` is accepted with its options. Exact where the rule is; the task loss and the
    regulariser come from the same pass that computes the gradient (for BPTT, the same forward pass).

    Args:
      model: the network, e.g. ``ep.cells.stack(ep.cells.lsnn(...), ep.cells.leaky_readout(...))``.
      loss: ``loss(outputs_t, targets_t) -> scalar``, e.g. :func:`mean_squared_error` or :func:`cross_entropy`
        (not masked: the window is applied here).
      rule: the name of a rule (:func:`eproptax.rules`), ``"eprop"`` by default.
      learning_window: steps at the end of each sequence where the loss counts (NEST's
        ``eprop_learning_window`` in steps), a positive int at most ``T``; ``None``: every step.
      average_gradient: NEST's ``average_gradient`` (a bool).
      reg: NEST's firing-rate regulariser (see :func:`firing_rate_reg`), or ``None``.
      **options: the rule's options (``feedback=B``, ``order=``, ...), and ``unroll`` and ``chunk`` of its
        whole-sequence scan (the engine's, as the rule's own ``grad_fn`` runs it; ``"bptt"`` takes only
        ``unroll``).

    Returns:
      ``grad_fn(params, inputs, targets, *, key=None) -> ((objective, NestInfo), grads)`` with ``inputs`` of
      shape ``(batch, T, n_in)`` and ``targets`` leaves ``(batch, T, ...)``; ``key`` for a rule that draws noise.

    Example (NEST's sine-wave regression: ``eta = 1e-4``, ``c_reg = 300``, ``f_target = 10`` Hz)::

      grad_fn = ep.nest.value_and_grad(model, ep.nest.mean_squared_error, feedback=B,
                                       reg=ep.nest.firing_rate_reg(300.0, 10.0))
      (objective, info), grads = jax.jit(grad_fn)(params, inputs, targets)   # info.loss: NEST's loss
    """
    where = "value_and_grad"
    _hyper.one_of(where, "rule", rule, tuple(RULES))
    _check_window(where, learning_window)
    _hyper.boolean(where, "average_gradient", average_gradient)
    _hyper.check_reg(where, reg)

    def weighted(outputs_t, targets_t):
        return targets_t["weight"].astype(outputs_t.dtype) * loss(outputs_t, targets_t["target"])

    whole = {name: options.pop(name) for name in ("unroll", "chunk") if name in options}
    if rule == "bptt" and options:
        raise ValueError(f"value_and_grad: rule 'bptt' takes only `unroll`, got {sorted(options)}.")

    def grad_fn(params, inputs, targets, *, key=None):
        batch, time = np.shape(inputs)[:2]
        window = _check_window(where, learning_window, time)
        scale = 1.0 / window if average_gradient else 1.0
        scaled = None if reg is None else FiringRateReg(reg.c_reg * scale, reg.f_target)
        w = window_weights(time, window, average_gradient=average_gradient)
        weights = jnp.broadcast_to(jnp.asarray(w, jax.tree_util.tree_leaves(params)[0].dtype), (batch, time))
        wrapped = {"target": targets, "weight": weights}
        if rule == "bptt":  # the exact gradient, both parts from the one forward pass
            objective = sequence_loss(model, weighted, reg=scaled, parts=True, **whole)
            (value, (task, reg_part)), grads = jax.value_and_grad(objective, has_aux=True)(params, inputs, wrapped)
            return (value, NestInfo(task, reg_part)), grads
        rule_ = make_rule(rule, model, weighted, online=True, reg=scaled, **options)
        state = sequence_state(where, model, weighted, rule_, **whole)(params, inputs, wrapped, key=key)
        objective, grads = rule_.result(params, state)
        reg_part = jnp.zeros_like(state.loss) if scaled is None else reg_value(scaled, state.spikes, state.steps)
        return (objective, NestInfo(state.loss, reg_part.astype(state.loss.dtype))), grads

    return grad_fn

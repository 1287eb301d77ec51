"""Real-time recurrent learning: the exact gradient, forward in time, with ``jax.jvp``."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._cell import Cell
from ._engine import (FiringRateReg, OnlineRule, accum_dtype, check_step, new_state, recurrent_outputs, reg_value,
                      reg_weights, reset, scan_rule)
from ._typing import GradFn, LossFn


def _ravel_float(tree):
    """Ravels the floating leaves of ``tree``; the inverse keeps its other leaves (int counters) as they are."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_float = [jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in leaves]
    vec, unravel = ravel_pytree([leaf for leaf, f in zip(leaves, is_float) if f])

    def unravel_full(v):
        floats = iter(unravel(v))
        return jax.tree_util.tree_unflatten(treedef, [next(floats) if f else leaf for leaf, f in zip(leaves, is_float)])

    return vec, unravel_full


def online_rtrl(model: Cell, loss: LossFn, *, reg: Optional[FiringRateReg] = None) -> OnlineRule:
    """The per-step form of :func:`rtrl` (see there); ``ep.online.rtrl``."""

    def init(params, batch_size):
        theta, _ = ravel_pytree(params)
        c_vec, _ = _ravel_float(model.init_carry(params))
        dtype = accum_dtype(params)
        influence = jnp.zeros((batch_size, c_vec.size, theta.size), dtype)  # M^T: rows are state variables
        reg_traces = None
        if reg is not None:
            n = jax.eval_shape(lambda p: recurrent_outputs(model, model.init_carry(p)), params).shape[0]
            reg_traces = jnp.zeros((batch_size, n, theta.size), dtype)
        return new_state(model, params, batch_size, influence, jnp.zeros(theta.shape, dtype), reg, reg_traces)

    def example(theta, unravel_params, carry, influence, x, target):
        c_vec, unravel_c = _ravel_float(carry)

        def run(c, th):
            return model.apply(unravel_params(th), unravel_c(c), x)

        def new_c(c, th):
            return _ravel_float(run(c, th)[0])[0]

        (value, out), (g_c, g_theta) = jax.value_and_grad(
            lambda c, th: (loss(run(c, th)[1], target), run(c, th)[1]), argnums=(0, 1), has_aux=True)(c_vec, theta)
        # The influence is stored as M^T (|carry| rows of |theta| columns), so that both products below
        # stream its long rows. d carry^t / d carry^{t-1} comes from jvp along the few state directions
        # (jacfwd); stacked with d loss_t / d carry^{t-1} as one more row, a single matrix product gives both
        # the new influence and this step's gradient (d loss_t / d carry^{t-1}) . M^{t-1}, reading M once.
        # The immediate term d carry^t / d theta is jacrev over the few state variables: already (C, P).
        # Jacobians are taken in the cell's dtype; the influence accumulates in accum_dtype.
        jac_c = jax.jacfwd(lambda c: new_c(c, theta))(c_vec)
        rows = jnp.concatenate([jac_c, g_c[None].astype(jac_c.dtype)]).astype(influence.dtype) @ influence
        immediate = jax.jacrev(lambda th: new_c(c_vec, th))(theta)
        influence_new = rows[:-1] + immediate.astype(influence.dtype)
        new_carry = run(c_vec, theta)[0]
        extras = ()
        if reg is not None:
            _, unravel_new = _ravel_float(new_carry)
            z_of = lambda c: recurrent_outputs(model, unravel_new(c))
            new_vec = new_c(c_vec, theta)
            dz = jax.jacfwd(z_of)(new_vec).astype(influence.dtype) @ influence_new
            extras = (z_of(new_vec).astype(influence.dtype), dz)
        return new_carry, influence_new, value, out, rows[-1] + g_theta.astype(influence.dtype), extras

    def step(params, state, x, target):
        check_step("rtrl", model, loss, params, state, x, target)
        theta, unravel_params = ravel_pytree(params)
        carry, influence, values, out, g, extras = jax.vmap(
            example, in_axes=(None, None, 0, 0, 0, 0))(theta, unravel_params, state.carry, state.traces, x, target)
        grads = state.grads + jnp.sum(g, 0) / x.shape[0]
        state = state._replace(carry=carry, traces=influence, grads=grads, loss=state.loss + jnp.mean(values),
                               steps=state.steps + 1)
        if reg is not None:
            z, dz = extras
            state = state._replace(spikes=state.spikes + z, reg_traces=state.reg_traces + dz)
        return state, out

    def result(params, state):
        theta, unravel_params = ravel_pytree(params)
        grads, value = state.grads, state.loss
        if reg is not None:
            grads = grads + jnp.einsum("bnp,bn->p", state.reg_traces, reg_weights(reg, state.spikes, state.steps))
            value = value + reg_value(reg, state.spikes, state.steps)
        return value, unravel_params(grads.astype(theta.dtype))

    return OnlineRule(init, step, result, reset)


def rtrl(model: Cell, loss: LossFn, *, reg: Optional[FiringRateReg] = None, unroll: int = 1) -> GradFn:
    """Exact real-time recurrent learning (Williams and Zipser 1989), forward in time with ``jax.jvp``.

    Carries the influence matrix ``M^t = d carry^t / d theta`` of every parameter on every state variable
    and updates it each step::

      M^t = (d carry^t / d carry^{t-1}) M^{t-1} + d carry^t / d theta
      d loss_t / d theta = d loss_t/d theta |direct + (d loss_t / d carry^{t-1}) M^{t-1}

    ``d carry^t / d carry^{t-1}`` is ``jax.jvp`` of the step vmapped over the state's tangent directions
    (``jax.jacfwd``); with ``d loss_t / d carry^{t-1}`` stacked as one more row, it is applied to all
    ``|theta|`` columns of ``M`` in one matrix product, which yields both updates while reading ``M``
    once. The immediate term is the step's own Jacobian in ``theta`` (``jax.jacrev`` over the few state
    variables). It works for every cell, with or without the synapse / dynamics split. It equals
    :func:`bptt` to rounding error; memory per example is ``|carry| x |theta|``, independent of ``T``, and
    time per step ``O(|carry|^2 |theta|)`` (one matrix product): use it on small networks, or as a reference.

    Args:
      model: a :class:`~eproptax.Cell`.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: time steps per iteration of the whole-sequence scan (``lax.scan``'s ``unroll``): it changes
        the speed, not the result (up to rounding); ``benchmarks/unroll.py`` measures it for a network.

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    References:
      Williams and Zipser, "A learning algorithm for continually running fully recurrent neural
      networks", Neural Computation 1(2), 1989.
    """
    return scan_rule("rtrl", model, loss, online_rtrl(model, loss, reg=reg), unroll)

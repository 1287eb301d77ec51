"""Truncated backpropagation through time: BPTT inside windows of ``K`` steps, the state carried across them."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _tricks as tricks
from ._cell import Cell
from ._contract_check import check_cell
from ._engine import (
    FiringRateReg,
    OnlineRule,
    OnlineState,
    accum_dtype,
    batch_init_carry,
    leading_batch_axes,
    new_state,
    recurrent_outputs,
    recurrent_size,
    reg_value,
    reg_weights,
)
from ._engine import reset as reset_accumulators
from ._hyper import check_reg, positive_int
from ._typing import Array, GradFn, LossFn
from ._validate import check_inputs, check_step, check_unroll


class Window(NamedTuple):
    """The open truncation window of an online :func:`tbptt` (``state.traces``).

    Attributes:
      start: the carry at the window's first step (batched): the backward pass stops there.
      inputs: ``(batch, K, n_in)``, the window's inputs so far.
      cotangents: the window's ``d loss_t / d outputs_t`` so far, leaves ``(batch, K, ...)``: the loss is
        read at each step, so the targets need not be kept.
      filled: the window's steps so far (``int32``); the window closes when it reaches ``K``.
    """

    start: Any
    inputs: Array
    cotangents: Any
    filled: Array


def _window_vjp(model: Cell, reg, unroll, read, params, start, xs, ys, weights):
    """One example, one window of ``xs``: the gradient of the window's loss with respect to ``params``, the
    window's ``start`` carry held constant (the truncation).

    ``read(outputs, ys) -> (loss values, d loss / d outputs)`` reads the loss of the window's outputs:
    ``ys`` are its targets, or, online, the cotangents kept by each step. With ``reg``, also ``d (sum_t
    weights_t z_t) / d params`` per recurrent output ``j`` (leaves ``(n_rec, ...)``). Returns ``(end carry,
    loss values, z sum, grads, dz)``; a step whose cotangent and weight are zero adds nothing."""

    def run(p):
        def body(carry, x):
            carry, out = model.apply(p, carry, x)
            return carry, (out, recurrent_outputs(model, carry) if reg is not None else ())

        end, (outs, zs) = tricks.scan(body, start, xs, unroll=unroll)
        return (outs, zs), end

    (outs, zs), vjp, end = jax.vjp(run, params, has_aux=True)
    values, cotangents = read(outs, ys)
    if reg is None:
        return end, values, (), vjp((cotangents, ()))[0], ()
    zero_outs = jax.tree_util.tree_map(jnp.zeros_like, outs)
    grads = vjp((cotangents, jnp.zeros_like(zs)))[0]
    eye = jnp.eye(zs.shape[-1], dtype=zs.dtype)
    dz = jax.vmap(lambda e: vjp((zero_outs, weights[:, None] * e[None, :]))[0])(eye)
    return end, values, jnp.sum(weights[:, None] * zs, 0), grads, dz


def _add_window(state: OnlineState, grads, dz, zsum=None) -> OnlineState:
    """``state`` with a window's batch-mean gradient added (and its regulariser extras)."""
    mean = lambda g: jnp.mean(g, 0)
    add = lambda acc, g: acc + g.astype(acc.dtype)
    state = state._replace(grads=jax.tree_util.tree_map(add, state.grads, jax.tree_util.tree_map(mean, grads)))
    if jax.tree_util.tree_leaves(dz):
        state = state._replace(reg_traces=jax.tree_util.tree_map(add, state.reg_traces, dz))
        if zsum is not None:
            state = state._replace(spikes=state.spikes + zsum.astype(state.spikes.dtype))
    return state


def _check_window(where: str, window) -> int:
    positive_int(where, "window", window)
    return int(window)


def online_tbptt(model: Cell, loss: LossFn, window: int = 16, *, reg: FiringRateReg | None = None) -> OnlineRule:
    """The per-step form of :func:`tbptt` (see there); ``ep.online.tbptt``.

    Each ``step`` runs the network one step, reads ``d loss_t / d outputs_t`` and keeps it with the input in
    the open :class:`Window`; the ``K``-th step of a window runs its backward pass (``K`` steps from the
    window's start carry) and adds the window's gradient. ``result`` adds the open window's gradient so far,
    and ``reset`` closes the window: an update ends a window, so ``ep.train(..., online_every=K)`` updates at
    the end of every window.
    """
    K = _check_window("tbptt", window)
    check_cell("tbptt", model, "apply")
    check_reg("tbptt", reg)
    kept = lambda outs, cotangents: (jnp.zeros(()), cotangents)  # the loss was read by each step
    close = jax.vmap(lambda *a: _window_vjp(model, reg, None, kept, *a), in_axes=(None, 0, 0, 0, None))

    def init(params, batch_size, key=None):
        dtype = accum_dtype(params)
        carry = batch_init_carry(model, params, batch_size)
        x = jax.ShapeDtypeStruct((model.n_in,), jax.tree_util.tree_leaves(params)[0].dtype)
        out = jax.eval_shape(lambda p, c, x: model.apply(p, c, x)[1], params, model.init_carry(params), x)
        buffer = lambda a: jnp.zeros((batch_size, K) + a.shape, a.dtype)
        opened = Window(carry, buffer(x), jax.tree_util.tree_map(buffer, out), jnp.zeros((), jnp.int32))
        grads = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, dtype), params)
        reg_traces = None
        if reg is not None:
            n = recurrent_size(model, params)
            reg_traces = jax.tree_util.tree_map(lambda p: jnp.zeros((batch_size, n) + p.shape, dtype), params)
        return new_state(model, params, batch_size, opened, grads, reg, reg_traces, key)

    def pending(params, state):
        """``(grads, dz)`` of the open window's steps so far (zero for an empty window)."""
        w = state.traces
        weights = (jnp.arange(K) < w.filled).astype(w.inputs.dtype)
        masked = lambda c: c * weights.reshape((1, K) + (1,) * (c.ndim - 2)).astype(c.dtype)  # stale steps
        _, _, _, grads, dz = close(params, w.start, w.inputs, jax.tree_util.tree_map(masked, w.cotangents), weights)
        return grads, dz

    def close_window(params, state):
        state = _add_window(state, *pending(params, state))
        return state._replace(traces=state.traces._replace(start=state.carry, filled=jnp.zeros((), jnp.int32)))

    def step(params, state, x, target):
        x, target = check_step("tbptt", model, loss, params, state, x, target)

        def one(carry, x, y):
            carry, out = model.apply(params, carry, x)
            value, cotangent = jax.value_and_grad(loss)(out, y)
            return carry, out, value, cotangent

        carry, out, values, cotangents = jax.vmap(one)(state.carry, x, target)
        w = state.traces
        put = lambda buffer, a: buffer.at[:, w.filled].set(a.astype(buffer.dtype))
        w = Window(w.start, put(w.inputs, x), jax.tree_util.tree_map(put, w.cotangents, cotangents), w.filled + 1)
        state = state._replace(
            carry=carry,
            traces=w,
            loss=state.loss + jnp.mean(values).astype(state.loss.dtype),
            steps=state.steps + 1,
        )
        if reg is not None:
            z = jax.vmap(lambda c: recurrent_outputs(model, c))(carry)
            state = state._replace(spikes=state.spikes + z.astype(state.spikes.dtype))
        return jax.lax.cond(w.filled == K, close_window, lambda _, s: s, params, state), out

    def result(params, state):
        add_pending = lambda p, s: _add_window(s, *pending(p, s))
        return _finish(reg, params, jax.lax.cond(state.traces.filled > 0, add_pending, lambda _, s: s, params, state))

    def reset(state):
        state = reset_accumulators(state)
        return state._replace(traces=state.traces._replace(start=state.carry, filled=jnp.zeros((), jnp.int32)))

    axes = lambda state: leading_batch_axes(state, traces=Window(0, 0, 0, None))
    return OnlineRule(init, step, result, reset, batch_axes=axes)


def _finish(reg, params, state: OnlineState):
    """``(loss, grads)`` from the accumulators: the regulariser added, the gradient in the parameters' dtype."""
    grads, value = state.grads, state.loss
    if reg is not None:
        weights = reg_weights(reg, state.spikes, state.steps)
        contract = lambda g, dz: g + jnp.tensordot(weights, dz, axes=([0, 1], [0, 1]))
        grads = jax.tree_util.tree_map(contract, grads, state.reg_traces)
        value = value + reg_value(reg, state.spikes, state.steps)
    return value, jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)


def tbptt(
    model: Cell,
    loss: LossFn,
    window: int = 16,
    *,
    reg: FiringRateReg | None = None,
    unroll: int | None = None,
) -> GradFn:
    """Truncated backpropagation through time: exact BPTT inside each window of ``window`` steps, the state
    carried across windows without a gradient.

    The sequence is cut into non-overlapping windows of ``K = window`` steps starting at step 0, the last one
    shorter when ``K`` does not divide ``T``. Each window runs forward from the carry the previous one ended
    in, and backward to its own first step only: the gradient of ``loss_t`` keeps every path through steps
    of ``t``'s window and drops every path through the carry at the window's start (held constant, as
    ``jax.lax.stop_gradient`` would). This is the standard online baseline (Williams and Peng 1990's
    BPTT(h; h) with non-overlapping windows): one update per window online.

    Exact (equal to :func:`bptt`) when ``window >= T``. With the regulariser, its ``d z_t / d theta`` is
    truncated the same way.

    Cost: memory ``O(K)`` states per example (the window's backward pass), flat in ``T`` apart from the
    inputs themselves; time about three forward steps per step (the forward pass, and the window's forward
    and backward). With ``reg``, ``n_rec |theta|`` more per example and ``n_rec`` more backward passes per
    window. The whole-sequence form runs one ``lax.scan`` over the windows; online (``ep.online.tbptt``) each
    step keeps its input and ``d loss_t / d outputs_t``, ``K (n_in + n_out)`` per example.

    Args:
      model: a :class:`~eproptax.Cell` (any cell: only ``apply`` is used).
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      window: ``K``, the steps of a window (an int ``>= 1``; default 16).
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: time steps per iteration of each window's scan (``lax.scan``'s ``unroll``): the speed and the
        compile time, not the result. ``None``, the default: the platform's (:data:`eproptax.DEFAULT_UNROLL`).

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    Example::

      grad_fn = ep.tbptt(model, loss, window=20)   # ep.bptt(model, loss) when T <= 20
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)

    References:
      Williams and Peng, "An efficient gradient-based algorithm for on-line training of recurrent network
      trajectories", Neural Computation 2(4), 1990.
    """
    K = _check_window("tbptt", window)
    check_unroll("tbptt", unroll)
    online = online_tbptt(model, loss, K, reg=reg)

    def read(outs, ys):
        return jax.vmap(jax.value_and_grad(loss))(outs, ys)

    advance = jax.vmap(lambda *a: _window_vjp(model, reg, unroll, read, *a), in_axes=(None, 0, 0, 0, None))

    def run_window(params, state, xs, ys):
        """``state`` after a whole window of ``L = xs.shape[1]`` steps from ``state.carry``."""
        weights = jnp.ones((np.shape(xs)[1],), xs.dtype)
        end, values, zsum, grads, dz = advance(params, state.carry, xs, ys, weights)
        value = jnp.mean(jnp.sum(values.astype(state.loss.dtype), 1))
        state = state._replace(carry=end, loss=state.loss + value, steps=state.steps + np.shape(xs)[1])
        return _add_window(state, grads, dz, zsum)

    def grad_fn(params, inputs, targets, *, key=None):
        inputs, targets = check_inputs("tbptt", model, loss, params, inputs, targets)
        batch, time = np.shape(inputs)[:2]
        state = online.init(params, batch)
        full, rest = divmod(time, K)
        at = lambda start, length: lambda a: jax.lax.dynamic_slice_in_dim(a, start, length, axis=1)
        if full:

            def body(state, _):  # indexed at the state's step counter: no per-window array grows with T
                window = at(state.steps, K)
                return run_window(params, state, window(inputs), jax.tree_util.tree_map(window, targets)), None

            state, _ = jax.lax.scan(body, state, None, length=full)
        if rest:
            last = at(full * K, rest)
            state = run_window(params, state, last(inputs), jax.tree_util.tree_map(last, targets))
        return _finish(reg, params, state)

    return grad_fn

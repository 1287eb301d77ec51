"""What every rule shares: the objective, input checks, the online state and the scan over time.

Every forward-mode rule is an :class:`OnlineRule` ``(init, step, result)`` working on a batch at one time
step; :func:`scan_rule` turns it into the whole-sequence function ``(params, inputs, targets) -> (loss,
grads)`` with one ``lax.scan``. One implementation, two views.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _hyper as hyper
from . import _tricks as tricks
from ._cell import Cell, is_neuron, layers_of
from ._typing import Array, LossFn, Params
from ._validate import check_chunk, check_inputs, check_online_rule, check_unroll


class FiringRateReg(NamedTuple):
    """Firing-rate regularisation, added to the objective of every rule (Bellec et al. 2020, NEST).

    The objective of one example gets ``(c_reg / 2) * sum_j (r_j - f_target)^2`` where ``r_j`` is the mean
    of neuron ``j``'s output over the sequence (or over the online window), for every neuron of every
    recurrent layer (every layer but the top one; a single cell is its own recurrent layer). Rates are in
    spikes per step: a target of ``f`` Hz with a step of ``dt`` ms is ``f_target = f * dt / 1000`` (NEST's
    ``f_target = 10`` Hz at ``dt = 1`` ms is ``0.01``). Both fields may be traced values.
    """

    c_reg: Any
    f_target: Any


class OnlineState(NamedTuple):
    """The state of an online rule over a batch.

    Attributes:
      carry: the model's carry, every leaf with a leading batch axis.
      traces: the rule's traces (influence matrices, eligibility traces), batched.
      grads: the gradient accumulated since the last reset, in the rule's internal layout (read it with
        the rule's ``result``).
      loss: the batch-mean loss accumulated since the last reset.
      spikes: per-example sums of the recurrent layers' outputs (for the regulariser), or ``()``.
      reg_traces: per-example sums of the rule's estimate of d outputs / d params (for the regulariser),
        or ``()``.
      steps: number of steps accumulated since the last reset.
      key: the random key of a rule that draws noise (``init(..., key=key)``), split by its ``step``;
        ``None`` for a rule given none. It is not batched: one key serves the whole batch.
    """

    carry: Any
    traces: Any
    grads: Any
    loss: Array
    spikes: Any
    reg_traces: Any
    steps: Array
    key: Any = None


class OnlineRule(NamedTuple):
    """The per-step form of a forward-mode rule (``ep.online.*``).

    Attributes:
      init: ``init(params, batch_size, key=None) -> OnlineState``; ``key``, a ``jax.random.key``, is kept in
        the state (``state.key``) for a rule that draws noise, and may be left out by any other.
      step: ``step(params, state, inputs_t, targets_t) -> (state, outputs_t)`` with ``inputs_t`` of
        shape ``(batch, n_in)`` and ``targets_t`` a pytree of leaves with leading axis ``batch``.
      result: ``result(params, state) -> (loss, grads)``: the accumulated loss and its gradient estimate,
        shaped like ``params``. On an empty window (no ``step`` since ``init`` or ``reset``) it is a zero
        loss and zero gradients, never NaN.
      reset: ``reset(state) -> state``: zeroes the accumulators and keeps the carry and traces, to start a
        new window after an update.
      batch_axes: ``batch_axes(state) -> tree``: where each per-example leaf of ``state`` keeps its batch
        axis, as a prefix tree of ``state`` with an ``int`` per batched subtree and ``None`` for the
        accumulators (``grads``, ``loss``, ``steps``). The default puts it first on every per-example leaf;
        e-prop's compact traces keep it second (docs/design.md). :func:`batch_sharding` reads it.
      chunk: ``chunk(params, state, inputs, targets) -> state``: ``K = inputs.shape[1]`` steps at once
        (``inputs`` ``(batch, K, n_in)``, target leaves ``(batch, K, ...)``), the state that ``K`` calls of
        ``step`` reach, up to rounding; ``None`` for a rule without that form. The whole-sequence view
        runs its sequence in chunks of its ``chunk`` steps with it (:func:`scan_rule`).
      plan: the rule's static plan (for the e-prop family a :class:`~eproptax._plan.TracePlan`), or
        ``None``: printed, it shows what the rule carries, and ``plan.cost(batch_size)`` the least work of one
        step (:class:`~eproptax._plan.StepCost`), which ``eproptax bench`` reads.
    """

    init: Callable[[Params, int], OnlineState]
    step: Callable[[Params, OnlineState, Array, Any], tuple[OnlineState, Array]]
    result: Callable[[Params, OnlineState], tuple[Array, Params]]
    reset: Callable[[OnlineState], OnlineState]
    batch_axes: Callable[[OnlineState], Any] = None
    chunk: Callable[[Params, OnlineState, Array, Any], OnlineState] = None
    plan: Any = None

    def axes(self, state: OnlineState) -> Any:
        """``batch_axes(state)``, or the default (batch first on every per-example leaf) when unset."""
        return (self.batch_axes or leading_batch_axes)(state)


def leading_batch_axes(state: OnlineState, traces: Any = 0, reg_traces: Any = 0) -> OnlineState:
    """The batch axes of an online state (see :class:`OnlineRule`): first on every per-example leaf, or as
    ``traces`` and ``reg_traces`` say."""
    return OnlineState(
        carry=0, traces=traces, grads=None, loss=None, spikes=0, reg_traces=reg_traces, steps=None, key=None
    )


def batch_sharding(rule: OnlineRule, state: OnlineState, mesh: jax.sharding.Mesh, axis_name: str) -> OnlineState:
    """Shardings for ``jax.device_put(state, ...)``: every per-example leaf split over the mesh axis
    ``axis_name`` along its batch axis (``rule.axes``), the accumulators replicated.

    Example::

      state = rule.init(params, batch_size)
      state = jax.device_put(state, ep.online.batch_sharding(rule, state, mesh, "batch"))
    """
    check_online_rule("batch_sharding", rule)
    P = jax.sharding.PartitionSpec

    def place(axis, subtree):
        spec = P() if axis is None else P(*([None] * axis), axis_name)
        return jax.tree_util.tree_map(lambda _: jax.sharding.NamedSharding(mesh, spec), subtree)

    return jax.tree_util.tree_map(place, rule.axes(state), state, is_leaf=lambda x: x is None)


def reset(state: OnlineState) -> OnlineState:
    """Zeroes the accumulators of an online state (see :class:`OnlineRule`); the carry, the traces and the
    key go on."""
    zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
    return state._replace(
        grads=zeros(state.grads),
        loss=jnp.zeros_like(state.loss),
        spikes=zeros(state.spikes),
        reg_traces=zeros(state.reg_traces),
        steps=jnp.zeros_like(state.steps),
    )


# ----------------------------------------------------------------------------------------------------------
# Recurrent outputs and the regulariser
# ----------------------------------------------------------------------------------------------------------


def recurrent_layers(model: Cell) -> tuple[int, ...]:
    """Indices of the recurrent layers: every layer but the top one (a single cell: itself)."""
    n = len(layers_of(model))
    return tuple(range(n - 1)) if n > 1 else (0,)


def recurrent_outputs(model: Cell, carry: Any) -> Array:
    """The outputs of the recurrent layers, concatenated (one example)."""
    layers = layers_of(model)
    carries = carry if model.layers else (carry,)
    zs = []
    for i in recurrent_layers(model):
        if not is_neuron(layers[i]):
            raise ValueError(
                f"reg: layer {i} has no `output` function, so its firing rate is undefined; "
                "build it with ep.cells.make_cell or drop `reg`."
            )
        zs.append(layers[i].output(carries[i]))
    return jnp.concatenate(zs)


def recurrent_size(model: Cell, params: Params) -> int:
    """The number of recurrent outputs (the regulariser's neurons), from shapes only."""
    return jax.eval_shape(lambda p: recurrent_outputs(model, model.init_carry(p)), params).shape[0]


def reg_value(reg: FiringRateReg, spikes: Array, steps: Array) -> Array:
    """Batch mean of ``(c_reg / 2) sum_j (r_j - f_target)^2`` from per-example spike sums ``(B, n)``; 0 after no
    step (the rate of an empty window is undefined: an online ``result`` before any ``step`` is zero)."""
    rate = spikes / jnp.maximum(steps, 1).astype(spikes.dtype)
    value = jnp.mean(0.5 * reg.c_reg * jnp.sum((rate - reg.f_target) ** 2, axis=-1))
    return jnp.where(steps > 0, value, jnp.zeros_like(value))


def reg_weights(reg: FiringRateReg, spikes: Array, steps: Array) -> Array:
    """``d reg / d (sum_t z_j^t)`` per example, divided by the batch size: ``c_reg (r_j - f*) / (T B)``; 0 after
    no step."""
    n = jnp.maximum(steps, 1).astype(spikes.dtype)
    weights = reg.c_reg * (spikes / n - reg.f_target) / n / spikes.shape[0]
    return jnp.where(steps > 0, weights, jnp.zeros_like(weights))


# ----------------------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------------------


def sequence_loss(
    model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None, unroll: int | None = None, parts: bool = False
):
    """The scalar objective every rule estimates the gradient of.

    ``objective(params, inputs, targets)`` is the mean over the batch of ``sum_t loss(outputs_t,
    targets_t)`` (plus the firing-rate regulariser if ``reg`` is given), running ``model`` from
    ``model.init_carry(params)``.

    Args:
      model: a :class:`Cell` (typically a :func:`~eproptax.cells.stack`).
      loss: ``loss(outputs_t, targets_t) -> scalar`` for one example and one step.
      reg: optional :class:`FiringRateReg`.
      unroll: time steps per iteration of the ``lax.scan`` (its ``unroll``): the speed, the compile time
        and the peak memory, not the result. ``None``, the default: the platform's (:data:`DEFAULT_UNROLL`:
        1 on CPU, 4 on CUDA GPUs), chosen when the function is lowered.
      parts: also return the objective's two parts, for ``jax.value_and_grad(..., has_aux=True)``.

    Returns:
      ``objective(params, inputs, targets) -> scalar`` with ``inputs`` of shape ``(B, T, n_in)`` and
      ``targets`` a pytree of leaves with leading axes ``(B, T)``; with ``parts``, ``(objective, (loss,
      reg))``, the batch means of the summed loss and of the regulariser (0 without ``reg``).
    """

    check_unroll("sequence_loss", unroll)
    hyper.check_reg("sequence_loss", reg)

    def objective(params, inputs, targets):
        inputs, targets = check_inputs("sequence_loss", model, loss, params, inputs, targets)

        def one(x_seq, target_seq):
            def body(carry, xt):
                carry, out = model.apply(params, carry, xt[0])
                z = recurrent_outputs(model, carry) if reg is not None else ()
                return carry, (loss(out, xt[1]), z)

            _, (losses, zs) = tricks.scan(body, model.init_carry(params), (x_seq, target_seq), unroll=unroll)
            dtype = accum_dtype(params)
            reg_part = jnp.zeros((), dtype)
            if reg is not None:
                rate = jnp.mean(zs.astype(dtype), axis=0)
                reg_part = 0.5 * reg.c_reg * jnp.sum((rate - reg.f_target) ** 2)
            return jnp.sum(losses.astype(dtype)), reg_part

        task, reg_part = jax.vmap(one)(inputs, targets)
        objective = jnp.mean(task + reg_part)
        return (objective, (jnp.mean(task), jnp.mean(reg_part))) if parts else objective

    return objective


# ----------------------------------------------------------------------------------------------------------
# The two views
# ----------------------------------------------------------------------------------------------------------


def time_major(tree: Any) -> Any:
    """Every leaf with its first two axes swapped: ``(B, T, ...)`` as ``(T, B, ...)``."""
    return jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), tree)


def scan_rule(
    where: str,
    model: Cell,
    loss: LossFn,
    online: OnlineRule,
    unroll: int | None = None,
    chunk: int | None = None,
):
    """The whole-sequence view of an online rule: ``init``, a ``lax.scan`` over the steps, ``result``.

    ``unroll`` time steps run per iteration of the scan (``lax.scan``'s ``unroll``): XLA may then fuse work
    across steps and the loop's per-iteration cost is paid once per ``unroll`` steps. It changes the
    speed, the compile time and the peak memory, not the result (up to rounding); ``None`` takes the
    platform's :data:`~eproptax.DEFAULT_UNROLL`.

    ``chunk``: with ``chunk = K > 1`` (a rule whose :class:`OnlineRule` has a ``chunk`` form) the scan runs
    over chunks of ``K`` steps, each advanced at once, and the last ``T mod K`` steps one at a time. Also
    the speed and the memory (``K`` steps of per-neuron coefficients), not the result; ``None`` takes the
    platform's :data:`~eproptax.DEFAULT_CHUNK` where the rule has the form and its plan says the network is
    gated (``online.plan.gated``: a GRU or LSTM layer), else 1.

    The returned ``grad_fn(params, inputs, targets, *, key=None)`` hands ``key`` to ``online.init``: a rule
    that draws noise draws it from that key (another key, other noise), and ``jax.vmap`` over keys works.
    """
    final_state = sequence_state(where, model, loss, online, unroll, chunk)

    def grad_fn(params, inputs, targets, *, key=None):
        return online.result(params, final_state(params, inputs, targets, key=key))

    return grad_fn


def sequence_state(
    where: str,
    model: Cell,
    loss: LossFn,
    online: OnlineRule,
    unroll: int | None = None,
    chunk: int | None = None,
):
    """:func:`scan_rule` without ``result``: ``state_fn(params, inputs, targets, *, key=None)``, the online
    state after the whole sequence (its accumulators, ``state.loss`` without the regulariser, and
    ``state.spikes`` for it)."""
    check_unroll(where, unroll)
    check_chunk(where, chunk, online)

    def state_fn(params, inputs, targets, *, key=None):
        inputs, targets = check_inputs(where, model, loss, params, inputs, targets)
        batch, time = np.shape(inputs)[:2]
        state = online.init(params, batch) if key is None else online.init(params, batch, key=key)
        run = lambda K: lambda state: _run_sequence(online, params, state, inputs, targets, K, unroll)
        if chunk is not None or online.chunk is None or not getattr(online.plan, "gated", False):
            return run(chunk or 1)(state)
        return tricks.by_platform_chunk(run, state, time, getattr(online.plan, "chunk_length", None))

    return state_fn


def _run_sequence(online: OnlineRule, params, state, inputs, targets, K: int, unroll):
    """The state after every step of ``inputs``: chunks of ``K`` steps at once (``K > 1``), then one at a time.

    The batch-major arrays are indexed at the state's own step counter inside the scan rather than scanned
    over as a transposed copy, which would be a temporary that grows with ``T``."""
    time = np.shape(inputs)[1]
    chunks = time // K if K > 1 else 0
    if chunks:

        def chunk_body(state, _):
            at = lambda a: jax.lax.dynamic_slice_in_dim(a, state.steps, K, axis=1)
            return online.chunk(params, state, at(inputs), jax.tree_util.tree_map(at, targets)), None

        state, _ = jax.lax.scan(chunk_body, state, None, length=chunks)
    if time - chunks * K:

        def body(state, _):
            at_t = lambda a: jax.lax.dynamic_index_in_dim(a, state.steps, axis=1, keepdims=False)
            state, _ = online.step(params, state, at_t(inputs), jax.tree_util.tree_map(at_t, targets))
            return state, None

        state, _ = tricks.scan(body, state, None, length=time - chunks * K, unroll=unroll)
    return state


def batch_init_carry(model: Cell, params: Params, batch_size: int) -> Any:
    carry = model.init_carry(params)
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (batch_size,) + a.shape), carry)


def accum_dtype(params: Params):
    """The dtype of traces and accumulators: the parameters' dtype, at least float32.

    bfloat16 (or float16) weights and inputs then run the network in low precision while every trace, the
    gradient and the loss accumulate in float32; ``result`` casts the gradient back to the parameters' dtype.
    """
    dtype = jnp.dtype(jax.tree_util.tree_leaves(params)[0].dtype)
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def new_state(
    model: Cell,
    params: Params,
    batch_size: int,
    traces: Any,
    grads: Any,
    reg: FiringRateReg | None,
    reg_traces: Any,
    key: Any = None,
) -> OnlineState:
    """A fresh :class:`OnlineState`: the model's initial carry over the batch, zero accumulators, ``key``."""
    dtype = accum_dtype(params)
    spikes = ()
    if reg is not None:
        spikes = jnp.zeros((batch_size, recurrent_size(model, params)), dtype)
    return OnlineState(
        batch_init_carry(model, params, batch_size),
        traces,
        grads,
        jnp.zeros((), dtype),
        spikes,
        reg_traces if reg is not None else (),
        jnp.zeros((), jnp.int32),
        key,
    )

"""The forward-mode estimator behind ``eprop``, ``eprop_m`` and ``deep_eprop``: one implementation.

The model is a stack of recurrent neuron layers ``0 .. R-1`` and a readout (layer ``R``). For the
parameters ``theta^p`` of layer ``p`` (its effective weights, :func:`~eproptax._jacobians.effective_weights`)
the estimator carries, per example, approximations of the influences ``M^{l,p} = d h^l / d theta^p``,
split by the number ``n`` of explicit (within-layer, through the recurrent weights) edges on a path::

  G^{p,p,(0)}_t = D^p_t G^{p,p,(0)}_{t-1} + (d h^p_t / d theta^p)|immediate            (e-prop's trace)
  G^{l,p,(n)}_t = D^l_t G^{l,p,(n)}_{t-1} + J^l_t G^{l,p,(n-1)}_{t-1} + F^l_t G^{l-1,p,(n)}_t

with ``D`` the implicit recurrence, ``J^l = dfda W_rec dgdh_{t-1}`` the explicit recurrence and
``F^l = dfda W_in dgdh^{l-1}_t`` the same-step edge from the layer below. ``order`` keeps the levels
``n <= order``; ``depth="spatial"`` and ``"collapsed"`` keep only ``l = p`` (a layer's own traces),
``depth="full"`` keeps every ``l >= p``. The gradient of ``theta^p`` is
``sum_t delta^{obs}_t . sum_n G^{obs,p,(n)}_t`` with ``obs = p`` (spatial, collapsed) or ``obs = R - 1``
(full) and ``delta`` the same-step learning signal.

Filters. A layer whose whole state is one leaky variable (``leak = (decay, gain)``) has ``D`` and ``dh/da``
equal for every neuron and independent of the state, so its influence collapses into a filtered copy of
the trace below it. A leaky readout on top is never tracked as a layer: the observed traces are filtered
with it, ``ebar = kappa ebar + zeta_out (dz/dh) G``, and contracted with ``L = W_out^T err`` (or
``B err``): exactly e-prop's readout-filtered trace. With ``depth="collapsed"`` every leaky layer above
``p`` adds one scalar filter stage to ``p``'s trace, and the learning signal skips those layers' dynamics
(their leak is in the filters) while taking their same-step Jacobians at the current step.

Where each piece lives: the static plan (``_plan``), the forward step and learning signals
(``_forward``), e-prop's own trace update (``_level0.own_update``), the dense levels (``_dense``), the
filters and the gradient contraction (``_contract``), the chunked view (``_chunks``), and the speed
tricks (``_tricks``). :func:`online_traces` below strings them together, one step at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _tricks as tricks
from ._cell import Cell, layers_of
from ._chunks import chunk_step
from ._contract import contract_h, contract_mixed, contract_z, filter_stages, result
from ._dense import dense_example
from ._engine import FiringRateReg, OnlineRule, accum_dtype, leading_batch_axes, new_state, reset
from ._forward import forward
from ._hyper import check_reg
from ._level0 import compact_layout, own_update, own_view, own_z
from ._plan import EpropTraces, TracePlan, batch_axes, is_shape, make_plan, state_shapes
from ._typing import LossFn
from ._validate import check_chunk_data, check_step


def online_traces(
    model: Cell,
    loss: LossFn,
    *,
    order: int,
    depth: str,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
    where: str,
    self_recurrent: bool = False,
) -> OnlineRule:
    """Builds the per-step estimator (see the module docstring) for a plan resolved now; ``self_recurrent``
    folds each neuron's autapse into its implicit recurrence (SnAp-1, :func:`~eproptax.snap`)."""
    check_reg(where, reg)
    plan = make_plan(
        model,
        order=order,
        depth=depth,
        feedback=feedback,
        reg=reg is not None,
        where=where,
        self_recurrent=self_recurrent,
        gather=True,
    )
    layers = layers_of(model)
    B = None if isinstance(feedback, str) else jnp.asarray(feedback)
    fwd = lambda params, carry, x, target: forward(plan, model, loss, B, params, carry, x, target)

    def init(params, batch_size, key=None):
        return init_state(plan, model, reg, params, batch_size, key)

    def step(params, state, x, target):
        x, target = check_step(where, model, loss, params, state, x, target)
        return trace_step(plan, layers, reg, fwd, params, state, x, target)

    def chunk(params, state, inputs, targets):
        inputs, targets = check_chunk_data(where, model, loss, params, state, inputs, targets)
        return chunk_step(plan, reg, fwd, params, state, inputs, targets)

    def axes(state):
        return leading_batch_axes(state, *batch_axes(plan))

    return OnlineRule(
        init,
        step,
        lambda params, state: result(plan, layers, reg, params, state),
        reset,
        axes,
        chunk if plan.neuron_major and not plan.gathered else None,
        plan,
    )


def init_state(plan: TracePlan, model: Cell, reg, params, batch_size: int, key=None, make_traces=None):
    """The zero online state of ``batch_size`` examples, in the plan's shapes (:func:`~eproptax._plan.state_shapes`).

    ``make_traces(dtype, readout)``: for a rule that keeps per-layer traces of its own (``pp_prop``,
    ``kf_rtrl``, on :func:`~eproptax._plan.same_step_plan`), its traces built around the readout's zero
    e-prop trace; ``None``: the plan's."""
    dtype = accum_dtype(params)
    shapes = state_shapes(plan, batch_size)
    zeros = lambda tree: jax.tree_util.tree_map(lambda s: jnp.zeros(s, dtype), tree, is_leaf=is_shape)
    grads = zeros(shapes.grads)
    if plan.top is None:  # a readout that is not a neuron cell: its gradient follows its parameters
        grads += (jax.tree_util.tree_map(lambda w: jnp.zeros(w.shape, dtype), params[plan.R]),)
    traces = zeros(shapes.traces) if make_traces is None else make_traces(dtype, zeros(shapes.traces.readout))
    return new_state(model, params, batch_size, traces, grads, reg, zeros(shapes.reg_traces), key)


def trace_step(plan: TracePlan, layers, reg, fwd, params, state, x, target):
    """One step over the batch: forward per example, own traces at batch level, dense levels per example,
    then filters, the regulariser's sums and the gradients; returns ``(state, outputs)``."""
    carry, steps, top, values, y, sig = jax.vmap(fwd, in_axes=(None, 0, 0, 0))(params, state.carry, x, target)
    if plan.neuron_major:  # the per-synapse passes broadcast the blocks and v: form them once
        steps, top = _formed_once(plan, steps, top)
    old, batch = state.traces.influence, x.shape[0]
    own_new, own_old = {}, {}  # the own traces in z-space after and before the step, from the previous ones
    for p in range(plan.R):
        own_new[p] = own_view(plan, compact_layout(plan, steps[p].blk), old[(p, p)][0], steps[p].v, plan.layers[p])
        if plan.order > 0:
            own_old[p] = own_z(plan, old[(p, p)][0], compact_layout(plan, steps[p].dgdh_prev), plan.layers[p])
    z_sums = {(l, p): own_new[p] for l, p in plan.pairs if plan.compact_sum(l, p)}
    dense = {}
    if plan.order > 0 or plan.depth == "full":
        old_dense = {key: {n: t for n, t in enumerate(lv) if not plan.own(*key, n)} for key, lv in old.items()}
        dense_fn = lambda *a: dense_example(plan, layers, params, *a)
        dense, dense_sums = jax.vmap(dense_fn)(steps, old_dense, own_old, own_new)
        z_sums.update(dense_sums)
    filtered = filter_stages(plan, state.traces.filtered, z_sums)
    reg_traces = {key: state.reg_traces[key] + z_sums[key] for key in plan.pairs} if reg is not None else ()
    grads, mixed, later = _gradients_from_old(plan, list(state.grads), sig, steps, old, filtered, batch)
    # the new own traces, written after every other reader of the previous ones (in place)
    after = tricks.written_after(filtered, reg_traces, mixed) if plan.neuron_major else None
    own_traces = {
        p: own_update(plan, compact_layout(plan, steps[p].blk), old[(p, p)][0], steps[p].v, plan.layers[p], after)
        for p in range(plan.R)
    }
    influence = {
        (l, p): tuple(own_traces[p] if plan.own(l, p, n) else dense[(l, p)][n] for n in range(plan.levels))
        for l, p in plan.pairs
    }
    for p in later:
        o = plan.observed[p]
        g = sum(contract_h(plan, sig.delta[o], t, o, p, n) for n, t in enumerate(influence[(o, p)]))
        grads[p] = grads[p] + g / batch
    readout, grads[plan.R] = readout_step(plan, grads[plan.R], sig, top, state.traces.readout, batch)
    state = state._replace(
        carry=carry,
        traces=EpropTraces(influence, filtered, readout),
        grads=tuple(grads),
        loss=state.loss + jnp.mean(values).astype(state.loss.dtype),
        steps=state.steps + 1,
    )
    if reg is not None:
        state = state._replace(spikes=state.spikes + sig.z, reg_traces=reg_traces)
    return state, y


def _formed_once(plan: TracePlan, steps, top):
    """The layers' blocks and presynaptic vectors through :func:`~eproptax._tricks.formed_once`."""
    blks, top_blk, vs, top_v = tricks.formed_once(
        (
            [f.blk for f in steps],
            top.blk if top is not None else None,
            [f.v for f in steps],
            top.v if top is not None else None,
        )
    )
    steps = [f._replace(blk=blk, v=v) for f, blk, v in zip(steps, blks, vs)]
    return steps, (top._replace(blk=top_blk, v=top_v) if top is not None else None)


def _gradients_from_old(plan: TracePlan, grads, sig, steps, old, filtered, batch):
    """The gradients that do not read the new own traces: a filtered trace's, and a lone own trace's with an
    unstored variable (contracted from the previous traces). Returns ``(grads, mixed, later)``: ``mixed``
    the contractions from the previous traces, ``later`` the layers whose gradient reads the new traces."""
    mixed, later = [], []
    for p in range(plan.R):
        o, d = plan.observed[p], plan.layers[p]
        if p in filtered:
            grads[p] = grads[p] + contract_z(plan, sig.L[o], filtered[p][-1]) / batch
        elif plan.compact_sum(o, p) and not all(d.stored):
            blk = compact_layout(plan, steps[p].blk)
            mixed.append(contract_mixed(plan, sig.L[o], blk, old[(p, p)][0], steps[p].v, p, d))
            grads[p] = grads[p] + mixed[-1] / batch
        else:
            later.append(p)
    return grads, mixed, later


def readout_step(plan: TracePlan, grad, sig, top, trace, batch):
    """The readout's own trace and gradient: exact for a neuron readout (its own e-prop trace, which its own
    leak makes exact), the same-step gradient of any other (stateless) readout."""
    R, d = plan.R, plan.top
    if d is None:
        return (), jax.tree_util.tree_map(lambda acc, g: acc + jnp.sum(g, 0) / batch, grad, sig.g_top)
    new = own_update(plan, compact_layout(plan, top.blk), trace, top.v, d)
    if not all(d.stored):
        g = contract_mixed(plan, sig.err, compact_layout(plan, top.blk), trace, top.v, R, d)
    else:
        g = contract_h(plan, sig.delta_top, new, R, R, 0)
    return new, grad + g / batch

"""pp-prop (ES-D-RTRL): e-prop's eligibility trace kept as the outer product of a post- and a presynaptic trace."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _hyper as hyper
from ._cell import Cell, layers_of
from ._contract import result
from ._engine import FiringRateReg, OnlineRule, reset, scan_rule, time_major
from ._forward import forward
from ._hyper import check_reg
from ._plan import StepCost, TracePlan, is_shape, same_step_plan, state_shapes
from ._traces import init_state, readout_step
from ._typing import GradFn, LossFn
from ._validate import check_chunk_data, check_step


class PpTraces(NamedTuple):
    """pp-prop's factors, per example (batch first), a tuple over the recurrent layers each.

    Attributes:
      pre: ``(B, m)``, the presynaptic trace ``eps_x <- a_x eps_x + v``, ``v = [x_t, z_{t-1}, 1]``.
      post: ``(B, n, s, k)``, the postsynaptic trace ``eps_f <- a_f D eps_f + (1 - a_f) dh/da``.
      power: ``(B,)``, ``a_f^(t+1)``, for the warm-up correction ``1 / (1 - a_f^(t+1))`` of ``eps_f``.
      readout: the readout's own (exact) e-prop trace, as :func:`eprop` keeps it, or ``()``.
    """

    pre: tuple
    post: tuple
    power: tuple
    readout: Any


class PpPlan(NamedTuple):
    """pp-prop's static plan: the e-prop plan it reads its blocks and signals from, and the decays."""

    traces: TracePlan
    decays: tuple  # per recurrent layer, ``(a_x, a_f)``

    @property
    def gated(self) -> bool:
        """Whether a recurrent layer has several synaptic entries (GRU, LSTM): the whole-sequence view then
        runs in chunks by default (:data:`~eproptax.DEFAULT_CHUNK`), as e-prop's does."""
        return self.traces.gated

    @staticmethod
    def chunk_length(K: int, time: int) -> int:
        """The default chunk for ``T = time`` steps, given the platform's :data:`~eproptax.DEFAULT_CHUNK`
        ``K``: as few chunks of at most ``4 K`` steps as cover the sequence, of equal length (``T`` itself
        when ``T <= 4 K``), so at most ``T / (4 K)`` steps are left to step one at a time. A pp-prop chunk
        keeps only ``K (n k + m)`` per example, and the accumulator moves once per chunk: the longer, the
        faster (benchmarks/README.md, "Peers")."""
        return time // -(-time // (4 * K))

    def cost(self, batch_size: int, itemsize: int = 4) -> StepCost:
        """The least work of one step: the state read and written once; the gradient's outer product,
        ``2 n k m`` FLOPs per layer and example, and the traces' ``O(n s^2 k + m)``."""
        p = self.traces
        layers = p.layers[: p.R]
        trace_floats = batch_size * sum(d.m + d.n * d.s * d.k + 1 for d in layers)
        shapes = state_shapes(p, batch_size)
        leaves = jax.tree_util.tree_leaves((shapes.grads, shapes.reg_traces, shapes.traces.readout), is_leaf=is_shape)
        other = sum(math.prod(shape) for shape in leaves)
        state = batch_size * p.carry_bytes + itemsize * (trace_floats + other + p.top_params + 1) + 4
        flops = batch_size * sum(2.0 * d.n * d.k * d.m + 2.0 * d.n * d.s * d.s * d.k for d in layers)
        return StepCost(state, 2 * state, flops)


def _decays(plan: TracePlan, decay) -> tuple:
    """``(a_x, a_f)`` per recurrent layer from ``decay`` (see :func:`pp_prop`)."""
    if decay is None:  # a_x: the layer's first leaky variable's decay (its membrane), so LIF gives e-prop
        first = lambda d: next((leak[0] for leak in d.leaks if leak is not None), 0.0)
        return tuple((first(d), 0.0) for d in plan.layers[: plan.R])
    pair = tuple(decay) if isinstance(decay, (tuple, list)) else (decay, decay)
    if len(pair) != 2 or any(isinstance(a, (bool, str)) for a in pair):
        raise ValueError(
            "pp_prop: `decay` must be None, a decay in [0, 1) (both traces) or a pair (a_x, a_f) of decays; "
            f"got {decay!r}."
        )
    for a in pair:  # a traced decay (vmapped over) is not checked
        hyper.decay("pp_prop", "decay", a)
    return (pair,) * plan.R


def trace_update(a_x, a_f, step, pre, post, power):
    """pp-prop's two traces one step on, over the batch, from a layer's :class:`~eproptax._forward.LayerStep`:
    ``(pre, post, power, eps_f)``, ``eps_f`` the postsynaptic trace with its warm-up correction applied."""
    dtype = post.dtype
    pre = a_x * pre + step.v.astype(dtype)
    D, dfda = step.blk.D.astype(dtype), step.blk.dfda.astype(dtype)
    post = a_f * jnp.einsum("bjce,bjek->bjck", D, post) + (1.0 - a_f) * dfda
    power = a_f * power
    return pre, post, power, post / (1.0 - power)[:, None, None, None]  # the correction is 1 for a_f = 0


def online_pp_prop(
    model: Cell, loss: LossFn, decay=None, *, feedback="symmetric", reg: FiringRateReg | None = None
) -> OnlineRule:
    """The per-step form of :func:`pp_prop`; ``ep.online.pp_prop``."""
    check_reg("pp_prop", reg)
    plan = same_step_plan(model, feedback=feedback, reg=reg is not None, where="pp_prop")
    decays = _decays(plan, decay)
    layers = layers_of(model)
    B = None if isinstance(feedback, str) else jnp.asarray(feedback)
    fwd = lambda params, carry, x, target: forward(plan, model, loss, B, params, carry, x, target)

    def init(params, batch_size, key=None):
        ds = plan.layers[: plan.R]
        traces = lambda dtype, readout: PpTraces(
            tuple(jnp.zeros((batch_size, d.m), dtype) for d in ds),
            tuple(jnp.zeros((batch_size, d.n, d.s, d.k), dtype) for d in ds),
            tuple(jnp.ones((batch_size,), dtype) for _ in ds),
            readout,
        )
        return init_state(plan, model, reg, params, batch_size, key, traces)

    def advance(params, state, x, target):
        """One step without the recurrent layers' gradients: ``(state, y, (w, pre) per layer)``, their
        gradient ``sum_b w[b] (x) pre[b]`` left to the caller (each step, or once per chunk)."""
        carry, steps, top, values, y, sig = jax.vmap(fwd, in_axes=(None, 0, 0, 0))(params, state.carry, x, target)
        old, batch, grads = state.traces, x.shape[0], list(state.grads)
        pre, post, power, z_traces, factors = [], [], [], {}, []
        for p, (a_x, a_f) in enumerate(decays):
            new = trace_update(a_x, a_f, steps[p], old.pre[p], old.post[p], old.power[p])
            pre, post, power = pre + [new[0]], post + [new[1]], power + [new[2]]
            eps_f, dtype = new[3], new[0].dtype
            w = jnp.einsum("bjc,bjck->bjk", sig.delta[p].astype(dtype), eps_f)  # the learning signal meets it
            factors.append((w, pre[p]))
            if reg is not None:  # the z-space eligibility, summed over time for the rate's gradient
                z_traces[(p, p)] = jnp.einsum("bjc,bjck,bi->bjki", steps[p].blk.dgdh.astype(dtype), eps_f, pre[p])
        readout, grads[plan.R] = readout_step(plan, grads[plan.R], sig, top, old.readout, batch)
        state = state._replace(
            carry=carry,
            traces=PpTraces(tuple(pre), tuple(post), tuple(power), readout),
            grads=tuple(grads),
            loss=state.loss + jnp.mean(values).astype(state.loss.dtype),
            steps=state.steps + 1,
        )
        if reg is not None:
            reg_traces = {key: state.reg_traces[key] + z for key, z in z_traces.items()}
            state = state._replace(spikes=state.spikes + sig.z, reg_traces=reg_traces)
        return state, y, tuple(factors)

    def with_gradients(state, factors, spec, batch):
        grads = list(state.grads)
        for p, (w, pre) in enumerate(factors):
            grads[p] = grads[p] + jnp.einsum(spec, w, pre) / batch
        return state._replace(grads=tuple(grads))

    def step(params, state, x, target):
        x, target = check_step("pp_prop", model, loss, params, state, x, target)
        state, y, factors = advance(params, state, x, target)
        return with_gradients(state, factors, "bjk,bi->jki", x.shape[0]), y

    def chunk(params, state, inputs, targets):
        """``K`` steps, the gradient's outer products summed over them in one contraction per layer: the
        ``(n, k, m)`` accumulator is read and written once per chunk, not once per step."""
        inputs, targets = check_chunk_data("pp_prop", model, loss, params, state, inputs, targets)
        body = lambda state, xt: advance(params, state, *xt)[::2]
        state, factors = jax.lax.scan(body, state, (jnp.swapaxes(inputs, 0, 1), time_major(targets)))
        return with_gradients(state, factors, "tbjk,tbi->jki", inputs.shape[0])

    rule_result = lambda params, state: result(plan, layers, reg, params, state)
    return OnlineRule(init, step, rule_result, reset, chunk=chunk, plan=PpPlan(plan, decays))


def pp_prop(
    model: Cell,
    loss: LossFn,
    decay=None,
    *,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
    unroll: int | None = None,
    chunk: int | None = None,
) -> GradFn:
    """pp-prop (ES-D-RTRL; Wang et al. 2026, braintrace's ``pp_prop``): e-prop's trace as an outer product.

    e-prop (:func:`eprop`) keeps, per example, a trace for every synapse ``(j, g, i)`` and state variable.
    pp-prop keeps one presynaptic trace per input and one postsynaptic trace per neuron, state variable
    and synaptic entry, and uses their outer product as the eligibility trace::

      eps_x^t = a_x eps_x^{t-1} + v^t                        # v = [x_t, z_{t-1}, 1], (m,)
      eps_f^t = a_f D^t eps_f^{t-1} + (1 - a_f) dh^t/da^t      # per neuron, (s, k); D = dh_j/dh_j^prev
      grad W_{j g i} += sum_c delta_{j c}^t eps_f^t[j, c, g] / (1 - a_f^(t+1)) * eps_x^t[i]

    with ``delta = L dz/dh`` e-prop's same-step learning signal (through ``W_out^T`` or a feedback matrix
    ``B``) and ``1 / (1 - a_f^(t+1))`` the warm-up correction of the exponential average (1 for
    ``a_f = 0``), as braintrace computes it. What it drops, beyond e-prop's explicit recurrence: the
    trace's dependence between the pre- and the postsynaptic histories. It is e-prop exactly when the
    trace factorises: a neuron whose whole state is one leaky variable (LIF with its reset detached) under
    a stateless readout, with ``a_x`` the membrane's decay and ``a_f = 0`` (the default). For ALIF, GRU
    and LSTM it approximates e-prop's trace. Under a leaky readout the learning signal is the same-step
    derivative ``d loss_t / d z_t`` (e-prop filters its trace with the readout's leak, which a factorised
    trace cannot carry); the readout's own gradient is exact, as in e-prop.

    Memory per example ``O(m + n s k)`` per layer (e-prop: ``O(s n k m)``), time ``O(n k m)`` for the
    gradient's outer product (one batched matrix product per step, or per chunk of ``K`` steps, which then
    keeps ``K (n k + m)`` more per example); with ``reg``, plus ``n k m`` per example for the regulariser's
    time sum.

    Args:
      model: ``ep.cells.stack(recurrent layers..., readout)``, every recurrent layer a neuron cell.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      decay: ``None`` (the default): per layer, ``a_x`` the decay of its first declared leaky variable (a
        LIF's or ALIF's membrane; 0 for a GRU or an LSTM) and ``a_f = 0``; a float in ``[0, 1)``: both
        (braintrace's ``decay_or_rank`` as a float); a pair ``(a_x, a_f)``.
      feedback: ``"symmetric"`` or a feedback matrix ``B`` ``(n_rec, n_out)``, as in :func:`eprop`.
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: time steps per iteration of the whole-sequence scan: the speed, not the result.
      chunk: time steps whose gradient contributions are summed in one contraction per layer (the
        ``(n, k, m)`` accumulator then moves once per chunk). ``None``, the default: for a network with a gated layer
        (GRU, LSTM) on a platform with a :data:`eproptax.DEFAULT_CHUNK` ``K``, equal chunks of at most ``4 K``
        steps (:meth:`PpPlan.chunk_length`: the whole sequence up to ``4 K``), else 1. The speed, not the
        result (up to rounding).

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    Example::

      grad_fn = ep.pp_prop(model, loss)        # ep.eprop(model, loss)'s gradient on LIF, in O(n + m)
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)

    References:
      Wang, Dong, Ji, Xiao, Jiang, Liu, Huan and Wu, "Model-agnostic linear-memory online learning in spiking
      neural networks", Nature Communications (2026).
    """
    online = online_pp_prop(model, loss, decay, feedback=feedback, reg=reg)
    return scan_rule("pp_prop", model, loss, online, unroll, chunk)

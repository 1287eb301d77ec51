"""Stage 1 of the e-prop family's step: one example's forward step, its Jacobian blocks and learning signals.

For every recurrent layer ``l`` the forward pass hands the trace stages a :class:`LayerStep`: the layer's
input ``u``, its previous output ``z_prev``, the presynaptic vector ``v = [u, z_prev, 1]`` and the
per-neuron Jacobian blocks (``D``, ``dh/da``, ``dz/dh``; :func:`~eproptax._jacobians.blocks`). The
learning signals are the same-step derivatives of the loss (:class:`Signals`): the top layer's
``L^{R-1} = B err`` (``B = W_out^T``, the vjp through the readout, with symmetric feedback; the
feedback matrix otherwise), passed down through the layers above at the same step only
(``depth="spatial"`` and ``"collapsed"``), and ``delta^l = L^l dz/dh``, the signal in h-space.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._cell import layers_of
from ._engine import recurrent_outputs
from ._jacobians import Blocks, blocks, output_jacobian, with_self_recurrence
from ._plan import TracePlan


class LayerStep(NamedTuple):
    """One neuron layer at one step, what the trace stages read (one example, or batched)."""

    u: jax.Array  # the layer's input, (n_in,)
    z_prev: jax.Array  # its previous output, (n,)
    blk: Blocks  # its Jacobian blocks at this step
    dgdh_prev: jax.Array | None  # dz/dh at the previous state, (n, s): dense levels only
    v: jax.Array  # the presynaptic vector [u, z_prev, 1], (m,)


class Signals(NamedTuple):
    """The same-step learning signals of one step.

    Attributes:
      L: ``{l: (n_l,)}``, ``d loss_t / d z^l_t`` at the same step (through ``B`` for the top layer).
      delta: ``{l: (n_l, s_l)}``, ``L^l`` in h-space (times ``dz/dh``).
      delta_top: the readout's error in h-space (a neuron readout), else ``()``.
      err: ``d loss_t / d y_t``.
      g_top: the gradient of a readout that is not a neuron cell, else ``()``.
      z: the recurrent layers' outputs (for the regulariser), else ``()``.
    """

    L: dict
    delta: dict
    delta_top: Any
    err: jax.Array
    g_top: Any
    z: Any


def presynaptic(u, z_prev):
    """``v = [u, z_prev, 1]``: the vector the effective weights multiply, ``a = W_eff v``."""
    return jnp.concatenate([u, z_prev, jnp.ones((1,), u.dtype)])


def forward(plan: TracePlan, model, loss, feedback, params, carry, x, target):
    """One example's step: ``(carry, [LayerStep], readout LayerStep or None, loss value, y, Signals)``;
    ``feedback`` is the feedback matrix, or ``None`` for symmetric feedback."""
    layers = layers_of(model)
    R, steps, hs_prev, hs, u = plan.R, [], [], [], x
    for l in range(R):
        layer, h_prev = layers[l], carry[l]
        z_prev = layer.output(h_prev)
        a = layer.synapse(params[l], u, z_prev)
        h = layer.dynamics(h_prev, a)
        blk = blocks(layer, h_prev, a, h)
        if plan.self_recurrent:  # SnAp-1: the autapse's edge is part of the neuron's own recurrence
            blk = with_self_recurrence(layer, params[l], u, z_prev, h_prev, blk)
        dgdh_prev = output_jacobian(layer, h_prev) if plan.order > 0 else None
        steps.append(LayerStep(u, z_prev, blk, dgdh_prev, presynaptic(u, z_prev)))
        hs_prev.append(h_prev)
        hs.append(h)
        u = layer.output(h)
    top, readout = layers[R], None
    if plan.top is not None:
        h_prev = carry[R]
        z_prev = top.output(h_prev)
        a = top.synapse(params[R], u, z_prev)
        h_top = top.dynamics(h_prev, a)
        y = top.output(h_top)
        readout = LayerStep(u, z_prev, blocks(top, h_prev, a, h_top), None, presynaptic(u, z_prev))
    else:
        h_top, y = top.apply(params[R], carry[R], u)
    value, err = jax.value_and_grad(lambda out: loss(out, target))(y)
    signal, delta_top, g_top = top_signal(plan, top, params[R], carry[R], u, readout, err, feedback)
    L = learning_signals(plan, layers, params, steps, hs_prev, signal)
    carry = tuple(hs) + (h_top,)
    z = recurrent_outputs(model, carry) if plan.reg else ()
    delta = {l: steps[l].blk.dgdh * L[l][:, None] for l in L}
    return carry, steps, readout, value, y, Signals(L, delta, delta_top, err, g_top, z)


def top_signal(plan: TracePlan, top, p_top, h_prev, u, readout, err, feedback):
    """``(L^{R-1}, delta_top, g_top)``: the learning signal of the top recurrent layer, the readout's error in
    h-space and the gradient of a readout that is not a neuron cell."""
    if plan.top is None:
        _, pull = jax.vjp(lambda uu, pp: top.apply(pp, h_prev, uu)[1], u, p_top)
        signal, g_top = pull(err)
        return (feedback @ err if feedback is not None else signal), (), g_top
    delta_top = readout.blk.dgdh * err[:, None]
    z_prev = readout.z_prev
    if plan.filter_top:  # the readout's leak is in the filter: pull back through the synapse only
        top_map = lambda uu: top.synapse(p_top, uu, z_prev)
        cot = delta_top
    else:
        top_map = lambda uu: top.output(top.dynamics(h_prev, top.synapse(p_top, uu, z_prev)))
        cot = err
    signal = feedback @ cot.reshape(-1) if feedback is not None else jax.vjp(top_map, u)[1](cot)[0]
    return signal, delta_top, ()


def learning_signals(plan: TracePlan, layers, params, steps, hs_prev, signal) -> dict:
    """``{l: L^l}``: the top layer's signal passed down through the layers above at the same step only (all
    but ``depth="full"``, where every layer's gradient reads the top layer's influence). With
    ``depth="collapsed"`` a leaky layer's leak is in the filters, so the signal skips its dynamics."""
    L = {plan.R - 1: signal}
    if plan.depth == "full":
        return L
    for l in range(plan.R - 1, 0, -1):
        f, layer, p, h_prev = steps[l], layers[l], params[l], hs_prev[l]
        if plan.depth == "collapsed" and plan.layers[l].scalar is not None:
            step_map = lambda uu: layer.synapse(p, uu, f.z_prev)
            cot = f.blk.dgdh * L[l][:, None]
        else:
            step_map = lambda uu: layer.output(layer.dynamics(h_prev, layer.synapse(p, uu, f.z_prev)))
            cot = L[l]
        L[l - 1] = jax.vjp(step_map, f.u)[1](cot)[0]
    return L

"""Stage 3 of the e-prop family's step: filters, the regulariser's sums, and the gradient contraction.

The gradient of layer ``p``'s effective weights accumulates, every step and over the batch,
``sum_b sum_j delta[b, j] . G[b, j, ...]``: the learning signal met by the influence ``G`` that layer
``p``'s gradient observes (its own trace, or the top layer's influence with ``depth="full"``), in z-space
against ``L`` or in h-space against ``delta = L dz/dh``. Under leaky filters the observed trace is first
filtered, ``ebar <- decay ebar + gain ebar_below`` per stage (:func:`filter_stages`). The batch is always
reduced by ``einsum`` (a ``dot``), never by a broadcast multiply and ``sum``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _tricks as tricks
from ._engine import reg_value, reg_weights
from ._jacobians import pull_back, pull_back_gathered
from ._level0 import gathered, z_mix
from ._plan import LayerPlan, TracePlan


def _specs(plan: TracePlan) -> tuple[str, str]:
    """The batch contractions of a compact trace ``(n, k, m)`` and of one stored ``(n, m)`` (``k = 1``)."""
    if plan.neuron_major:
        return "bj,jbgi->jgi", "bj,jbP->jP"
    return "bj,bjgi->jgi", "bj,bjP->jP"


def contract_z(plan: TracePlan, sig, z_trace):
    """``sum_b sum_j sig[b, j] z_trace[b, j, ...]`` for a compact or a dense z-space trace."""
    if z_trace.ndim == 4:
        return jnp.einsum(_specs(plan)[0], sig, z_trace)
    return jnp.einsum("bj,bjgki->gki", sig, z_trace)


def outer(plan: TracePlan, post, pre, l: int, d: LayerPlan):
    """``sum_b post[b, j] pre[b, i]`` as ``(n, 1, width)``: a leaky variable's gradient (``k = 1``); a hidden
    layer's through :func:`~eproptax._tricks.transposed_outer`, the readout's narrow one directly, and in the
    gathered layout against each neuron's own entries of ``pre``."""
    if d.pre is not None:
        return jnp.einsum("bj,bji->ji", post, gathered(pre, d))[:, None, :]
    if l == plan.R:
        return jnp.einsum("bj,bi->ji", post, pre)[:, None, :]
    return tricks.transposed_outer(post, pre)[:, None, :]


def contract_compact(plan: TracePlan, w, part, d: LayerPlan):
    """``sum_b w[b, j] part[j, b, ...]`` for a stored compact trace, as ``(n, k, m)``."""
    compact, flat = _specs(plan)
    return jnp.einsum(compact if part.ndim == 4 else flat, w, part).reshape(d.n, d.k, d.width)


def contract_h(plan: TracePlan, delta, trace, l: int, p: int, n: int):
    """Level ``n`` of ``(l, p)`` met by ``delta`` in h-space: an own trace variable by variable (every
    variable stored), a dense level by one ``einsum``."""
    dp = plan.layers[p]
    if plan.own(l, p, n):
        return sum(
            outer(plan, delta[:, :, c], part, l, dp)
            if dp.leaks[c] is not None
            else contract_compact(plan, delta[:, :, c], part, dp)
            for c, part in enumerate(trace)
        )
    return jnp.einsum("bjc,bjcgki->gki", delta, trace)


def contract_mixed(plan: TracePlan, sig, blk, trace, v, l: int, d: LayerPlan):
    """``sum_b sig[b, j] z[b, j, ...]`` for the z-space view ``z`` of an own trace with some variable not
    stored, from the previous stored traces and ``v`` without forming ``z``: each ``dot`` reads a stored
    trace as it is carried, and no z-space array is written and read back."""
    D, f = (jnp.swapaxes(x, 0, 1) if plan.neuron_major else x for x in z_mix(blk))  # batch-major (B, n, ...)
    if d.pre is None:
        g = jnp.einsum("bjg,bi->jgi", sig[..., None] * f, v)
    else:
        g = jnp.einsum("bjg,bji->jgi", sig[..., None] * f, gathered(v, d))
    for e, part in zip(d.kept, trace):
        w = sig * D[:, :, e]
        if d.leaks[e] is not None:
            g = g + outer(plan, w, part, l, d)
        else:
            g = g + contract_compact(plan, w, part, d)
    return g


def filter_stages(plan: TracePlan, filtered: dict, z_sums: dict) -> dict:
    """Every filter cascade one step on: ``{p: (ebar_1, ...)}`` from the previous stages and the z-space sums
    they filter, ``ebar_i <- decay_i ebar_i + gain_i ebar_{i-1}`` with ``ebar_0`` the observed trace."""
    out = {}
    for p in filtered:
        stage_in, stages = z_sums[(plan.observed[p], p)], []
        for (decay, gain), old_stage in zip(plan.stage_leaks(p), filtered[p]):
            stage_in = decay * old_stage + gain * stage_in
            stages.append(stage_in)
        out[p] = tuple(stages)
    return out


def result(plan: TracePlan, layers, reg, params, state):
    """``(loss, grads)`` of an online state: the regulariser's value and gradient added, every gradient
    pulled back from the effective weights to the layer's own parameters."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    grads, value = list(state.grads), state.loss
    if reg is not None:
        weights = reg_weights(reg, state.spikes, state.steps)  # already divided by the batch size
        offsets = [0]
        for d in plan.layers[: plan.R]:
            offsets.append(offsets[-1] + d.n)
        for l, p in plan.pairs:
            grads[p] = grads[p] + contract_z(plan, weights[:, offsets[l] : offsets[l + 1]], state.reg_traces[(l, p)])
        value = value + reg_value(reg, state.spikes, state.steps)
    out = []
    for i, (layer, d) in enumerate(zip(layers, plan.layers)):
        if d is not None:
            out.append(
                pull_back(layer, params[i], grads[i], dtype)
                if d.pre is None
                else pull_back_gathered(layer, params[i], grads[i], d.pre, dtype)
            )
        else:
            out.append(jax.tree_util.tree_map(lambda g, w: g.astype(w.dtype), grads[i], params[i]))
    return value, tuple(out)

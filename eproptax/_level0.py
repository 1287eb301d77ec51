"""Stage 2 of the e-prop family's step: every layer's own level-0 trace, e-prop's eligibility trace.

The update is e-prop's, per synapse ``(j, g, i)`` of layer ``p`` and state variable ``c``::

    eps_c[j, g, i] <- sum_e D[j, c, e] eps_e[j, g, i] + dfda[j, c, g] v[i]          (:func:`own_update`)

with ``D = dh_j / dh_j^{prev}`` (the implicit recurrence) and ``dfda = dh_j / da_j`` from the cell's own
dynamics, and ``v = [x_t, z_{t-1}, 1]``. A leaky variable (``h_c = decay h_c + gain a``) has the same trace
for every neuron, the presynaptic ``zbar <- decay zbar + gain v``. The trace's z-space view, ``e = sum_c
(dz/dh)_c eps_c`` (:func:`own_view`), is what the learning signal meets. These run at batch level, in the
plan's compact layout (:attr:`~eproptax._plan.TracePlan.neuron_major`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _tricks as tricks
from ._plan import LayerPlan, TracePlan


def compact_layout(plan: TracePlan, tree):
    """Batch-major per-neuron coefficients ``(B, n, ...)`` in the layout of the compact arrays."""
    return tricks.neuron_major(tree) if plan.neuron_major else tree


def gathered(v, d: LayerPlan, neuron_major: bool = False):
    """A presynaptic vector ``(B, m)`` as each neuron of ``d`` reads it in the gathered layout: ``(B, n, K)``,
    or ``(n, B, K)`` (one gather either way), its synapses' entries, zero on padding; else ``v`` itself."""
    if d.pre is None:
        return v
    # one gather of whole columns of v, the batch placed where the layout keeps it: no transposed copy
    batch_at = 1 if neuron_major else 0
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(batch_at,), collapsed_slice_dims=(1,), start_index_map=(1,))
    g = jax.lax.gather(v, d.pre[..., None], dims, slice_sizes=(v.shape[0], 1), mode="promise_in_bounds")
    if d.valid is None:
        return g
    return g * jnp.expand_dims(d.valid, batch_at).astype(g.dtype)


def broadcast_v(plan: TracePlan, v, d: LayerPlan):
    """A presynaptic vector ``(B, m)`` broadcast against compact ``(n, B, k, width)`` or ``(B, n, k, width)``
    arrays: gathered per neuron in the gathered layout (:func:`gathered`)."""
    if d.pre is not None:
        return gathered(v, d, plan.neuron_major)[:, :, None, :]
    return v[None, :, None, :] if plan.neuron_major else v[:, None, None, :]


def as_compact(plan: TracePlan, part, leak, d: LayerPlan):
    """A stored own trace as a compact array: a leaky variable's ``zbar`` broadcast over the neurons."""
    return broadcast_v(plan, part, d) if leak is not None else part.reshape(part.shape[:2] + (d.k, d.width))


def own_update(plan: TracePlan, blk, trace, v, d: LayerPlan, after=None):
    """e-prop's eligibility trace over the batch (the module docstring's update).

    ``trace`` is a tuple over the stored state variables: a leaky variable's ``zbar`` ``(B, m)`` is
    filtered on its own; every other variable's compact array mixes the stored traces through its row of
    ``D`` (``blk`` in the compact layout), reading ``zbar`` broadcast over the neurons, so each output
    element reads only the same element of every input. ``after`` (:func:`~eproptax._tricks.written_after`)
    is added to the previous compact arrays as they are read."""
    kept = d.kept
    layout = lambda a: tricks.unit_axis_dropped(a, d.k)
    D, f, pre = blk.D[..., None, None], blk.dfda[..., None], layout(broadcast_v(plan, v, d))
    olds = [
        layout(as_compact(plan, part, d.leaks[e], d)) if d.leaks[e] is not None or after is None else part + after
        for e, part in zip(kept, trace)
    ]

    def update(c, part):
        if d.leaks[c] is not None:
            decay, gain = d.leaks[c]
            return decay * part + gain * v
        mixed = sum(layout(D[:, :, c, e]) * old for e, old in zip(kept, olds))
        return mixed + layout(f[:, :, c]) * pre

    return tuple(update(c, part) for c, part in zip(kept, trace))


def own_z(plan: TracePlan, trace, dgdh, d: LayerPlan):
    """An own level-0 trace with every variable stored, in z-space: a compact array (``dgdh`` in the
    compact layout)."""
    return sum(dgdh[:, :, c, None, None] * as_compact(plan, part, d.leaks[c], d) for c, part in enumerate(trace))


def z_mix(blk):
    """``dgdh`` mixed with ``D`` and ``dh/da`` at neuron size: the new own trace in z-space is
    ``z = sum_c g_c (sum_e D_ce trace_e + f_c v) = sum_e (g . D)_e trace_e + (g . f) v`` over the
    *previous* stored traces, so it never needs an unstored variable's trace."""
    g = blk.dgdh
    return jnp.einsum("...c,...ce->...e", g, blk.D), jnp.einsum("...c,...ck->...k", g, blk.dfda)


def own_view(plan: TracePlan, blk, trace, v, d: LayerPlan):
    """The z-space view of the new own trace as a function of the *previous* stored traces, so that the new
    ones can be written after it: with every variable stored, ``dz/dh`` applied to the updated traces; else
    mixed from the previous traces at neuron size (:func:`z_mix`), an unstored variable's trace not existing."""
    kept = d.kept
    if len(kept) == d.s:
        return own_z(plan, own_update(plan, blk, trace, v, d), blk.dgdh, d)
    D, f = z_mix(blk)
    olds = [as_compact(plan, part, d.leaks[e], d) for e, part in zip(kept, trace)]
    return sum(D[:, :, e, None, None] * old for e, old in zip(kept, olds)) + f[..., None] * broadcast_v(plan, v, d)

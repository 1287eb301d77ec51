"""Stage 2b of the e-prop family's step: the dense influence levels, per example.

Level ``n`` of the influence of layer ``p``'s parameters on layer ``l`` (``n`` explicit edges on a path)::

    G^{l,p,(n)}_t = D^l_t G^{l,p,(n)}_{t-1} + J^l_t G^{l,p,(n-1)}_{t-1} + F^l_t G^{l-1,p,(n)}_t

with ``J^l = dfda W_rec dgdh_{t-1}`` (the explicit recurrence, ``eprop_m``'s levels) and ``F^l = dfda W_in
dgdh^{l-1}_t`` (the same-step edge from the layer below, deep e-prop's ``depth="full"``). A level is dense,
``(n_l, s_l, n_p, k_p, m_p)``, except a layer's own level 0 (``_level0``), which enters here through its
z-space views before and after the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._jacobians import mix, weigh
from ._plan import TracePlan


def push(layer, p, f, arg: str, z_trace, compact: bool):
    """``dh/da . W . z_trace`` through layer's synapse at its step ``f`` (a ``LayerStep``): the explicit edge
    (``arg="z"``, through ``z_prev``) or the same-step edge from the layer below (``"u"``). The synaptic
    matrix ``W`` (``n_l, k_l, n_src``) is ``jacfwd`` of the affine synapse: it depends on the parameters
    only, so XLA forms it outside the loop, and a dense source is pushed by one product with it."""
    if arg == "z":
        fn, at = (lambda zz: layer.synapse(p, f.u, zz)), f.z_prev
    else:
        fn, at = (lambda uu: layer.synapse(p, uu, f.z_prev)), f.u
    w = jax.jacfwd(fn)(at)
    if compact:  # z_trace[j, g, i] moves neuron j only: broadcast against the synaptic matrix
        da = w[:, :, :, None, None] * z_trace[None, None]
    else:  # z_trace (n_src, n, k, m): one product, its result already in the trace's layout
        da = jnp.tensordot(w, z_trace.astype(w.dtype), 1)
    return mix(f.blk.dfda, da)


def expand(plan: TracePlan, l, p, n, z_trace):
    """A compact own z-space trace ``(n, k, m)`` as a dense ``(n, n, k, m)`` one; any other unchanged."""
    if not plan.own(l, p, n):
        return z_trace
    return jnp.eye(z_trace.shape[0], dtype=z_trace.dtype)[:, :, None, None] * z_trace[None]


def dense_example(plan: TracePlan, layers, params, steps, old, own_old, own_new):
    """One example's dense levels ``{(l, p): {n: level}}``, and the z-space sums over levels of the pairs
    whose sum is dense. ``own_old`` and ``own_new`` hold each layer's own level-0 trace in z-space, compact
    ``(n, k, m)``, before and after this step."""

    def to_z(l, p, n, trace, dgdh, owns):
        return owns[p] if plan.own(l, p, n) else weigh(dgdh, trace)

    influence = {}
    for l, p in plan.pairs:
        f, new = steps[l], {}
        for n in range(plan.levels):
            if plan.own(l, p, n):
                continue
            trace = mix(f.blk.D, old[(l, p)][n])
            if n >= 1:
                z_old = to_z(l, p, n - 1, old[(l, p)].get(n - 1), f.dgdh_prev, own_old)
                trace += push(layers[l], params[l], f, "z", z_old, plan.own(l, p, n - 1))
            if l > p:
                below = to_z(l - 1, p, n, influence[(l - 1, p)].get(n), steps[l - 1].blk.dgdh, own_new)
                trace += push(layers[l], params[l], f, "u", below, plan.own(l - 1, p, n))
            new[n] = trace
        influence[(l, p)] = new
    z_sums = {
        (l, p): sum(
            expand(plan, l, p, n, to_z(l, p, n, influence[(l, p)].get(n), steps[l].blk.dgdh, own_new))
            for n in range(plan.levels)
        )
        for l, p in plan.pairs
        if not plan.compact_sum(l, p)
    }
    return influence, z_sums

"""K steps of a linear trace system at once: the algebra behind the chunked whole-sequence view.

Every level-0 quantity of the e-prop family (a layer's stored eligibility traces, the presynaptic ``zbar``
of a leaky variable, the readout filter's stages, the regulariser's sums) evolves, for each example ``b``
and neuron ``j``, in one linear system over ``S`` slots, each slot a ``(k, m)`` array (``k`` synaptic
entries, ``m`` presynaptic values), and the gradient reads it linearly::

    X_t = A_t X_{t-1} + F_t v_t          A_t (S, S), F_t (S, k), v_t (m,)
    G  += c_t . X_{t-1} + d_t v_t        c_t (S,), d_t (k,), summed over the batch

Over a chunk of ``K`` steps both regroup exactly into one pass over the slots and two matrix products
whose contraction runs over the chunk's steps (and the batch, for ``G``)::

    X_K = P_0 X_0 + sum_t (P_t F_t) v_t              P_K = I,   P_{t-1} = P_t A_t
    G  += mu_0 . X_0 + sum_t (mu_t F_t + d_t) v_t     mu_K = 0,  mu_{t-1} = c_t + mu_t A_t

with ``P`` and ``mu`` from one backward recursion over the chunk at neuron size (``S x S`` per neuron).
Stepping reads and writes every slot and the gradient every step; the chunk reads and writes them once
per ``K`` steps (``benchmarks/chunking.py``, docs/design.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._engine import accum_dtype


def closure(structure: np.ndarray) -> np.ndarray:
    """The slots each slot of ``P_0`` can read: the reflexive, transitive closure of ``structure[s, e]``
    (``A[s, e]`` may be nonzero)."""
    reach = np.asarray(structure, bool) | np.eye(len(structure), dtype=bool)
    while True:
        more = reach | (reach.astype(int) @ reach.astype(int) > 0)
        if (more == reach).all():
            return reach
        reach = more


def _product(P, Q):
    """``P @ Q`` over the trailing slot axes, unrolled (``S`` is a few): one elementwise pass, not many tiny dots."""
    return sum(P[..., :, e, None] * Q[..., e, None, :] for e in range(P.shape[-1]))


def advance(
    slots: Sequence[jax.Array], shared: Sequence[bool], structure: np.ndarray, coefficients: Callable, steps, v
):
    """The system over one chunk (see the module docstring).

    Args:
      slots: the ``S`` slots at the chunk's start, each ``(n, B, k, m)``, or ``(B, m)`` where ``shared``:
        a slot equal for every neuron (a leaky variable's ``zbar``, ``k = 1``), whose row of ``A`` reads only
        itself.
      shared: per slot, whether it is shared.
      structure: static ``(S, S)`` booleans, ``False`` where ``A[s, e]`` is zero at every step.
      coefficients: ``coefficients(x_t) -> (A_t, F_t, c_t, d_t)``, shaped ``(B, n, S, S)``, ``(B, n, S, k)``,
        ``(B, n, S)`` and ``(B, n, k)``, from one step's slice ``x_t`` of ``steps``. They are formed inside
        the backward recursion, step by step, and never stored for the whole chunk: stored, they were
        larger than the traces themselves at ``S = 3`` and ``K = 64`` (``K S^2`` numbers against ``k m``
        per neuron and example).
      steps: a pytree with a leading axis of the chunk's ``K`` steps.
      v: ``(K, B, m)``, the presynaptic vectors.

    Returns:
      ``(slots at the chunk's end, the gradient's increment (n, k, m))``.
    """
    S = len(slots)
    if not S:  # nothing carried (a readout whose state dynamics never read): the gradient's direct term
        return [], jnp.einsum("tbjg,tbi->jgi", jax.vmap(coefficients)(steps)[3], v)

    row = lambda vec, M: _product(vec[..., None, :], M)[..., 0, :]  # vec @ M over the slot axes

    def back(carry, x):  # (P_t, mu_t) -> (P_{t-1}, mu_{t-1}), from the chunk's last step down
        P, mu = carry
        a, f, c_t, d_t = coefficients(x)
        out = (_product(P, f), row(mu, f) + d_t)  # P_t F_t and mu_t F_t + d_t, what the products read
        return (_product(P, a), c_t + row(mu, a)), out

    shapes = jax.eval_shape(coefficients, jax.tree_util.tree_map(lambda a: a[0], steps))
    eye = jnp.broadcast_to(jnp.eye(S, dtype=shapes[0].dtype), shapes[0].shape)
    (P0, mu0), (PF, w) = jax.lax.scan(back, (eye, jnp.zeros(shapes[2].shape, shapes[2].dtype)), steps, reverse=True)
    neuron_major = lambda a: jnp.swapaxes(a, 0, 1)[:, :, None, None]  # (B, n) -> (n, B, 1, 1)
    compact = lambda x, is_shared: x[None, :, None, :] if is_shared else x
    reads = closure(structure)

    new = []
    for s, (x, is_shared) in enumerate(zip(slots, shared)):
        if is_shared:  # P_0's row reads itself only, the same for every neuron: take neuron 0's
            new.append(P0[:, 0, s, s, None] * x + jnp.einsum("tb,tbi->bi", PF[:, :, 0, s, 0], v))
            continue
        carried = sum(neuron_major(P0[:, :, s, e]) * compact(slots[e], shared[e]) for e in range(S) if reads[s, e])
        new.append(carried + jnp.einsum("tbjg,tbi->jbgi", PF[:, :, :, s, :], v))

    grad = jnp.einsum("tbjg,tbi->jgi", w, v)
    for s, (x, is_shared) in enumerate(zip(slots, shared)):
        if is_shared:
            grad = grad + jnp.einsum("bj,bi->ji", mu0[:, :, s], x)[:, None, :]
        else:
            grad = grad + jnp.einsum("bj,jbgi->jgi", mu0[:, :, s], x)
    return new, grad


# ----------------------------------------------------------------------------------------------------------
# The level-0 rules' systems, and K steps of them at once
# ----------------------------------------------------------------------------------------------------------


def system(blk, signal, d, stages, with_reg, dtype):
    """One layer's level-0 system at one step, ``(B, n, ...)``: ``(A, F, c, d)`` of :func:`advance`.

    Its slots are the stored own traces (``d`` a :class:`~eproptax._plan.LayerPlan`), one per filter stage
    (``stages``, their ``(decay, gain)``) and the regulariser's sum; ``signal`` ``(B, n)`` weighs what the
    gradient reads, the last filter stage or else the new trace in z-space."""
    kept = d.kept
    size = len(kept) + len(stages) + with_reg
    shape = blk.dgdh.shape[:-1]
    stack = lambda xs, axis, empty: jnp.stack(xs, axis) if xs else jnp.zeros(shape + empty, dtype)
    row = lambda entries: stack([jnp.broadcast_to(jnp.asarray(x, dtype), shape) for x in entries], -1, (0,))
    unit = lambda i: row([1.0 if e == i else 0.0 for e in range(size)])

    def variable(c):  # the new value of variable c: its row of A (..., S) and of F (..., k)
        if d.leaks[c] is not None:
            decay, gain = d.leaks[c]
            return decay * unit(kept.index(c)), jnp.broadcast_to(jnp.asarray(gain, dtype), shape + (d.k,))
        return (
            row([blk.D[..., c, e] for e in kept] + [0.0] * (size - len(kept))),
            blk.dfda[..., c, :].astype(dtype),
        )

    every = [variable(c) for c in range(d.s)]
    rows = [every[c] for c in kept]
    z = tuple(sum(blk.dgdh[..., c, None].astype(dtype) * part[i] for c, part in enumerate(every)) for i in (0, 1))
    seen = z
    for i, (decay, gain) in enumerate(stages):
        seen = (gain * seen[0] + decay * unit(len(kept) + i), gain * seen[1])
        rows.append(seen)
    if with_reg:
        rows.append((z[0] + unit(size - 1), z[1]))
    A, F = stack([r[0] for r in rows], -2, (0, 0)), stack([r[1] for r in rows], -2, (0, d.k))
    return A, F, signal[..., None].astype(dtype) * seen[0], signal[..., None].astype(dtype) * seen[1]


def structure(d, n_stages: int, with_reg: bool) -> np.ndarray:
    """Which slots each slot's row of :func:`system`'s ``A`` reads (static)."""
    kept = d.kept
    size = len(kept) + n_stages + with_reg
    reads = np.zeros((size, size), bool)
    for i, c in enumerate(kept):
        reads[i, : len(kept)] = d.leaks[c] is None
        reads[i, i] = True
    for i in range(len(kept), size):
        reads[i, : len(kept)] = True
        reads[i, (len(kept) if i < len(kept) + n_stages else i) : i + 1] = True
    return reads


def chunk_step(plan, reg, fwd, params, state, inputs, targets):
    """``K = inputs.shape[1]`` steps of a level-0 rule at once (``inputs`` ``(B, K, n_in)``, every target leaf
    ``(B, K, ...)``): the state of ``K`` steps, up to rounding. An inner scan runs the forward pass ``fwd``
    and keeps each step's Jacobian blocks, presynaptic vectors and learning signals; every layer's system
    then advances over the chunk at once (:func:`advance`)."""
    dtype, (batch, K) = accum_dtype(params), np.shape(inputs)[:2]
    inputs, targets = jnp.swapaxes(inputs, 0, 1), jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), targets)

    def body(carry, xt):
        carry, *seen = jax.vmap(fwd, in_axes=(None, 0, 0, 0))(params, carry, *xt)
        return carry, seen

    carry, (steps, top, values, _, sig) = jax.lax.scan(body, state.carry, (inputs, targets))
    seen = [(steps[p].blk, steps[p].v, sig.L[p]) for p in range(plan.R)]
    seen += [(top.blk, top.v, sig.err)] if plan.top is not None else []
    grads, influence, filtered = list(state.grads), dict(state.traces.influence), dict(state.traces.filtered)
    reg_traces, readout = state.reg_traces, state.traces.readout
    for p, (blk, v, signal) in enumerate(seen):
        own_layer = p < plan.R
        parts = state.traces.influence[(p, p)][0] if own_layer else state.traces.readout
        stages = filtered.get(p, ()) if own_layer else ()
        regs = (reg_traces[(p, p)],) if reg is not None and own_layer else ()
        leaks = plan.stage_leaks(p) if own_layer else ()
        new, g = _advance_layer(plan.layers[p], parts, stages, regs, leaks, (blk, signal), v, batch, dtype)
        if own_layer:
            influence[(p, p)] = (tuple(x.reshape(part.shape) for x, part in zip(new, parts)),)
            if stages:
                filtered[p] = tuple(new[len(parts) : len(parts) + len(stages)])
            if regs:
                reg_traces = {**reg_traces, (p, p): new[-1]}
        else:
            readout = tuple(x.reshape(part.shape) for x, part in zip(new, parts))
        grads[p] = grads[p] + g / batch
    if plan.top is None:
        grads[plan.R] = jax.tree_util.tree_map(lambda a, g: a + jnp.sum(g, (0, 1)) / batch, grads[plan.R], sig.g_top)
    traces = state.traces._replace(influence=influence, filtered=filtered, readout=readout)
    loss = state.loss + jnp.sum(jnp.mean(values, 1)).astype(state.loss.dtype)
    state = state._replace(carry=carry, traces=traces, grads=tuple(grads), loss=loss, steps=state.steps + K)
    if reg is not None:
        state = state._replace(spikes=state.spikes + jnp.sum(sig.z, 0), reg_traces=reg_traces)
    return state


def _advance_layer(d, parts, stages, regs, leaks, steps, v, batch, dtype):
    """One layer's slots (its stored own traces ``parts``, its filter ``stages`` and regulariser sums
    ``regs``) over the chunk: ``(new slots, gradient increment)``."""
    shared = [d.leaks[e] is not None for e in d.kept]
    slots = [part if is_shared else part.reshape(d.n, batch, d.k, d.m) for part, is_shared in zip(parts, shared)]
    coefficients = functools.partial(system, d=d, stages=leaks, with_reg=bool(regs), dtype=dtype)
    return advance(
        slots + list(stages) + list(regs),
        shared + [False] * (len(stages) + len(regs)),
        structure(d, len(stages), bool(regs)),
        lambda x: coefficients(*x),
        steps,
        v.astype(dtype),
    )

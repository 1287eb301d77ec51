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

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


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

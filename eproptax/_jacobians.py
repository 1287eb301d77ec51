"""The cell's implicit and explicit Jacobians, derived by autodiff from its synapse / dynamics / output.

For one neuron layer at one step, with ``a = synapse(params, u, z_prev)``, ``h = dynamics(h_prev, a)``
and ``z = output(h)``, every neuron ``j`` has small dense blocks (``s`` differentiable state variables,
``k`` synaptic entries):

* ``D[j]    = d h_j / d h_j^{prev}`` at fixed ``a``, shape ``(s, s)``: the implicit recurrence;
* ``dfda[j] = d h_j / d a_j``, shape ``(s, k)``;
* ``dgdh[j] = d z_j / d h_j``, shape ``(s,)``.

Each is a few ``jax.jvp`` calls with one-hot tangents broadcast over the neurons (the dynamics are
neuron-wise, so one jvp yields a column of every neuron's block). A cell whose whole state is one leaky
variable (``leak = (decay, gain)``) skips them: ``D = decay``, ``dfda = gain``. The explicit recurrence and
the same-step edge from the layer below go through the synaptic stage (``_dense.push``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._cell import Cell, float_state, scalar_leak, with_float_state


class Blocks(NamedTuple):
    """Per-neuron Jacobian blocks of one layer at one step (see the module docstring)."""

    D: jax.Array  # (n, s, s)
    dfda: jax.Array  # (n, s, k)
    dgdh: jax.Array  # (n, s)


def synapse_struct(layer: Cell, params, dtype) -> jax.ShapeDtypeStruct:
    """The shape ``(n, k)`` and dtype of ``layer.synapse``'s output for inputs of ``dtype`` (nothing is run)."""
    return jax.eval_shape(
        layer.synapse, params, jax.ShapeDtypeStruct((layer.n_in,), dtype), jax.ShapeDtypeStruct((layer.n_out,), dtype)
    )


def _columns(fn, x, n_dirs):
    """Columns of a neuron-wise Jacobian: ``jvp`` along each one-hot direction of the last axis of ``x``."""
    eye = jnp.eye(n_dirs, dtype=x.dtype)
    return jax.vmap(lambda e: jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))[1], out_axes=-1)(eye)


def output_jacobian(layer: Cell, h) -> jax.Array:
    """``dz/dh`` per neuron, shape ``(n, s)``."""
    hf = float_state(h)
    return _columns(lambda v: layer.output(with_float_state(h, v)), hf, hf.shape[-1])


def blocks(layer: Cell, h_prev, a: jax.Array, h) -> Blocks:
    """The implicit-recurrence and input Jacobians of ``dynamics`` at ``(h_prev, a)`` and ``dz/dh`` at ``h``."""
    hf_prev = float_state(h_prev)
    n, s = hf_prev.shape
    if scalar_leak(layer) is not None:
        decay, gain = scalar_leak(layer)
        ones = jnp.ones((n, 1, 1), hf_prev.dtype)
        D, dfda = decay * ones, gain * ones
    else:
        D = _columns(lambda v: float_state(layer.dynamics(with_float_state(h_prev, v), a)), hf_prev, s)
        dfda = _columns(lambda b: float_state(layer.dynamics(h_prev, b)), a, a.shape[-1])
    return Blocks(D, dfda, output_jacobian(layer, h))


def with_self_recurrence(layer: Cell, params, u, z_prev, h_prev, blk: Blocks) -> Blocks:
    """``blk`` with each neuron's own explicit edge folded into its implicit recurrence (SnAp-1, D-RTRL)::

        D'[j, c, e] = D[j, c, e] + sum_g dfda[j, c, g] W_self[j, g] dgdh_prev[j, e]

    with ``W_self[j, g] = d a[j, g] / d z_prev[j]`` (the autapse of neuron ``j``, the diagonal of the
    synapse's recurrent matrix, which depends on the parameters only) and ``dgdh_prev = dz/dh`` at
    ``h_prev``: the whole derivative of neuron ``j``'s new state by its own previous one."""
    w_rec = jax.jacfwd(lambda zz: layer.synapse(params, u, zz))(z_prev)  # (n, k, n)
    w_self = jnp.einsum("jgj->jg", w_rec)
    dgdh_prev = output_jacobian(layer, h_prev)
    return blk._replace(D=blk.D + jnp.einsum("jcg,jg,je->jce", blk.dfda, w_self.astype(blk.dfda.dtype), dgdh_prev))


def read_leaves(fn, tree, *args) -> tuple[bool, ...]:
    """Which floating leaves of ``tree`` ``fn(tree, *args)`` reads, in ``tree``'s leaf order (all may be shapes).

    Found from the jaxpr of ``fn``: a leaf that no equation takes as an input and that is not an output
    either cannot change the result, whatever its value (a leaf passed through unchanged counts as read).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    flat_fn = lambda leaves, *args: fn(jax.tree_util.tree_unflatten(treedef, leaves), *args)
    jaxpr = jax.make_jaxpr(flat_fn)(leaves, *args).jaxpr
    used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    return tuple(id(v) in used for v, leaf in zip(jaxpr.invars, leaves) if jnp.issubdtype(leaf.dtype, jnp.inexact))


def read_states(layer: Cell, h_prev, a) -> tuple[bool, ...]:
    """Which floating state variables ``dynamics`` reads (``h_prev`` and ``a`` may be shapes).

    Found from the jaxpr of ``dynamics`` (:func:`read_leaves`): a variable no equation reads has a zero
    column in ``D`` whatever the values (an LSTM's ``h``, recomputed from ``c`` and the gates every step),
    so a trace through it is never carried to the next step. A variable passed through unchanged counts as
    read.
    """
    return read_leaves(layer.dynamics, h_prev, a)


def _lead(w, ndim):
    """``w`` of shape ``(n,)`` reshaped to broadcast against an array of ``ndim`` dimensions led by ``n``."""
    return w.reshape(w.shape + (1,) * (ndim - 1))


def mix(M: jax.Array, X: jax.Array) -> jax.Array:
    """``sum_d M[j, c, d] X[j, d, ...]``: a per-neuron block applied to a trace.

    The blocks are tiny (``s, k <= 4``), so this is written as an unrolled broadcast sum: XLA fuses it into
    one elementwise pass over the trace, where an einsum would become thousands of tiny matrix products.
    """
    rest = X.ndim - 2
    return sum(M[:, :, d].reshape(M.shape[:2] + (1,) * rest) * X[:, None, d] for d in range(M.shape[2]))


def weigh(w: jax.Array, X: jax.Array) -> jax.Array:
    """``sum_c w[j, c] X[j, c, ...]`` (e.g. ``dz/dh`` applied to a trace), unrolled as :func:`mix`."""
    return sum(_lead(w[:, c], X.ndim - 1) * X[:, c] for c in range(w.shape[1]))


def effective_weights(layer: Cell, params, n_in: int, dtype) -> jax.Array:
    """The synaptic stage as one matrix: ``a = W_eff @ [x, z_prev, 1]``, shape ``(n, k, n_in + n + 1)``.

    Every forward-mode rule of the e-prop family accumulates its gradient for these effective weights and
    pulls it back to ``params`` once, with ``jax.vjp`` of this function: any parameter layout (flax's
    kernels, masked autapses, shared weights) then gets the right gradient.
    """
    x0, z0 = jnp.zeros((n_in,), dtype), jnp.zeros((layer.n_out,), dtype)
    n_a = math.prod(synapse_struct(layer, params, dtype).shape)
    jac = lambda dim: jax.jacrev if n_a < dim else jax.jacfwd  # the smaller identity: no (m, m) one
    w_x = jac(n_in)(lambda x: layer.synapse(params, x, z0))(x0)
    w_z = jac(layer.n_out)(lambda z: layer.synapse(params, x0, z))(z0)
    bias = layer.synapse(params, x0, z0)
    return jnp.concatenate([w_x, w_z, bias[..., None]], axis=-1)


def nonzero_synapses(layer: Cell, params, dtype) -> jax.Array:
    """Where the effective weights can be nonzero, ``(n, m)`` booleans (any gate), read at random parameters
    drawn for ``params``' shapes: the synapse is affine in ``v``, so an entry that is zero there is zero for
    every parameter value (a masked weight). Evaluated at once even while a jit traces the caller; traced
    where the synapse closes over traced values (a cell built inside ``jax.vmap`` over a hyperparameter, a
    mask that is a traced value)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    with jax.ensure_compile_time_eval():
        keys = jax.random.split(jax.random.key(0), len(leaves))
        draw = treedef.unflatten([jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])
        return jnp.any(effective_weights(layer, draw, layer.n_in, dtype) != 0, axis=1)


def synapse_pattern(layer: Cell, params, dtype) -> np.ndarray | None:
    """:func:`nonzero_synapses` as numpy, or ``None`` where it is traced."""
    pattern = nonzero_synapses(layer, params, dtype)
    try:
        return np.asarray(pattern)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def effective_shape(layer: Cell, params, dtype) -> tuple[int, int, int]:
    """The shape ``(n, k, n_in + n + 1)`` of the effective weights (:func:`effective_weights`; nothing is run)."""
    return jax.eval_shape(lambda p: effective_weights(layer, p, layer.n_in, dtype), params).shape


def pull_back(layer: Cell, params, grads, dtype):
    """A gradient for the effective weights (any shape of their size) as a gradient for ``params``: the vjp
    of :func:`effective_weights`, which every forward-mode rule applies once, in its ``result``."""
    w_eff, pull = jax.vjp(lambda p: effective_weights(layer, p, layer.n_in, dtype), params)
    return pull(grads.reshape(w_eff.shape).astype(w_eff.dtype))[0]


def pull_back_gathered(layer: Cell, params, grads, pre, dtype):
    """A gradient ``(n, k, K)`` on each neuron's presynaptic entries ``pre`` ``(n, K)`` (the gathered layout)
    as a gradient for ``params``: through the cell's own ``weights`` where it stores them per synapse
    (``Cell.synapses``: no ``(n, m)`` array), else put back where the synapses are (padding adds zeros) and
    pulled back through the effective weights (:func:`pull_back`)."""
    if layer.synapses is not None:
        w, pull = jax.vjp(layer.synapses[1], params)
        return pull(grads.reshape(w.shape).astype(w.dtype))[0]
    n, k, m = effective_shape(layer, params, dtype)
    rows = np.arange(n)[:, None]
    grads = grads.reshape(n, k, -1)
    return pull_back(
        layer, params, jnp.zeros((n, k, m), grads.dtype).at[rows, :, pre].add(jnp.swapaxes(grads, 1, 2)), dtype
    )

"""Real-time recurrent learning: the exact gradient, forward in time, with ``jax.jvp``."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._cell import Cell, is_neuron, layers_of
from ._contract_check import check_cell
from ._engine import (
    FiringRateReg,
    OnlineRule,
    accum_dtype,
    new_state,
    recurrent_outputs,
    recurrent_size,
    reg_value,
    reg_weights,
    reset,
    scan_rule,
)
from ._hyper import check_reg
from ._jacobians import effective_shape, pull_back, pull_back_gathered, synapse_struct
from ._plan import StepCost, sparse_columns
from ._typing import GradFn, LossFn
from ._validate import check_step


def _ravel_float(tree):
    """Ravels the floating leaves of ``tree``; the inverse keeps its other leaves (int counters) as they are."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_float = [jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in leaves]
    vec, unravel = ravel_pytree([leaf for leaf, f in zip(leaves, is_float) if f])

    def unravel_full(v):
        floats = iter(unravel(v))
        return jax.tree_util.tree_unflatten(treedef, [next(floats) if f else leaf for leaf, f in zip(leaves, is_float)])

    return vec, unravel_full


class RtrlPlan(NamedTuple):
    """RTRL's static sizes: the influence is ``carry x columns`` per example.

    Attributes:
      carry: ``C``, the floating state variables of one example.
      columns: per layer, the influence block's columns (a neuron layer's effective weights ``(n, k, m)``,
        ``(n, k, K)`` on a sparse layer's synapses).
      theta: ``|theta|``, the number of parameters.
      carry_bytes: the model's carry for one example, in bytes.
      recurrent: the recurrent layers' outputs (the regulariser's sums), or 0 without it.
    """

    carry: int
    columns: tuple
    theta: int
    carry_bytes: int
    recurrent: int

    def cost(self, batch_size: int, itemsize: int = 4) -> StepCost:
        """The least work of one step: the state read and written once, and the product of the dense
        ``C x C`` carry Jacobian with the ``C x |theta|`` influence, ``2 B |theta| C^2`` FLOPs."""
        P = sum(math.prod(c) for c in self.columns)
        floats = batch_size * self.carry * P + P + 1 + batch_size * self.recurrent * (1 + P)
        state = batch_size * self.carry_bytes + itemsize * floats + 4
        return StepCost(state, 2 * state, 2.0 * batch_size * self.theta * self.carry**2)


def _plan(model: Cell, reg: bool, sparse=None) -> RtrlPlan:
    """RTRL's sizes for ``model``, from its parameters' and carry's shapes (nothing is run); ``sparse``
    (:func:`_sparse`): a sparse layer's columns are its synapses' (RTRL's own layout; SnAp keeps the dense
    columns)."""
    params = jax.eval_shape(model.init, jax.random.key(0))
    carry = jax.eval_shape(model.init_carry, params)
    floats = [leaf for leaf in jax.tree_util.tree_leaves(carry) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    recurrent = recurrent_size(model, params) if reg else 0
    return RtrlPlan(
        carry=sum(leaf.size for leaf in floats),
        columns=tuple(_columns(model, params, sparse)),
        theta=sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)),
        carry_bytes=sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(carry)),
        recurrent=recurrent,
    )


def _as_layers(model: Cell, tree) -> tuple:
    return tuple(tree) if model.layers else (tree,)


def _from_layers(model: Cell, seq):
    return tuple(seq) if model.layers else seq[0]


def _sparse(model: Cell, params) -> tuple:
    """Per layer, ``(pre, valid)`` where a neuron layer's influence keeps only its synapses' columns (a sparse
    layer: :func:`~eproptax._plan.sparse_columns`, the e-prop family's gathered layout), else ``None``."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    return tuple(
        sparse_columns(layer, p, dtype, effective_shape(layer, p, dtype)[2]) if is_neuron(layer) else None
        for layer, p in zip(layers_of(model), _as_layers(model, params))
    )


def _columns(model: Cell, params, sparse=None) -> list:
    """The influence's columns per layer: the effective weights' shape ``(n, k, m)`` (neuron layer; ``(n, k,
    K)`` on the synapses of a layer ``sparse`` gathers), or ``(|theta^l|,)``."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    out = []
    for i, (layer, p) in enumerate(zip(layers_of(model), _as_layers(model, params))):
        if is_neuron(layer):
            n, k, m = effective_shape(layer, p, dtype)
            out.append((n, k, m) if sparse is None or sparse[i] is None else (n, k, sparse[i][0].shape[1]))
        else:
            out.append((ravel_pytree(p)[0].size,))
    return out


def online_rtrl(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None) -> OnlineRule:
    """The per-step form of :func:`rtrl` (see there); ``ep.online.rtrl``."""
    check_cell("rtrl", model, "synapse")
    return influence_rule("rtrl", model, loss, reg)


def influence_rule(
    where: str, model: Cell, loss: LossFn, reg: FiringRateReg | None, example=None, zeros=None, plan=None
) -> OnlineRule:
    """RTRL's online rule: the influence ``M^T`` per layer, ``(batch, |carry|) + columns``. SnAp-n
    (:func:`~eproptax.snap`) gives its own ``example(model, loss, reg, params, carry, influence, x, target)``
    (one example's step, :func:`_example`'s outputs), ``zeros(batch_size, dtype)`` (the initial influence)
    and ``plan``."""
    check_reg(where, reg)
    # RTRL's own columns: a sparse layer's synapses only, read once from the parameters' shapes
    columns = _sparse(model, jax.eval_shape(model.init, jax.random.key(0))) if example is None else None
    example_step = example or (lambda *args: _example(*args, sparse=columns))

    def init(params, batch_size, key=None):
        c_vec, _ = _ravel_float(model.init_carry(params))
        dtype = accum_dtype(params)
        cols = _columns(model, params, columns)
        if zeros is None:
            influence = tuple(jnp.zeros((batch_size, c_vec.size) + P, dtype) for P in cols)  # M^T per layer
        else:
            influence = zeros(batch_size, dtype)
        sizes = [math.prod(P) for P in cols]
        reg_traces = None
        if reg is not None:
            n = recurrent_size(model, params)
            reg_traces = tuple(jnp.zeros((batch_size, n, P), dtype) for P in sizes)
        grads = tuple(jnp.zeros((P,), dtype) for P in sizes)
        return new_state(model, params, batch_size, influence, grads, reg, reg_traces, key)

    def step(params, state, x, target):
        x, target = check_step(where, model, loss, params, state, x, target)
        example = lambda *args: example_step(model, loss, reg, params, *args)
        carry, influence, values, out, g, extras = jax.vmap(example)(state.carry, state.traces, x, target)
        grads = tuple(acc + jnp.sum(gl, 0) / x.shape[0] for acc, gl in zip(state.grads, g))
        state = state._replace(
            carry=carry,
            traces=influence,
            grads=grads,
            loss=state.loss + jnp.mean(values).astype(state.loss.dtype),
            steps=state.steps + 1,
        )
        if reg is not None:
            z, dz = extras
            state = state._replace(
                spikes=state.spikes + z, reg_traces=tuple(acc + d for acc, d in zip(state.reg_traces, dz))
            )
        return state, out

    def result(params, state):
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        grads, value = list(state.grads), state.loss
        if reg is not None:
            weights = reg_weights(reg, state.spikes, state.steps)
            grads = [g + jnp.einsum("bnp,bn->p", t, weights) for g, t in zip(grads, state.reg_traces)]
            value = value + reg_value(reg, state.spikes, state.steps)
        out = []
        for layer, p, g, sp in zip(layers_of(model), _as_layers(model, params), grads, columns or (None,) * len(grads)):
            if is_neuron(layer) and sp is not None:  # a sparse layer's synapses, then its own parameters
                out.append(pull_back_gathered(layer, p, g, sp[0], dtype))
            elif is_neuron(layer):  # pulled back from the effective weights to the layer's own parameters
                out.append(pull_back(layer, p, g, dtype))
            else:
                out.append(ravel_pytree(p)[1](g.astype(dtype)))
        return value, _from_layers(model, out)

    return OnlineRule(init, step, result, reset, plan=plan or _plan(model, reg is not None, columns))


def _one_step(model: Cell, params, unravel_c, x):
    """The model's step as a function of the variables RTRL differentiates along: ``run(c, eps, ths) ->
    (new carry, output, presynaptic vectors)`` and the point ``(eps, ths)``. A neuron layer's variable is a
    zero offset ``eps`` added to its synaptic vector ``a`` (``d/d W_eff[j, g, i] = d/d a[j, g] * v[i]``: the
    synapse is affine, ``a = W_eff v``); any other layer's is its raveled parameters."""
    layers, layer_params = layers_of(model), _as_layers(model, params)
    eps = tuple(
        jnp.zeros(a.shape, a.dtype)
        for a in (synapse_struct(layer, p, x.dtype) for layer, p in zip(layers, layer_params) if is_neuron(layer))
    )
    raveled = [ravel_pytree(p) for layer, p in zip(layers, layer_params) if not is_neuron(layer)]
    ths, unravels = tuple(th for th, _ in raveled), tuple(unravel for _, unravel in raveled)

    def run(c, eps, ths):
        eps, opaque, u, new, vs = iter(eps), iter(zip(ths, unravels)), x, [], []
        for layer, p, h in zip(layers, layer_params, _as_layers(model, unravel_c(c))):
            if is_neuron(layer):
                z_prev = layer.output(h)
                vs.append(jnp.concatenate([u, z_prev, jnp.ones((1,), u.dtype)]))
                h = layer.dynamics(h, layer.synapse(p, u, z_prev) + next(eps))
                u = layer.output(h)
            else:
                th, unravel_p = next(opaque)
                h, u = layer.apply(unravel_p(th), h, u)
            new.append(h)
        return _from_layers(model, new), u, vs

    return run, eps, ths


def _example(model: Cell, loss: LossFn, reg, params, carry, influence, x, target, sparse=None):
    """One example's step: ``(carry, influence, loss value, output, grads, regulariser extras)``.

    The influence is stored per layer as ``M^T`` (``|carry|`` rows of that layer's columns), so that the
    product streams its long rows. ``d carry^t / d carry^{t-1}`` comes from jvp along the few state
    directions (``jacfwd``); stacked with ``d loss_t / d carry^{t-1}`` as one more row, a single product
    gives both the new influence and this step's gradient, reading ``M`` once. The same jvps along the
    synaptic vectors give ``d carry^t / d a`` at neuron size, and the immediate term is its outer product
    with the presynaptic vector, formed inside the add: no ``(C, P)`` Jacobian is materialised. Jacobians
    are taken in the cell's dtype; the influence accumulates in the state's. On a sparse layer (``sparse``,
    :func:`_sparse`) the columns are each neuron's synapses: ``v`` is gathered per neuron."""
    c_vec, unravel_c = _ravel_float(carry)
    run, eps, ths = _one_step(model, params, unravel_c, x)
    new_c = lambda c, eps, ths: _ravel_float(run(c, eps, ths)[0])[0]
    (value, (out, vs)), (g_c, g_eps, g_th) = jax.value_and_grad(
        lambda c, e, t: (loss(run(c, e, t)[1], target), run(c, e, t)[1:]), argnums=(0, 1, 2), has_aux=True
    )(c_vec, eps, ths)
    jac_c, jac_eps = jax.jacfwd(lambda c, e: new_c(c, e, ths), argnums=(0, 1))(c_vec, eps)
    lhs = jnp.concatenate([jac_c, g_c[None].astype(jac_c.dtype)])
    jac_th = jax.jacrev(lambda t: new_c(c_vec, eps, t))(ths) if ths else ()
    dtype = influence[0].dtype
    neuron, other = iter(zip(jac_eps, g_eps, vs)), iter(zip(jac_th, g_th))
    new_influence, grads = [], []
    for layer, M, sp in zip(layers_of(model), influence, sparse or (None,) * len(influence)):
        rows = jnp.tensordot(lhs.astype(dtype), M, 1)
        if is_neuron(layer):  # rows (C + 1, n, k, m), plus the outer product of [J; g] with v
            J, g, v = (a.astype(dtype) for a in next(neuron))
            v = v[None, None] if sp is None else _gather(v, *sp)[:, None]  # (1, 1, m) or (n, 1, K)
            new_M = rows[:-1] + J[..., None] * v[None]
            grad = (rows[-1] + g[..., None] * v).reshape(-1)
        else:
            J, g = next(other)
            new_M, grad = rows[:-1] + J.astype(dtype), rows[-1] + g.astype(dtype)
        new_influence.append(new_M)
        grads.append(grad)
    new_carry = run(c_vec, eps, ths)[0]
    return new_carry, tuple(new_influence), value, out, tuple(grads), reg_extras(model, reg, new_carry, new_influence)


def _gather(v, pre, valid):
    """``v`` ``(m,)`` as each neuron reads it on its synapses ``pre`` ``(n, K)``, zero on padding."""
    g = v[pre]
    return g if valid is None else g * jnp.asarray(valid, g.dtype)


def reg_extras(model: Cell, reg, carry, influence, contract=None) -> tuple:
    """With ``reg``: ``(z, dz/dtheta)``, the recurrent outputs of ``carry`` and their influence rows (``dz/dc
    M`` per layer, ``(n_rec, |columns|)``, or ``contract(dz/dc, layer, M)``); ``()`` without."""
    if reg is None:
        return ()
    vec, unravel = _ravel_float(carry)
    z_of = lambda c: recurrent_outputs(model, unravel(c))
    dtype = jax.tree_util.tree_leaves(influence)[0].dtype
    dz_dc = jax.jacfwd(z_of)(vec).astype(dtype)
    contract = contract or (lambda dz, q, M: dz @ M.reshape(M.shape[0], -1))
    return z_of(vec).astype(dtype), tuple(contract(dz_dc, q, M) for q, M in enumerate(influence))


def rtrl(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None, unroll: int | None = None) -> GradFn:
    """Exact real-time recurrent learning (Williams and Zipser 1989), forward in time with ``jax.jvp``.

    Carries the influence matrix ``M^t = d carry^t / d theta`` of every parameter on every state variable
    and updates it each step::

      M^t = (d carry^t / d carry^{t-1}) M^{t-1} + d carry^t / d theta
      d loss_t / d theta = d loss_t/d theta |direct + (d loss_t / d carry^{t-1}) M^{t-1}

    ``d carry^t / d carry^{t-1}`` is ``jax.jvp`` of the step vmapped over the state's tangent directions
    (``jax.jacfwd``); with ``d loss_t / d carry^{t-1}`` stacked as one more row, it is applied to all
    columns of ``M`` in one matrix product per layer, which yields both updates while reading ``M`` once.

    For a neuron layer (one with the synapse / dynamics split) the columns are its effective weights
    ``W_eff`` (``a = W_eff [x, z_prev, 1]``, as in :func:`eprop`), and the gradient is pulled back to the
    layer's parameters once, in ``result``. The synapse is affine, so the immediate term is an outer
    product, ``d carry^t / d W_eff[j, g, i] = (d carry^t / d a[j, g]) v[i]``: the same jvps give
    ``d carry^t / d a`` at neuron size, and the ``|carry| x |W_eff|`` term is formed inside the add, never
    as a Jacobian of its own. A sparse neuron layer (masks at most half full, or compressed weights: the
    e-prop family's gathered layout) keeps only its synapses' columns, ``(n, k, K)``. Any other layer's
    columns are its raveled parameters, with the immediate term from ``jax.jacrev``: ``rtrl`` works for
    every cell, with or without the split. It equals
    :func:`bptt` to rounding error; memory per example is ``|carry| x |W_eff|`` (``|theta|`` for a layer
    without the split, and per layer ``n k (n_in + n + 1)``, about ``|theta|``), independent of ``T``, and
    time per step ``O(|carry|^2 |W_eff|)`` (one matrix product): use it on small networks, or as a reference.

    Args:
      model: a :class:`~eproptax.Cell`.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: time steps per iteration of the whole-sequence scan (``lax.scan``'s ``unroll``): it changes
        the speed, the compile time and the peak memory, not the result (up to rounding). ``None``, the
        default: the platform's (:data:`eproptax.DEFAULT_UNROLL`: 1 on CPU, 4 on CUDA GPUs), chosen when
        the function is lowered; pass 1 where GPU memory binds.

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    Example::

      grad_fn = ep.rtrl(model, loss)           # equals ep.bptt(model, loss) to rounding
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)

    References:
      Williams and Zipser, "A learning algorithm for continually running fully recurrent neural
      networks", Neural Computation 1(2), 1989.
    """
    return scan_rule("rtrl", model, loss, online_rtrl(model, loss, reg=reg), unroll)

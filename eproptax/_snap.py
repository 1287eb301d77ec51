"""SnAp-n (Menick et al. 2021): RTRL's influence kept on the entries the one-step Jacobian's sparsity pattern
reaches within ``n`` steps. ``n = 1`` (D-RTRL) runs on e-prop's traces; ``n >= 2`` on RTRL's influence, stored
only where the pattern reaches (:class:`Block`)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._cell import Cell, is_neuron, layers_of
from ._contract_check import check_cell
from ._engine import FiringRateReg, OnlineRule, scan_rule
from ._hyper import is_traced, positive_int
from ._jacobians import nonzero_synapses
from ._plan import StepCost
from ._rtrl import RtrlPlan, _columns, _plan, _ravel_float, influence_rule, reg_extras
from ._traces import online_traces
from ._typing import GradFn, LossFn


def online_snap(model: Cell, loss: LossFn, n: int = 1, *, feedback="symmetric", reg=None) -> OnlineRule:
    """The per-step form of :func:`snap`; ``ep.online.snap``."""
    positive_int("snap", "n", n)
    if n == 1:
        return online_traces(
            model, loss, order=0, depth="spatial", feedback=feedback, reg=reg, where="snap", self_recurrent=True
        )
    if not (isinstance(feedback, str) and feedback == "symmetric"):
        raise ValueError(
            f"snap: `feedback` must be 'symmetric' for n >= 2 (the influence meets the loss's exact error, as in "
            f"RTRL; only SnAp-1 carries e-prop's learning signal), got {feedback!r} with n={n}."
        )
    check_cell("snap", model, "neuron")
    opaque = [i for i, layer in enumerate(layers_of(model)) if not is_neuron(layer)]
    if opaque:
        raise ValueError(
            f"snap: with n >= 2 every layer must be a neuron cell (synapse, dynamics, output: the pattern's unit "
            f"is the neuron), got layer {opaque[0]} without them; build it with ep.cells.make_cell, or use ep.rtrl."
        )
    masks, complete = reach(model, n)
    if not is_traced(complete) and bool(complete):
        return influence_rule("snap", model, loss, reg)  # nothing to drop: RTRL's recursion, unfactored
    return masked_rule(model, loss, reg, masks)


class Block(NamedTuple):
    """Where one block of SnAp-n's influence is kept: the state variables of layer ``l`` that each neuron ``j``
    of parameter layer ``q`` reaches. The block is stored ``(n_q, r, k_q, m_q)`` per example, row ``rho`` of
    neuron ``j`` the influence of ``j``'s effective weights on state variable ``rows[j, rho]``.

    Attributes:
      rows: ``(n_q, r)`` numpy ints, the reached variables of each neuron, padded to the most any neuron
        reaches; ``None``: every variable of the layer, in order (``r = |c_l|``).
      valid: ``(n_q, r)`` booleans, which entries of ``rows`` are reached (the others are padding, kept at
        zero); ``None``: all of them. A traced array when the pattern is (a cell built inside ``jax.vmap``).
    """

    rows: Any
    valid: Any


def layout(masks, sizes) -> tuple:
    """``layout[q][l]``: the :class:`Block` of parameter layer ``q`` on state layer ``l``, or ``None`` where
    no neuron of ``q`` reaches layer ``l`` (a parameter never reaches a layer below its own)."""
    split = np.cumsum([0, *sizes])
    out = []
    for mask in masks:
        blocks = []
        for l in range(len(sizes)):
            m = mask[split[l] : split[l + 1]].T  # (n_q, |c_l|)
            if is_traced(m):  # a traced pattern: every variable stored, the mask applied to it
                blocks.append(Block(None, m))
                continue
            m = np.asarray(m)
            r = int(m.sum(1).max())
            if r == 0 or m.all():
                blocks.append(None if r == 0 else Block(None, None))
                continue
            rows = np.argsort(~m, axis=1, kind="stable")[:, :r]  # each neuron's reached variables first, in order
            blocks.append(Block(rows, np.take_along_axis(m, rows, 1)))
        out.append(tuple(blocks))
    return tuple(out)


def _rows(block: Block, size: int, n: int) -> np.ndarray:
    return np.broadcast_to(np.arange(size), (n, size)) if block.rows is None else block.rows


def _push(J, to: Block, src: Block, M):
    """``J M`` on the kept entries: ``J`` ``(|c_l|, |c_src|)`` a Jacobian between two layers' states, ``M``
    ``(n_q, r_src, k, m)`` a block on the source layer; the result is on ``to``'s rows."""
    if to.rows is None and src.rows is None:
        return jnp.einsum("ab,jbkm->jakm", J, M)
    n = M.shape[0]
    G = J[_rows(to, J.shape[0], n)[:, :, None], _rows(src, J.shape[1], n)[:, None, :]]  # (n_q, r, r_src)
    return jnp.einsum("jab,jbkm->jakm", G, M)


def contract(x, layout_q, blocks, sizes):
    """``x M_q``, ``(..., n_q k_q m_q)``: ``x`` ``(..., |carry|)`` (the loss's gradient, or the regulariser's
    ``dz/dc``) against parameter layer ``q``'s kept influence; padded entries are zero."""
    split, out = np.cumsum([0, *sizes]), 0
    for l, (block, M) in enumerate(zip(layout_q, blocks)):
        if block is not None:
            xl = x[..., split[l] : split[l + 1]][..., _rows(block, sizes[l], M.shape[0])]  # (..., n_q, r)
            out = out + jnp.einsum("...jr,jrkm->...jkm", xl, M)
    return out.reshape(x.shape[:-1] + (-1,))


def _sparse_example(lay, sizes, model: Cell, loss: LossFn, reg, params, carry, influence, x, target):
    """One example's SnAp-n step, layer by layer: ``(carry, influence, loss value, output, grads, extras)``.

    For layer ``l`` and every parameter layer ``q`` that reaches it, on the kept entries only::

      M_q[l]^t = mask * (dh_l/dh_l^{prev} M_q[l]^{t-1} + dh_l/du_l du_l/dh_{l-1} M_q[l-1]^t + [q == l] dh_l/da v)

    so a layer reads the *masked* new influence of the layer below at the same step, and the loss of step
    ``t`` meets the masked influence of the new state, ``grad_q += dloss_t/dh^t M_q^t``, as in e-prop. Each
    neuron's rows are gathered from the dense ``(|c_l|, |c_l|)`` Jacobian, so the work is ``n_q r^2 k m`` a
    block. With every mask full this is RTRL's recursion, factored by layer."""
    layers, layer_params = layers_of(model), params if model.layers else (params,)
    carries = carry if model.layers else (carry,)
    dtype = jax.tree_util.tree_leaves(influence)[0].dtype
    blocks, u, cross, new_carry = [list(b) for b in influence], x, None, []
    for l, (layer, p, h) in enumerate(zip(layers, layer_params, carries)):
        c_vec, unravel = _ravel_float(h)
        v = jnp.concatenate([u, layer.output(h), jnp.ones((1,), u.dtype)]).astype(dtype)

        def f(c, u, eps, p=p, layer=layer, unravel=unravel):
            h = unravel(c)
            return _ravel_float(layer.dynamics(h, layer.synapse(p, u, layer.output(h)) + eps))[0]

        eps = jnp.zeros(jax.eval_shape(layer.synapse, p, u, layer.output(h)).shape, u.dtype)
        J_c, J_u, J_a = (j.astype(dtype) for j in jax.jacfwd(f, argnums=(0, 1, 2))(c_vec, u, eps))
        new_h = unravel(f(c_vec, u, eps))
        for q, lay_q in enumerate(lay):
            to = lay_q[l]
            if to is None:
                continue
            new = _push(J_c, to, to, blocks[q][l])
            if q < l and lay_q[l - 1] is not None:
                new = new + _push(J_u @ cross, to, lay_q[l - 1], blocks[q][l - 1])
            if q == l:  # dh/da at each neuron's own synaptic vector, (n, r, k), times v
                rows = _rows(to, sizes[l], layer.n_out)
                new = new + J_a[rows, np.arange(layer.n_out)[:, None]][..., None] * v[None, None, None]
            blocks[q][l] = new if to.valid is None else new * jnp.asarray(to.valid, dtype)[..., None, None]
        u = layer.output(new_h)
        cross = jax.jacfwd(lambda c, layer=layer, unravel=unravel: layer.output(unravel(c)))(_ravel_float(new_h)[0])
        cross = cross.astype(dtype)
        new_carry.append(new_h)
    new_carry = tuple(new_carry) if model.layers else new_carry[0]
    new_influence = tuple(tuple(b) for b in blocks)
    new_vec, unravel_new = _ravel_float(new_carry)
    value, g_c = jax.value_and_grad(lambda c: loss(layers[-1].output(_last(model, unravel_new(c))), target))(new_vec)
    grads = tuple(contract(g_c.astype(dtype), lay_q, b, sizes) for lay_q, b in zip(lay, new_influence))
    kept = lambda dz_dc, q, blocks: contract(dz_dc, lay[q], blocks, sizes)
    return new_carry, new_influence, value, u, grads, reg_extras(model, reg, new_carry, new_influence, kept)


def masked_rule(model: Cell, loss: LossFn, reg, masks) -> OnlineRule:
    """RTRL's online rule with the influence kept only where ``masks`` (:func:`reach`'s) are set, each block
    stored at the pattern's size (:class:`Block`)."""
    sizes = _carry_sizes(model)
    lay = layout(masks, sizes)
    columns = _columns(model, jax.eval_shape(model.init, jax.random.key(0)))
    shapes = tuple(
        tuple(None if b is None else (n, _width(b, sizes[l]), k, m) for l, b in enumerate(lay_q))
        for (n, k, m), lay_q in zip(columns, lay)
    )

    def zeros(batch_size, dtype):
        return tuple(tuple(None if s is None else jnp.zeros((batch_size, *s), dtype) for s in row) for row in shapes)

    plan = SnapPlan(shapes, _plan(model, reg is not None))
    return influence_rule("snap", model, loss, reg, lambda *args: _sparse_example(lay, sizes, *args), zeros, plan)


def _width(block: Block, size: int) -> int:
    return size if block.rows is None else block.rows.shape[1]


def _carry_sizes(model: Cell) -> list:
    """Each layer's floating state variables, in RTRL's raveled order."""
    carry = jax.eval_shape(model.init_carry, jax.eval_shape(model.init, jax.random.key(0)))
    floats = lambda c: sum(a.size for a in jax.tree_util.tree_leaves(c) if jnp.issubdtype(a.dtype, jnp.inexact))
    return [floats(c) for c in (carry if model.layers else (carry,))]


class SnapPlan(NamedTuple):
    """SnAp-n's static sizes (``n >= 2``): per parameter layer ``q`` and state layer ``l``, the kept block's
    shape ``(n_q, r, k_q, m_q)`` per example (``None``: not reached), and RTRL's plan for the rest.

    Attributes:
      blocks: ``blocks[q][l]``.
      rtrl: the :class:`~eproptax._rtrl.RtrlPlan` of the same model (carry, columns, regulariser).
    """

    blocks: tuple
    rtrl: RtrlPlan

    def cost(self, batch_size: int, itemsize: int = 4) -> StepCost:
        """The state read and written once, and the gathered products: ``2 B n_q r (r + r_below) k m`` FLOPs
        a block, ``r_below`` the width of the same parameters' block on the layer below."""
        P = sum(math.prod(c) for c in self.rtrl.columns)
        kept = sum(math.prod(s) for row in self.blocks for s in row if s is not None)
        floats = batch_size * kept + P + 1 + batch_size * self.rtrl.recurrent * (1 + P)
        state = batch_size * self.rtrl.carry_bytes + itemsize * floats + 4
        flops = 0.0
        for row in self.blocks:
            for l, s in enumerate(row):
                below = row[l - 1][1] if l and row[l - 1] is not None else 0
                flops += 0 if s is None else 2.0 * math.prod(s) * (s[1] + below)
        return StepCost(state, 2 * state, batch_size * flops)


def _last(model: Cell, carry):
    return carry[-1] if model.layers else carry


def _structure(model: Cell):
    """Per layer, ``(feedforward, recurrent)`` boolean patterns ``(n, n_in)`` and ``(n, n)``: which inputs and
    which neurons' previous outputs reach each neuron's synaptic input, from the effective weights at random
    parameters (the synapse is affine, so an entry that is zero there is zero for every parameter value).
    A cell built inside ``jax.vmap`` over a hyperparameter gets a traced pattern, the same in every entry
    (:func:`~eproptax._jacobians.nonzero_synapses`)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    dtype = jax.tree_util.tree_leaves(shapes)[0].dtype
    out = []
    for layer, p in zip(layers_of(model), shapes if model.layers else (shapes,)):
        w = nonzero_synapses(layer, p, dtype)
        out.append((w[:, : layer.n_in], w[:, layer.n_in : layer.n_in + layer.n_out]))
    return out


def _then(a, b):
    """The boolean product ``a b``: ``b``'s pattern, then ``a``'s."""
    return (a.astype(jnp.int32) @ b.astype(jnp.int32)) > 0


def reach(model: Cell, n: int) -> tuple:
    """SnAp-n's masks, per layer ``(|carry|, n_l)`` booleans: whether the effective weights of neuron ``j`` of
    layer ``l`` reach the state variable ``c`` within ``n`` steps; and whether they are complete (every entry
    that any number of steps reaches, so every entry of RTRL's influence that is not zero for all inputs).

    The unit is the neuron with all its state variables. One step maps the units at ``t - 1`` to those at
    ``t``: a neuron reads itself (its dynamics), the neurons of its layer through nonzero recurrent weights,
    and, at the same step, the layer below through nonzero feedforward weights (``A``). A parameter of neuron
    ``j`` reaches neuron ``j`` and, at the same step, the layers above it (``I``). The mask is
    ``I or A I or ... or A^(n-1) I``: what the recursion ``M = mask * (J M + I)`` can fill in ``n`` steps.
    """
    structure = _structure(model)
    sizes = [r.shape[0] for _, r in structure]
    offsets = np.cumsum([0] + sizes)
    N = int(offsets[-1])
    A, immediate = jnp.zeros((N, N), bool), jnp.zeros((N, N), bool)
    for l, (f, r) in enumerate(structure):
        rows, eye = slice(offsets[l], offsets[l + 1]), jnp.eye(sizes[l], dtype=bool)
        A, immediate = A.at[rows, rows].set(r | eye), immediate.at[rows, rows].set(eye)
        if l:  # through the layer below at the same step
            below = slice(offsets[l - 1], offsets[l])
            A = A.at[rows].set(A[rows] | _then(f, A[below]))
            immediate = immediate.at[rows].set(immediate[rows] | _then(f, immediate[below]))
    pattern, power = immediate, immediate
    for _ in range(n - 1):
        power = _then(A, power)
        pattern = pattern | power
    units = _units(model)
    masks = tuple(pattern[units][:, offsets[l] : offsets[l + 1]] for l in range(len(sizes)))
    return masks, jnp.all((pattern | _then(A, power)) == pattern)  # complete: step n + 1 adds nothing, nor any after


def _units(model: Cell) -> np.ndarray:
    """The neuron (a global index over the stack) of each floating state variable, in RTRL's raveled order
    (the floating leaves in tree order, each ``(n,)``: the neuron-level contract)."""
    params = jax.eval_shape(model.init, jax.random.key(0))
    carry = jax.eval_shape(model.init_carry, params)
    offsets = np.cumsum([0] + [layer.n_out for layer in layers_of(model)])
    units = [
        np.arange(leaf.size) + offset
        for c, offset in zip(carry if model.layers else (carry,), offsets)
        for leaf in jax.tree_util.tree_leaves(c)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return np.concatenate(units)


def snap(
    model: Cell,
    loss: LossFn,
    n: int = 1,
    *,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
    unroll: int | None = None,
    chunk: int | None = None,
) -> GradFn:
    """SnAp-n: RTRL's influence kept only on the entries the one-step Jacobian's pattern reaches in ``n`` steps.

    SnAp-n (Menick et al. 2021) keeps the entries of RTRL's influence matrix ``M = d h / d theta`` that the
    sparsity pattern of the model's one-step Jacobian reaches within ``n`` steps, and zeroes the others after
    every step of the recursion. The pattern's unit is the neuron with all its state variables (an ALIF
    neuron's membrane and adaptation are one unit); it is the whole stack's: a parameter of a layer reaches
    the layers above it at the same step. It is read from the effective weights at random parameter values
    (:func:`~eproptax._snap.reach`), so a weight masked to zero inside ``synapse`` is a missing edge.

    ``n = 1`` keeps each parameter's influence on the neuron it drives (a synapse ``W_ji``: neuron ``j``'s
    state) through every path from ``h_j^{t-1}`` to ``h_j^t``: the implicit recurrence ``D`` (as in e-prop)
    *and* the neuron's own explicit edge through its autapse ``W_jj`` (which e-prop drops). This is D-RTRL::

      D'_j = dh_j / dh_j^{prev} + (dh_j / da_j) W_self[j] (dz_j / dh_j)^{prev}
      eps_ji^t = D'_j eps_ji^{t-1} + (dh_j / da_j) v_i^t,     grad W_ji += L_j^t (dz_j / dh_j) eps_ji^t

    with e-prop's same-step learning signal ``L`` and e-prop's treatment of a leaky readout (the traces
    filtered by its leak). It is e-prop with ``D`` replaced by ``D'``: on a network without autapses
    (``ep.cells.lif`` and ``alif`` by default) it equals :func:`eprop`; a GRU's and an LSTM's recurrent
    kernels have a diagonal, so there the two differ by exactly those self-recurrent terms. It runs on
    e-prop's traces and takes ``feedback`` and ``chunk``.

    ``n >= 2`` runs RTRL's recursion (:func:`rtrl`) on the kept entries only, layer by layer within a step: a
    layer reads the masked new influence of the layer below, so the loss of step ``t`` meets the masked
    influence of the new state, as with ``n = 1`` (it takes neither ``feedback`` nor ``chunk``). It equals
    :func:`rtrl` when the pattern is dense: a dense recurrent layer with ``n >= 2``, a stack when ``n``
    reaches across it; when the pattern is complete it runs RTRL's own program.

    Cost: ``n = 1``: as e-prop's per-synapse traces, ``O(s |theta|)`` memory and ``O(s^2 |theta|)`` time per
    step, plus the autapse's term at neuron size (every state variable keeps a per-synapse trace). ``n >=
    2``: the pattern's. The influence of parameter layer ``q`` on state layer ``l`` is stored ``(n_q, r,
    k_q, m_q)`` per example (:class:`Block`), ``r`` the most state variables of layer ``l`` that one neuron
    of ``q`` reaches (the others padded with zeros), and a step gathers each neuron's ``r x r`` rows of the
    layer's Jacobian: ``O(r |theta|)`` memory and ``O(r^2 |theta|)`` time per step, plus each layer's dense
    ``|c_l| x |c_l|`` Jacobian (``|c_l|`` jvps). A parameter never reaches a layer below its own, and a
    readout's only its own unit, so those blocks cost nothing. On a dense recurrent layer ``r = n s``:
    SnAp-2 is RTRL, and costs what RTRL costs. A cell built inside ``jax.vmap`` over a hyperparameter has a
    traced pattern, so its blocks are stored whole and masked, at RTRL's cost.

    Args:
      model: as for :func:`eprop`.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      n: the pattern's reach in steps, a positive int (default 1).
      feedback: as for :func:`eprop` (``n = 1`` only; ``"symmetric"`` otherwise).
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: as for :func:`eprop`.
      chunk: as for :func:`eprop` (``n = 1`` only; the chunked view advances ``D'`` like ``D``).

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    Example::

      grad_fn = ep.snap(model, loss)      # ep.eprop(model, loss) plus each neuron's autapse
      grad_fn = ep.snap(model, loss, n=2) # ep.rtrl(model, loss) on a dense recurrent layer
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)

    Warning:
      Biased whenever the pattern is not dense within the sequence (those paths are dropped); ``n = 1`` is
      exact for a network whose recurrent matrices are diagonal.

    References:
      Menick, Elsen, Evci, Osindero, Simonyan, Graves. "Practical Real Time Recurrent Learning with a
      Sparse Approximation", ICLR 2021.
    """
    online = online_snap(model, loss, n, feedback=feedback, reg=reg)
    return scan_rule("snap", model, loss, online, unroll, chunk)

"""The forward-mode estimator behind ``eprop``, ``eprop_m`` and ``deep_eprop``: one implementation.

The model is a stack of recurrent neuron layers ``0 .. R-1`` and a readout (layer ``R``). For the
parameters ``theta^p`` of layer ``p`` (in the effective-weight form of :func:`effective_weights`) the
estimator carries, per example, approximations of the influences ``M^{l,p} = d h^l / d theta^p``, split
by the number ``n`` of explicit (within-layer, through the recurrent weights) edges on a path::

  G^{p,p,(0)}_t = D^p_t G^{p,p,(0)}_{t-1} + (d h^p_t / d theta^p)|immediate            (e-prop's trace)
  G^{l,p,(n)}_t = D^l_t G^{l,p,(n)}_{t-1} + J^l_t G^{l,p,(n-1)}_{t-1} + F^l_t G^{l-1,p,(n)}_t

with ``D`` the implicit recurrence, ``J^l = dfda W_rec dgdh_{t-1}`` the explicit recurrence and
``F^l = dfda W_in dgdh^{l-1}_t`` the same-step edge from the layer below. ``order`` keeps the levels
``n <= order``; ``depth="spatial"`` and ``"collapsed"`` keep only ``l = p`` (a layer's own traces),
``depth="full"`` keeps every ``l >= p``. The gradient of ``theta^p`` is
``sum_t delta^{obs}_t . sum_n G^{obs,p,(n)}_t`` with ``obs = p`` (spatial, collapsed) or ``obs = R - 1``
(full) and ``delta`` the same-step learning signal.

Filters. A layer whose whole state is one leaky variable (``leak = (decay, gain)``) has ``D`` and ``dh/da``
equal for every neuron and independent of the state, so its influence collapses into a filtered
copy of the trace below it. A leaky
readout on top is never tracked as a layer: the observed traces are filtered with it,
``ebar = kappa ebar + zeta_out (dz/dh) G``, and contracted with ``L = W_out^T err`` (or ``B err``): exactly
e-prop's readout-filtered trace, exact for the readout's own leak. With ``depth="collapsed"`` every leaky
layer above ``p`` (hidden layers included) adds one scalar filter stage to ``p``'s trace (a cascade), and
the learning signal skips those layers' dynamics (their leak is in the filters) while taking their
same-step Jacobians (``dz/dh``, the weights) at the current step.

Representations (static): a layer's own level-0 trace is a tuple with one array per state variable
(with ``order=0``, one per variable that ``dynamics`` reads: the others' new traces are only needed in
z-space, where they are formed from the stored ones, so an LSTM carries ``c``'s trace and not ``h``'s).
A variable the layer declares leaky (``leak``) has the same trace for every neuron, the presynaptic trace
``zbar`` of shape ``(m,)`` (e-prop's factorised ``e_ji = psi_j zbar_i``; an ALIF neuron's membrane); any
other is *compact*, ``(n, k, m)``, stored ``(n, m)`` when ``k = 1`` (each synapse only moves its own
neuron). Every other influence is *dense* ``(n_l, s_l, n_p, k_p, m_p)``, its columns shaped as layer
``p``'s effective weights. Over a batch, compact arrays keep the batch as their second axis, ``(n, B, k,
m)``, when no dense level reads them; all others put it first.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._cell import Cell, is_neuron, layers_of, scalar_leak, variable_leaks
from ._chunks import advance
from ._engine import (
    FiringRateReg,
    OnlineRule,
    accum_dtype,
    check_step,
    leading_batch_axes,
    new_state,
    recurrent_outputs,
    reg_value,
    reg_weights,
    reset,
)
from ._jacobians import blocks, formed_once, mix, output_jacobian, pull_back, read_states, synapse_struct, weigh
from ._typing import LossFn


class EpropTraces(NamedTuple):
    """Per-example traces of the e-prop family, batched: a leading batch axis on every leaf, except compact
    arrays of a rule without dense levels (``order=0``, not ``depth="full"``), stored ``(n, B, k, m)``.

    Attributes:
      influence: ``{(l, p): (level_0, ..., level_order)}``, see the module docstring.
      filtered: ``{p: (ebar_1, ...)}``, the filtered traces of layer ``p``, one per filter stage.
      readout: the readout layer's own trace (a neuron readout), else ``()``.
    """

    influence: dict
    filtered: dict
    readout: Any


class _Dims(NamedTuple):
    n: int  # neurons
    s: int  # differentiable state variables per neuron
    k: int  # synaptic entries (gates) per neuron
    m: int  # presynaptic values: n_in + n + 1
    read: tuple  # per state variable: whether ``dynamics`` reads it (``read_states``)
    leaks: tuple  # per state variable: ``(decay, gain)`` if declared leaky, else ``None``

    @property
    def shape(self):
        """The effective weights' shape ``(n, k, m)``: a dense level keeps its columns in it (as RTRL's
        influence does), so that XLA's per-synapse loops index them without a division per element."""
        return (self.n, self.k, self.m)


def _dims(layer: Cell, params, dtype) -> _Dims | None:
    if not is_neuron(layer):
        return None
    carry = jax.eval_shape(layer.init_carry, params)
    s = sum(1 for leaf in jax.tree_util.tree_leaves(carry) if jnp.issubdtype(leaf.dtype, jnp.inexact))
    a = synapse_struct(layer, params, dtype)
    if a.ndim != 2 or a.shape[0] != layer.n_out:
        raise ValueError(f"synapse must return shape (n={layer.n_out}, k), got {a.shape}.")
    leaks = variable_leaks(layer, s, a.shape[1])
    read = (True,) * s if all(leaks) else read_states(layer, carry, a)
    read = tuple(r or leak is not None for r, leak in zip(read, leaks))  # a leaky variable reads itself
    return _Dims(layer.n_out, s, a.shape[1], layer.n_in + layer.n_out + 1, read, leaks)


def gated(model: Cell) -> bool:
    """Whether some recurrent layer has several synaptic entries per neuron (``k > 1``: a GRU's or an LSTM's
    gates). These networks run the chunked view by default (:data:`~eproptax.DEFAULT_CHUNK`; docs/design.md,
    "The chunked view"): on the CPU it made every gated network measured faster, and most networks of
    single-entry neurons (LIF, ALIF) slower."""

    def entries(layer):
        params = jax.eval_shape(layer.init, jax.random.key(0))
        return synapse_struct(layer, params, jax.tree_util.tree_leaves(params)[0].dtype).shape[1]

    return any(is_neuron(layer) and entries(layer) > 1 for layer in layers_of(model)[:-1])


def check_model(where: str, model: Cell, feedback) -> None:
    """Static checks shared by the e-prop family, run when the rule is built."""
    layers = layers_of(model)
    if len(layers) < 2:
        raise ValueError(
            f"{where}: `model` must be a stack of recurrent layers and a readout, e.g. "
            "ep.cells.stack(ep.cells.lif(n_in, n), ep.cells.leaky_readout(n, n_out)); got a single cell."
        )
    for i, layer in enumerate(layers[:-1]):
        if not is_neuron(layer):
            raise ValueError(
                f"{where}: recurrent layer {i} does not expose synapse/dynamics/output; build it "
                "with ep.cells.make_cell, or use ep.bptt / ep.rtrl, which work on any cell."
            )
    top = layers[-1]
    if not is_neuron(top):
        carry = jax.eval_shape(lambda: top.init_carry(top.init(jax.random.key(0))))
        if jax.tree_util.tree_leaves(carry):
            raise ValueError(
                f"{where}: the readout (top layer) has a state but no synapse/dynamics/output split; "
                "a readout without the split must be stateless (init_carry returns ())."
            )
    if not (isinstance(feedback, str) and feedback == "symmetric"):
        if isinstance(feedback, str):
            raise ValueError(
                f"{where}: `feedback` must be 'symmetric' or a feedback matrix B of shape "
                f"(n_rec={layers[-2].n_out}, n_out={top.n_out}), got {feedback!r}."
            )
        shape = tuple(np.shape(feedback))
        if shape != (layers[-2].n_out, top.n_out):
            raise ValueError(
                f"{where}: `feedback` matrix B must have shape (n_rec={layers[-2].n_out}, "
                f"n_out={top.n_out}) (it takes the place of W_out^T), got {shape}."
            )


def online_traces(
    model: Cell,
    loss: LossFn,
    *,
    order: int,
    depth: str,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
    where: str,
) -> OnlineRule:
    """Builds the per-step estimator (see the module docstring)."""
    if not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"{where}: `order` must be a non-negative Python int, got {order!r}.")
    if depth not in ("spatial", "collapsed", "full"):
        raise ValueError(f"{where}: `depth` must be 'spatial', 'collapsed' or 'full', got {depth!r}.")
    check_model(where, model, feedback)
    layers = layers_of(model)
    R, top = len(layers) - 1, layers[-1]
    levels = order + 1
    full = depth == "full"
    filter_top = is_neuron(top) and scalar_leak(top) is not None
    B = None if isinstance(feedback, str) else jnp.asarray(feedback)
    pairs = [(l, p) for l in range(R) for p in range(R) if (p <= l if full else l == p)]
    obs = (lambda p: R - 1) if full else (lambda p: p)

    def filters(p):
        """The leaky layers whose scalar leak filters the trace observed for ``p``, bottom to top."""
        if depth == "collapsed":
            return [l for l in range(p + 1, R + 1) if is_neuron(layers[l]) and scalar_leak(layers[l]) is not None]
        return [R] if filter_top else []

    def own(l, p, n):
        return l == p and n == 0

    def compact_sum(l, p):  # the z-space sum over levels stays compact only for a lone own level
        return l == p and order == 0

    # ---- shapes -------------------------------------------------------------------------------------------
    def all_dims(params):
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return [_dims(layer, p, dtype) for layer, p in zip(layers, params)], dtype

    def stored(d):
        """The state variables whose compact own trace is carried to the next step. Only a level-0 update
        reads the previous own trace, through ``D``; a variable ``dynamics`` never reads has a zero column
        there, so with ``order=0`` its trace is recomputed every step and never stored (an LSTM's ``h``:
        a third less trace memory and traffic with a leaky readout, half with a stateless one). Dense
        levels (``order >= 1``) read the previous trace of every variable."""
        return d.read if order == 0 else (True,) * d.s

    def trace_zeros(zeros, dims, l, p, n):
        """One level's zero traces: an own level's tuple over the stored state variables, each ``zbar`` ``(m,)``
        (leaky) or compact (:func:`compact_shape`); a dense level's single array."""
        dp, dl = dims[p], dims[l]
        if own(l, p, n):
            return tuple(
                zeros((dp.m,), 0) if leak is not None else zeros(compact_shape(dp), batch_axis(True))
                for leak, kept in zip(dp.leaks, stored(dp))
                if kept
            )
        return zeros((dl.n, dl.s) + dp.shape, 0)

    def zsum_shape(dims, l, p):
        dp = dims[p]
        return dp.shape if compact_sum(l, p) else (dims[l].n,) + dp.shape

    # Compact arrays are updated at batch level; every other array is batch-major and updated per example
    # under ``jax.vmap``. When no dense level reads them (e-prop proper), compact arrays keep the batch as
    # their second axis, ``(n, B, k, m)``: the batch contraction is then a dot batched over the leading
    # neuron axis, which XLA runs without first transposing the trace (on CPU that transpose took more
    # time than the trace update itself). A dense level's per-example update would read them through a
    # transpose instead, so with dense levels they stay batch-major (docs/design.md).
    neuron_major = order == 0 and not full
    compact_spec = "bj,jbgi->jgi" if neuron_major else "bj,bjgi->jgi"
    flat_spec = "bj,jbP->jP" if neuron_major else "bj,bjP->jP"

    def batch_axis(is_compact):
        return 1 if is_compact and neuron_major else 0

    def own_axes(trace):  # an own trace's arrays: zbar (B, m) batch-major, compact ones per the layout
        return tuple(batch_axis(part.ndim > 2) for part in trace)

    def batch_axes(state):
        influence = {
            (l, p): tuple(own_axes(state.traces.influence[(l, p)][0]) if own(l, p, n) else 0 for n in range(levels))
            for l, p in pairs
        }
        filtered = {p: batch_axis(compact_sum(obs(p), p)) for p in range(R) if filters(p)}
        readout = own_axes(state.traces.readout) if is_neuron(top) else 0
        reg_traces = {key: batch_axis(compact_sum(*key)) for key in pairs} if reg is not None else 0
        return leading_batch_axes(state, EpropTraces(influence, filtered, readout), reg_traces)

    def compact_layout(tree):
        """Batch-major per-neuron coefficients ``(B, n, ...)`` in the layout of the compact arrays."""
        return jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), tree) if neuron_major else tree

    def presynaptic(v):
        """A presynaptic vector ``(B, m)`` broadcast against compact ``(n, B, k, m)`` or ``(B, n, k, m)`` arrays."""
        return v[None, :, None, :] if neuron_major else v[:, None, None, :]

    def init(params, batch_size):
        dims, _ = all_dims(params)
        dtype = accum_dtype(params)
        zeros = lambda shape, axis: jnp.zeros(shape[:axis] + (batch_size,) + shape[axis:], dtype)
        influence = {(l, p): tuple(trace_zeros(zeros, dims, l, p, n) for n in range(levels)) for l, p in pairs}
        filtered = {
            p: tuple(zeros(zsum_shape(dims, obs(p), p), batch_axis(compact_sum(obs(p), p))) for _ in filters(p))
            for p in range(R)
            if filters(p)
        }
        readout = ()
        if is_neuron(top):
            readout = trace_zeros(zeros, dims, R, R, 0)
        grads = tuple(jnp.zeros((d.n, d.k, d.m), dtype) for d in dims[:R])
        grads += (
            jnp.zeros((dims[R].n, dims[R].k, dims[R].m), dtype)
            if is_neuron(top)
            else jax.tree_util.tree_map(lambda w: jnp.zeros(w.shape, dtype), params[R]),
        )
        reg_traces = (
            {(l, p): zeros(zsum_shape(dims, l, p), batch_axis(compact_sum(l, p))) for l, p in pairs}
            if reg is not None
            else None
        )
        return new_state(model, params, batch_size, EpropTraces(influence, filtered, readout), grads, reg, reg_traces)

    # ---- one step: forward per example, own traces at batch level, dense levels per example -----------------
    def forward(params, carry, x, target):
        """One example: the forward step, the Jacobian blocks, the error and the same-step learning signals."""
        fwd, u = [], x
        for l in range(R):
            layer, p, h_prev = layers[l], params[l], carry[l]
            z_prev = layer.output(h_prev)
            a = layer.synapse(p, u, z_prev)
            h = layer.dynamics(h_prev, a)
            fwd.append(
                dict(
                    h_prev=h_prev,
                    u=u,
                    z_prev=z_prev,
                    h=h,
                    blk=blocks(layer, h_prev, a, h),
                    dgdh_prev=output_jacobian(layer, h_prev) if order > 0 else None,
                    v=jnp.concatenate([u, z_prev, jnp.ones((1,), u.dtype)]),
                )
            )
            u = layer.output(h)

        # the readout and the error
        p_top, z_top_in, readout = params[R], u, {}
        if is_neuron(top):
            h_prev = carry[R]
            z_prev = top.output(h_prev)
            a = top.synapse(p_top, z_top_in, z_prev)
            h_top = top.dynamics(h_prev, a)
            y = top.output(h_top)
            readout = dict(
                blk=blocks(top, h_prev, a, h_top), v=jnp.concatenate([z_top_in, z_prev, jnp.ones((1,), u.dtype)])
            )
        else:
            h_top, y = top.apply(p_top, carry[R], z_top_in)
        value, err = jax.value_and_grad(lambda out: loss(out, target))(y)

        # same-step learning signals L^l (z-space) of the recurrent layers
        g_top = ()
        if is_neuron(top):
            delta_top = readout["blk"].dgdh * err[:, None]
            if filter_top:  # the readout's leak is in the filter: pull back through the synapse only
                top_map = lambda uu: top.synapse(p_top, uu, z_prev)
                cot = delta_top
            else:
                top_map = lambda uu: top.output(top.dynamics(h_prev, top.synapse(p_top, uu, z_prev)))
                cot = err
            signal = B @ cot.reshape(-1) if B is not None else jax.vjp(top_map, z_top_in)[1](cot)[0]
        else:
            _, pull = jax.vjp(lambda uu, pp: top.apply(pp, carry[R], uu)[1], z_top_in, p_top)
            signal, g_top = pull(err)
            signal = B @ err if B is not None else signal
            delta_top = ()
        L = {R - 1: signal}
        if not full:
            for l in range(R - 1, 0, -1):
                f, layer, p = fwd[l], layers[l], params[l]
                if depth == "collapsed" and scalar_leak(layer) is not None:  # its leak is in the filters
                    step_map = lambda uu: layer.synapse(p, uu, f["z_prev"])
                    cot = f["blk"].dgdh * L[l][:, None]
                else:
                    step_map = lambda uu: layer.output(layer.dynamics(f["h_prev"], layer.synapse(p, uu, f["z_prev"])))
                    cot = L[l]
                L[l - 1] = jax.vjp(step_map, f["u"])[1](cot)[0]

        carry = tuple(f.pop("h") for f in fwd) + (h_top,)
        for f in fwd:
            del f["h_prev"]
        z = recurrent_outputs(model, carry) if reg is not None else ()
        signals = dict(
            L=L,
            delta={l: fwd[l]["blk"].dgdh * L[l][:, None] for l in L},
            delta_top=delta_top,
            err=err,
            g_top=g_top,
            z=z,
        )
        return carry, fwd, readout, value, y, signals

    def own_update(blk, trace, v, d, after=None):
        """e-prop's eligibility trace over the batch. ``trace`` is a tuple over the stored state variables
        (:func:`stored`): a leaky variable's ``zbar`` ``(B, m)`` is filtered on its own (its ``D`` row is
        its decay), every other variable's compact array, in the compact layout (``blk`` too), mixes the
        stored traces through its ``D`` row, reading ``zbar`` broadcast over the neurons. Each output
        element then reads only the same element of every input, which XLA compiles to simpler passes
        than the mixing of an ``s`` axis (measured 1.1x to 1.7x faster per step on ALIF and LSTM networks,
        docs/design.md); and no compact array reads another. ``after`` (:func:`written_after`) is added to
        the previous compact arrays as they are read, so that the new ones are computed after every other
        reader of the previous ones and XLA writes them in place (an expression of its own, which XLA
        does not merge with the view's recomputation of the update)."""
        kept = [c for c in range(d.s) if stored(d)[c]]
        # operands in the stored layout (compact_shape): with k = 1 the unit k axis is dropped here rather
        # than by a reshape of the result, which would keep XLA from writing the new array in place
        stored_layout = (lambda a: a[:, :, 0]) if d.k == 1 else (lambda a: a)
        D, f, pre = blk.D[..., None, None], blk.dfda[..., None], stored_layout(presynaptic(v))
        olds = [
            stored_layout(as_compact(part, d.leaks[e], d)) if d.leaks[e] is not None or after is None else part + after
            for e, part in zip(kept, trace)
        ]

        def update(c, part):
            if d.leaks[c] is not None:
                decay, gain = d.leaks[c]
                return decay * part + gain * v
            mixed = sum(stored_layout(D[:, :, c, e]) * old for e, old in zip(kept, olds))
            return mixed + stored_layout(f[:, :, c]) * pre

        return tuple(update(c, part) for c, part in zip(kept, trace))

    def own_view(blk, trace, v, d):
        """The z-space view of the new own trace (:func:`own_update`), as a function of the *previous*
        stored traces, so that the new ones can be written after it (:func:`written_after`): with every
        variable stored, ``dz/dh`` applied to the new traces computed without ``after`` (XLA computes them
        inside the view's own pass); else mixed from the previous traces at neuron size (:func:`z_mix`),
        since an unstored variable's trace does not exist."""
        kept = [c for c in range(d.s) if stored(d)[c]]
        if len(kept) == d.s:
            return own_z(own_update(blk, trace, v, d), blk.dgdh, d)
        D, f = z_mix(blk)
        olds = [as_compact(part, d.leaks[e], d) for e, part in zip(kept, trace)]
        return sum(D[:, :, e, None, None] * old for e, old in zip(kept, olds)) + f[..., None] * presynaptic(v)

    def written_after(*trees):
        """A zero that depends on every array of ``trees`` (the outputs of the other readers of the previous
        own traces: filters, the regulariser's sums, gradients contracted from the previous traces), or
        ``None`` if there is none. Added to the previous compact traces where :func:`own_update` reads them,
        it orders the update after those readers, which lets XLA write the new traces into the loop-carried
        buffers in place; without it XLA cannot prove that order and copies a trace every step (docs/design.md).
        It is ``0 * x`` for one finite element ``x`` of the arrays, never a NaN."""
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(trees) if leaf.size]
        if not leaves:
            return None
        x = sum(leaf.reshape(-1)[0] for leaf in leaves)
        return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x)) * jnp.zeros_like(x)

    def z_mix(blk):
        """``dgdh`` mixed with ``D`` and ``dh/da`` at neuron size: the new own trace in z-space is
        ``z = sum_c g_c (sum_e D_ce trace_e + f_c v) = sum_e (g . D)_e trace_e + (g . f) v`` over the
        *previous* stored traces, so it never needs an unstored variable's trace."""
        g = blk.dgdh
        return jnp.einsum("...c,...ce->...e", g, blk.D), jnp.einsum("...c,...ck->...k", g, blk.dfda)

    def contract_mixed(sig, blk, trace, v, l, d):
        """``sum_b sig[b, j] z[b, j, ...]`` for the z-space view ``z`` of :func:`own_view` when some variable
        is not stored, contracted from the previous stored traces and ``v`` without forming ``z``: the
        ``dot`` reads each stored trace as it is carried, and no z-space array is written and read back."""
        D, f = (jnp.swapaxes(x, 0, 1) if neuron_major else x for x in z_mix(blk))  # batch-major (B, n, ...)
        kept = [c for c in range(d.s) if stored(d)[c]]
        g = jnp.einsum("bjg,bi->jgi", sig[..., None] * f, v)
        for e, part in zip(kept, trace):
            w = sig * D[:, :, e]
            if d.leaks[e] is not None:
                g = g + outer(w, part, l)
            else:
                g = g + contract_compact(w, part, d)
        return g

    def as_compact(part, leak, d):
        """A stored own trace as a compact array: a leaky variable's ``zbar`` broadcast over the neurons."""
        return presynaptic(part) if leak is not None else part.reshape(part.shape[:2] + (d.k, d.m))

    def compact_shape(d):
        """A compact own trace as stored, per example: ``(n, k, m)``, or ``(n, m)`` when ``k = 1``. Without the
        unit axis the batch contraction's ``dot`` reads the stored trace as it is; with it XLA's CPU backend
        reshapes the ``dot``'s operand and computes the new trace twice, once for the loop and once for the
        ``dot``, and copies the old one, which both read (ALIF(256) b32, stateless readout: 2.0x faster per
        step without; with ``k > 1`` flattening ``(k, m)`` instead was 0.74x to 0.9x, so those keep it)."""
        return (d.n, d.m) if d.k == 1 else (d.n, d.k, d.m)

    def own_z(trace, dgdh, d):
        """An own level-0 trace with every variable stored, in z-space: a compact array (``dgdh`` in the
        compact layout)."""
        return sum(dgdh[:, :, c, None, None] * as_compact(part, d.leaks[c], d) for c, part in enumerate(trace))

    def dense_example(params, fwd, old, own_old, own_new):
        """One example's dense levels, and the z-space sums over levels that are dense. ``own_old`` and
        ``own_new`` hold each layer's own level-0 trace in z-space, compact ``(n, k, m)``, before and after
        this step."""

        def to_z(l, p, n, trace, dgdh, owns):
            return owns[p] if own(l, p, n) else weigh(dgdh, trace)

        def push(l, arg, z_trace, compact):
            """``dh/da . W . z_trace``: the explicit edge (``arg="z"``) or the same-step edge from below (``"u"``)."""
            f, layer, p = fwd[l], layers[l], params[l]
            if arg == "z":
                fn, at = (lambda zz: layer.synapse(p, f["u"], zz)), f["z_prev"]
            else:
                fn, at = (lambda uu: layer.synapse(p, uu, f["z_prev"])), f["u"]
            w = jax.jacfwd(fn)(at)  # (n_l, k_l, n_src); depends on params only, so XLA hoists it
            if compact:  # z_trace[j, g, i] moves neuron j only: broadcast against the synaptic matrix
                da = w[:, :, :, None, None] * z_trace[None, None]
            else:  # z_trace (n_src, n, k, m): one product, its result already in the trace's layout
                da = jnp.tensordot(w, z_trace.astype(w.dtype), 1)
            return mix(f["blk"].dfda, da)

        def expand(l, p, n, z_trace):  # a compact own z-space trace (n, k, m) as a dense (n, n, k, m) one
            if not own(l, p, n):
                return z_trace
            return jnp.eye(z_trace.shape[0], dtype=z_trace.dtype)[:, :, None, None] * z_trace[None]

        influence = {}
        for l, p in pairs:
            f, new = fwd[l], {}
            for n in range(levels):
                if own(l, p, n):
                    continue
                trace = mix(f["blk"].D, old[(l, p)][n])
                if n >= 1:
                    z_old = to_z(l, p, n - 1, old[(l, p)].get(n - 1), f["dgdh_prev"], own_old)
                    trace += push(l, "z", z_old, own(l, p, n - 1))
                if l > p:
                    below = to_z(l - 1, p, n, influence[(l - 1, p)].get(n), fwd[l - 1]["blk"].dgdh, own_new)
                    trace += push(l, "u", below, own(l - 1, p, n))
                new[n] = trace
            influence[(l, p)] = new
        z_sums = {
            (l, p): sum(
                expand(l, p, n, to_z(l, p, n, influence[(l, p)].get(n), fwd[l]["blk"].dgdh, own_new))
                for n in range(levels)
            )
            for l, p in pairs
            if not compact_sum(l, p)
        }
        return influence, z_sums

    # ---- batch-level contractions (the batch is reduced every step) --------------------------------------
    # The batch is reduced with einsum (a dot): XLA's CPU backend runs a broadcast-multiply-and-sum over a
    # leading axis far below bandwidth (measured 9x to 37x slower; benchmarks/README.md).
    def contract_z(sig, z_trace):
        """``sum_b sum_j sig[b, j] z_trace[b, j, ...]`` for a compact or a dense z-space trace."""
        if z_trace.ndim == 4:
            return jnp.einsum(compact_spec, sig, z_trace)
        return jnp.einsum("bj,bjgki->gki", sig, z_trace)

    def outer(post, pre, l):
        """``sum_b post[b, j] pre[b, i]`` as ``(n, 1, m)``: a leaky variable's gradient (``k = 1``)."""
        if l == R:
            return jnp.einsum("bj,bi->ji", post, pre)[:, None, :]
        # Transposed copies of the two small factors (B x n, B x m), which the barrier keeps XLA from
        # folding back, make this a dot over both trailing axes rather than both leading ones, which
        # XLA's CPU backend runs on a slower path: 1.04x to 1.09x per step on LIF(16, 32) batch 8 with a
        # stateless readout, neutral at 64 and 256. The readout's own n_out-wide product gains nothing.
        post, pre = jax.lax.optimization_barrier((post.T, pre.T))
        return jnp.einsum("jb,ib->ji", post, pre)[:, None, :]

    def contract_compact(w, part, d):
        """``sum_b w[b, j] part[j, b, ...]`` for a stored compact trace (:func:`compact_shape`), as ``(n, k, m)``."""
        return jnp.einsum(compact_spec if part.ndim == 4 else flat_spec, w, part).reshape(d.n, d.k, d.m)

    def contract_h(delta, trace, l, p, n, dp):
        if own(l, p, n):  # every variable stored (else the gradient contracts in z-space)
            return sum(
                outer(delta[:, :, c], part, l)
                if dp.leaks[c] is not None
                else contract_compact(delta[:, :, c], part, dp)
                for c, part in enumerate(trace)
            )
        return jnp.einsum("bjc,bjcgki->gki", delta, trace)

    def step(params, state, x, target):
        check_step(where, model, loss, params, state, x, target)
        dims, _ = all_dims(params)
        carry, fwd, top_fwd, values, y, sig = jax.vmap(forward, in_axes=(None, 0, 0, 0))(params, state.carry, x, target)
        old = state.traces.influence
        # The compact passes broadcast the blocks over the synapses and the presynaptic vectors ``v`` over the
        # neurons: both formed once (with dense levels it was mixed, eprop_m(1) 0.76x on a GRU, 1.3x on
        # ALIF, so those keep XLA's choice). Unformed, XLA evaluated ``v``'s concatenation and the slice of
        # step t's input again for every trace element (GRU(32) b8: the trace update 8x slower).
        if neuron_major:
            blks, top_blk, vs, top_v = formed_once(
                ([f["blk"] for f in fwd], top_fwd.get("blk"), [f["v"] for f in fwd], top_fwd.get("v"))
            )
            fwd = [dict(f, blk=blk, v=v) for f, blk, v in zip(fwd, blks, vs)]
            top_fwd = dict(top_fwd, blk=top_blk, v=top_v) if is_neuron(top) else top_fwd

        # the z-space views of the own level-0 traces, from the previous traces (XLA drops those nobody reads)
        own_new, own_old = {}, {}
        for p in range(R):
            own_new[p] = own_view(compact_layout(fwd[p]["blk"]), old[(p, p)][0], fwd[p]["v"], dims[p])
            if order > 0:
                own_old[p] = own_z(old[(p, p)][0], compact_layout(fwd[p]["dgdh_prev"]), dims[p])
        z_sums = {(l, p): own_new[p] for l, p in pairs if compact_sum(l, p)}

        # dense levels per example
        dense = {}
        if order > 0 or full:
            old_dense = {key: {n: t for n, t in enumerate(levels_) if not own(*key, n)} for key, levels_ in old.items()}
            dense, dense_sums = jax.vmap(dense_example, in_axes=(None, 0, 0, 0, 0))(
                params, fwd, old_dense, own_old, own_new
            )
            z_sums.update(dense_sums)

        # filters, the regulariser's sums and the gradients that do not read the new own traces
        filtered = {}
        for p in state.traces.filtered:
            stage_in, stages = z_sums[(obs(p), p)], []
            for l, old_stage in zip(filters(p), state.traces.filtered[p]):
                decay, gain = scalar_leak(layers[l])
                stage_in = decay * old_stage + gain * stage_in
                stages.append(stage_in)
            filtered[p] = tuple(stages)
        reg_traces = {key: state.reg_traces[key] + z_sums[key] for key in pairs} if reg is not None else ()
        batch = x.shape[0]
        grads, mixed, later = list(state.grads), [], []  # later: the layers whose gradient reads the new traces
        for p in range(R):
            o = obs(p)
            if p in filtered:
                grads[p] = grads[p] + contract_z(sig["L"][o], filtered[p][-1]) / batch
            elif compact_sum(o, p) and not all(stored(dims[p])):
                mixed.append(
                    contract_mixed(sig["L"][o], compact_layout(fwd[p]["blk"]), old[(p, p)][0], fwd[p]["v"], p, dims[p])
                )
                grads[p] = grads[p] + mixed[-1] / batch
            else:
                later.append(p)

        # the new own traces, written after every other reader of the previous ones (in place), then the
        # gradients that read them
        after = written_after(filtered, reg_traces, mixed) if neuron_major else None
        own_traces = {
            p: own_update(compact_layout(fwd[p]["blk"]), old[(p, p)][0], fwd[p]["v"], dims[p], after) for p in range(R)
        }
        influence = {
            (l, p): tuple(own_traces[p] if own(l, p, n) else dense[(l, p)][n] for n in range(levels)) for l, p in pairs
        }
        for p in later:
            o = obs(p)
            g = sum(contract_h(sig["delta"][o], t, o, p, n, dims[p]) for n, t in enumerate(influence[(o, p)]))
            grads[p] = grads[p] + g / batch
        readout = ()
        if is_neuron(top):
            readout = own_update(compact_layout(top_fwd["blk"]), state.traces.readout, top_fwd["v"], dims[R])
        if is_neuron(top) and not all(stored(dims[R])):
            grads[R] = (
                grads[R]
                + contract_mixed(
                    sig["err"], compact_layout(top_fwd["blk"]), state.traces.readout, top_fwd["v"], R, dims[R]
                )
                / batch
            )
        elif is_neuron(top):
            grads[R] = grads[R] + contract_h(sig["delta_top"], readout, R, R, 0, dims[R]) / batch
        else:
            grads[R] = jax.tree_util.tree_map(lambda acc, g: acc + jnp.sum(g, 0) / batch, grads[R], sig["g_top"])
        state = state._replace(
            carry=carry,
            traces=EpropTraces(influence, filtered, readout),
            grads=tuple(grads),
            loss=state.loss + jnp.mean(values),
            steps=state.steps + 1,
        )
        if reg is not None:
            state = state._replace(spikes=state.spikes + sig["z"], reg_traces=reg_traces)
        return state, y

    # ---- K steps at once (level 0 only): the chunked whole-sequence view (_chunks.py) ----------------------
    def system(blk, signal, d, stages, with_reg, dtype):
        """One layer's level-0 system at one step, ``(B, n, ...)``: ``(A, F, c, d)`` of
        :func:`~eproptax._chunks.advance`. Its slots are the stored own traces, one per filter stage and the
        regulariser's sum; ``signal`` ``(B, n)`` weighs what the gradient reads, the last filter stage or
        else the new trace in z-space (``sum_c delta_c e_c = L sum_c (dz/dh)_c e_c``)."""
        kept = [c for c in range(d.s) if stored(d)[c]]
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

    def structure(d, n_stages, with_reg):
        """Which slots each slot's row of :func:`system`'s ``A`` reads (static)."""
        kept = [c for c in range(d.s) if stored(d)[c]]
        size = len(kept) + n_stages + with_reg
        reads = np.zeros((size, size), bool)
        for i, c in enumerate(kept):
            reads[i, : len(kept)] = d.leaks[c] is None
            reads[i, i] = True
        for i in range(len(kept), size):
            reads[i, : len(kept)] = True
            reads[i, (len(kept) if i < len(kept) + n_stages else i) : i + 1] = True
        return reads

    def chunk(params, state, inputs, targets):
        """``K = inputs.shape[1]`` steps at once (``inputs`` ``(B, K, n_in)``, every target leaf ``(B, K, ...)``):
        the state of ``K`` calls of :func:`step`, up to rounding. An inner scan runs the forward pass and keeps
        each step's Jacobian blocks, presynaptic vectors and learning signals (:func:`forward`); every level-0
        system then advances over the chunk at once (:func:`~eproptax._chunks.advance`). Recomputing the
        forward pass vectorised over the chunk instead, from the stored carries, measured no faster (GRU(32)
        batch 8: 0.83x against 1.04x of stepping). Only for level-0 rules (``order=0``, not ``depth="full"``)."""
        check_step(where, model, loss, params, state, inputs[:, 0], jax.tree_util.tree_map(lambda a: a[:, 0], targets))
        dims, _ = all_dims(params)
        dtype = accum_dtype(params)
        batch, K = np.shape(inputs)[:2]
        stage_leaks = {p: [scalar_leak(layers[l]) for l in filters(p)] for p in range(R)}
        inputs, targets = jnp.swapaxes(inputs, 0, 1), jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), targets)

        def body(carry, xt):
            carry, *seen = jax.vmap(forward, in_axes=(None, 0, 0, 0))(params, carry, *xt)
            return carry, seen

        carry, (fwd, top_fwd, values, _, sig) = jax.lax.scan(body, state.carry, (inputs, targets))
        seen = [(fwd[p]["blk"], fwd[p]["v"], sig["L"][p]) for p in range(R)]
        seen += [(top_fwd["blk"], top_fwd["v"], sig["err"])] if is_neuron(top) else []

        grads, influence, filtered = list(state.grads), dict(state.traces.influence), dict(state.traces.filtered)
        reg_traces, readout = state.reg_traces, state.traces.readout
        for p, (blk, v, signal) in enumerate(seen):
            d, own_layer = dims[p], p < R
            parts = state.traces.influence[(p, p)][0] if own_layer else state.traces.readout
            shared = [d.leaks[e] is not None for e in range(d.s) if stored(d)[e]]
            stages = filtered.get(p, ()) if own_layer else ()
            regs = (reg_traces[(p, p)],) if reg is not None and own_layer else ()
            slots = [
                part if is_shared else part.reshape(d.n, batch, d.k, d.m) for part, is_shared in zip(parts, shared)
            ]
            leaks = stage_leaks[p] if own_layer else ()
            coefficients = functools.partial(system, d=d, stages=leaks, with_reg=bool(regs), dtype=dtype)
            new, g = advance(
                slots + list(stages) + list(regs),
                shared + [False] * (len(stages) + len(regs)),
                structure(d, len(stages), bool(regs)),
                lambda x: coefficients(*x),
                (blk, signal),
                v.astype(dtype),
            )
            own = tuple(x.reshape(part.shape) for x, part in zip(new, parts))
            if own_layer:
                influence[(p, p)] = (own,)
                if stages:
                    filtered[p] = tuple(new[len(parts) : len(parts) + len(stages)])
                if regs:
                    reg_traces = {**reg_traces, (p, p): new[-1]}
            else:
                readout = own
            grads[p] = grads[p] + g / batch
        if not is_neuron(top):
            grads[R] = jax.tree_util.tree_map(lambda a, g: a + jnp.sum(g, (0, 1)) / batch, grads[R], sig["g_top"])
        state = state._replace(
            carry=carry,
            traces=EpropTraces(influence, filtered, readout),
            grads=tuple(grads),
            loss=state.loss + jnp.sum(jnp.mean(values, 1)),
            steps=state.steps + K,
        )
        if reg is not None:
            state = state._replace(spikes=state.spikes + jnp.sum(sig["z"], 0), reg_traces=reg_traces)
        return state

    def result(params, state):
        dims, dtype = all_dims(params)
        grads, value = list(state.grads), state.loss
        if reg is not None:
            weights = reg_weights(reg, state.spikes, state.steps)  # already divided by the batch size
            offsets = np.cumsum([0] + [dims[l].n for l in range(R)])
            for l, p in pairs:
                w = weights[:, offsets[l] : offsets[l + 1]]
                grads[p] = grads[p] + contract_z(w, state.reg_traces[(l, p)])
            value = value + reg_value(reg, state.spikes, state.steps)
        out = []
        for i, layer in enumerate(layers):
            if is_neuron(layer):
                out.append(pull_back(layer, params[i], grads[i], dtype))
            else:
                out.append(jax.tree_util.tree_map(lambda g, w: g.astype(w.dtype), grads[i], params[i]))
        return value, tuple(out)

    return OnlineRule(init, step, result, reset, batch_axes, chunk if neuron_major else None)

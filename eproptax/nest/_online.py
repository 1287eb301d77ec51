"""NEST 3.10's online e-prop (``eprop_synapse`` with the current e-prop neurons) as a per-step learner."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._neurons import RECURRENT_MODELS, NestNeuron, NeuronInfo, NeuronState, ReadoutInfo, ReadoutState
from ._weight_optimizer import WeightOptimizer, WeightOptimizerState, weight_optimizer


class OnlineWeights(NamedTuple):
    """The plastic weights of the network, ``[post, pre]`` as NEST's weight matrices.

    Attributes:
      w_in: ``(n_rec, n_in)``, input (parrot) neurons to recurrent neurons.
      w_rec: ``(n_rec, n_rec)``, recurrent to recurrent (the diagonal is never a synapse).
      w_out: ``(n_out, n_rec)``, recurrent neurons to readouts.
    """

    w_in: Any
    w_rec: Any
    w_out: Any


class SynapseState(NamedTuple):
    """The state of one plastic projection, every leaf ``[post, pre]``.

    Attributes:
      w: the weight as the optimizer left it: the weight a spike of the presynaptic neuron carries.
      stored: the weight NEST stores (``GetConnections``): ``w`` as of the presynaptic neuron's last spike or
        flush event (``None`` with ``optimize_each_step=False``, where it is ``w``).
      zbar: the presynaptic trace ``zbar = alpha zbar + x``.
      epsilon: the adaptation trace (adaptive postsynaptic neurons), else ``None``.
      ebar: ``kappa ebar + e`` (onto recurrent neurons), else ``None``.
      ebar_reg: ``kappa_reg ebar_reg + (1 - kappa_reg) e`` (onto recurrent neurons), else ``None``.
      grad: the gradient summed since the last spike (``optimize_each_step=False``), else ``None``.
      opt: the per-synapse :class:`~eproptax.nest.WeightOptimizerState`.
    """

    w: jax.Array
    stored: Any
    zbar: jax.Array
    epsilon: Any
    ebar: Any
    ebar_reg: Any
    grad: Any
    opt: WeightOptimizerState


class Pending(NamedTuple):
    """What the lagged trace update still needs: index 0 is step ``s - 1``, index 1 step ``s - 2``.

    Attributes:
      psi: ``(2, n_rec)`` surrogate gradients.
      fr: ``(2, n_rec)`` regulariser factors ``FR``.
      err: ``(2, n_out)`` readout errors ``ERR``.
      x_in: ``(2, n_in)`` input spikes with stamps ``s - 1`` and ``s - 2``.
      x_rec: ``(2, n_rec)`` recurrent spikes with stamps ``s - 1`` and ``s - 2``.
    """

    psi: jax.Array
    fr: jax.Array
    err: jax.Array
    x_in: jax.Array
    x_rec: jax.Array


class OnlineEpropState(NamedTuple):
    """The whole state of the online learner before step ``s``.

    Attributes:
      s: the next step (an int32 scalar).
      rec: the recurrent neurons' :class:`~eproptax.nest.NeuronState`.
      out: the readouts' :class:`~eproptax.nest.ReadoutState`.
      in_rec, rec_rec, rec_out: the three plastic projections (:class:`SynapseState`).
      feedback: ``B``, ``(n_rec, n_out)``, the static ``eprop_learning_signal_connection`` weights.
      masks: :class:`OnlineWeights` of booleans, where synapses exist.
      eta: the learning rate (a scalar; sweep it with ``jax.vmap`` over ``init``'s ``eta``).
      last_in, last_rec: per presynaptic neuron, the stamp of its latest spike (0 before the first).
      z: the recurrent spikes of step ``s - 1`` (stamp ``s``), delivered in step ``s``.
      flush: the recurrent flush events of step ``s - 1``, delivered in step ``s``.
      pending: :class:`Pending`.
    """

    s: jax.Array
    rec: NeuronState
    out: ReadoutState
    in_rec: SynapseState
    rec_rec: SynapseState
    rec_out: SynapseState
    feedback: jax.Array
    masks: OnlineWeights
    eta: jax.Array
    last_in: jax.Array
    last_rec: jax.Array
    z: jax.Array
    flush: jax.Array
    pending: Pending


class OnlineInfo(NamedTuple):
    """What one step ``s`` reports (NEST's recordables).

    Attributes:
      rec: the recurrent neurons' :class:`~eproptax.nest.NeuronInfo` (spikes, ``surrogate_gradient``, ``V_m``,
        ...).
      learning_signal: ``(n_rec,)``, NEST's ``learning_signal`` recordable: ``L[s - 2] = B ERR[s - 1]``.
      out: the readouts' :class:`~eproptax.nest.ReadoutInfo`.
      loss: ``0.5 sum_k error_signal_k^2``, this step's term of NEST's mean-squared error.
    """

    rec: NeuronInfo
    learning_signal: jax.Array
    out: ReadoutInfo
    loss: jax.Array


class OnlineEprop(NamedTuple):
    """NEST's online e-prop as pure functions (see :func:`online_eprop`).

    Attributes:
      init: ``init(weights, feedback, *, masks=None, eta=None) -> OnlineEpropState``.
      step: ``step(state, inputs, target, window, drive=None) -> (state, OnlineInfo)``: one NEST step.
      run: ``run(state, inputs, targets, windows, drive=None) -> (state, OnlineInfo)``: ``lax.scan`` of
        ``step`` over the leading (time) axis; the infos are stacked.
      weights: ``weights(state, stored=True) -> OnlineWeights``: NEST's stored weights (``GetConnections``),
        or with ``stored=False`` the weights the next spikes will carry.
      rec, out, optimizer: the neurons and the :class:`~eproptax.nest.WeightOptimizer`.
    """

    init: Any
    step: Any
    run: Any
    weights: Any
    rec: NestNeuron
    out: NestNeuron
    optimizer: Any


def _covered(last, cutoff, mask, t):
    """``[post, pre]``: step ``t`` is integrated (SPEC.md section 8): the presynaptic neuron has spiked and ``t``
    lies within the first ``cutoff`` steps of the window of its latest spike ``last <= t + 1``."""
    started = last > 0
    return mask & started[None, :] & ((t - last + 1)[None, :] < jnp.reshape(cutoff, (-1, 1)))


class _Net(NamedTuple):
    """What the stages of :func:`online_eprop` share: the neurons, the weight optimizer, the default ``eta``."""

    rec: NestNeuron
    out: NestNeuron
    opt: WeightOptimizer
    eta: Any


def _col(value, dtype):
    """A per-neuron constant (scalar or ``(n,)``) as a column, to broadcast over ``[post, pre]``."""
    return jnp.reshape(jnp.asarray(value, dtype), (-1, 1))


def online_eprop(
    rec: NestNeuron,
    out: NestNeuron,
    *,
    optimizer: str = "gradient_descent",
    eta=1e-4,
    batch_size: int = 1,
    optimize_each_step: bool = True,
    Wmin=-100.0,
    Wmax=100.0,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
) -> OnlineEprop:
    """NEST 3.10's online e-prop: ``eprop_synapse`` learning a network of current e-prop neurons, exactly.

    The network is NEST's: input (parrot) neurons -> ``rec`` (``w_in``), ``rec`` -> ``rec`` (``w_rec``, no
    autapses), ``rec`` -> ``out`` (``w_out``), all plastic ``eprop_synapse``s with one-step delays, and the static
    feedback ``B`` (``eprop_learning_signal_connection``). Nothing is ever reset: the algorithm changes the
    weights in the middle of the sequence, at every step (``optimize_each_step``) or at the presynaptic
    spikes, so it is not a ``(loss, grads)`` rule; its closest shape is the library's online rules'
    ``init``/``step``, plus ``run``, the whole sequence as one ``lax.scan`` of ``step``. For every synapse
    ``i -> j`` (SPEC.md sections 4 to 8)::

      zbar[t] = alpha_j zbar[t-1] + x_i[t]                     (x_i[t]: i's spike with stamp t; no zeta)
      e[t]    = cov(t) psi_j[t] (zbar[t] - beta_j epsilon[t-1]),   epsilon[t] = rho_j epsilon[t-1] + e[t]
      ebar[t] = kappa_j ebar[t-1] + e[t]                        (no 1 - kappa)
      ebar_reg[t] = kappa_reg ebar_reg[t-1] + (1 - kappa_reg) e[t]
      g[t]    = cov(t) (L_j[t] ebar[t] + FR_j[t] ebar_reg[t]),  L_j[t] = sum_k B_jk ERR_k[t+1]
      onto a readout k: zbar with kappa_out, g[t] = cov(t) ERR_k[t] zbar[t]
      optimize_each_step: w <- OPT(t + 1, g[t], w) at every covered t
      else:               w <- OPT(a - 1, sum of g since the previous spike, w) at each spike stamp a but the first

    ``cov(t)`` marks the steps within ``eprop_isi_trace_cutoff`` of the postsynaptic neuron after the window
    start ``a - 1`` of the presynaptic spike ``a``; the learning signal of the readouts' step ``t + 1`` meets
    the trace of step ``t``; ``FR`` is the firing-rate moving average's regulariser (``kappa_reg``). A spike
    with stamp ``a`` carries the weight processed up to step ``a - 2``, as in NEST, where the synapse does this
    work lazily when the spike arrives: the dense per-step form here is the same arithmetic in the same order
    per synapse (NEST's power decays over skipped steps become per-step decays, a difference of 1e-16).

    Inputs follow NEST's stamps: ``inputs[s]`` holds the input spikes that the recurrent neurons integrate in
    step ``s`` (a ``spike_generator`` time ``T`` ms gives ``s = T/dt + 1``). ``targets[s]`` and ``windows[s]``
    are the target and learning-window generators' values in force in step ``s`` (an amplitude at ``T`` ms acts
    from step ``T/dt`` on). ``drive[s]``, optional, is added to the recurrent neurons' input of step ``s``
    outside the plastic synapses (NEST's examples end with a weight-1000 spike through static synapses into
    every parrot and recurrent neuron to force the last update).

    When it is exact: the arithmetic of NEST 3.10 (checked to 1e-10 and identical spikes on the recorded
    cases, tests/test_nest_online.py) for ``eprop_isi_trace_cutoff >= 2 dt`` or ``inf``; with a cutoff of one
    step NEST shifts a spike into the next window, which this form does not reproduce. NEST's rule that an
    optimizer uses the learning rate in force at the synapse's previous optimization only matters when ``eta``
    changes during a run, which it cannot here.

    Cost per step: O(|W|) elementwise work on every synapse (dense ``[post, pre]`` traces: ``zbar``, ``ebar``,
    ``ebar_reg``, ``epsilon`` for adaptive neurons, the optimizer's state) and the three matrix-vector products;
    Adam's catch-up steps loop over the synapses as many times as the longest pending catch-up. Memory: about
    8 to 12 arrays of the weights' size. NEST does this work only for synapses whose presynaptic neuron spikes.

    Args:
      rec: the recurrent neurons (:func:`eprop_iaf`, :func:`eprop_iaf_adapt`, :func:`eprop_iaf_psc_delta`,
        :func:`eprop_iaf_psc_delta_adapt`).
      out: the readouts (:func:`eprop_readout`), with the same ``dt``.
      optimizer: NEST's optimizer ``type``, ``"gradient_descent"`` or ``"adam"``.
      eta: the learning rate (the default of ``init``).
      batch_size: NEST's ``batch_size``: the number of time steps whose gradients are averaged (not sequences).
      optimize_each_step: NEST's ``optimize_each_step`` (a bool).
      Wmin, Wmax: the weights' bounds, applied at each optimization.
      beta_1, beta_2, epsilon: Adam's (``epsilon`` is added to ``sqrt(v)`` before the bias correction).

    Returns:
      An :class:`OnlineEprop`.

    Example::

      rec = ep.nest.eprop_iaf(100, C_m=1.0, E_L=0.0, V_m=0.0, V_th=0.03, tau_m=30.0, t_ref=0.0, ...)
      out = ep.nest.eprop_readout(1, C_m=1.0, E_L=0.0, V_m=0.0, tau_m=30.0)
      learner = ep.nest.online_eprop(rec, out, optimizer="adam", eta=9e-8)
      state = learner.init(ep.nest.OnlineWeights(w_in, w_rec, w_out), B)
      state, info = jax.jit(learner.run)(state, inputs, targets, windows)
      loss = info.loss  # per step; NEST's test sums it over each sequence

    References:
      Bellec et al. (2020), A solution to the learning dilemma for recurrent networks of spiking neurons.
      Korcsak-Gorzo et al. (2025), Event-driven eligibility propagation in large sparse networks.

    Warning:
      This is NEST's algorithm, not a gradient of a loss: every weight change affects the rest of the
      sequence, ``ebar`` lacks the ``1 - kappa`` factor (NEST's examples scale ``eta`` by ``(1 - kappa)^2``) and
      Adam takes one catch-up step per elapsed step.
    """
    where = "online_eprop"
    if not isinstance(rec, NestNeuron) or rec.model not in RECURRENT_MODELS:
        raise ValueError(f"{where}: `rec` must be one of ep.nest.{', '.join(RECURRENT_MODELS)}, got {rec!r:.80}.")
    if not isinstance(out, NestNeuron) or out.model != "eprop_readout":
        raise ValueError(f"{where}: `out` must be ep.nest.eprop_readout(...), got {out!r:.80}.")
    if rec.dt != out.dt:
        raise ValueError(f"{where}: `rec` and `out` must share one resolution dt, got {rec.dt} and {out.dt}.")
    opt = weight_optimizer(
        optimizer,
        batch_size=batch_size,
        optimize_each_step=optimize_each_step,
        Wmin=Wmin,
        Wmax=Wmax,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        where=where,
    )
    net = _Net(rec, out, opt, eta)
    bind = lambda fn: functools.partial(fn, net)
    return OnlineEprop(bind(_init), bind(_step), bind(_run), bind(_weights), rec, out, opt)


def _synapses(net: _Net, w, onto_rec: bool) -> SynapseState:
    """A projection's initial state: its weights, zero traces and the optimizer's initial state."""
    zeros = jnp.zeros_like(w)
    return SynapseState(
        w=w,
        stored=w if net.opt.optimize_each_step else None,
        zbar=zeros,
        epsilon=zeros if (onto_rec and net.rec.beta is not None) else None,
        ebar=zeros if onto_rec else None,
        ebar_reg=zeros if onto_rec else None,
        grad=None if net.opt.optimize_each_step else zeros,
        opt=net.opt.init(w),
    )


def _init(net: _Net, weights, feedback, *, masks=None, eta=None) -> OnlineEpropState:
    """:attr:`OnlineEprop.init`: the checked weights, feedback and masks, every trace zero."""
    where, n_rec, n_out = "online_eprop", net.rec.n, net.out.n
    w_in, w_rec, w_out = (jnp.asarray(w) for w in weights)
    dtype = jnp.result_type(w_in, w_rec, w_out)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{where}.init: `weights` must be floating arrays, got {dtype}.")
    n_in = w_in.shape[-1] if w_in.ndim == 2 else -1
    shapes = {"w_in": (n_rec, n_in), "w_rec": (n_rec, n_rec), "w_out": (n_out, n_rec)}
    for name, w in zip(shapes, (w_in, w_rec, w_out)):
        if w.shape != shapes[name]:
            raise ValueError(f"{where}.init: `weights.{name}` must have shape {shapes[name]}, got {w.shape}.")
    feedback = jnp.asarray(feedback, dtype)
    if feedback.shape != (n_rec, n_out):
        raise ValueError(f"{where}.init: `feedback` (B) must have shape {(n_rec, n_out)}, got {feedback.shape}.")
    no_autapses = ~np.eye(n_rec, dtype=bool)
    if masks is None:
        masks = OnlineWeights(np.ones(shapes["w_in"], bool), no_autapses, np.ones(shapes["w_out"], bool))
    masks = OnlineWeights(*(jnp.asarray(m, bool) for m in masks))
    for name, m in zip(shapes, masks):
        if m.shape != shapes[name]:
            raise ValueError(f"{where}.init: `masks.{name}` must have shape {shapes[name]}, got {m.shape}.")
    masks = masks._replace(w_rec=masks.w_rec & no_autapses)
    w_in, w_rec, w_out = (jnp.where(m, w, 0.0).astype(dtype) for m, w in zip(masks, (w_in, w_rec, w_out)))
    eta = jnp.asarray(net.eta if eta is None else eta, dtype)
    zi, zr = jnp.zeros(n_in, jnp.int32), jnp.zeros(n_rec, jnp.int32)
    pending = Pending(*(jnp.zeros((2, n), dtype) for n in (n_rec, n_rec, n_out, n_in, n_rec)))
    return OnlineEpropState(
        s=jnp.zeros((), jnp.int32),
        rec=net.rec.init(dtype),
        out=net.out.init(dtype),
        in_rec=_synapses(net, w_in, True),
        rec_rec=_synapses(net, w_rec, True),
        rec_out=_synapses(net, w_out, False),
        feedback=feedback,
        masks=masks,
        eta=eta,
        last_in=zi,
        last_rec=zr,
        z=jnp.zeros(n_rec, dtype),
        flush=jnp.zeros(n_rec, bool),
        pending=pending,
    )


def _optimize(net: _Net, syn, g, called, idx, eta):
    """A projection's gradient ``g`` of this step: applied now (``optimize_each_step``), else summed."""
    if net.opt.optimize_each_step:
        o, w = net.opt.update(syn.opt, syn.w, g, called, idx, eta)
        return syn._replace(w=w, opt=o)
    return syn._replace(grad=syn.grad + jnp.where(called, g, 0.0))


def _trace_onto_rec(net: _Net, syn, x, cov, psi, L, fr, idx, eta):
    """A projection onto the recurrent neurons one step on: its traces, its gradient, the optimizer."""
    rec = net.rec
    dtype = syn.w.dtype
    zbar = _col(rec.alpha, dtype) * syn.zbar + x[None, :]
    e = jnp.where(cov, psi[:, None] * zbar, 0.0)
    epsilon = None
    if rec.beta is not None:
        e = jnp.where(cov, psi[:, None] * (zbar - _col(rec.beta, dtype) * syn.epsilon), 0.0)
        epsilon = _col(rec.rho, dtype) * syn.epsilon + e
    ebar = _col(rec.kappa, dtype) * syn.ebar + e
    kappa_reg = _col(rec.kappa_reg, dtype)
    ebar_reg = kappa_reg * syn.ebar_reg + (1.0 - kappa_reg) * e
    g = jnp.where(cov, L[:, None] * ebar + fr[:, None] * ebar_reg, 0.0)
    syn = syn._replace(zbar=zbar, epsilon=epsilon, ebar=ebar, ebar_reg=ebar_reg)
    return _optimize(net, syn, g, cov, idx, eta)


def _trace_onto_out(net: _Net, syn, x, cov, err, idx, eta):
    """A projection onto the readouts one step on: ``zbar`` filtered by the readout's ``kappa``."""
    zbar = _col(net.out.alpha, syn.w.dtype) * syn.zbar + x[None, :]
    g = jnp.where(cov, err[:, None] * zbar, 0.0)
    return _optimize(net, syn._replace(zbar=zbar), g, cov, idx, eta)


def _deliver(net: _Net, syn, mask, x, event, has_previous, idx, eta):
    """Phase B: the presynaptic spikes ``x`` (and flush ``event``s) with the current stamp reach ``syn``."""
    if net.opt.optimize_each_step:
        return syn._replace(stored=jnp.where(event[None, :], syn.w, syn.stored))
    called = mask & ((x > 0) & has_previous)[None, :]
    o, w = net.opt.update(syn.opt, syn.w, syn.grad, called, idx, eta)
    return syn._replace(w=w, opt=o, grad=jnp.where(called, 0.0, syn.grad))


def _step(net: _Net, state, inputs, target, window, drive=None):
    """:attr:`OnlineEprop.step`: one NEST step (SPEC.md section 8, in NEST's order)."""
    rec, out = net.rec, net.out
    s, p, masks, eta = state.s, state.pending, state.masks, state.eta
    dtype = state.in_rec.w.dtype
    # (1) the traces and gradients of step t = s - 2, whose learning signal L[t] = B ERR[t + 1] is complete
    t = s - 2
    L = state.feedback @ p.err[0]
    cov_in = _covered(state.last_in, rec.cutoff, masks.w_in, t)
    cov_rec = _covered(state.last_rec, rec.cutoff, masks.w_rec, t)
    cov_out = _covered(state.last_rec, out.cutoff, masks.w_out, t)
    in_rec = _trace_onto_rec(net, state.in_rec, p.x_in[1], cov_in, p.psi[1], L, p.fr[1], t + 1, eta)
    rec_rec = _trace_onto_rec(net, state.rec_rec, p.x_rec[1], cov_rec, p.psi[1], L, p.fr[1], t + 1, eta)
    rec_out = _trace_onto_out(net, state.rec_out, p.x_rec[1], cov_out, p.err[1], t + 1, eta)
    # (2) phase B: the events with stamp s (input spikes, recurrent spikes and flush events of step s - 1)
    x_in = jnp.asarray(inputs, dtype)
    x_rec = state.z
    in_rec = _deliver(net, in_rec, masks.w_in, x_in, x_in > 0, state.last_in > 0, s - 1, eta)
    rec_event = (x_rec > 0) | state.flush
    rec_rec = _deliver(net, rec_rec, masks.w_rec, x_rec, rec_event, state.last_rec > 0, s - 1, eta)
    rec_out = _deliver(net, rec_out, masks.w_out, x_rec, rec_event, state.last_rec > 0, s - 1, eta)
    last_in = jnp.where(x_in > 0, s, state.last_in)
    last_rec = jnp.where(x_rec > 0, s, state.last_rec)
    # (3) the weights the spikes carry, then phase C: every neuron's step s
    I_rec = in_rec.w @ x_in + rec_rec.w @ x_rec
    if drive is not None:
        I_rec = I_rec + jnp.asarray(drive, dtype)
    h_rec, info_rec = rec.step(state.rec, I_rec, s)
    h_out, info_out = out.step(state.out, rec_out.w @ x_rec, jnp.asarray(target, dtype), jnp.asarray(window, dtype))
    pending = Pending(
        psi=jnp.stack([info_rec.psi, p.psi[0]]),
        fr=jnp.stack([info_rec.fr, p.fr[0]]),
        err=jnp.stack([info_out.error_signal, p.err[0]]),
        x_in=jnp.stack([x_in, p.x_in[0]]),
        x_rec=jnp.stack([x_rec, p.x_rec[0]]),
    )
    state = OnlineEpropState(
        s + 1,
        h_rec,
        h_out,
        in_rec,
        rec_rec,
        rec_out,
        state.feedback,
        masks,
        eta,
        last_in,
        last_rec,
        info_rec.z,
        info_rec.flush,
        pending,
    )
    loss = 0.5 * jnp.sum(info_out.error_signal**2)
    return state, OnlineInfo(info_rec, L, info_out, loss)


def _run(net: _Net, state, inputs, targets, windows, drive=None):
    """:attr:`OnlineEprop.run`: ``lax.scan`` of :func:`_step` over the leading (time) axis."""
    xs = (inputs, targets, windows, drive)
    return jax.lax.scan(lambda st, x: _step(net, st, *x), state, xs)


def _weights(net: _Net, state, stored=True) -> OnlineWeights:
    """:attr:`OnlineEprop.weights`."""
    syns = (state.in_rec, state.rec_rec, state.rec_out)
    if stored and net.opt.optimize_each_step:
        return OnlineWeights(*(syn.stored for syn in syns))
    return OnlineWeights(*(syn.w for syn in syns))

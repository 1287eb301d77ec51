"""NEST 3.10's current e-prop neurons (``eprop_iaf``, ``eprop_iaf_adapt``, ``eprop_iaf_psc_delta(_adapt)``,
``eprop_readout``): one update step each, as NEST's ``update`` computes it.

Each factory takes NEST's parameter names and units (``Create``'s dictionary: absolute mV, ms, pF, pA and
``f_target`` in Hz) and returns a :class:`NestNeuron`, a NamedTuple of pure functions over an explicit state.
The learner of :func:`eproptax.nest.online_eprop` drives them; they are also usable on their own (a network
simulation without learning), and each one's ``cell(n_in)`` is the same neurons as a library cell, for every rule.
Voltages inside the state are relative to ``E_L``, as in NEST.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _hyper
from .._cell import Cell, make_cell
from ..cells._connectivity import check_mask, constrain
from ..cells._readout import _readout_init, _readout_synapse
from ..cells._spiking import _connections
from ..cells._surrogate import _SHAPES, _make_spike

NEVER = np.iinfo(np.int32).max // 2
"""The step count that stands for an infinite duration (a cutoff or a flush interval of ``inf`` ms)."""

# NEST's surrogate_gradient_function -> psi(u), u = (v - threshold) / width; sg = height * psi(u). The first
# three are the library's shapes; NEST's arctan has no pi factor (SPEC.md section 2), so it is its own.
SURROGATES: dict[str, Any] = {
    "piecewise_linear": _SHAPES["piecewise_linear"],
    "exponential": _SHAPES["exponential"],
    "fast_sigmoid_derivative": _SHAPES["fast_sigmoid"],
    "arctan_derivative": lambda u: 1.0 / (1.0 + u * u),
}

RECURRENT_MODELS = ("eprop_iaf", "eprop_iaf_adapt", "eprop_iaf_psc_delta", "eprop_iaf_psc_delta_adapt")


class NeuronState(NamedTuple):
    """The state of a population of recurrent e-prop neurons (every leaf of shape ``(n,)``).

    Attributes:
      v: membrane voltage relative to ``E_L``, after the reset.
      r: refractory counter (int32).
      i: the current that the next step integrates (``I_e`` and current input).
      f: the exponential moving average of the firing rate (spikes per ms), the regulariser's ``f^ema``.
      a: the threshold adaptation (``adaptation``; stays at its initial value in the non-adaptive models).
      threshold: the threshold in use, relative to ``E_L`` (``V_th_adapt - E_L``; ``V_th`` without adaptation).
      z: whether the neuron spiked in the last step (the adaptive models' ``z_prev``).
      buf: input buffered during refractoriness (``eprop_iaf_psc_delta`` with ``refractory_input``).
      last_event: the step of the neuron's last spike or flush event, 0 before its first spike (int32).
    """

    v: jax.Array
    r: jax.Array
    i: jax.Array
    f: jax.Array
    a: jax.Array
    threshold: jax.Array
    z: jax.Array
    buf: jax.Array
    last_event: jax.Array


class NeuronInfo(NamedTuple):
    """What a recurrent population reports for one step ``s`` (every leaf ``(n,)``).

    Attributes:
      z: the spikes emitted in step ``s`` (stamp ``s + 1``), 0/1.
      psi: the surrogate gradient ``psi[s]`` (NEST's ``surrogate_gradient``).
      fr: the regulariser's factor ``FR[s] = c_reg (f^ema[s] - f_target dt)``.
      flush: whether a flush event was sent in step ``s`` (no spike, silent for ``flush_event_send_interval``).
      V_m: the membrane voltage after the reset, absolute (NEST's ``V_m``).
      V_th_adapt: the threshold in use, absolute (NEST's ``V_th_adapt``).
      adaptation: the adaptation variable ``a`` (NEST's ``adaptation``).
    """

    z: jax.Array
    psi: jax.Array
    fr: jax.Array
    flush: jax.Array
    V_m: jax.Array
    V_th_adapt: jax.Array
    adaptation: jax.Array


class ReadoutState(NamedTuple):
    """The state of a population of ``eprop_readout`` neurons: ``v`` (relative to ``E_L``) and ``i``."""

    v: jax.Array
    i: jax.Array


class ReadoutInfo(NamedTuple):
    """What the readouts report for one step ``s`` (every leaf ``(n_out,)``), NEST's recordables.

    Attributes:
      V_m: the membrane voltage, absolute, not masked.
      readout_signal: ``y[s] * window[s]``.
      target_signal: ``target[s] * window[s]``.
      error_signal: ``ERR[s] = (y[s] - target[s]) * window[s]``, the error that the learning signals carry.
    """

    V_m: jax.Array
    readout_signal: jax.Array
    target_signal: jax.Array
    error_signal: jax.Array


class NestNeuron(NamedTuple):
    """A population of NEST e-prop neurons: pure functions and the constants the e-prop traces need.

    Attributes:
      model: NEST's model name.
      n: the number of neurons.
      dt: the resolution (ms).
      init: ``init(dtype) -> state`` (:class:`NeuronState` or :class:`ReadoutState`).
      step: recurrent: ``step(state, I_syn, s) -> (state, NeuronInfo)`` with ``I_syn`` the ``(n,)`` sum of the
        weights delivered in step ``s`` (an int32 scalar, used by the flush events); readout:
        ``step(state, I_syn, target, window) -> (state, ReadoutInfo)``.
      alpha: ``exp(-dt / tau_m)``: the decay of the presynaptic traces ``zbar`` of the synapses onto it.
      kappa: the decay of ``ebar`` (recurrent), or ``None``.
      kappa_reg: the decay of ``ebar_reg`` and of the rate average (recurrent), or ``None``.
      beta: ``adapt_beta`` for the adaptive models, else ``None``.
      rho: ``exp(-dt / adapt_tau)`` for the adaptive models, else ``None``.
      cutoff: ``round(eprop_isi_trace_cutoff / dt)`` (an int32 array of shape ``()`` or ``(n,)``; ``NEVER``
        for ``inf``).
      cell: ``cell(n_in, *, mask_in=None, mask_rec=None, dtype=jnp.float32) -> Cell`` (recurrent) or
        ``cell(n_in, *, mask=None, dtype=jnp.float32) -> Cell`` (readout): these neurons as an
        :class:`eproptax.Cell` of ``n_in`` inputs, for every rule of the library (:func:`_recurrent_cell`,
        docs/nest.md).
    """

    model: str
    n: int
    dt: float
    init: Any
    step: Any
    alpha: Any
    kappa: Any = None
    kappa_reg: Any = None
    beta: Any = None
    rho: Any = None
    cutoff: Any = None
    cell: Any = None


def steps_of(where: str, name: str, ms: Any, dt: float) -> np.ndarray:
    """``round(ms / dt)`` as NEST turns a duration into steps, ``NEVER`` for ``inf``; ``ms`` must be concrete."""
    if _hyper.is_traced(ms):
        raise ValueError(f"{where}: `{name}` sets a number of steps and must be concrete, got a traced value.")
    value = np.asarray(ms, np.float64)
    if not np.all(value >= 0) or np.any(np.isnan(value)):
        raise ValueError(f"{where}: `{name}` must be a duration >= 0 in ms (inf for never), got {ms!r}.")
    steps = np.where(np.isinf(value), NEVER, np.floor(np.minimum(value / dt, NEVER) + 0.5))
    return steps.astype(np.int32)


def _check_common(where: str, args: dict) -> None:
    _hyper.positive_int(where, "n", args["n"])
    for name in ("C_m", "tau_m", "dt"):
        _hyper.positive(where, name, args[name])
    for name in ("E_L", "I_e", "V_m"):
        _hyper.finite(where, name, args[name])


def _surrogate(where: str, name: str, height, width):
    _hyper.one_of(where, "surrogate_gradient_function", name, tuple(SURROGATES))
    _hyper.positive(where, "surrogate_gradient_width", width)
    _hyper.finite(where, "surrogate_gradient_height", height)
    shape = SURROGATES[name]
    return lambda d: height * shape(d / width)


def _recurrent_constants(model: str, args: dict) -> tuple:
    """The checked arguments of a recurrent model as ``(K, n_ref, cutoff, n_flush, sg, a0)``: ``K`` the constants
    of its step (cast to the state's dtype at each step), the refractory, cutoff and flush intervals in steps,
    the surrogate gradient and the initial adaptation."""
    where = model
    _check_common(where, args)
    for name in ("V_th",):
        _hyper.finite(where, name, args[name])
    for name in ("kappa", "kappa_reg"):
        _hyper.decay(where, name, args[name])
    _hyper.finite(where, "c_reg", args["c_reg"])
    _hyper.non_negative(where, "f_target", args["f_target"])
    adaptive = model.endswith("_adapt")
    delta = "psc_delta" in model
    dt = float(args["dt"])
    n_ref = jnp.asarray(steps_of(where, "t_ref", args["t_ref"], dt))
    cutoff = jnp.asarray(steps_of(where, "eprop_isi_trace_cutoff", args["eprop_isi_trace_cutoff"], dt))
    n_flush = jnp.asarray(steps_of(where, "flush_event_send_interval", args["flush_event_send_interval"], dt))
    sg = _surrogate(
        where, args["surrogate_gradient_function"], args["surrogate_gradient_height"], args["surrogate_gradient_width"]
    )
    E_L = np.asarray(args["E_L"], np.float64)
    alpha = np.exp(-dt / np.asarray(args["tau_m"], np.float64))
    K = {  # constants, cast to the state's dtype at each step
        "E_L": E_L,
        "alpha": alpha,
        "P_I": np.asarray(args["tau_m"], np.float64) / np.asarray(args["C_m"], np.float64) * (1.0 - alpha),
        "V_th": np.asarray(args["V_th"], np.float64) - E_L,
        "V_min": np.asarray(args["V_min"], np.float64) - E_L,
        "I_e": np.asarray(args["I_e"], np.float64),
        "kappa_reg": np.asarray(args["kappa_reg"], np.float64),
        "c_reg": np.asarray(args["c_reg"], np.float64),
        "f_target": np.asarray(args["f_target"], np.float64) / 1000.0 * dt,  # Hz -> per ms (NEST) -> per step
        "inv_tau_m": 1.0 / np.asarray(args["tau_m"], np.float64),
    }
    a0 = 0.0
    if adaptive:
        _hyper.finite(where, "adapt_beta", args["adapt_beta"])
        _hyper.positive(where, "adapt_tau", args["adapt_tau"])
        _hyper.finite(where, "adaptation", args["adaptation"])
        a0 = np.asarray(args["adaptation"], np.float64)
        K.update(
            beta=np.asarray(args["adapt_beta"], np.float64), rho=np.exp(-dt / np.asarray(args["adapt_tau"], np.float64))
        )
    if delta:
        _hyper.finite(where, "V_reset", args["V_reset"])
        _hyper.boolean(where, "refractory_input", args["refractory_input"])
        K["V_reset"] = np.asarray(args["V_reset"], np.float64) - E_L
    return K, n_ref, cutoff, n_flush, sg, a0


# One NEST step is integrate (everything up to the spike condition), the spike, then reset. NestNeuron.step and
# the Cell (whose state is the one between integrate and reset) call these same functions, bound to a model's
# options by _recurrent.
def _integrate_iaf(k, h, I_syn, *, adaptive):
    # eprop_iaf(_adapt): refractory counter first, integrate, adapt
    r = jnp.maximum(h.r - 1, 0)
    v = jnp.maximum(k["P_I"] * h.i + I_syn + k["alpha"] * h.v, k["V_min"])
    a, threshold = h.a, h.threshold
    if adaptive:
        a = k["rho"] * h.a + h.z
        threshold = k["V_th"] + k["beta"] * a
    i = jnp.broadcast_to(k["I_e"], v.shape)
    return h._replace(v=v, r=r, a=a, threshold=threshold, i=i)


def _reset_iaf(k, h, spike, *, n_ref):
    # the reset in the same step: subtract the base threshold
    return h._replace(v=jnp.where(spike, h.v - k["V_th"], h.v), r=jnp.where(spike, n_ref, h.r))


def _integrate_psc_delta(k, h, I_syn, *, adaptive, refractory_input, dt):
    # eprop_iaf_psc_delta(_adapt): integrate when not refractory, else hold v (and buffer the input)
    free = h.r == 0
    v_free = k["P_I"] * (h.i + k["I_e"]) + k["alpha"] * h.v + I_syn
    buf = h.buf
    if refractory_input:
        v_free = v_free + h.buf
        damping = jnp.exp(-h.r.astype(h.v.dtype) * dt * k["inv_tau_m"])
        buf = jnp.where(free, 0.0, h.buf + I_syn * damping)
    v = jnp.where(free, jnp.maximum(v_free, k["V_min"]), h.v)
    r = jnp.where(free, h.r, h.r - 1)
    a, threshold = h.a, h.threshold
    if adaptive:
        a = jnp.where(free, k["rho"] * h.a + h.z, h.a)
        threshold = jnp.where(free, k["V_th"] + k["beta"] * a, h.threshold)
    return h._replace(v=v, r=r, a=a, threshold=threshold, buf=buf, i=jnp.zeros_like(v))


def _reset_psc_delta(k, h, spike, *, n_ref):
    return h._replace(v=jnp.where(spike, k["V_reset"], h.v), r=jnp.where(spike, n_ref, h.r))


def _recurrent(model: str, args: dict) -> NestNeuron:
    """The four recurrent models; ``args`` holds the factory's arguments by name."""
    K, n_ref, cutoff, n_flush, sg, a0 = _recurrent_constants(model, args)
    adaptive, delta = model.endswith("_adapt"), "psc_delta" in model
    n, dt = args["n"], float(args["dt"])
    refractory_input = bool(delta and args["refractory_input"])
    if delta:
        integrate = functools.partial(_integrate_psc_delta, adaptive=adaptive, refractory_input=refractory_input, dt=dt)
        reset = functools.partial(_reset_psc_delta, n_ref=n_ref)
    else:
        integrate, reset = (
            functools.partial(_integrate_iaf, adaptive=adaptive),
            functools.partial(_reset_iaf, n_ref=n_ref),
        )

    def init(dtype=jnp.float64):
        k = _cast(K, dtype)
        zeros = jnp.zeros(n, dtype)
        a = jnp.broadcast_to(jnp.asarray(a0, dtype), (n,))
        threshold = jnp.broadcast_to(k["V_th"] + k["beta"] * a if adaptive else k["V_th"], (n,))
        v = jnp.broadcast_to(jnp.asarray(args["V_m"], dtype) - k["E_L"], (n,))
        r = jnp.zeros(n, jnp.int32)
        return NeuronState(v, r, zeros, zeros, a, threshold, zeros, zeros, r)

    def fires(h):
        """``(spike, psi)`` of the state between integrate and reset; psc_delta spikes also when refractory."""
        psi = jnp.where(h.r > 0, 0.0, sg(h.v - h.threshold))
        spike = h.v >= h.threshold
        return (spike if delta else spike & (h.r == 0)), psi

    def step(h, I_syn, s):
        k = _cast(K, h.v.dtype)
        h = integrate(k, h, I_syn)
        spike, psi = fires(h)
        h = reset(k, h, spike)
        z = spike.astype(h.v.dtype)
        flush = ~spike & (h.last_event > 0) & (s - h.last_event >= n_flush)
        last_event = jnp.where(spike | flush, s, h.last_event).astype(jnp.int32)
        f = k["kappa_reg"] * h.f + (1.0 - k["kappa_reg"]) * z / dt
        fr = k["c_reg"] * (f - k["f_target"])
        h = h._replace(z=z, f=f, last_event=last_event)
        adaptation = h.a
        info = NeuronInfo(z, psi, fr, flush, h.v + k["E_L"], h.threshold + k["E_L"], adaptation)
        return h, info

    def cell(n_in: int, *, mask_in=None, mask_rec=None, dtype=jnp.float32) -> Cell:
        return _recurrent_cell(
            model, n, n_in, mask_in, mask_rec, dtype, K, integrate, reset, args, delta, adaptive, refractory_input
        )

    kappa = np.asarray(args["kappa"], np.float64)
    beta, rho = (K["beta"], K["rho"]) if adaptive else (None, None)
    return NestNeuron(model, n, dt, init, step, K["alpha"], kappa, K["kappa_reg"], beta, rho, cutoff, cell)


class CellState(NamedTuple):
    """The state of a NEST neuron :class:`~eproptax.Cell` (``neuron.cell(n_in)``) after a step, every leaf ``(n,)``.

    It is NEST's state between the integration of a step and that step's reset: the rules differentiate the
    floating leaves, and ``output`` reads the spike (with NEST's surrogate gradient) from them.

    Attributes:
      v: the membrane voltage relative to ``E_L`` before the reset (the readout's: its voltage, no reset).
      a: the threshold adaptation (``*_adapt``), else ``None``.
      buf: the input buffered during refractoriness (``*_psc_delta*`` with ``refractory_input``), else ``None``.
      r: the refractory counter before the reset (int32; the readout's: ``None``).
      started: 1 after the first step, 0 in the initial state (int32): ``I_e`` reaches ``eprop_iaf``'s and the
        readout's voltage from the second step on (as in NEST), and the initial state emits no spike.
    """

    v: jax.Array
    a: Any = None
    buf: Any = None
    r: Any = None
    started: Any = None


def _never_clamps(K: dict) -> bool:
    """Whether ``V_min`` is ``-inf`` or NEST's default ``-DBL_MAX`` (the clamp ``max(v, V_min)`` never acts)."""
    return not _hyper.is_traced(K["V_min"]) and bool(np.all(np.asarray(K["V_min"]) <= -_DBL_MAX))


def _recurrent_cell(model, n, n_in, mask_in, mask_rec, dtype, K, integrate, reset, args, delta, adaptive, buffered):
    """The recurrent NEST neurons as a :class:`~eproptax.Cell`: NEST's ``integrate`` and ``reset`` of one step.

    ``dynamics(h, a)`` is NEST's reset of the previous step (the spike detached), then NEST's integration of
    ``a``; ``output(h)`` is the spike condition with NEST's surrogate gradient.
    """
    where = f"{model}.cell"
    _hyper.positive_int(where, "n_in", n_in)
    _hyper.floating_dtype(where, "dtype", dtype)
    connections = _connections(where, n_in, n, dtype, False, mask_in, mask_rec, None, None, None)
    spike = _make_spike(SURROGATES[args["surrogate_gradient_function"]])
    height, width = args["surrogate_gradient_height"], args["surrogate_gradient_width"]

    def threshold(k, h):
        return jnp.broadcast_to(k["V_th"] + k["beta"] * h.a if adaptive else k["V_th"], h.v.shape)

    def output(h):
        k = _cast(K, h.v.dtype)
        z = spike(h.v - threshold(k, h), height, width)  # (v >= threshold), derivative sg(v - threshold)
        # NEST: psi = 0 while refractory; eprop_iaf cannot spike then, eprop_iaf_psc_delta can (without psi)
        z = jnp.where(h.r == 0, z, jax.lax.stop_gradient(z) if delta else 0.0)
        return jnp.where(h.started > 0, z, 0.0)  # the initial state emits nothing (NEST's z = 0)

    def dynamics(h, a):
        k = _cast(K, h.v.dtype)
        z = output(h)
        zeros = jnp.zeros_like(h.v)
        i = jnp.where(h.started > 0, k["I_e"], 0.0) if not delta else zeros  # NEST's i after a step
        nest_h = NeuronState(
            v=h.v,
            r=h.r,
            i=jnp.broadcast_to(i, h.v.shape),
            f=zeros,
            a=h.a if adaptive else zeros,
            threshold=threshold(k, h),
            z=z,  # read by the adaptation: its derivative is the implicit recurrence
            buf=h.buf if buffered else zeros,
            last_event=h.r,
        )
        nest_h = integrate(k, reset(k, nest_h, jax.lax.stop_gradient(z) > 0), a[:, 0])
        return CellState(
            v=nest_h.v.astype(h.v.dtype),
            a=nest_h.a.astype(h.v.dtype) if adaptive else None,
            buf=nest_h.buf.astype(h.v.dtype) if buffered else None,
            r=nest_h.r.astype(jnp.int32),
            started=jnp.ones_like(h.started),
        )

    def init_carry(params):
        dt_ = params["w_in"].dtype
        k = _cast(K, dt_)
        v0 = jnp.broadcast_to(jnp.asarray(args["V_m"], dt_) - k["E_L"], (n,))
        a0 = jnp.broadcast_to(jnp.asarray(args["adaptation"], dt_), (n,)) if adaptive else None
        zi = jnp.zeros(n, jnp.int32)
        return CellState(v0, a0, jnp.zeros(n, dt_) if buffered else None, zi, zi)

    leak = None
    if not delta and _never_clamps(K):  # eprop_iaf(_adapt): v = alpha v_prev + a (+ P_I I_e), the reset detached
        pair = (jnp.asarray(K["alpha"], dtype), jnp.asarray(1.0, dtype))
        leak = (pair, None) if adaptive else pair
    return make_cell(
        n_in=n_in, n_out=n, init_carry=init_carry, **connections, dynamics=dynamics, output=output, leak=leak
    )


def _readout_cell(n, n_in, mask, dtype, K, integrate):
    """``eprop_readout`` as a :class:`~eproptax.Cell`: ``V <- max(P_I i + a + kappa V, V_min)``, output ``V + E_L``."""
    where = "eprop_readout.cell"
    _hyper.positive_int(where, "n_in", n_in)
    _hyper.floating_dtype(where, "dtype", dtype)
    check_mask(where, "mask", mask, (n, n_in))
    init = _readout_init(n_in, n, False, dtype)
    if mask is not None:
        mask = (jnp.asarray if _hyper.is_traced(mask) else np.asarray)(mask, bool)
        init = lambda key, _init=init: {"w_out": constrain(_init(key)["w_out"], mask)}

    def synapse(params, x, z_prev):
        return _readout_synapse({"w_out": constrain(params["w_out"], mask)}, x, z_prev)

    def dynamics(h, a):
        k = _cast(K, h.v.dtype)
        i = jnp.broadcast_to(jnp.where(h.started > 0, k["I_e"], 0.0), h.v.shape)
        v = integrate(k, ReadoutState(h.v, i), a[:, 0]).v
        return CellState(v=v.astype(h.v.dtype), started=jnp.ones_like(h.started))

    def init_carry(params):
        k = _cast(K, params["w_out"].dtype)
        return CellState(v=jnp.broadcast_to(k["V_m"], (n,)), started=jnp.zeros(n, jnp.int32))

    def output(h):
        return h.v + _cast(K, h.v.dtype)["E_L"]

    leak = (jnp.asarray(K["kappa"], dtype), jnp.asarray(1.0, dtype)) if _never_clamps(K) else None
    return make_cell(
        n_in=n_in,
        n_out=n,
        init=init,
        init_carry=init_carry,
        synapse=synapse,
        dynamics=dynamics,
        output=output,
        leak=leak,
    )


def _cast(constants: dict, dtype) -> dict:
    """The constants as arrays of ``dtype`` (so a float32 state stays float32, also under strict promotion)."""
    info = jnp.finfo(dtype)  # V_min's default -DBL_MAX becomes float32's lowest, not -inf with a warning
    return {name: jnp.asarray(np.clip(value, info.min, info.max), dtype) for name, value in constants.items()}


_INF = float("inf")
_DBL_MAX = float(np.finfo(np.float64).max)


def eprop_iaf(
    n: int,
    *,
    dt=1.0,
    C_m=250.0,
    E_L=-70.0,
    I_e=0.0,
    V_m=-70.0,
    V_min=-_DBL_MAX,
    V_th=-55.0,
    t_ref=2.0,
    tau_m=10.0,
    c_reg=0.0,
    f_target=10.0,
    kappa=0.97,
    kappa_reg=0.97,
    surrogate_gradient_function="piecewise_linear",
    surrogate_gradient_height=0.3,
    surrogate_gradient_width=1.0,
    eprop_isi_trace_cutoff=_INF,
    flush_event_send_interval=_INF,
) -> NestNeuron:
    """``n`` neurons of NEST 3.10's ``eprop_iaf``, with its parameter names, units and defaults.

    One step ``s`` (voltages relative to ``E_L``; ``alpha = exp(-dt/tau_m)``, ``P_I = tau_m/C_m (1 - alpha)``)::

      r <- max(r - 1, 0)
      v <- max(P_I i + I_syn[s] + alpha v, V_min)        (every spike adds its full weight: no zeta)
      psi[s] <- 0 if r > 0 else sg(v - V_th)             (before the reset)
      if v >= V_th and r == 0:  z[s] = 1,  v <- v - V_th,  r <- round(t_ref/dt)   (reset in the same step)
      f <- kappa_reg f + (1 - kappa_reg) z[s]/dt;  FR[s] = c_reg (f - f_target dt)
      i <- I_e

    A flush event is sent in a step without a spike when the neuron has spiked before and its last spike or
    flush event is ``round(flush_event_send_interval/dt)`` steps back. ``sg`` is NEST's
    ``surrogate_gradient_function`` (``piecewise_linear``, ``exponential``, ``fast_sigmoid_derivative``,
    ``arctan_derivative``: SPEC.md's table, NEST's arctan without the documented pi factors).

    Args:
      n: the number of neurons. Every other argument is NEST's parameter of the same name and unit (scalars or
        ``(n,)`` arrays): ``f_target`` in Hz as ``Create`` takes it; ``t_ref``, ``eprop_isi_trace_cutoff`` and
        ``flush_event_send_interval`` in ms, rounded to steps of ``dt`` (they must be concrete; ``inf`` is
        never). ``dt`` is the kernel's resolution in ms.

    Returns:
      A :class:`NestNeuron`. Its cost is O(n) per step. ``.cell(n_in, *, mask_in=None, mask_rec=None,
      dtype=jnp.float32)`` gives the same neurons as a library :class:`~eproptax.Cell` (params ``w_in``
      ``(n, n_in)`` and ``w_rec`` ``(n, n)``, no autapses; carry :class:`CellState`) for every rule
      (``ep.bptt``, ``ep.rtrl``, ``ep.eprop``, ...): NEST's dynamics and surrogate gradient, the reset's
      spike detached; NEST's online learning (its traces, learning-signal timing, regulariser, cutoff and
      optimizers) stays in :func:`~eproptax.nest.online_eprop` (docs/nest.md).
    """
    return _recurrent("eprop_iaf", locals())


def eprop_iaf_adapt(
    n: int,
    *,
    dt=1.0,
    C_m=250.0,
    E_L=-70.0,
    I_e=0.0,
    V_m=-70.0,
    V_min=-_DBL_MAX,
    V_th=-55.0,
    t_ref=2.0,
    tau_m=10.0,
    adapt_beta=1.0,
    adapt_tau=10.0,
    adaptation=0.0,
    c_reg=0.0,
    f_target=10.0,
    kappa=0.97,
    kappa_reg=0.97,
    surrogate_gradient_function="piecewise_linear",
    surrogate_gradient_height=0.3,
    surrogate_gradient_width=1.0,
    eprop_isi_trace_cutoff=_INF,
    flush_event_send_interval=_INF,
) -> NestNeuron:
    """``n`` neurons of NEST 3.10's ``eprop_iaf_adapt``: :func:`eprop_iaf` with an adaptive threshold.

    After the integration, ``a <- rho a + z[s-1]`` (``rho = exp(-dt/adapt_tau)``, no ``1 - rho`` factor) and
    ``A = V_th + adapt_beta a``; ``A`` replaces ``V_th`` in ``sg`` and in the spike condition, while the reset
    still subtracts the base ``V_th``. The e-prop trace gains Bellec's adaptation term
    (``e = psi (zbar - beta epsilon)``). Arguments as :func:`eprop_iaf`, plus ``adapt_beta``, ``adapt_tau`` (ms)
    and ``adaptation`` (the initial ``a``).
    """
    return _recurrent("eprop_iaf_adapt", locals())


def eprop_iaf_psc_delta(
    n: int,
    *,
    dt=1.0,
    C_m=250.0,
    E_L=-70.0,
    I_e=0.0,
    V_m=-70.0,
    V_min=-_DBL_MAX,
    V_th=-55.0,
    V_reset=-70.0,
    refractory_input=False,
    t_ref=2.0,
    tau_m=10.0,
    c_reg=0.0,
    f_target=10.0,
    kappa=0.97,
    kappa_reg=0.97,
    surrogate_gradient_function="piecewise_linear",
    surrogate_gradient_height=0.3,
    surrogate_gradient_width=1.0,
    eprop_isi_trace_cutoff=_INF,
    flush_event_send_interval=_INF,
) -> NestNeuron:
    """``n`` neurons of NEST 3.10's ``eprop_iaf_psc_delta``: a reset to ``V_reset`` and a clamped refractory time.

    One step: if not refractory, ``v <- max(P_I (i + I_e) + alpha v + I_syn[s] (+ buffered input), V_min)``;
    else ``v`` is held, the input is buffered with weight ``exp(-r dt/tau_m)`` when ``refractory_input`` (else
    lost) and ``r <- r - 1``. Then ``psi[s] = 0 if r > 0 else sg(v - V_th)``, and ``v >= V_th`` spikes (no
    refractory condition), sets ``v <- V_reset`` and ``r <- round(t_ref/dt)``. ``I_e`` acts from step 0 on.
    Arguments as :func:`eprop_iaf`, plus ``V_reset`` (mV, absolute) and ``refractory_input`` (a bool).
    """
    return _recurrent("eprop_iaf_psc_delta", locals())


def eprop_iaf_psc_delta_adapt(
    n: int,
    *,
    dt=1.0,
    C_m=250.0,
    E_L=-70.0,
    I_e=0.0,
    V_m=-70.0,
    V_min=-_DBL_MAX,
    V_th=-55.0,
    V_reset=-70.0,
    refractory_input=False,
    t_ref=2.0,
    tau_m=10.0,
    adapt_beta=1.0,
    adapt_tau=10.0,
    adaptation=0.0,
    c_reg=0.0,
    f_target=10.0,
    kappa=0.97,
    kappa_reg=0.97,
    surrogate_gradient_function="piecewise_linear",
    surrogate_gradient_height=0.3,
    surrogate_gradient_width=1.0,
    eprop_isi_trace_cutoff=_INF,
    flush_event_send_interval=_INF,
) -> NestNeuron:
    """``n`` neurons of NEST 3.10's ``eprop_iaf_psc_delta_adapt``: :func:`eprop_iaf_psc_delta` with adaptation.

    In non-refractory steps only, ``a <- rho a + z_prev`` and ``A = V_th + adapt_beta a``; ``z_prev`` is 0 after
    every step without a spike. With ``t_ref >= dt`` the step after a spike is refractory, so (as in NEST) a
    spike never reaches ``a``. Arguments as :func:`eprop_iaf_psc_delta`, plus ``adapt_beta``, ``adapt_tau`` and
    ``adaptation``.
    """
    return _recurrent("eprop_iaf_psc_delta_adapt", locals())


def eprop_readout(
    n: int,
    *,
    dt=1.0,
    C_m=250.0,
    E_L=0.0,
    I_e=0.0,
    V_m=0.0,
    V_min=-_DBL_MAX,
    tau_m=10.0,
    eprop_isi_trace_cutoff=_INF,
) -> NestNeuron:
    """``n`` readout neurons of NEST 3.10's ``eprop_readout`` (mean-squared error, the only loss it has).

    One step ``s`` (``kappa_out = exp(-dt/tau_m)``, ``P_I = tau_m/C_m (1 - kappa_out)``)::

      V <- max(P_I i + I_syn[s] + kappa_out V, V_min);   y = V + E_L
      ERR[s] = (y - target[s]) window[s];   i <- I_e

    ``target[s]`` and ``window[s]`` are the values of NEST's target and learning-window ``step_rate_generator``s
    in force in step ``s`` (an amplitude at time ``T`` ms acts from step ``T/dt`` on; 0 in step 0). NEST's
    "classification" is this MSE on one-hot targets inside a window. ``eprop_isi_trace_cutoff`` (ms) bounds the
    integration of the synapses onto the readout.

    Returns:
      A :class:`NestNeuron` whose ``step(state, I_syn, target, window)`` returns :class:`ReadoutInfo`.
      ``.cell(n_in, *, mask=None, dtype=jnp.float32)`` gives a library :class:`~eproptax.Cell` (params
      ``w_out`` ``(n, n_in)``, output ``V + E_L``, the top of an ``ep.cells.stack``, where it integrates the
      spikes of the same step: NEST's readout integrates the previous step's).
    """
    where = "eprop_readout"
    args = locals()
    _check_common(where, args)
    dt = float(dt)
    cutoff = jnp.asarray(steps_of(where, "eprop_isi_trace_cutoff", eprop_isi_trace_cutoff, dt))
    kappa_out = np.exp(-dt / np.asarray(tau_m, np.float64))
    K = {
        "kappa": kappa_out,
        "P_I": np.asarray(tau_m, np.float64) / np.asarray(C_m, np.float64) * (1.0 - kappa_out),
        "E_L": np.asarray(E_L, np.float64),
        "V_min": np.asarray(V_min, np.float64) - np.asarray(E_L, np.float64),
        "I_e": np.asarray(I_e, np.float64),
        "V_m": np.asarray(V_m, np.float64) - np.asarray(E_L, np.float64),
    }

    def init(dtype=jnp.float64):
        k = _cast(K, dtype)
        return ReadoutState(jnp.broadcast_to(k["V_m"], (n,)), jnp.zeros(n, dtype))

    def integrate(k, h, I_syn):  # the readout's step, shared by NestNeuron.step and the Cell
        v = jnp.maximum(k["P_I"] * h.i + I_syn + k["kappa"] * h.v, k["V_min"])
        return ReadoutState(v, jnp.broadcast_to(k["I_e"], v.shape))

    def step(h, I_syn, target, window):
        k = _cast(K, h.v.dtype)
        h = integrate(k, h, I_syn)
        y = h.v + k["E_L"]
        err = (y - target) * window
        info = ReadoutInfo(y, y * window, target * window, err)
        return h, info

    def cell(n_in: int, *, mask=None, dtype=jnp.float32) -> Cell:
        return _readout_cell(n, n_in, mask, dtype, K, integrate)

    return NestNeuron(where, n, dt, init, step, kappa_out, cutoff=cutoff, cell=cell)

"""NEST 3.10's current e-prop neurons (``eprop_iaf``, ``eprop_iaf_adapt``, ``eprop_iaf_psc_delta(_adapt)``,
``eprop_readout``): one update step each, as NEST's ``update`` computes it.

Each factory takes NEST's parameter names and units (``Create``'s dictionary: absolute mV, ms, pF, pA and
``f_target`` in Hz) and returns a :class:`NestNeuron`, a NamedTuple of pure functions over an explicit state.
The learner of :func:`eproptax.nest.online_eprop` drives them; they are also usable on their own (a network
simulation without learning). Voltages inside the state are relative to ``E_L``, as in NEST.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _hyper
from ..cells._surrogate import _SHAPES

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


def _recurrent(model: str, args: dict) -> NestNeuron:
    """The four recurrent models; ``args`` holds the factory's arguments by name."""
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
    n, dt = args["n"], float(args["dt"])
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
    beta = rho = None
    a0 = 0.0
    if adaptive:
        _hyper.finite(where, "adapt_beta", args["adapt_beta"])
        _hyper.positive(where, "adapt_tau", args["adapt_tau"])
        _hyper.finite(where, "adaptation", args["adaptation"])
        beta = np.asarray(args["adapt_beta"], np.float64)
        rho = np.exp(-dt / np.asarray(args["adapt_tau"], np.float64))
        a0 = np.asarray(args["adaptation"], np.float64)
        K.update(beta=beta, rho=rho)
    refractory_input = False
    if delta:
        _hyper.finite(where, "V_reset", args["V_reset"])
        _hyper.boolean(where, "refractory_input", args["refractory_input"])
        K["V_reset"] = np.asarray(args["V_reset"], np.float64) - E_L
        refractory_input = args["refractory_input"]

    def init(dtype=jnp.float64):
        k = _cast(K, dtype)
        zeros = jnp.zeros(n, dtype)
        a = jnp.broadcast_to(jnp.asarray(a0, dtype), (n,))
        threshold = jnp.broadcast_to(k["V_th"] + k["beta"] * a if adaptive else k["V_th"], (n,))
        v = jnp.broadcast_to(jnp.asarray(args["V_m"], dtype) - k["E_L"], (n,))
        r = jnp.zeros(n, jnp.int32)
        return NeuronState(v, r, zeros, zeros, a, threshold, zeros, zeros, r)

    def iaf(k, h, I_syn):
        # eprop_iaf(_adapt): refractory counter first, integrate, adapt, spike, reset in the same step
        r = jnp.maximum(h.r - 1, 0)
        v = jnp.maximum(k["P_I"] * h.i + I_syn + k["alpha"] * h.v, k["V_min"])
        a, threshold = h.a, h.threshold
        if adaptive:
            a = k["rho"] * h.a + h.z
            threshold = k["V_th"] + k["beta"] * a
        psi = jnp.where(r > 0, 0.0, sg(v - threshold))
        spike = (v >= threshold) & (r == 0)
        v = jnp.where(spike, v - k["V_th"], v)
        r = jnp.where(spike, n_ref, r)
        i = jnp.broadcast_to(k["I_e"], v.shape)
        return h._replace(v=v, r=r, a=a, threshold=threshold, i=i), spike, psi

    def iaf_psc_delta(k, h, I_syn):
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
        psi = jnp.where(r > 0, 0.0, sg(v - threshold))
        spike = v >= threshold
        v = jnp.where(spike, k["V_reset"], v)
        r = jnp.where(spike, n_ref, r)
        return h._replace(v=v, r=r, a=a, threshold=threshold, buf=buf, i=jnp.zeros_like(v)), spike, psi

    update = iaf_psc_delta if delta else iaf

    def step(h, I_syn, s):
        k = _cast(K, h.v.dtype)
        h, spike, psi = update(k, h, I_syn)
        z = spike.astype(h.v.dtype)
        flush = ~spike & (h.last_event > 0) & (s - h.last_event >= n_flush)
        last_event = jnp.where(spike | flush, s, h.last_event).astype(jnp.int32)
        f = k["kappa_reg"] * h.f + (1.0 - k["kappa_reg"]) * z / dt
        fr = k["c_reg"] * (f - k["f_target"])
        h = h._replace(z=z, f=f, last_event=last_event)
        adaptation = h.a
        info = NeuronInfo(z, psi, fr, flush, h.v + k["E_L"], h.threshold + k["E_L"], adaptation)
        return h, info

    return NestNeuron(
        model, n, dt, init, step, alpha, np.asarray(args["kappa"], np.float64), K["kappa_reg"], beta, rho, cutoff
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
      A :class:`NestNeuron`. Its cost is O(n) per step.
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

    def step(h, I_syn, target, window):
        k = _cast(K, h.v.dtype)
        v = jnp.maximum(k["P_I"] * h.i + I_syn + k["kappa"] * h.v, k["V_min"])
        y = v + k["E_L"]
        err = (y - target) * window
        info = ReadoutInfo(y, y * window, target * window, err)
        return ReadoutState(v, jnp.broadcast_to(k["I_e"], v.shape)), info

    return NestNeuron(where, n, dt, init, step, kappa_out, cutoff=cutoff)

"""Non-spiking recurrent cells: tanh RNN, LSTM and GRU, with flax's parameter trees, and a leaky rate RNN.

Parameters use flax's names and layouts (``{"ii": {"kernel": (n_in, n)}, "hi": {"kernel", "bias"}, ...}``,
inputs multiply kernels from the left), so a flax ``SimpleCell``, ``LSTMCell`` or ``GRUCell`` parameter
tree maps one to one. The leaky RNN (Murray 2019's network) keeps the post x pre matrices of the spiking
cells (``w_in (n, n_in)``, ``w_rec (n, n)``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _hyper
from .._cell import Cell, make_cell
from ._connectivity import check_dale, check_mask, constrain, fan_in


class RNNState(NamedTuple):
    """State of a tanh RNN layer: ``h``, shape ``(n,)``."""

    h: jax.Array


class LSTMState(NamedTuple):
    """State of an LSTM layer: the cell ``c`` and the output ``h``, each of shape ``(n,)``."""

    c: jax.Array
    h: jax.Array


class GRUState(NamedTuple):
    """State of a GRU layer: ``h``, shape ``(n,)``."""

    h: jax.Array


class LeakyRNNState(NamedTuple):
    """State of a leaky RNN layer: ``h``, its leaky variable (the current, or the rate with
    ``form="rate"``), shape ``(n,)``."""

    h: jax.Array


def _check_sizes(where, n_in, n_rec, dtype):
    """``n_in`` and ``n_rec`` positive ints, ``dtype`` a floating dtype (a ``ValueError`` names the argument)."""
    _hyper.positive_int(where, "n_in", n_in)
    _hyper.positive_int(where, "n_rec", n_rec)
    _hyper.floating_dtype(where, "dtype", dtype)


def _dense_init(names_with_bias, n_in, n_rec, dtype):
    """Draws ``{name: {"kernel", "bias"?}}``; names starting with ``i`` read the inputs, ``h`` the state."""

    def init(key):
        keys = jax.random.split(key, len(names_with_bias))
        params = {}
        for k, (name, bias) in zip(keys, names_with_bias.items()):
            fan_in = n_in if name[0] == "i" else n_rec
            entry = {"kernel": jax.random.normal(k, (fan_in, n_rec), dtype) / jnp.sqrt(fan_in).astype(dtype)}
            if bias:
                entry["bias"] = jnp.zeros(n_rec, dtype)
            params[name] = entry
        return params

    return init


def _dense(params, name, v, kernel=None):
    """``v @ kernel + bias`` of the entry ``name`` (``kernel``: the entry's own, or a constrained one)."""
    out = v @ (params[name]["kernel"] if kernel is None else kernel)
    return out + params[name]["bias"] if "bias" in params[name] else out


def _dense_group(params, names, v):
    """``[_dense(params, name, v) for name in names]`` as one product with the kernels side by side: one
    ``dot`` where separate ones cost a launch each (at batch 1, more than their arithmetic)."""
    kernel = jnp.concatenate([params[name]["kernel"] for name in names], axis=1)
    out = v @ kernel
    zeros = jnp.zeros(params[names[0]]["kernel"].shape[1], out.dtype)
    bias = jnp.concatenate([params[name]["bias"] if "bias" in params[name] else zeros for name in names])
    return (out + bias).reshape(len(names), -1)


def _state_carry(state_type, n_fields, n_rec, leaf):
    return lambda params: state_type(*[jnp.zeros(n_rec, params[leaf]["kernel"].dtype)] * n_fields)


def rnn(n_in: int, n_rec: int, *, mask_in=None, mask_rec=None, dale=None, dtype=jnp.float32) -> Cell:
    """An Elman tanh RNN layer (flax ``SimpleCell``): ``h^t = tanh(x^t W_i + b_i + h^{t-1} W_h)``.

    Params ``{"i": {"kernel", "bias"}, "h": {"kernel"}}`` (flax's tree); one gate (``k = 1``), no implicit
    recurrence. ``n_in`` and ``n_rec`` are positive ints, ``dtype`` a floating dtype (checked when built).

    Connectivity, as for :func:`lif` but in flax's ``(pre, post)`` orientation: ``mask_in`` ``(n_in, n_rec)``
    and ``mask_rec`` ``(n_rec, n_rec)`` boolean masks of the kernels (transpose what :func:`fan_in_mask`
    draws), and ``dale``, one sign per presynaptic neuron: the recurrent kernel used is ``dale[:, None] *
    |W_h|``, and ``params["h"]["kernel"]`` holds the magnitudes. Masked-out weights get exactly zero gradient.
    """
    _check_sizes("rnn", n_in, n_rec, dtype)
    check_mask("rnn", "mask_in", mask_in, (n_in, n_rec))
    check_mask("rnn", "mask_rec", mask_rec, (n_rec, n_rec))
    check_dale("rnn", dale, n_rec)
    dense_init = _dense_init({"i": True, "h": False}, n_in, n_rec, dtype)

    def init(key):
        params = dense_init(key)
        w_in, w_rec = params["i"]["kernel"], params["h"]["kernel"]
        w_in = w_in * jnp.sqrt(n_in / fan_in(mask_in, n_in, pre_axis=0)).astype(dtype)
        w_rec = w_rec * jnp.sqrt(n_rec / fan_in(mask_rec, n_rec, pre_axis=0)).astype(dtype)
        w_rec = w_rec if dale is None else jnp.abs(w_rec)  # magnitudes: the kernel used is dale * |W_h|
        i, h = (
            {**params["i"], "kernel": constrain(w_in, mask_in)},
            {**params["h"], "kernel": constrain(w_rec, mask_rec)},
        )
        return {"i": i, "h": h}

    def synapse(params, x, z_prev):
        w_in = constrain(params["i"]["kernel"], mask_in)
        w_rec = constrain(params["h"]["kernel"], mask_rec, dale, pre_axis=0)
        return (_dense(params, "i", x, w_in) + _dense(params, "h", z_prev, w_rec))[:, None]

    return make_cell(
        n_in=n_in,
        n_out=n_rec,
        init=init,
        init_carry=_state_carry(RNNState, 1, n_rec, "i"),
        synapse=synapse,
        dynamics=lambda h, a: RNNState(jnp.tanh(a[:, 0]).astype(h.h.dtype)),
        output=lambda h: h.h,
    )


def lstm(n_in: int, n_rec: int, *, dtype=jnp.float32) -> Cell:
    """A standard LSTM layer (flax ``LSTMCell``), output ``h = o * tanh(c)``::

      i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o),  a_* = x W_i* + h^{t-1} W_h* + b_h*
      c^t = f c^{t-1} + i g,   h^t = o tanh(c^t)

    Params ``{"ii", "if", "ig", "io": {"kernel"}, "hi", "hf", "hg", "ho": {"kernel", "bias"}}``; four gates,
    state ``(c, h)``: the implicit recurrence is ``c^{t-1} -> c^t``, the explicit one ``h^{t-1} -> a``.
    ``n_in``, ``n_rec`` and ``dtype`` as in :func:`rnn`, checked when the cell is built.
    """
    _check_sizes("lstm", n_in, n_rec, dtype)
    gates = "ifgo"

    def synapse(params, x, z_prev):
        return (
            _dense_group(params, tuple("i" + g for g in gates), x)
            + _dense_group(params, tuple("h" + g for g in gates), z_prev)
        ).T

    def dynamics(h, a):
        i, f, g, o = jax.nn.sigmoid(a[:, 0]), jax.nn.sigmoid(a[:, 1]), jnp.tanh(a[:, 2]), jax.nn.sigmoid(a[:, 3])
        c = f * h.c + i * g
        return LSTMState(c.astype(h.c.dtype), (o * jnp.tanh(c)).astype(h.h.dtype))

    init = _dense_init({**{"i" + g: False for g in gates}, **{"h" + g: True for g in gates}}, n_in, n_rec, dtype)
    return make_cell(
        n_in=n_in,
        n_out=n_rec,
        init=init,
        init_carry=_state_carry(LSTMState, 2, n_rec, "hi"),
        synapse=synapse,
        dynamics=dynamics,
        output=lambda h: h.h,
    )


def gru(n_in: int, n_rec: int, *, dtype=jnp.float32) -> Cell:
    """The reset-after GRU of flax's ``GRUCell``::

      r = sigmoid(x W_ir + b_ir + h W_hr),   u = sigmoid(x W_iz + b_iz + h W_hz)
      n = tanh(x W_in + b_in + r * (h W_hn + b_hn)),   h^t = (1 - u) n + u h^{t-1}

    Params ``{"ir", "iz", "in": {"kernel", "bias"}, "hr", "hz": {"kernel"}, "hn": {"kernel", "bias"}}``.
    The synaptic vector has four entries per neuron: the two gates, and the input and recurrent parts of
    the candidate kept apart (``r`` multiplies only the recurrent part).
    ``n_in``, ``n_rec`` and ``dtype`` as in :func:`rnn`, checked when the cell is built.
    """
    _check_sizes("gru", n_in, n_rec, dtype)

    def synapse(params, x, z_prev):
        xr, xz, xn = _dense_group(params, ("ir", "iz", "in"), x)
        hr, hz, hn = _dense_group(params, ("hr", "hz", "hn"), z_prev)
        return jnp.stack([xr + hr, xz + hz, xn, hn], -1)

    def dynamics(h, a):
        r, u = jax.nn.sigmoid(a[:, 0]), jax.nn.sigmoid(a[:, 1])
        n = jnp.tanh(a[:, 2] + r * a[:, 3])
        return GRUState(((1.0 - u) * n + u * h.h).astype(h.h.dtype))

    init = _dense_init({"ir": True, "iz": True, "in": True, "hr": False, "hz": False, "hn": True}, n_in, n_rec, dtype)
    return make_cell(
        n_in=n_in,
        n_out=n_rec,
        init=init,
        init_carry=_state_carry(GRUState, 1, n_rec, "hr"),
        synapse=synapse,
        dynamics=dynamics,
        output=lambda h: h.h,
    )


_LEAKY_RNN_FORMS = ("current", "rate")


def _check_leaky_rnn(where, n_in, n_rec, tau, dt, activation, form, bias, dtype):
    """The hyperparameters of :func:`leaky_rnn`: sizes and dtype as :func:`rnn`'s, ``tau`` and ``dt`` finite and
    ``> 0`` with ``dt <= tau`` (so ``alpha = dt / tau`` lies in ``(0, 1]``; a traced value skips the comparison),
    ``activation`` a callable, ``form`` a name, ``bias`` a bool."""
    _check_sizes(where, n_in, n_rec, dtype)
    _hyper.positive(where, "tau", tau)
    _hyper.positive(where, "dt", dt)
    if not (_hyper.is_traced(tau) or _hyper.is_traced(dt)):
        try:
            tau_a, dt_a = np.asarray(tau, np.float64), np.asarray(dt, np.float64)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            tau_a = dt_a = None  # an array holding tracers: not checked
        if tau_a is not None and np.any(dt_a > tau_a):
            bad = dt_a > tau_a
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            at = f" at index {index}" if index else ""
            dt_v, tau_v = (np.broadcast_to(v, bad.shape)[index].item() for v in (dt_a, tau_a))
            got = f"dt={dt_v!r} and tau={tau_v!r}"
            raise ValueError(f"{where}: `dt` must be <= `tau` (alpha = dt / tau in (0, 1]), got {got}{at}.")
    if not callable(activation):
        raise ValueError(
            f"{where}: `activation` must be an entry-wise callable (jnp.tanh, jax.nn.relu, ...), got {activation!r}."
        )
    _hyper.one_of(where, "form", form, _LEAKY_RNN_FORMS)
    _hyper.boolean(where, "bias", bias)


def _leaky_rnn_init(n_in, n_rec, bias, dtype):
    def init(key):
        k_in, k_rec = jax.random.split(key)
        params = {
            "w_in": jax.random.normal(k_in, (n_rec, n_in), dtype) / jnp.sqrt(n_in).astype(dtype),
            "w_rec": jax.random.normal(k_rec, (n_rec, n_rec), dtype) / jnp.sqrt(n_rec).astype(dtype),
        }
        if bias:
            params["b"] = jnp.zeros(n_rec, dtype)
        return params

    return init


def leaky_rnn(
    n_in: int,
    n_rec: int,
    *,
    tau=10.0,
    dt=1.0,
    activation=jnp.tanh,
    form: str = "current",
    bias: bool = True,
    dtype=jnp.float32,
) -> Cell:
    """A leaky rate RNN layer (the network of Murray 2019's RFLO), with ``alpha = dt / tau`` in ``(0, 1]``.

    ``form="current"`` (the default) leaks the synaptic current and reads it through ``phi = activation``::

      h_j^t = (1 - alpha) h_j^{t-1} + alpha (sum_k w_in[j, k] x_k^t + sum_i w_rec[j, i] z_i^{t-1} + b_j)
      z_j^t = phi(h_j^t)

    and declares ``leak = (1 - alpha, alpha)``, so e-prop keeps the factorised trace ``zbar``.
    ``form="rate"`` leaks the rate itself, as Murray 2019 writes the network (``z = h``, no ``leak``)::

      h_j^t = (1 - alpha) h_j^{t-1} + alpha phi(sum_k w_in[j, k] x_k^t + sum_i w_rec[j, i] h_i^{t-1} + b_j)

    RFLO (Murray 2019) is ``ep.eprop`` with ``feedback=ep.random_feedback(...)`` on ``form="rate"`` under a
    stateless :func:`~eproptax.cells.readout`: e-prop's trace for it is Murray's
    ``p_ji^t = (1 - alpha) p_ji^{t-1} + alpha phi'(u_j^t) z_i^{t-1}``. With ``alpha = 1`` (``tau == dt``)
    either form is the Elman RNN :func:`rnn` (``w_in = i.kernel.T``, ``w_rec = h.kernel.T``, ``b = i.bias``).

    The hyperparameters are checked when the cell is built (a ``ValueError`` names the argument, the range
    and the value); a traced value is not checked, and a concrete array is checked in every entry.

    Args:
      n_in: number of inputs, a positive int.
      n_rec: number of neurons, a positive int.
      tau: time constant (same unit as ``dt``), finite, ``> 0`` and ``>= dt``; a scalar or one per neuron.
      dt: time step, finite, ``> 0`` and ``<= tau``.
      activation: the entry-wise nonlinearity ``phi`` (a callable, ``jnp.tanh`` by default).
      form: ``"current"`` (leak before ``phi``) or ``"rate"`` (leak after ``phi``, Murray 2019's form).
      bias: whether the layer has a bias ``b`` (a bool).
      dtype: floating dtype of the parameters that ``init`` draws.

    Returns:
      A neuron :class:`Cell` with params ``{"w_in": (n_rec, n_in), "w_rec": (n_rec, n_rec)}`` (post x pre)
      plus ``"b": (n_rec,)`` if ``bias``, carry :class:`LeakyRNNState`, one gate (``k = 1``).

    References:
      Murray. "Local online learning in recurrent networks with random feedback", eLife 8, e43299 (2019).
    """
    _check_leaky_rnn("leaky_rnn", n_in, n_rec, tau, dt, activation, form, bias, dtype)
    alpha = dt / jnp.asarray(tau)

    def synapse(params, x, z_prev):
        a = params["w_in"] @ x + params["w_rec"] @ z_prev
        return (a + params["b"] if "b" in params else a)[:, None]

    if form == "current":
        dynamics = lambda h, a: LeakyRNNState(((1.0 - alpha) * h.h + alpha * a[:, 0]).astype(h.h.dtype))
        output, leak = lambda h: activation(h.h), (1.0 - alpha, alpha)
    else:
        dynamics = lambda h, a: LeakyRNNState(((1.0 - alpha) * h.h + alpha * activation(a[:, 0])).astype(h.h.dtype))
        output, leak = lambda h: h.h, None

    return make_cell(
        n_in=n_in,
        n_out=n_rec,
        init=_leaky_rnn_init(n_in, n_rec, bias, dtype),
        init_carry=lambda params: LeakyRNNState(jnp.zeros(n_rec, params["w_in"].dtype)),
        synapse=synapse,
        dynamics=dynamics,
        output=output,
        leak=leak,
    )

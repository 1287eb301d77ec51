"""Readouts: a leaky integrator (e-prop's and NEST's) and a stateless linear map."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import _hyper
from .._cell import Cell, make_cell


class ReadoutState(NamedTuple):
    """State of a readout layer: ``y``, its current outputs, shape ``(n_out,)``."""

    y: jax.Array


def _check_readout(where, n_in, n_out, bias, dtype):
    """``n_in`` and ``n_out`` positive ints, ``bias`` a bool, ``dtype`` a floating dtype."""
    _hyper.positive_int(where, "n_in", n_in)
    _hyper.positive_int(where, "n_out", n_out)
    _hyper.boolean(where, "bias", bias)
    _hyper.floating_dtype(where, "dtype", dtype)


def _readout_init(n_in, n_out, bias, dtype):
    def init(key):
        params = {"w_out": jax.random.normal(key, (n_out, n_in), dtype) / jnp.sqrt(n_in).astype(dtype)}
        if bias:
            params["b_out"] = jnp.zeros(n_out, dtype)
        return params

    return init


def _readout_synapse(params, x, z_prev):
    del z_prev  # readouts have no recurrent weights
    a = params["w_out"] @ x
    if "b_out" in params:
        a = a + params["b_out"]
    return a[:, None]


def _readout_carry(n_out):
    return lambda params: ReadoutState(jnp.zeros(n_out, params["w_out"].dtype))


def leaky_readout(
    n_in: int, n_out: int, *, tau_out=30.0, dt=1.0, zeta_out=None, bias: bool = False, dtype=jnp.float32
) -> Cell:
    """Leaky integrator readout neurons (e-prop's output neurons, NEST's ``eprop_readout_bsshslm_2020``).

    With ``kappa = exp(-dt / tau_out)`` and ``zeta_out = 1 - kappa`` by default::

      y_m^t = kappa y_m^{t-1} + zeta_out (sum_i w_out[m, i] z_i^t + b_m)

    It integrates the inputs of the same step ``t``. The cell declares ``leak = (kappa, zeta_out)``: the
    e-prop rules filter the eligibility traces of the layer below with it.

    Args:
      n_in: number of inputs, a positive int.
      n_out: number of readout neurons, a positive int.
      tau_out: the readout's time constant (same unit as ``dt``), finite and ``> 0`` (a scalar or one per
        neuron; may be traced). For a readout without memory use :func:`readout`.
      dt: time step, finite and ``> 0``.
      zeta_out: input gain, finite; ``None`` means ``1 - kappa``.
      bias: whether the readout has a bias ``b_out`` (a bool).
      dtype: floating dtype of the parameters that ``init`` draws.

    Returns:
      A neuron :class:`Cell` with params ``{"w_out": (n_out, n_in)}`` (plus ``"b_out"`` if ``bias``) and
      carry :class:`ReadoutState`.
    """
    _check_readout("leaky_readout", n_in, n_out, bias, dtype)
    _hyper.positive("leaky_readout", "tau_out", tau_out)
    _hyper.positive("leaky_readout", "dt", dt)
    if zeta_out is not None:
        _hyper.finite("leaky_readout", "zeta_out", zeta_out)
    kappa = jnp.exp(-dt / jnp.asarray(tau_out))
    gain = 1.0 - kappa if zeta_out is None else zeta_out

    def dynamics(h, a):
        return ReadoutState((kappa * h.y + gain * a[:, 0]).astype(h.y.dtype))

    return make_cell(
        n_in=n_in,
        n_out=n_out,
        init=_readout_init(n_in, n_out, bias, dtype),
        init_carry=_readout_carry(n_out),
        synapse=_readout_synapse,
        dynamics=dynamics,
        output=lambda h: h.y,
        leak=(kappa, gain),
    )


def readout(n_in: int, n_out: int, *, bias: bool = True, dtype=jnp.float32) -> Cell:
    """A stateless linear readout ``y^t = w_out z^t + b_out``.

    Its carry only holds the last output (the dynamics ignore it), so every rule differentiates it at the
    same step, exactly. ``n_in`` and ``n_out`` are positive ints, ``bias`` a bool and ``dtype`` a floating
    dtype (checked when built).

    Returns:
      A neuron :class:`Cell` with params ``{"w_out": (n_out, n_in), "b_out": (n_out,)}``.
    """
    _check_readout("readout", n_in, n_out, bias, dtype)
    return make_cell(
        n_in=n_in,
        n_out=n_out,
        init=_readout_init(n_in, n_out, bias, dtype),
        init_carry=_readout_carry(n_out),
        synapse=_readout_synapse,
        dynamics=lambda h, a: ReadoutState(a[:, 0].astype(h.y.dtype)),
        output=lambda h: h.y,
    )

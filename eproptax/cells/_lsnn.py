"""A mixed population of LIF and adaptive LIF neurons in one layer (Bellec et al.'s LSNN, NEST's e-prop networks)."""

from __future__ import annotations

import jax.numpy as jnp

from .. import _hyper
from .._cell import Cell
from ._spiking import alif


def lsnn(
    n_in: int, n_lif: int, n_alif: int, *, tau_adapt=2000.0, beta=None, dt=1.0, dtype=jnp.float32, **options
) -> Cell:
    """One recurrent layer of ``n_lif`` LIF neurons followed by ``n_alif`` adaptive LIF neurons (an LSNN).

    Bellec et al.'s long short-term memory spiking network, and the population of NEST's e-prop evidence
    accumulation network (``eprop_iaf_bsshslm_2020`` neurons, then ``eprop_iaf_adapt_bsshslm_2020`` ones, all
    connected to each other and to the inputs). It is :func:`alif` with ``n_lif + n_alif`` neurons whose
    adaptation strength is 0 on the first ``n_lif``: a neuron with ``beta = 0`` computes exactly what a
    :func:`lif` neuron computes (its threshold is ``threshold + 0 * a``, exactly ``threshold``), so every rule's
    gradient equals that of a LIF layer and an ALIF layer side by side. The LIF neurons still carry an
    unused adaptation variable (and, under e-prop, its per-synapse trace, which stays multiplied by 0).

    Args:
      n_in: number of inputs, a positive int.
      n_lif: number of LIF neurons (the first ones), an int ``>= 0``.
      n_alif: number of adaptive neurons (the last ones), an int ``>= 0``; ``n_lif + n_alif > 0``.
      tau_adapt: the adaptive neurons' time constant (NEST's ``adapt_tau``), finite and ``> 0``.
      beta: the adaptive neurons' adaptation strength (NEST's ``adapt_beta``), finite and ``>= 0``: a scalar or
        ``(n_alif,)`` values; ``None``: :func:`alif`'s default ``1.7 * (1 - exp(-dt / tau_adapt))``.
      dt: time step, finite and ``> 0``.
      dtype: floating dtype of the parameters that ``init`` draws.
      **options: every other keyword of :func:`alif` (``tau_mem``, ``threshold``, ``zeta``, ``n_refractory``,
        ``surrogate_height``, masks, ...), shared by both kinds of neuron; a per-neuron array has
        ``n_lif + n_alif`` entries, the LIF neurons first.

    Returns:
      A neuron :class:`~eproptax.Cell` with params ``{"w_in": (n, n_in), "w_rec": (n, n)}``, ``n = n_lif +
      n_alif``, and carry :class:`ALIFState`.

    Example (NEST's evidence accumulation network: 50 + 50 neurons, ``regular_spike_arrival = True``)::

      cell = ep.cells.lsnn(40, 50, 50, tau_mem=20.0, tau_adapt=2000.0, beta=0.0174, threshold=0.6, zeta=1.0,
                           n_refractory=4, surrogate_height=0.5, dtype=jnp.float64)
    """
    where = "lsnn"
    _hyper.non_negative_int(where, "n_lif", n_lif)
    _hyper.non_negative_int(where, "n_alif", n_alif)
    if n_lif + n_alif == 0:
        raise ValueError(f"{where}: `n_lif + n_alif` must be positive, got n_lif={n_lif} and n_alif={n_alif}.")
    if "n_rec" in options:
        raise ValueError(f"{where}: give `n_lif` and `n_alif`, not `n_rec` (got n_rec={options['n_rec']!r}).")
    _hyper.positive(where, "tau_adapt", tau_adapt)
    _hyper.positive(where, "dt", dt)
    _hyper.floating_dtype(where, "dtype", dtype)
    if beta is None:
        beta = 1.7 * (1.0 - jnp.exp(-dt / jnp.asarray(tau_adapt)))
    _hyper.non_negative(where, "beta", beta)
    if jnp.ndim(beta) not in (0, 1) or (jnp.ndim(beta) == 1 and jnp.shape(beta)[0] != n_alif):
        raise ValueError(f"{where}: `beta` must be a scalar or have shape ({n_alif},) (n_alif), got {jnp.shape(beta)}.")
    betas = jnp.concatenate([jnp.zeros(n_lif, dtype), jnp.broadcast_to(jnp.asarray(beta, dtype), (n_alif,))])
    return alif(n_in, n_lif + n_alif, tau_adapt=tau_adapt, beta=betas, dt=dt, dtype=dtype, **options)

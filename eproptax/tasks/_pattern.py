"""Pattern generation: regress a sum of sines from a frozen Poisson input (Bellec et al. 2020, Fig. 2)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from .. import _hyper
from .._engine import FiringRateReg
from ._common import Task, nmse, poisson, squared_error, with_defaults


def pattern_generation(
    *,
    n_in: int = 100,
    n_out: int = 1,
    time_steps: int = 1000,
    rate: float = 0.05,
    periods: Sequence[float] = (1000.0, 500.0, 333.0, 200.0),
    seed: int = 0,
    dtype=jnp.float32,
) -> Task:
    """Pattern generation: a recurrent network turns one frozen input spike pattern into a fixed signal.

    The input is a frozen Poisson pattern, ``n_in`` neurons firing with probability ``rate`` per step, the
    same in every sequence; each of the ``n_out`` targets is a sum of sines with the given ``periods`` (in
    steps), amplitudes uniform in [0.5, 2] and phases uniform in [0, 2 pi], shifted to start at 0 and scaled
    to a maximum of 1 in absolute value, as in the e-prop paper's Fig. 2 and NEST's
    ``eprop_supervised_regression_sine-waves_bsshslm_2020``. The loss is the squared error at every step
    (averaged over time); the metric is the normalised mean squared error ``mean (y - y*)^2 / var(y*)``.

    The task is one fixed example: ``sample`` ignores its key and repeats the pattern over the batch
    (a deterministic network gives the same output for every copy, so train with ``batch_size=1``).

    The options are checked when the task is built (a ``ValueError`` names the option, its range and the
    value received).

    Args:
      n_in: input neurons, a positive int.
      n_out: target signals (one readout each), a positive int.
      time_steps: sequence length, a positive int.
      rate: spike probability per step of each input neuron, in ``[0, 1]``.
      periods: periods of the sines, in steps: a non-empty sequence of finite numbers ``> 0``.
      seed: seed of the frozen pattern and targets (a Python int).
      dtype: floating dtype of the inputs and targets.

    Returns:
      A :class:`Task` (``metric_name="nmse"``) whose ``network`` is 100 LIF neurons (``tau_mem = 30``,
      threshold 0.03, no refractory period) and a leaky readout (``tau_out = 30``), NEST's settings.
    """
    periods = _check_pattern(n_in, n_out, time_steps, rate, periods, seed, dtype)

    def pattern():
        k_in, k_amp, k_phase = jax.random.split(jax.random.key(seed), 3)
        inputs = poisson(k_in, jnp.full((time_steps, n_in), rate, dtype), dtype)
        amplitude = jax.random.uniform(k_amp, (n_out, len(periods)), dtype, 0.5, 2.0)
        phase = jax.random.uniform(k_phase, (n_out, len(periods)), dtype, 0.0, 2 * jnp.pi)
        t = jnp.arange(time_steps, dtype=dtype)
        omega = 2 * jnp.pi / jnp.asarray(periods, dtype)
        y = jnp.sum(amplitude[None] * jnp.sin(omega[None, None, :] * t[:, None, None] + phase[None]), axis=-1)
        y = y - y[:1]
        y = y / jnp.maximum(jnp.max(jnp.abs(y), axis=0, keepdims=True), 1e-6)
        return inputs, y

    def sample(key, batch_size: int):
        del key  # the pattern is frozen
        inputs, y = pattern()
        mask = jnp.full((time_steps,), 1.0 / time_steps, dtype)
        tile = lambda a: jnp.broadcast_to(a[None], (batch_size,) + a.shape)
        return tile(inputs), {"y": tile(y), "mask": tile(mask)}

    network = with_defaults(n_in, n_out, cell="lif", n_rec=100, tau_out=30.0, tau_mem=30.0, threshold=0.03, dtype=dtype)
    reg = FiringRateReg(c_reg=0.1, f_target=0.01)
    return Task("pattern", sample, squared_error, nmse, network, n_in, n_out, time_steps, "nmse", reg)


def _check_pattern(n_in, n_out, time_steps, rate, periods, seed, dtype) -> tuple[float, ...]:
    """Checks :func:`pattern_generation`'s options; returns the periods as a tuple of floats."""
    where = "pattern_generation"
    _hyper.positive_int(where, "n_in", n_in)
    _hyper.positive_int(where, "n_out", n_out)
    _hyper.positive_int(where, "time_steps", time_steps)
    _hyper.probability(where, "rate", rate)
    try:
        values = tuple(periods)
    except TypeError:
        values = None
    if not values:
        raise ValueError(f"{where}: `periods` must be a non-empty sequence of periods in steps, got {periods!r}.")
    _hyper.positive(where, "periods", values)
    _hyper.integer(where, "seed", seed)
    _hyper.floating_dtype(where, "dtype", dtype)
    return tuple(float(p) for p in values)

"""Store-recall (Bellec et al. 2018, the working-memory task of long short-term memory SNNs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import _hyper
from .._engine import FiringRateReg
from ._common import Task, batched, cross_entropy, poisson, window_accuracy, window_mask, with_defaults


def store_recall(
    *,
    n_periods: int = 8,
    period_steps: int = 20,
    rate: float = 0.2,
    noise_rate: float = 0.01,
    n_population: int = 10,
    dtype=jnp.float32,
) -> Task:
    """Store-recall: remember the bit shown at the STORE command, report it at the RECALL command.

    The sequence has ``n_periods`` periods of ``period_steps`` steps (Bellec et al. 2018, Fig. 2, in the
    form of their 1-bit store-recall task). In every period a random bit is shown: the population coding
    its value (0 or 1) fires at ``rate`` spikes per step. Once, at a random period ``s``, the STORE
    population fires too; once, at a random later period ``r > s``, the RECALL population fires, and the
    network must report the bit shown at ``s`` through a softmax over two readouts during period ``r``
    (cross-entropy at every step of that period; the decision is the argmax of the readouts summed over it).
    The input has four populations of ``n_population`` neurons (value 0, value 1, store, recall), each also
    firing at ``noise_rate`` at all times.

    The options are checked when the task is built (a ``ValueError`` names the option, its range and the
    value received).

    Args:
      n_periods: periods per sequence, an int ``>= 2``.
      period_steps: steps per period, a positive int.
      rate: spike probability per step of an active population, in ``[0, 1]``.
      noise_rate: spike probability per step of every input neuron at all times, in ``[0, 1]``.
      n_population: neurons per population, a positive int.
      dtype: floating dtype of the inputs and masks.

    Returns:
      A :class:`Task` (``metric_name="accuracy"``) whose ``network`` is 60 neurons, half of them adaptive
      (``tau_adapt`` of the sequence's length), and a leaky readout.

    References:
      Bellec, Salaj, Subramoney, Legenstein, Maass. "Long short-term memory and learning-to-learn in
      networks of spiking neurons", NeurIPS 2018.
    """
    _check_store_recall(n_periods, period_steps, rate, noise_rate, n_population, dtype)
    time_steps = n_periods * period_steps
    n_in = 4 * n_population

    def sample_one(key):
        k_bits, k_store, k_recall, k_spikes = jax.random.split(key, 4)
        bits = jax.random.bernoulli(k_bits, 0.5, (n_periods,)).astype(jnp.int32)
        store = jax.random.randint(k_store, (), 0, n_periods - 1, dtype=jnp.int32)
        recall = jax.random.randint(k_recall, (), store + 1, n_periods, dtype=jnp.int32)
        period = jnp.arange(time_steps, dtype=jnp.int32) // period_steps
        population = jnp.arange(n_in, dtype=jnp.int32) // n_population
        value_on = population[None, :] == bits[period][:, None]
        store_on = (period == store)[:, None] & (population[None, :] == 2)
        recall_on = (period == recall)[:, None] & (population[None, :] == 3)
        prob = jnp.where(value_on | store_on | recall_on, rate, noise_rate).astype(dtype)
        inputs = poisson(k_spikes, prob, dtype)
        label = bits[store]
        targets = {"label": jnp.full((time_steps,), label, jnp.int32), "mask": window_mask(period == recall, dtype)}
        return inputs, targets

    network = with_defaults(
        n_in,
        2,
        cell="alif",
        n_rec=60,
        adaptive_fraction=0.5,
        tau_out=20.0,
        input_scale=0.3,
        dtype=dtype,
        tau_mem=20.0,
        tau_adapt=float(time_steps),
        beta=0.1,
        threshold=0.6,
        zeta=1.0,
        surrogate_height=0.3 / 0.6,
    )
    reg = FiringRateReg(c_reg=1.0, f_target=0.02)
    return Task(
        "store_recall",
        batched(sample_one),
        cross_entropy,
        window_accuracy,
        network,
        n_in,
        2,
        time_steps,
        "accuracy",
        reg,
    )


def _check_store_recall(n_periods, period_steps, rate, noise_rate, n_population, dtype):
    _hyper.int_at_least("store_recall", "n_periods", n_periods, 2)
    _hyper.positive_int("store_recall", "period_steps", period_steps)
    _hyper.probability("store_recall", "rate", rate)
    _hyper.probability("store_recall", "noise_rate", noise_rate)
    _hyper.positive_int("store_recall", "n_population", n_population)
    _hyper.floating_dtype("store_recall", "dtype", dtype)

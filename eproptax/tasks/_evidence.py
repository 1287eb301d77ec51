"""Evidence accumulation (the cue-accumulation task of Bellec et al. 2020, Fig. 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import _hyper
from .._engine import FiringRateReg
from ._common import Task, batched, cross_entropy, poisson, window_accuracy, window_mask, with_defaults


def evidence_accumulation(
    *,
    n_cues: int = 7,
    dt: float = 1.0,
    cue_ms: float = 100.0,
    spacing_ms: float = 50.0,
    delay_ms: float = 1050.0,
    recall_ms: float = 150.0,
    rate_hz: float = 40.0,
    noise_hz: float = 10.0,
    prob_minority: float = 0.3,
    n_population: int = 10,
    dtype=jnp.float32,
) -> Task:
    """Evidence accumulation: count left and right cues over seconds, answer after a delay.

    A virtual agent runs along a corridor and sees ``n_cues`` cues, each on its left or its right; after a
    delay it must turn towards the side that showed more cues (Morcos and Harvey 2016; Bellec et al. 2020,
    Fig. 3, and NEST's ``eprop_supervised_classification_evidence-accumulation_bsshslm_2020`` example). The
    input has ``4 * n_population`` neurons in four populations: left cues, right cues, recall, background.
    Cue ``c`` (left or right) makes its population fire at ``rate_hz`` during
    ``[c (cue + spacing) + spacing, c (cue + spacing) + spacing + cue)``; the recall population fires during
    the last ``recall_ms``; the background population fires at ``noise_hz`` throughout. In each sequence
    one side is the likely one: every cue falls on it with probability ``1 - prob_minority``. The label is
    the side with more cues (0 left, 1 right); the network answers by a softmax over its two readouts,
    with a cross-entropy loss at every step of the recall window, and its decision is the argmax of the
    readouts summed over that window.

    Durations are in ms and rates in Hz; ``dt`` (ms per step) sets the time grid: the defaults with
    ``dt = 1`` are the paper's (2250 steps). A coarser ``dt`` keeps the task and shortens the sequence
    (``dt = 10``: 225 steps) when :attr:`Task.network` builds the network with the same ``dt``.

    The options are checked when the task is built: a ``ValueError`` names the option, its range and the
    value received.

    Args:
      n_cues: number of cues, a positive odd int (so there is no tie).
      dt: time step in ms, finite and ``> 0``.
      cue_ms, spacing_ms, delay_ms, recall_ms: durations of a cue, of the gap before each cue, of the delay
        after the last cue and of the recall window, each finite and ``> 0`` (each lasts at least one step).
      rate_hz: firing rate of an active cue or recall population, finite and ``>= 0``; the spike probability
        per step is ``rate_hz * dt / 1000``, and a rate of ``1000 / dt`` Hz or more fires at every step.
      noise_hz: firing rate of the background population, finite and ``>= 0`` (saturating as ``rate_hz``).
      prob_minority: probability that a cue falls on the less likely side, in ``[0, 1]``.
      n_population: neurons per input population, a positive int.
      dtype: floating dtype of the inputs and masks.

    Returns:
      A :class:`Task` (``metric_name="accuracy"``) whose ``network`` builds 100 recurrent neurons, half LIF
      and half adaptive (``cell="alif"``, ``adaptive_fraction=0.5``), with NEST's parameters (threshold 0.6,
      input gain 1, ``tau_mem = 20`` ms, ``tau_adapt = 2000`` ms, refractory 5 ms) and a leaky readout
      (``tau_out = 20`` ms); its ``reg`` holds the firing-rate regulariser (target 10 Hz).

    References:
      Bellec et al. "A solution to the learning dilemma for recurrent networks of spiking neurons", Nature
      Communications 11, 3625 (2020).
    """
    _check_evidence(n_cues, dt, cue_ms, spacing_ms, delay_ms, recall_ms, rate_hz, noise_hz, prob_minority, n_population)
    _hyper.floating_dtype("evidence_accumulation", "dtype", dtype)
    steps = lambda ms: max(int(round(ms / dt)), 1)
    cue, spacing, delay, recall = steps(cue_ms), steps(spacing_ms), steps(delay_ms), steps(recall_ms)
    period = cue + spacing
    time_steps = n_cues * period + delay + recall
    n_in = 4 * n_population
    p_cue, p_noise = rate_hz * dt / 1000.0, noise_hz * dt / 1000.0

    def sample_one(key):
        k_side, k_cues, k_spikes = jax.random.split(key, 3)
        likely_right = jax.random.bernoulli(k_side)
        p_right = jnp.where(likely_right, 1.0 - prob_minority, prob_minority)
        cues = jax.random.bernoulli(k_cues, p_right, (n_cues,)).astype(jnp.int32)  # 1 = right
        label = (jnp.sum(cues) > n_cues // 2).astype(jnp.int32)
        t = jnp.arange(time_steps, dtype=jnp.int32)
        in_cue = (t < n_cues * period) & (t % period >= spacing)
        side = cues[jnp.minimum(t // period, n_cues - 1)]
        population = jnp.arange(n_in, dtype=jnp.int32) // n_population
        in_recall = t >= time_steps - recall
        cue_on = in_cue[:, None] & (population[None, :] == side[:, None])
        recall_on = in_recall[:, None] & (population[None, :] == 2)
        noise_on = jnp.broadcast_to((population == 3)[None, :], (time_steps, n_in))
        prob = jnp.where(cue_on | recall_on, p_cue, jnp.where(noise_on, p_noise, 0.0)).astype(dtype)
        inputs = poisson(k_spikes, prob, dtype)
        targets = {"label": jnp.full((time_steps,), label, jnp.int32), "mask": window_mask(in_recall, dtype)}
        return inputs, targets

    network = _network(n_in, dt, dtype)
    reg = FiringRateReg(c_reg=1.0, f_target=10.0 * dt / 1000.0)
    return Task(
        "evidence", batched(sample_one), cross_entropy, window_accuracy, network, n_in, 2, time_steps, "accuracy", reg
    )


def _check_evidence(n_cues, dt, cue_ms, spacing_ms, delay_ms, recall_ms, rate_hz, noise_hz, prob_minority, n_pop):
    where = "evidence_accumulation"
    _hyper.positive_int(where, "n_cues", n_cues)
    if n_cues % 2 == 0:
        raise ValueError(f"{where}: `n_cues` must be odd and positive (so there is no tie), got {n_cues!r}.")
    _hyper.positive(where, "dt", dt)
    for name, ms in (("cue_ms", cue_ms), ("spacing_ms", spacing_ms), ("delay_ms", delay_ms), ("recall_ms", recall_ms)):
        _hyper.positive(where, name, ms)
    _hyper.non_negative(where, "rate_hz", rate_hz)
    _hyper.non_negative(where, "noise_hz", noise_hz)
    _hyper.probability(where, "prob_minority", prob_minority)
    _hyper.positive_int(where, "n_population", n_pop)


def _network(n_in: int, dt: float, dtype):
    """The task's network factory: 100 ALIF neurons (half adaptive) with NEST's parameters on a ``dt`` ms grid."""
    tau_adapt = 2000.0
    alpha = 1.0 - float(jnp.exp(-dt / 20.0))
    rho = 1.0 - float(jnp.exp(-dt / tau_adapt))
    return with_defaults(
        n_in,
        2,
        cell="alif",
        n_rec=100,
        adaptive_fraction=0.5,
        tau_out=20.0,
        dtype=dtype,
        dt=dt,
        tau_mem=20.0,
        tau_adapt=tau_adapt,
        beta=1.7 * rho / alpha,
        threshold=0.6,
        zeta=1.0,
        surrogate_height=0.3 / 0.6,
        n_refractory=max(int(round(5.0 / dt)) - 1, 0),
    )

"""e-prop (Bellec et al. 2020): eligibility traces from each neuron's own dynamics times a learning signal."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._cell import Cell
from ._engine import FiringRateReg, OnlineRule, scan_rule
from ._traces import online_traces
from ._typing import GradFn, LossFn


def online_eprop(model: Cell, loss: LossFn, *, feedback="symmetric", reg: FiringRateReg | None = None) -> OnlineRule:
    """The per-step form of :func:`eprop`; ``ep.online.eprop``."""
    return online_traces(model, loss, order=0, depth="spatial", feedback=feedback, reg=reg, where="eprop")


def eprop(
    model: Cell,
    loss: LossFn,
    *,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
    unroll: int | None = None,
    chunk: int | None = None,
) -> GradFn:
    """e-prop: online eligibility propagation (Bellec et al. 2020).

    Factorises the gradient as ``dE/dW_ji ~ sum_t L_j^t e_ji^t``. The eligibility trace comes from neuron
    ``j``'s OWN dynamics only (derived by autodiff from the cell's ``dynamics`` and ``output``)::

      eps_ji^t = (dh_j^t / dh_j^{t-1}) eps_ji^{t-1} + dh_j^t / dW_ji       (implicit recurrence only)
      e_ji^t   = (dz_j^t / dh_j^t) eps_ji^t

    and the learning signal ``L_j^t = dE_t / dz_j^t`` uses only the loss at the current step. Every path
    through other neurons' previous outputs (the explicit recurrence, the diagonal of ``w_rec`` included)
    is dropped, which makes the rule causal, local and ``O(synapses)`` in memory whatever ``T``. Under a
    leaky readout (``y^t = kappa y^{t-1} + zeta_out W_out z^t``) the trace is filtered as in the paper,
    ``ebar_ji^t = kappa ebar_ji^{t-1} + zeta_out e_ji^t``, and ``L_j^t = sum_m B_jm (y_m^t - y*_m^t)``.
    Semantics, for one layer and a leaky readout::

      for t in range(T):
          h, a = dynamics(h, synapse(params, x[t], z)), ...; z = output(h)
          eps = D * eps + dfda * [x[t], z_prev, 1]          # per synapse
          ebar = kappa * ebar + zeta_out * (dz/dh) * eps
          grads += (B @ err[t]) * ebar                       # B = W_out^T when symmetric

    Where the trace factorises (a cell that declares a ``leak``, such as LIF with a detached reset, under a
    stateless readout) only the presynaptic ``zbar`` (``O(n_pre)``) is kept and the gradient is a batched
    outer product each step. The readout's own weights get their exact gradient.

    Several recurrent layers: each layer keeps its own traces (no cross-layer traces: see
    :func:`deep_eprop`); layer ``l``'s learning signal is the top layer's signal passed down through the
    layers above at the same step only; a leaky readout filters every layer's trace with its own
    ``(kappa, zeta_out)``. With one recurrent layer this is exactly the paper's e-prop.

    Args:
      model: ``ep.cells.stack(recurrent layers..., readout)``; every recurrent layer a neuron cell; the
        readout a neuron cell (``leaky_readout``, ``readout``) or any stateless cell (an MLP).
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      feedback: ``"symmetric"`` (``B = W_out^T``: the true partial derivative) or a feedback matrix ``B`` of
        shape ``(n_rec, n_out)`` (random e-prop; see :func:`random_feedback`) that replaces ``W_out^T`` and
        nothing else. Adaptive e-prop is random e-prop whose ``B`` follows ``W_out``'s updates: update it
        with :func:`adapt_feedback` after each optimiser step. Build the rule inside your jitted or vmapped
        function to vmap over ``B``.
      reg: optional :class:`~eproptax.FiringRateReg`; its e-prop gradient is
        ``c_reg (r_j - f_target) / T sum_t e_ji^t``.
      unroll: time steps per iteration of the whole-sequence scan (``lax.scan``'s ``unroll``): it changes
        the speed, the compile time and the peak memory, not the result (up to rounding). ``None``, the
        default: the platform's (:data:`eproptax.DEFAULT_UNROLL`: 1 on CPU, 4 on CUDA GPUs), chosen when
        the function is lowered; pass 1 where GPU memory binds.
      chunk: time steps advanced at once by the whole-sequence view: the forward pass runs ``chunk`` steps
        and keeps their per-neuron coefficients, then every trace moves over them in one pass and two matrix
        products (docs/design.md, "The chunked view"); the last ``T mod chunk`` steps run one at a time.
        Changes the speed and the memory (``chunk`` steps of per-neuron coefficients), not the result (up
        to rounding). ``None``, the default: for a network with a gated recurrent layer (GRU, LSTM: several
        synaptic entries per neuron) the platform's :data:`eproptax.DEFAULT_CHUNK` (64 on the CPU, unset
        elsewhere: 1), else 1; ``chunk=1`` steps. Whether chunks pay for a network depends on its size
        (``benchmarks/chunking.py`` measures it; benchmarks/README.md has the tables).

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    Cost per step and example: ``O(s |theta|)`` memory and ``O(s^2 |theta|)`` time for the per-synapse
    traces (``s`` the stored state variables), ``O(m)`` where the trace factorises, plus ``O(|theta|)`` for
    the filtered trace under a leaky readout; memory is independent of ``T``.

    Example::

      grad_fn = ep.eprop(model, loss)          # ep.bptt(model, loss) gives the exact gradient
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)
      online = ep.online.eprop(model, loss)    # the same rule, one step at a time

    Warning:
      Biased whenever the recurrent weights are not zero (and, for several layers, whenever a layer above
      has memory of its own). It is exact for a network with no recurrent weights, and the readout's
      gradient is always exact.

    References:
      Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein, Maass. "A solution to the learning dilemma for
      recurrent networks of spiking neurons", Nature Communications 11, 3625 (2020).
    """
    return scan_rule("eprop", model, loss, online_eprop(model, loss, feedback=feedback, reg=reg), unroll, chunk)


def random_feedback(key, n_rec: int, n_out: int, dtype=jnp.float32) -> jax.Array:
    """A random feedback matrix ``B`` of shape ``(n_rec, n_out)``, entries ``N(0, 1 / n_rec)``."""
    return jax.random.normal(key, (n_rec, n_out), dtype) / jnp.sqrt(n_rec).astype(dtype)


def adapt_feedback(feedback: jax.Array, w_out_update: jax.Array, *, weight_decay=0.0) -> jax.Array:
    """Adaptive e-prop: ``B`` receives the same update as ``W_out^T``, plus weight decay.

    Args:
      feedback: the current ``B``, shape ``(n_rec, n_out)``.
      w_out_update: the update applied to ``W_out`` (shape ``(n_out, n_rec)``), e.g. ``updates[-1]["w_out"]``
        from ``optimizer.update``.
      weight_decay: fraction of ``B`` removed each update.

    Returns:
      ``B + w_out_update.T - weight_decay * B``.
    """
    return feedback + w_out_update.T - weight_decay * feedback

"""SnAp-1 (Menick et al. 2021), also D-RTRL: e-prop's trace with each neuron's autapse in its recurrence."""

from __future__ import annotations

from ._cell import Cell
from ._engine import FiringRateReg, OnlineRule, scan_rule
from ._traces import online_traces
from ._typing import GradFn, LossFn


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n != 1:
        raise ValueError(
            f"snap: `n` must be 1 (SnAp-1: the influence on the neuron a parameter drives), got {n!r}; "
            "SnAp-n for n >= 2 is not implemented yet (ep.rtrl is exact and costs what SnAp-2 costs on a "
            "dense recurrent layer)."
        )


def online_snap(model: Cell, loss: LossFn, n: int = 1, *, feedback="symmetric", reg=None) -> OnlineRule:
    """The per-step form of :func:`snap`; ``ep.online.snap``."""
    _check_n(n)
    return online_traces(
        model, loss, order=0, depth="spatial", feedback=feedback, reg=reg, where="snap", self_recurrent=True
    )


def snap(
    model: Cell,
    loss: LossFn,
    n: int = 1,
    *,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
    unroll: int | None = None,
    chunk: int | None = None,
) -> GradFn:
    """SnAp-1: RTRL's influence kept only on the state of the neuron each parameter drives.

    SnAp-n (Menick et al. 2021) keeps the entries of RTRL's influence matrix ``M = d h / d theta`` that the
    sparsity pattern of the one-step Jacobian reaches within ``n`` steps. With ``n = 1`` a parameter of
    neuron ``j`` (a synapse ``W_ji``) keeps its influence on neuron ``j``'s own state variables only, through
    every path from ``h_j^{t-1}`` to ``h_j^t``: the implicit recurrence ``D`` (as in e-prop) *and* the
    neuron's own explicit edge through its autapse ``W_jj`` (which e-prop drops). This is D-RTRL::

      D'_j = dh_j / dh_j^{prev} + (dh_j / da_j) W_self[j] (dz_j / dh_j)^{prev}
      eps_ji^t = D'_j eps_ji^{t-1} + (dh_j / da_j) v_i^t,     grad W_ji += L_j^t (dz_j / dh_j) eps_ji^t

    with e-prop's same-step learning signal ``L`` and e-prop's treatment of a leaky readout (the traces
    filtered by its leak). It is e-prop with ``D`` replaced by ``D'``: on a network without autapses
    (``ep.cells.lif`` and ``alif`` by default) it equals :func:`eprop`; a GRU's and an LSTM's recurrent
    kernels have a diagonal, so there the two differ by exactly those self-recurrent terms. On a stack each
    layer keeps its own traces and the learning signal passes down at the same step, as in :func:`eprop`.

    Cost: as e-prop's per-synapse traces, ``O(s |theta|)`` memory and ``O(s^2 |theta|)`` time per step,
    plus the autapse's term at neuron size; every state variable keeps a per-synapse trace (a leaky
    variable's ``D'`` differs from neuron to neuron, so no trace factorises into ``zbar``).

    Args:
      model: as for :func:`eprop`.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      n: the pattern's reach in steps; only ``1`` (SnAp-1) is implemented.
      feedback: as for :func:`eprop`.
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: as for :func:`eprop`.
      chunk: as for :func:`eprop` (the chunked view advances ``D'`` like ``D``).

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    Example::

      grad_fn = ep.snap(model, loss)      # ep.eprop(model, loss) plus each neuron's autapse
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)

    Warning:
      Biased whenever neurons are coupled by recurrent weights between distinct neurons (those paths are
      dropped, as in e-prop); exact for a network whose recurrent matrices are diagonal.

    References:
      Menick, Elsen, Evci, Osindero, Simonyan, Graves. "Practical Real Time Recurrent Learning with a
      Sparse Approximation", ICLR 2021.
    """
    return scan_rule("snap", model, loss, online_snap(model, loss, n, feedback=feedback, reg=reg), unroll, chunk)

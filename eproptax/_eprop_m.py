"""m-order e-prop (Martín-Sánchez, Bohté, Otte 2022): the family between e-prop and exact RTRL."""

from __future__ import annotations

from ._cell import Cell
from ._engine import FiringRateReg, OnlineRule, scan_rule
from ._traces import online_traces
from ._typing import GradFn, LossFn


def online_eprop_m(
    model: Cell, loss: LossFn, order: int, *, feedback="symmetric", reg: FiringRateReg | None = None
) -> OnlineRule:
    """The per-step form of :func:`eprop_m`; ``ep.online.eprop_m``."""
    return online_traces(model, loss, order=order, depth="spatial", feedback=feedback, reg=reg, where="eprop_m")


def eprop_m(
    model: Cell,
    loss: LossFn,
    order: int = 1,
    *,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
    unroll: int | None = None,
    chunk: int | None = None,
) -> GradFn:
    """m-order e-prop: keep the influence paths with at most ``order`` explicit recurrent edges.

    The exact influence ``M_l^t = dh_l^t / dtheta`` splits by the number ``n`` of explicit edges (through
    the recurrent weights, the autapse included) on a path::

      Gamma^(0),t_l = D_l^t Gamma^(0),t-1_l + (immediate dh_l^t / dtheta)        (e-prop's eligibility)
      Gamma^(n),t_l = D_l^t Gamma^(n),t-1_l + sum_q J_lq^t Gamma^(n-1),t-1_q      (n >= 1)

    with ``D_l^t = dh_l^t / dh_l^{t-1}`` at fixed synaptic input (implicit recurrence) and
    ``J_lq^t = (dh_l^t / da_l^t) W^rec_lq (dz_q^{t-1} / dh_q^{t-1})`` (explicit recurrence). m-order e-prop
    estimates ``M`` by ``sum_{n <= order} Gamma^(n)`` and contracts it with e-prop's same-step learning
    signal (symmetric feedback by default). ``order=0`` is e-prop; any ``order >= T - 1`` is the exact
    gradient (a path from step s to t crosses at most t - s explicit edges). A leaky readout filters the
    traces as in e-prop, which is exact for its own leak.

    Cost per step and example: level 0 costs what e-prop costs (``O(s |theta|)``); each higher level is
    dense over neurons like RTRL's influence matrix (``n s |theta|`` memory, ``O(n^2 k |theta|)`` time for
    ``J``), so ``order`` levels cost about ``order`` times RTRL's influence update.

    Args:
      model: as for :func:`eprop`.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      order: the number ``m`` of explicit edges kept, a Python int (a compile-time constant).
      feedback: as for :func:`eprop`.
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: time steps per iteration of the whole-sequence scan (``lax.scan``'s ``unroll``): it changes
        the speed, the compile time and the peak memory, not the result (up to rounding). ``None``, the
        default: the platform's (:data:`eproptax.DEFAULT_UNROLL`: 1 on CPU, 4 on CUDA GPUs), chosen when
        the function is lowered; pass 1 where GPU memory binds.
      chunk: as for :func:`eprop`; only with ``order=0``: other rules have no chunked form, and
        ``chunk > 1`` raises there.

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    Example::

      grad_fn = ep.eprop_m(model, loss, order=1)   # order=0 is ep.eprop
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)

    Warning:
      Biased for ``order < T - 1`` whenever the recurrent weights are not zero. On a stack of several
      recurrent layers each layer keeps its own levels (no cross-layer traces; see :func:`deep_eprop`).

    References:
      Martín-Sánchez, Bohté, Otte. "A Taxonomy of Recurrent Learning Rules", ICANN 2022, arXiv:2207.11439.
    """
    return scan_rule(
        "eprop_m",
        model,
        loss,
        online_eprop_m(model, loss, order, feedback=feedback, reg=reg),
        unroll,
        chunk,
    )

"""deep e-prop (Millidge 2025): e-prop's eligibility traces carried across stacked recurrent layers."""

from __future__ import annotations

from ._cell import Cell
from ._engine import FiringRateReg, OnlineRule, scan_rule
from ._traces import online_traces
from ._typing import GradFn, LossFn

DEPTHS = ("full", "collapsed", "spatial")


def online_deep_eprop(
    model: Cell,
    loss: LossFn,
    *,
    depth: str = "full",
    order: int = 0,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
) -> OnlineRule:
    """The per-step form of :func:`deep_eprop`; ``ep.online.deep_eprop``."""
    return online_traces(model, loss, order=order, depth=depth, feedback=feedback, reg=reg, where="deep_eprop")


def deep_eprop(
    model: Cell,
    loss: LossFn,
    *,
    depth: str = "full",
    order: int = 0,
    feedback="symmetric",
    reg: FiringRateReg | None = None,
    unroll: int | None = None,
    chunk: int | None = None,
) -> GradFn:
    """deep e-prop: online credit assignment across depth and time.

    Layers ``l = 1..L`` with ``a^l_t = W^l z^{l-1}_t + R^l z^l_{t-1} (+ b)``, ``h^l_t = f_l(h^l_{t-1}, a^l_t)``,
    ``z^l_t = g_l(h^l_t)``. The exact influence of layer ``p``'s parameters on layer ``l >= p`` obeys::

      M^{l,p,t} = D^{l,t} M^{l,p,t-1} + J^{l,t} M^{l,p,t-1} + F^{l,t} M^{l-1,p,t}  (+ immediate if l = p)

    with ``D`` the implicit recurrence, ``J`` the within-layer explicit recurrence (through ``R``) and
    ``F^{l,t}_jq = (dh^l_j / da^l_j) W^l_jq (dz^{l-1}_q / dh^{l-1}_q)`` the same-step edge from the layer
    below. Deep e-prop drops ``J`` and keeps ``D`` and ``F``::

      E^{p,p,t} = e-prop's eligibility vector of layer p
      E^{l,p,t} = D^{l,t} E^{l,p,t-1} + F^{l,t} E^{l-1,p,t}        (l > p)
      grad theta^p = sum_t (d loss_t / d h^{L,t}, same step) . E^{L,p,t}

    ``depth`` chooses the treatment across layers, trading memory for fidelity:

    * ``"full"`` (default): the recursion above. ``E^{l,p}`` has ``n_l s_l |theta^p|`` entries per example.
    * ``"collapsed"``: each layer keeps its own traces plus one filtered copy per leaky layer above it
      (a layer that declares ``leak``, such as LIF with a detached reset, or the leaky readout): the
      trace is filtered by the cascade of those layers' ``(decay, gain)``, and the same-step Jacobians of
      the layers in between (``dz/dh``, the weights) are taken at the current step. Memory
      ``O(|theta^p|)`` per leaky layer above; exact when the layers above are linear leaky integrators;
      the same as ``"spatial"`` when no hidden layer is leaky.
    * ``"spatial"``: each layer keeps only its own traces and receives the learning signal passed down
      through the layers above at the same step (what :func:`eprop` does on a stack).

    A leaky readout on top (it declares ``leak``: ``D`` and ``dh/da`` are the same for every neuron and do
    not depend on the state) is always collapsed: its influence ``E^{out,p} = W_out Ebar^{L,p}`` with
    ``Ebar`` the top layer's trace filtered by the readout's leak, so it costs ``O(|E^{L,p}|)``, not
    ``n_out`` times more. ``order = m`` reintroduces the within-layer explicit recurrence up to ``m`` edges,
    as in :func:`eprop_m`, from the same machinery; with ``order >= T - 1`` and ``depth="full"`` the rule is
    the exact gradient on any stack.

    Consequences: with one recurrent layer it is exactly :func:`eprop` (symmetric feedback, filtered
    trace); with no within-layer recurrent weights (``R = 0`` everywhere) ``depth="full"`` is exact.

    Args:
      model: as for :func:`eprop`.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      depth: ``"full"``, ``"collapsed"`` or ``"spatial"``.
      order: explicit recurrent edges kept within each layer (``0`` is deep e-prop proper).
      feedback: as for :func:`eprop` (``B`` replaces the transposed readout weights into the top layer).
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: time steps per iteration of the whole-sequence scan (``lax.scan``'s ``unroll``): it changes
        the speed, the compile time and the peak memory, not the result (up to rounding). ``None``, the
        default: the platform's (:data:`eproptax.DEFAULT_UNROLL`: 1 on CPU, 4 on CUDA GPUs), chosen when
        the function is lowered; pass 1 where GPU memory binds.
      chunk: as for :func:`eprop`; only with ``order=0`` and ``depth`` ``"spatial"`` or ``"collapsed"``:
        other rules have no chunked form, and ``chunk > 1`` raises there.

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``.

    Example::

      model = ep.cells.stack(ep.cells.lif(20, 64), ep.cells.lif(64, 64), ep.cells.leaky_readout(64, 2))
      grad_fn = ep.deep_eprop(model, loss, depth="full")
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets)

    Warning:
      Biased whenever a recurrent layer has recurrent weights (``J`` is dropped), unless ``order >= T - 1``.

    References:
      Millidge. "Generalising E-prop to Deep Networks", arXiv:2512.24506 (2025).
    """
    return scan_rule(
        "deep_eprop",
        model,
        loss,
        online_deep_eprop(model, loss, depth=depth, order=order, feedback=feedback, reg=reg),
        unroll,
        chunk,
    )

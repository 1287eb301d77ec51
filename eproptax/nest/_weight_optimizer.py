"""NEST 3.10's ``weight_optimizer``, one call ``OPT(idx, g, w)`` per synapse, vectorised over synapses."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import _hyper

OPTIMIZERS = ("gradient_descent", "adam")


class WeightOptimizerState(NamedTuple):
    """Per-synapse optimizer state (NEST's ``WeightOptimizer``), every leaf shaped like the weights.

    Attributes:
      c: the gradient accumulated since the last optimization step (``sum_gradients_``).
      k: the next optimization step (``optimization_step_``, int32, starts at 1).
      m: Adam's first moment, or ``None`` for gradient descent.
      v: Adam's second moment, or ``None``.
      beta_1_power: ``beta_1`` to the number of Adam steps taken, or ``None``.
      beta_2_power: ``beta_2`` to the same power, or ``None``.
    """

    c: jax.Array
    k: jax.Array
    m: Any = None
    v: Any = None
    beta_1_power: Any = None
    beta_2_power: Any = None


class WeightOptimizer(NamedTuple):
    """NEST's per-synapse optimizer as pure functions.

    Attributes:
      init: ``init(w) -> WeightOptimizerState``.
      update: ``update(state, w, g, called, idx, eta) -> (state, w)``: ``OPT(idx, g, w)`` on every synapse
        where the boolean ``called`` is set (SPEC.md section 7), the others unchanged; ``idx`` an int32 scalar.
      name, batch_size, optimize_each_step, Wmin, Wmax: the configuration.
    """

    init: Any
    update: Any
    name: str
    batch_size: int
    optimize_each_step: bool
    Wmin: float
    Wmax: float


def weight_optimizer(
    optimizer: str = "gradient_descent",
    *,
    batch_size: int = 1,
    optimize_each_step: bool = True,
    Wmin=-100.0,
    Wmax=100.0,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    where: str = "weight_optimizer",
) -> WeightOptimizer:
    """NEST's ``gradient_descent`` or ``adam`` weight optimizer, per synapse.

    ``OPT(idx, g, w)``: ``c <- c + g``; with ``K = 1 + idx // batch_size``, when ``k < K`` the averaged
    ``c / batch_size`` is applied (gradient descent: ``w <- w - eta c``; Adam: ``K - k`` steps, the first with
    ``c``, the others with a zero gradient, each ``w <- w - eta sqrt(1 - b2^n)/(1 - b1^n) m/(sqrt(v) + epsilon)``),
    then ``w`` is clipped to ``[Wmin, Wmax]``, ``c <- 0`` and ``k <- K``. ``batch_size`` counts time steps. Adam's
    catch-up steps run in a ``lax.while_loop`` for as many iterations as the largest number of pending steps
    among synapses whose moments are not zero (a synapse with zero moments only advances its powers).
    """
    _hyper.one_of(where, "optimizer", optimizer, OPTIMIZERS)
    _hyper.positive_int(where, "batch_size", batch_size)
    _hyper.boolean(where, "optimize_each_step", optimize_each_step)
    for name, value in (("Wmin", Wmin), ("Wmax", Wmax)):
        if not _hyper.is_traced(value) and not isinstance(value, (int, float)):
            _hyper.finite(where, name, value)
    adam = optimizer == "adam"
    if adam:
        _hyper.decay(where, "beta_1", beta_1)
        _hyper.decay(where, "beta_2", beta_2)
        _hyper.positive(where, "epsilon", epsilon)

    def init(w):
        zeros = jnp.zeros_like(w)
        k = jnp.ones(w.shape, jnp.int32)
        if adam:
            ones = jnp.ones_like(w)
            return WeightOptimizerState(zeros, k, zeros, zeros, ones, ones)
        return WeightOptimizerState(zeros, k)

    def update(state, w, g, called, idx, eta):
        c = jnp.where(called, state.c + g, state.c)
        K = 1 + idx // batch_size
        go = called & (state.k < K)
        c = jnp.where(go, c / batch_size, c)
        if adam:
            state, w = _adam(state._replace(c=c), w, jnp.where(go, K - state.k, 0), go, eta, beta_1, beta_2, epsilon)
        else:
            w = jnp.where(go, w - eta * c, w)
            state = state._replace(c=jnp.where(go, 0.0, c))
        w = jnp.where(go, jnp.clip(w, Wmin, Wmax), w)
        return state._replace(k=jnp.where(go, K, state.k).astype(jnp.int32)), w

    return WeightOptimizer(init, update, optimizer, batch_size, optimize_each_step, Wmin, Wmax)


def _adam(state, w, n, go, eta, beta_1, beta_2, epsilon):
    """NEST's Adam on the synapses ``go``, ``n`` steps each: the first with the averaged gradient ``state.c``,
    the others (catch-up) with a zero gradient, in a ``lax.while_loop`` as long as some synapse with nonzero
    moments has steps left; the rest only advance their powers. Returns ``(state, w)``."""

    def one_step(carry, active):
        opt, w, n = carry
        b1 = jnp.where(active, opt.beta_1_power * beta_1, opt.beta_1_power)
        b2 = jnp.where(active, opt.beta_2_power * beta_2, opt.beta_2_power)
        m = jnp.where(active, beta_1 * opt.m + (1.0 - beta_1) * opt.c, opt.m)
        v = jnp.where(active, beta_2 * opt.v + (1.0 - beta_2) * opt.c * opt.c, opt.v)
        eta_t = eta * jnp.sqrt(1.0 - b2) / jnp.where(active, 1.0 - b1, 1.0)
        w = jnp.where(active, w - eta_t * m / (jnp.sqrt(v) + epsilon), w)
        c = jnp.where(active, 0.0, opt.c)
        return opt._replace(c=c, m=m, v=v, beta_1_power=b1, beta_2_power=b2), w, n - active.astype(n.dtype)

    def pending(carry):
        opt, _, n = carry
        return (n > 0) & ((opt.m != 0) | (opt.v != 0))

    carry = one_step((state, w, n), go)
    opt, w, n = jax.lax.while_loop(
        lambda carry: jnp.any(pending(carry)), lambda carry: one_step(carry, pending(carry)), carry
    )
    # zero moments stay zero under zero gradients: the remaining steps only advance the powers
    state = opt._replace(
        beta_1_power=opt.beta_1_power * jnp.asarray(beta_1, w.dtype) ** n.astype(w.dtype),
        beta_2_power=opt.beta_2_power * jnp.asarray(beta_2, w.dtype) ** n.astype(w.dtype),
    )
    return state, w

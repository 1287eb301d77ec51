"""NEST's e-prop weight optimizers as optax transformations: gradient descent, Adam, and the weight clip.

NEST applies its optimizer to each synapse once per optimization step (every ``batch_size`` update intervals,
on the gradient averaged over them) and clips the result to ``[Wmin, Wmax]`` (``models/weight_optimizer.cpp``)::

  weight = min(max(optimize(weight, gradient), Wmin), Wmax)

``optax.chain(ep.nest.adam(...), ep.nest.clip(w_min, w_max))`` is that update. NEST's ``batch_size`` is the
batch axis of eproptax's inputs: every rule already returns the gradient averaged over the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _hyper

_NUDGES = 4  # steps of one float that bring ``w + (bound - w)`` back inside the bounds (one or two suffice)


class AdamState(NamedTuple):
    """The state of :func:`adam`, NEST's ``WeightOptimizerAdam`` per synapse.

    Attributes:
      beta_1_power: ``beta_1 ** t`` after ``t`` steps, a scalar updated by one multiplication a step as NEST does.
      beta_2_power: ``beta_2 ** t``, likewise.
      m: the first moment estimate, shaped like the parameters.
      v: the second moment estimate, shaped like the parameters.
    """

    beta_1_power: jax.Array
    beta_2_power: jax.Array
    m: Any
    v: Any


def _check_eta(where: str, eta) -> None:
    _hyper.non_negative(where, "eta", eta)


def gradient_descent(eta=1e-4) -> optax.GradientTransformation:
    """NEST's ``"gradient_descent"`` optimizer: ``w <- w - eta * g``.

    Exactly NEST's update (the same single product per weight); with ``eta`` a Python float it equals
    ``optax.sgd(eta)``. Chain it with :func:`clip` for NEST's ``Wmin`` and ``Wmax``.

    Args:
      eta: the learning rate, finite and ``>= 0`` (NEST's ``eta``, default ``1e-4`` as NEST's); may be traced.

    Returns:
      An ``optax.GradientTransformation`` whose updates are ``-eta * grads``.

    Example::

      optimizer = optax.chain(ep.nest.gradient_descent(1e-4), ep.nest.clip(-100.0, 100.0))
    """
    _check_eta("gradient_descent", eta)

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda g: -(jnp.asarray(eta, g.dtype) * g), updates), state

    return optax.GradientTransformation(init, update)


def adam(eta=1e-4, beta_1=0.9, beta_2=0.999, epsilon=1e-7) -> optax.GradientTransformation:
    """NEST's ``"adam"`` optimizer, step for step as ``WeightOptimizerAdam`` computes it.

    At step ``t = 1, 2, ...``, with ``beta_1 ** t`` and ``beta_2 ** t`` kept as running products::

      m <- beta_1 m + (1 - beta_1) g
      v <- beta_2 v + (1 - beta_2) g^2
      w <- w - eta sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

    This is Adam in Kingma and Ba's "efficient" form (TensorFlow 1's), which adds ``epsilon`` to
    ``sqrt(v)`` before the bias correction of ``v``: it is not ``optax.adam``, which adds it after,
    ``m_hat / (sqrt(v_hat) + eps)``. In optax's terms this is ``optax.adam(eta, beta_1, beta_2, eps=eps_t)`` with
    a step-dependent ``eps_t = epsilon / sqrt(1 - beta_2^t)``; the two differ most in the first steps, where
    ``sqrt(v_hat)`` is small. Every operation is NEST's, in NEST's order, so in float64 the weights equal
    NEST's to the last bits (``tests/test_nest_regression.py``).

    One difference from NEST in what is stepped: NEST updates a synapse lazily, when its presynaptic neuron
    next spikes, and then runs the Adam steps it missed with a zero gradient before clipping once; this
    transformation is stepped after every learning interval, with the zero gradients of silent synapses in
    the gradient. The weights are the same unless :func:`clip`'s bounds bind during the missed steps.

    Args:
      eta: the learning rate, finite and ``>= 0`` (NEST's default ``1e-4``).
      beta_1: the first moment's decay, in ``[0, 1)`` (NEST's default ``0.9``).
      beta_2: the second moment's decay, in ``[0, 1)`` (NEST's default ``0.999``).
      epsilon: finite and ``>= 0``, added to ``sqrt(v)`` (NEST's default ``1e-7``).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`AdamState`.

    Example::

      optimizer = optax.chain(ep.nest.adam(5e-3, 0.9, 0.999, 1e-8), ep.nest.clip(-100.0, 100.0))
      opt_state = optimizer.init(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)

    References:
      Kingma and Ba. "Adam: a method for stochastic optimization", ICLR (2015), the end of section 2.
    """
    where = "adam"
    _check_eta(where, eta)
    _hyper.decay(where, "beta_1", beta_1)
    _hyper.decay(where, "beta_2", beta_2)
    _hyper.non_negative(where, "epsilon", epsilon)

    def init(params):
        leaves = jax.tree_util.tree_leaves(params)
        dtype = leaves[0].dtype if leaves else jnp.float32
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)
        return AdamState(jnp.ones((), dtype), jnp.ones((), dtype), zeros(), zeros())

    def update(updates, state, params=None):
        del params
        dtype = state.beta_1_power.dtype
        b1, b2 = jnp.asarray(beta_1, dtype), jnp.asarray(beta_2, dtype)
        b1_power, b2_power = state.beta_1_power * b1, state.beta_2_power * b2
        alpha = jnp.asarray(eta, dtype) * jnp.sqrt(1.0 - b2_power) / (1.0 - b1_power)
        m = jax.tree_util.tree_map(
            lambda m, g: b1.astype(g.dtype) * m + (1.0 - b1).astype(g.dtype) * g, state.m, updates
        )
        v = jax.tree_util.tree_map(
            lambda v, g: b2.astype(g.dtype) * v + (1.0 - b2).astype(g.dtype) * g * g, state.v, updates
        )
        step = lambda m, v: -(alpha.astype(m.dtype) * m / (jnp.sqrt(v) + jnp.asarray(epsilon, m.dtype)))
        return jax.tree_util.tree_map(step, m, v), AdamState(b1_power, b2_power, m, v)

    return optax.GradientTransformation(init, update)


def clip(w_min=-100.0, w_max=100.0) -> optax.GradientTransformation:
    """NEST's weight bounds ``Wmin`` and ``Wmax``: updates that land every parameter in ``[w_min, w_max]``.

    optax transformations return updates, not parameters, so this one needs ``params``: it replaces each
    update ``u`` of a parameter ``w`` by ``clip(w + u, w_min, w_max) - w``, and
    ``optax.apply_updates(params, updates)`` then gives NEST's ``min(max(w + u, Wmin), Wmax)``. Put it last in
    the chain, after the optimizer (NEST clips the optimizer's result)::

      optimizer = optax.chain(ep.nest.adam(eta), ep.nest.clip(w_min, w_max))

    Exactness: where the bounds do not bind the update is left as it is (bit for bit), so the parameters are
    NEST's. Where they bind, the parameter lands on the bound itself whenever ``bound - w`` is exact in floating
    point (Sterbenz: whenever ``w`` lies within a factor 2 of the bound), and otherwise within one rounding of
    the update (``ulp(bound - w)``) inside ``[w_min, w_max]``: an additive update cannot always hit the bound
    exactly, and one that would round past it is moved back by single floats.

    Args:
      w_min: the lower bound (NEST's ``Wmin``, default ``-100``), a finite scalar (an array broadcastable to
        every parameter also works); may be traced.
      w_max: the upper bound (NEST's ``Wmax``, default ``100``), finite and ``>= w_min`` (checked where both
        are concrete).

    Returns:
      An ``optax.GradientTransformation`` (stateless) whose ``update`` requires ``params``.
    """
    where = "clip"
    _hyper.finite(where, "w_min", w_min)
    _hyper.finite(where, "w_max", w_max)
    lo_c, hi_c = _hyper._concrete(w_min), _hyper._concrete(w_max)
    if lo_c is not None and hi_c is not None and np.any(lo_c > hi_c):
        raise ValueError(f"{where}: `w_min` must be <= `w_max` (NEST: Wmin <= Wmax), got {w_min!r} > {w_max!r}.")

    def init(params):
        del params
        return optax.EmptyState()

    def one(u, w):
        lo, hi = jnp.asarray(w_min, w.dtype), jnp.asarray(w_max, w.dtype)
        new = w + u
        inside = (new >= lo) & (new <= hi)
        d = jnp.clip(new, lo, hi) - w
        for _ in range(_NUDGES):  # a sum that rounds past a bound: the update one float closer to zero excess
            d = jnp.where(w + d > hi, jnp.nextafter(d, jnp.asarray(-jnp.inf, d.dtype)), d)
            d = jnp.where(w + d < lo, jnp.nextafter(d, jnp.asarray(jnp.inf, d.dtype)), d)
        return jnp.where(inside, u, d.astype(u.dtype))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                f"{where}: the update needs `params` (it clips the updated parameters); call "
                "optimizer.update(grads, opt_state, params)."
            )
        return jax.tree_util.tree_map(one, updates, params), state

    return optax.GradientTransformation(init, update)

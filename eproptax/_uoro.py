"""Unbiased online recurrent optimisation: RTRL's influence kept as a random rank-one estimate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._cell import Cell
from ._contract_check import check_cell
from ._engine import (
    FiringRateReg,
    OnlineRule,
    accum_dtype,
    new_state,
    recurrent_outputs,
    recurrent_size,
    reg_value,
    reg_weights,
    reset,
    scan_rule,
)
from ._hyper import check_reg
from ._plan import StepCost
from ._rtrl import _plan as rtrl_plan
from ._rtrl import _ravel_float
from ._typing import GradFn, LossFn
from ._validate import check_step

EPS = 1e-7  # keeps the scaling finite where a factor is zero (the first step), as in the paper


class UoroTraces(NamedTuple):
    """UORO's rank-one estimate of the influence, ``d carry^t / d theta ~= s theta^T``, per example.

    Attributes:
      s: ``(batch, C)``, the state factor ``s~`` (``C``: the carry's floating variables).
      theta: ``(batch, |theta|)``, the parameter factor ``theta~``.
    """

    s: Any
    theta: Any


class UoroPlan(NamedTuple):
    """UORO's static sizes: ``C + |theta|`` floats per example (plus ``n (1 + |theta|)`` with ``reg``)."""

    carry: int
    theta: int
    carry_bytes: int
    recurrent: int

    def cost(self, batch_size: int, itemsize: int = 4) -> StepCost:
        """The least work of one step: the state read and written once, and the step, its tangent and its
        two cotangents pulled back to the parameters, about ``2 |theta|`` FLOPs each per example."""
        floats = batch_size * (self.carry + self.theta + self.recurrent * (1 + self.theta)) + self.theta + 1
        state = batch_size * self.carry_bytes + itemsize * floats + 4 + 8
        return StepCost(state, 2 * state, 8.0 * batch_size * self.theta)


def _plan(model: Cell, reg: bool) -> UoroPlan:
    """UORO's sizes: RTRL's (:func:`~eproptax._rtrl._plan`), without its influence's columns."""
    sizes = rtrl_plan(model, reg)
    return UoroPlan(sizes.carry, sizes.theta, sizes.carry_bytes, sizes.recurrent)


def _check_key(key) -> None:
    """A single key: a typed ``jax.random.key``, or a raw ``uint32`` one (``jax.random.PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    if not ((typed and jnp.ndim(key) == 0) or (not typed and dtype == jnp.uint32 and jnp.ndim(key) == 1)):
        got = f"{dtype}{list(jnp.shape(key))}" if dtype is not None else repr(key)
        raise ValueError(
            "uoro: `key` must be a jax.random.key (UORO draws random signs at every step): pass init(params, "
            f"batch_size, key=...) or grad_fn(params, inputs, targets, key=...); got {got}."
        )


def online_uoro(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None) -> OnlineRule:
    """The per-step form of :func:`uoro` (see there); ``init(params, batch_size, key=key)`` needs the key."""
    return _online(model, loss, reg, scaled=True)


def _online(model: Cell, loss: LossFn, reg: FiringRateReg | None, scaled: bool) -> OnlineRule:
    """UORO's online rule; ``scaled=False`` drops the variance-reducing ``rho0, rho1`` (both 1)."""
    check_cell("uoro", model, "apply")
    check_reg("uoro", reg)

    def init(params, batch_size, key=None):
        _check_key(key)
        C, P = _ravel_float(model.init_carry(params))[0].size, ravel_pytree(params)[0].size
        dtype = accum_dtype(params)
        traces = UoroTraces(jnp.zeros((batch_size, C), dtype), jnp.zeros((batch_size, P), dtype))
        reg_traces = None
        if reg is not None:
            n = recurrent_size(model, params)
            reg_traces = jnp.zeros((batch_size, n, P), dtype)
        return new_state(model, params, batch_size, traces, jnp.zeros((P,), dtype), reg, reg_traces, key)

    def step(params, state, x, target):
        x, target = check_step("uoro", model, loss, params, state, x, target)
        _check_key(state.key)
        key, sub = jax.random.split(state.key)
        nu = jax.random.rademacher(sub, state.traces.s.shape).astype(state.traces.s.dtype)
        example = lambda *args: _example(model, loss, reg, scaled, params, *args)
        carry, traces, values, out, g, extras = jax.vmap(example)(state.carry, state.traces, nu, x, target)
        state = state._replace(
            carry=carry,
            traces=traces,
            grads=state.grads + jnp.sum(g, 0) / x.shape[0],
            loss=state.loss + jnp.mean(values).astype(state.loss.dtype),
            steps=state.steps + 1,
            key=key,
        )
        if reg is not None:
            z, dz = extras
            state = state._replace(spikes=state.spikes + z, reg_traces=state.reg_traces + dz)
        return state, out

    def result(params, state):
        theta, unravel = ravel_pytree(params)
        grads, value = state.grads, state.loss
        if reg is not None:
            weights = reg_weights(reg, state.spikes, state.steps)
            grads = grads + jnp.einsum("bnp,bn->p", state.reg_traces, weights)
            value = value + reg_value(reg, state.spikes, state.steps)
        return value, unravel(grads.astype(theta.dtype))

    return OnlineRule(init, step, result, reset, plan=_plan(model, reg is not None))


def _example(model: Cell, loss: LossFn, reg, scaled: bool, params, carry, traces, nu, x, target):
    """One example's step: ``(carry, traces, loss value, output, gradient, regulariser extras)``.

    One ``jax.vjp`` of ``theta -> (c', loss_t)`` gives, pulled back twice, ``nu^T dF/dtheta`` and the
    direct ``d loss_t / d theta``; one ``jax.jvp`` of ``c -> (c', loss_t)`` along ``s~`` gives ``J s~`` and
    ``d loss_t / d c . s~``. Jacobian products run in the cell's dtype, the estimate in the state's."""
    c_vec, unravel_c = _ravel_float(carry)
    theta, unravel_p = ravel_pytree(params)

    def run(c, th):
        new, out = model.apply(unravel_p(th), unravel_c(c), x)
        return (_ravel_float(new)[0], loss(out, target)), (new, out)

    (new_vec, value), pull, (new_carry, out) = jax.vjp(lambda th: run(c_vec, th), theta, has_aux=True)
    _, (js, gs) = jax.jvp(lambda c: run(c, theta)[0], (c_vec,), (traces.s.astype(c_vec.dtype),))
    (delta,) = pull((nu.astype(new_vec.dtype), jnp.zeros_like(value)))
    (direct,) = pull((jnp.zeros_like(new_vec), jnp.ones_like(value)))
    dtype = traces.s.dtype
    js, delta = js.astype(dtype), delta.astype(dtype)
    grad = direct.astype(dtype) + gs.astype(dtype) * traces.theta  # d loss_t/d theta: direct + g_c M^{t-1}
    rho0, rho1 = _scales(traces.theta, js, delta, nu) if scaled else (1.0, 1.0)
    new = UoroTraces(rho0 * js + rho1 * nu, traces.theta / rho0 + delta / rho1)
    extras = ()
    if reg is not None:  # z^t reads c^t: its influence is the new estimate's
        z_of = lambda c: recurrent_outputs(model, _ravel_float(new_carry)[1](c))
        z, dz = jax.jvp(z_of, (new_vec,), (new.s.astype(new_vec.dtype),))
        extras = (z.astype(dtype), dz.astype(dtype)[:, None] * new.theta[None])
    return new_carry, new, value, out, grad, extras


def _scales(theta_t, js, delta, nu):
    """The paper's ``rho0, rho1``: each factor's two terms get equal norms, which minimises the variance."""
    norm = jnp.linalg.norm
    rho0 = jnp.sqrt(norm(theta_t) / (norm(js) + EPS)) + EPS
    rho1 = jnp.sqrt(norm(delta) / (norm(nu) + EPS)) + EPS
    return rho0, rho1


def uoro(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None, unroll: int | None = None) -> GradFn:
    """Unbiased online recurrent optimisation (Tallec and Ollivier 2018): RTRL with a random rank-one influence.

    RTRL (:func:`rtrl`) carries ``M^t = d carry^t / d theta``, ``C x |theta|`` per example. UORO keeps an
    unbiased rank-one estimate ``M^t ~= s~ theta~^T`` instead and, with fresh random signs ``nu`` (one per
    state variable, ``E[nu nu^T] = I``) at every step, updates it as::

      loss_t gradient += d loss_t/d theta |direct + (d loss_t/d carry^{t-1} . s~) theta~
      s~      <- rho0 J s~ + rho1 nu                        # J = d carry^t / d carry^{t-1}
      theta~  <- theta~ / rho0 + (nu^T dF/dtheta) / rho1    # dF/dtheta = d carry^t / d theta, direct

    ``rho0 = sqrt(|theta~| / |J s~|)``, ``rho1 = sqrt(|nu^T dF/dtheta| / |nu|)`` (each with ``eps = 1e-7``
    added to the denominator and to the result, which keeps them finite where a factor is zero, as on the
    first step) balance each factor's two terms, which minimises the variance. Unbiased: the product of the
    new factors is ``J s~ theta~^T + nu nu^T dF/dtheta`` plus two cross terms; the first is ``J`` times the
    last estimate, the second has mean ``dF/dtheta`` and the cross terms mean zero, since ``nu -> -nu``
    flips their sign while ``rho1`` is symmetric in ``nu``. By induction ``E[s~ theta~^T] = M^t``, and the
    gradient, linear in the estimate, is unbiased: its mean over keys is :func:`rtrl`'s gradient (so
    :func:`bptt`'s). What it drops: nothing on average; in each estimate, all of ``M^t`` but one random
    rank-one slice, so a single key's gradient is never exact, and its variance is large: on ``T = 50``
    a single estimate's error is several times the gradient's norm (``benchmarks/uoro_variance.py``).
    The firing-rate regulariser's term is estimated with the same factors.

    Works on every cell (only ``model.apply`` is differentiated). Memory per example ``O(C + |theta|)``,
    independent of ``T`` (with ``reg``, plus ``n_rec x |theta|`` per example, RTRL-sized); time per step
    about three forward steps (one ``jax.jvp`` and two pullbacks of one ``jax.vjp``).

    Args:
      model: a :class:`~eproptax.Cell`.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      reg: optional :class:`~eproptax.FiringRateReg`.
      unroll: time steps per iteration of the whole-sequence scan (``lax.scan``'s ``unroll``): the speed,
        not the result. ``None``, the default: the platform's (:data:`eproptax.DEFAULT_UNROLL`).

    Returns:
      ``grad_fn(params, inputs, targets, *, key) -> (loss, grads)``; ``key``, a ``jax.random.key``, is
      required (another key, another estimate; ``jax.vmap`` over keys averages them).

    Example::

      grad_fn = ep.uoro(model, loss)          # its mean over keys is ep.rtrl(model, loss)'s gradient
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets, key=jax.random.key(0))

    References:
      Tallec and Ollivier, "Unbiased Online Recurrent Optimization", ICLR 2018.
    """
    return scan_rule("uoro", model, loss, online_uoro(model, loss, reg=reg), unroll)

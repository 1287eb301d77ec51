"""Unbiased online recurrent optimisation: RTRL's influence kept as a random rank-one estimate."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _tricks as tricks
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
from ._jacobians import read_leaves
from ._plan import StepCost
from ._rtrl import _plan as rtrl_plan
from ._rtrl import _ravel_float
from ._typing import GradFn, LossFn
from ._validate import check_key, check_step

EPS = 1e-7  # keeps the scaling finite where a factor is zero (the first step), as in the paper


class UoroTraces(NamedTuple):
    """UORO's rank-one estimate of the influence, ``d carry^t / d theta ~= s theta^T``, per example.

    Attributes:
      s: ``(batch, C)``, the state factor ``s~`` (``C``: the carry's floating variables; zero on those
        no step reads).
      theta: the parameter factor ``theta~``, a tree shaped as the parameters, each leaf with a leading
        batch axis (``|theta|`` floats per example).
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
        two cotangents pulled back to the parameters (one pullback of both), about ``2 |theta|`` FLOPs each
        per example."""
        floats = batch_size * (self.carry + self.theta + self.recurrent * (1 + self.theta)) + self.theta + 1
        state = batch_size * self.carry_bytes + itemsize * floats + 4 + 8
        return StepCost(state, 2 * state, 8.0 * batch_size * self.theta)


def _plan(model: Cell, reg: bool) -> UoroPlan:
    """UORO's sizes: RTRL's (:func:`~eproptax._rtrl._plan`), without its influence's columns."""
    sizes = rtrl_plan(model, reg)
    return UoroPlan(sizes.carry, sizes.theta, sizes.carry_bytes, sizes.recurrent)


def online_uoro(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None) -> OnlineRule:
    """The per-step form of :func:`uoro` (see there); ``init(params, batch_size, key=key)`` needs the key."""
    return _online(model, loss, reg, scaled=True)


def _shapes(tree, batched: bool = False):
    """``tree``'s leaves as ``jax.ShapeDtypeStruct`` (``batched``: of one example, the leading axis dropped)."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[batched:], jnp.result_type(a)), tree)


def read_mask(model: Cell, params, carry, x, reg: bool) -> np.ndarray:
    """``1`` on the raveled carry's variables (one example's, :func:`~eproptax._rtrl._ravel_float`'s order)
    that a step reads, ``0`` elsewhere: those ``model.apply`` reads and, with ``reg``, those
    :func:`~eproptax._engine.recurrent_outputs` reads (:func:`~eproptax._jacobians.read_leaves`; from shapes,
    so ``params``, ``carry`` (one example) and ``x`` (one example) may be shapes)."""
    params, carry, x = _shapes(params), _shapes(carry), _shapes(x)
    read = read_leaves(lambda c, p, x: model.apply(p, c, x), carry, params, x)
    if reg:
        read = tuple(a or b for a, b in zip(read, read_leaves(lambda c: recurrent_outputs(model, c), carry)))
    floats = [leaf for leaf in jax.tree_util.tree_leaves(carry) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return np.concatenate([np.full(leaf.size, float(r)) for leaf, r in zip(floats, read)] + [np.zeros(0)])


def _signs(key, shape, dtype):
    """``(next key, signs)``: independent random signs (``+-1``, each with probability 1/2) of ``shape``,
    and the key that follows, from one ``jax.random.split`` of ``key``.

    The split's extra keys are random words, every bit of which gives one sign: one hash of a few words per
    step, where ``jax.random.rademacher`` after a split hashes twice (one word per sign): on the CPU each
    hash is a loop of its own."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    words_per_key = (jax.random.key_data(key) if typed else key).size
    n = math.prod(shape)
    keys = jax.random.split(key, 1 + -(-n // (32 * words_per_key)))
    words = (jax.random.key_data(keys[1:]) if typed else keys[1:]).reshape(-1).astype(jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)[None, :]) & jnp.uint32(1)
    return keys[0], (1 - 2 * bits.reshape(-1)[:n].astype(dtype)).reshape(shape)


def _online(model: Cell, loss: LossFn, reg: FiringRateReg | None, scaled: bool, masked: bool = True) -> OnlineRule:
    """UORO's online rule; ``scaled=False`` drops the variance-reducing ``rho0, rho1`` (both 1);
    ``masked=False`` draws signs on every floating carry variable, read or not (for the tests)."""
    check_cell("uoro", model, "apply")
    check_reg("uoro", reg)

    def init(params, batch_size, key=None):
        check_key("uoro", key)
        C = _ravel_float(model.init_carry(params))[0].size
        dtype = accum_dtype(params)
        theta = jax.tree_util.tree_map(lambda p: jnp.zeros((batch_size,) + jnp.shape(p), dtype), params)
        traces = UoroTraces(jnp.zeros((batch_size, C), dtype), theta)
        grads = jax.tree_util.tree_map(lambda p: jnp.zeros(jnp.shape(p), dtype), params)
        reg_traces = None
        if reg is not None:
            n = recurrent_size(model, params)
            reg_traces = jax.tree_util.tree_map(lambda p: jnp.zeros((batch_size, n) + jnp.shape(p), dtype), params)
        return new_state(model, params, batch_size, traces, grads, reg, reg_traces, key)

    def step(params, state, x, target):
        x, target = check_step("uoro", model, loss, params, state, x, target)
        check_key("uoro", state.key)
        key, nu = _signs(state.key, state.traces.s.shape, state.traces.s.dtype)
        mask = None
        if masked:
            mask = read_mask(model, params, _shapes(state.carry, True), _shapes(x, True), reg is not None)
            mask = None if mask.all() else jnp.asarray(mask, nu.dtype)
            nu = nu if mask is None else nu * mask[None]
        example = lambda *args: _example(model, loss, reg, scaled, mask, params, *args)
        carry, s, values, out, direct, delta, gs, rho0, rho1, extras = jax.vmap(example)(
            state.carry, state.traces, nu, x, target
        )
        # d loss_t / d theta: the direct term plus (d loss_t / d c^{t-1} . s~) theta~, summed over the batch
        each = lambda w, t: w.reshape(w.shape + (1,) * (t.ndim - 1))  # one number per example, against t
        add = lambda G, d, t: G + jnp.sum(d + each(gs, t) * t, 0) / x.shape[0]
        grads = jax.tree_util.tree_map(add, state.grads, direct, state.traces.theta)
        rho0 = rho0 + tricks.written_after(grads)  # the gradient reads the old theta~ first: updated in place
        theta = jax.tree_util.tree_map(lambda t, d: t / each(rho0, t) + d / each(rho1, t), state.traces.theta, delta)
        state = state._replace(
            carry=carry,
            traces=UoroTraces(s, theta),
            grads=grads,
            loss=state.loss + jnp.mean(values).astype(state.loss.dtype),
            steps=state.steps + 1,
            key=key,
        )
        if reg is not None:
            z, dz = extras
            reg_traces = jax.tree_util.tree_map(
                lambda r, t: r + _lead(dz, t.ndim + 1) * t[:, None], state.reg_traces, theta
            )
            state = state._replace(spikes=state.spikes + z, reg_traces=reg_traces)
        return state, out

    def result(params, state):
        grads, value = state.grads, state.loss
        if reg is not None:
            weights = reg_weights(reg, state.spikes, state.steps)
            add = lambda g, r: g + jnp.tensordot(weights, r, axes=((0, 1), (0, 1)))
            grads = jax.tree_util.tree_map(add, grads, state.reg_traces)
            value = value + reg_value(reg, state.spikes, state.steps)
        return value, jax.tree_util.tree_map(lambda g, p: g.astype(jnp.result_type(p)), grads, params)

    return OnlineRule(init, step, result, reset, plan=_plan(model, reg is not None))


def _lead(w, ndim):
    """``w`` of shape ``(b, n)`` reshaped to broadcast against an array of ``ndim`` dimensions led by ``(b, n)``."""
    return w.reshape(w.shape + (1,) * (ndim - 2))


def _norm(tree):
    """The Euclidean norm of all of ``tree``'s leaves together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def _example(model: Cell, loss: LossFn, reg, scaled: bool, mask, params, carry, traces, nu, x, target):
    """One example's step: ``(carry, s~, loss value, output, direct d loss_t / d theta, nu^T dF/dtheta,
    d loss_t / d c^{t-1} . s~, rho0, rho1, regulariser extras)``; the caller updates ``theta~`` and the gradient.

    One ``jax.vjp`` of ``theta -> (c', loss_t)``, pulled back once along two stacked cotangents, gives
    ``nu^T dF/dtheta`` and the direct ``d loss_t / d theta``; one ``jax.jvp`` of ``c -> (c', loss_t)`` along
    ``s~`` gives ``J s~`` and ``d loss_t / d c . s~``. Jacobian products run in the cell's dtype, the
    estimate in the state's; the parameter factor and the gradient stay trees shaped as ``params``."""
    c_vec, unravel_c = _ravel_float(carry)
    tree_map = jax.tree_util.tree_map

    def run(c, p):
        new, out = model.apply(p, unravel_c(c), x)
        return (_ravel_float(new)[0], loss(out, target)), (new, out)

    (new_vec, value), pull, (new_carry, out) = jax.vjp(lambda p: run(c_vec, p), params, has_aux=True)
    _, (js, gs) = jax.jvp(lambda c: run(c, params)[0], (c_vec,), (traces.s.astype(c_vec.dtype),))
    cot_c = jnp.stack([nu.astype(new_vec.dtype), jnp.zeros_like(new_vec)])
    cot_v = jnp.stack([jnp.zeros_like(value), jnp.ones_like(value)])
    (pulled,) = jax.vmap(pull)((cot_c, cot_v))
    dtype = traces.s.dtype
    delta, direct = tree_map(lambda a: a[0].astype(dtype), pulled), tree_map(lambda a: a[1].astype(dtype), pulled)
    js, gs = js.astype(dtype), gs.astype(dtype)
    if mask is not None:
        js = js * mask  # the unread variables' rows: never used, kept out of the norms
    rho0, rho1 = _scales(traces.theta, js, delta, nu) if scaled else (jnp.ones((), dtype), jnp.ones((), dtype))
    s = rho0 * js + rho1 * nu
    extras = ()
    if reg is not None:  # z^t reads c^t: its influence is the new estimate's
        z_of = lambda c: recurrent_outputs(model, _ravel_float(new_carry)[1](c))
        z, dz = jax.jvp(z_of, (new_vec,), (s.astype(new_vec.dtype),))
        extras = (z.astype(dtype), dz.astype(dtype))
    return new_carry, s, value, out, direct, delta, gs, rho0, rho1, extras


def _scales(theta_t, js, delta, nu):
    """The paper's ``rho0, rho1``: each factor's two terms get equal norms, which minimises the variance."""
    rho0 = jnp.sqrt(_norm(theta_t) / (jnp.linalg.norm(js) + EPS)) + EPS
    rho1 = jnp.sqrt(_norm(delta) / (jnp.linalg.norm(nu) + EPS)) + EPS
    return rho0, rho1


def uoro(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None, unroll: int | None = None) -> GradFn:
    """Unbiased online recurrent optimisation (Tallec and Ollivier 2018): RTRL with a random rank-one influence.

    RTRL (:func:`rtrl`) carries ``M^t = d carry^t / d theta``, ``C x |theta|`` per example. UORO keeps an
    unbiased rank-one estimate ``M^t ~= s~ theta~^T`` instead and, with fresh random signs ``nu`` (one per
    state variable that a step reads, ``E[nu nu^T] = I`` on those, zero elsewhere) at every step, updates
    it as::

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

    Signs only where they matter: a carry variable that no step reads (a stateless readout's output, which
    each step recomputes) gets no sign and a zero row in ``s~`` (so it stays out of the norms too), found
    once per trace from the jaxpr of ``model.apply`` (and, with ``reg``, of the recurrent outputs). Still
    unbiased for all the gradient uses: ``J`` and ``d loss_t / d carry^{t-1}`` have zero columns there, so
    the estimate of the read rows of ``M^t`` follows the same induction. Signs on them would add variance
    only (benchmarks/README.md, "Peers", compares the mean over keys with braintrace's).

    Works on every cell (only ``model.apply`` is differentiated). Memory per example ``O(C + |theta|)``,
    independent of ``T`` (with ``reg``, plus ``n_rec x |theta|`` per example, RTRL-sized); time per step
    about three forward steps (one ``jax.jvp`` and one ``jax.vjp`` pulled back along two cotangents at
    once), the parameter factor and the gradient updated leaf by leaf, and one random hash per step.

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

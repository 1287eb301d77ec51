"""KF-RTRL: RTRL's influence on each recurrent layer kept as a random Kronecker product of two factors."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._cell import Cell, float_state, layers_of, with_float_state
from ._contract import result
from ._engine import FiringRateReg, OnlineRule, reset, scan_rule
from ._forward import forward
from ._plan import StepCost, TracePlan, is_shape, same_step_plan, state_shapes
from ._traces import init_state, readout_step
from ._typing import GradFn, LossFn
from ._validate import check_key, check_step

EPS = 1e-7  # keeps the scales finite where a factor is zero (the first step), as UORO's


class KfTraces(NamedTuple):
    """KF-RTRL's factors, per example (batch first), a tuple over the recurrent layers each.

    Attributes:
      u: ``(B, m)``, the presynaptic factor ``u``, ``m = n_in + n + 1``.
      A: ``(B, n, s, n, k)``, the state factor: ``A[j, c, l, g]`` estimates ``d h[j, c] / d a[l, g]``, so
        that ``d h[j, c] / d W[l, g, i] ~= A[j, c, l, g] u[i]``.
      readout: the readout's own (exact) e-prop trace, as :func:`eprop` keeps it, or ``()``.
    """

    u: tuple
    A: tuple
    readout: Any


class KfPlan(NamedTuple):
    """KF-RTRL's static plan: the e-prop plan it reads its blocks and signals from."""

    traces: TracePlan

    def cost(self, batch_size: int, itemsize: int = 4) -> StepCost:
        """The least work of one step: the state read and written once (and the key); the ``n k`` columns
        of ``A`` pushed through the layer's recurrent synapse, ``2 n^3 k^2`` FLOPs per layer and example,
        the signal met by ``A``, ``2 n^2 s k``, and the gradient's outer product, ``2 n k m``."""
        p = self.traces
        layers = p.layers[: p.R]
        trace_floats = batch_size * sum(d.m + d.n * d.s * d.n * d.k for d in layers)
        shapes = state_shapes(p, batch_size)
        leaves = jax.tree_util.tree_leaves((shapes.grads, shapes.traces.readout), is_leaf=is_shape)
        other = sum(math.prod(shape) for shape in leaves)
        state = batch_size * p.carry_bytes + itemsize * (trace_floats + other + p.top_params + 1) + 4 + 8
        flops = batch_size * sum(
            2.0 * d.n**3 * d.k**2 + 2.0 * d.n * d.n * d.s * d.k + 2.0 * d.n * d.k * d.m for d in layers
        )
        return StepCost(state, 2 * state, flops)


def _check_reg(reg) -> None:
    if reg is not None:
        raise ValueError(
            "kf_rtrl: `reg` is not supported: the firing-rate term's time sum needs RTRL's n x |theta| per "
            f"example; use ep.uoro or ep.rtrl. Got reg={reg!r}."
        )


def _push(layer: Cell, params, h_prev, u, A):
    """``H A`` for one example: the columns of ``A`` ``(n, s, n, k)``, each a tangent of the state, pushed
    through the layer's whole step ``h_prev -> dynamics(h_prev, synapse(params, u, output(h_prev)))`` (its
    implicit recurrence and its explicit one through the recurrent weights) by ``jax.jvp``, vmapped."""
    hf = float_state(h_prev)
    n, s, n_a, k = A.shape

    def step(hf):
        h = with_float_state(h_prev, hf)
        return float_state(layer.dynamics(h, layer.synapse(params, u, layer.output(h))))

    columns = jnp.moveaxis(A.reshape(n, s, n_a * k), -1, 0).astype(hf.dtype)  # (n k, n, s)
    pushed = jax.vmap(lambda t: jax.jvp(step, (hf,), (t,))[1])(columns)
    return jnp.moveaxis(pushed, 0, -1).reshape(n, s, n_a, k).astype(A.dtype)


def _norm(x):
    """Per example: the Frobenius norm of ``x`` over all but its leading (batch) axis."""
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim))))


def online_kf_rtrl(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None) -> OnlineRule:
    """The per-step form of :func:`kf_rtrl` (see there); ``init(params, batch_size, key=key)`` needs the key."""
    _check_reg(reg)
    plan = same_step_plan(model, feedback="symmetric", reg=False, where="kf_rtrl")
    layers = layers_of(model)
    fwd = lambda params, carry, x, target: forward(plan, model, loss, None, params, carry, x, target)

    def init(params, batch_size, key=None):
        check_key("kf_rtrl", key)
        ds = plan.layers[: plan.R]
        traces = lambda dtype, readout: KfTraces(
            tuple(jnp.zeros((batch_size, d.m), dtype) for d in ds),
            tuple(jnp.zeros((batch_size, d.n, d.s, d.n, d.k), dtype) for d in ds),
            readout,
        )
        return init_state(plan, model, None, params, batch_size, key, traces)

    def step(params, state, x, target):
        x, target = check_step("kf_rtrl", model, loss, params, state, x, target)
        check_key("kf_rtrl", state.key)
        carry, steps, top, values, y, sig = jax.vmap(fwd, in_axes=(None, 0, 0, 0))(params, state.carry, x, target)
        old, batch, grads = state.traces, x.shape[0], list(state.grads)
        dtype = state.loss.dtype  # the accumulators' (accum_dtype)
        key, sub = jax.random.split(state.key)
        signs = jax.random.rademacher(sub, (batch, plan.R, 2), dtype)  # c1, c2 per example and layer
        us, As = [], []
        for p in range(plan.R):
            layer, d, f = layers[p], plan.layers[p], steps[p]
            push = lambda h, u, A: _push(layer, params[p], h, u, A)
            HA = jax.vmap(push)(state.carry[p], f.u, old.A[p])  # (B, n, s, n, k)
            dfda, v = f.blk.dfda.astype(dtype), f.v.astype(dtype)
            eye = jnp.eye(d.n, dtype=dtype)[None, :, None, :, None]
            fresh = dfda[:, :, :, None, :] * eye  # Afresh[j, c, l, g] = delta_jl dh[j, c] / da[j, g]
            p1 = jnp.sqrt(_norm(HA) / (_norm(old.u[p]) + EPS)) + EPS
            p2 = jnp.sqrt(_norm(dfda) / (_norm(v) + EPS)) + EPS
            c1, c2 = signs[:, p, 0], signs[:, p, 1]
            us.append((c1 * p1)[:, None] * old.u[p] + (c2 * p2)[:, None] * v)
            each = lambda w: w[:, None, None, None, None]
            As.append(each(c1 / p1) * HA + each(c2 / p2) * fresh)
            w = jnp.einsum("bjc,bjclg->blg", sig.delta[p].astype(dtype), As[p])  # the new factors meet delta
            grads[p] = grads[p] + jnp.einsum("blg,bi->lgi", w, us[p]) / batch
        readout, grads[plan.R] = readout_step(plan, grads[plan.R], sig, top, old.readout, batch)
        state = state._replace(
            carry=carry,
            traces=KfTraces(tuple(us), tuple(As), readout),
            grads=tuple(grads),
            loss=state.loss + jnp.mean(values).astype(state.loss.dtype),
            steps=state.steps + 1,
            key=key,
        )
        return state, y

    return OnlineRule(
        init, step, lambda params, state: result(plan, layers, None, params, state), reset, plan=KfPlan(plan)
    )


def kf_rtrl(model: Cell, loss: LossFn, *, reg: FiringRateReg | None = None, unroll: int | None = None) -> GradFn:
    """KF-RTRL (Mujika, Meier and Steger 2018): RTRL's influence kept as a random Kronecker product.

    RTRL (:func:`rtrl`) carries, per recurrent layer with effective weights ``W`` ``(n, k, m)``
    (``a = W v``, ``v = [x_t, z_{t-1}, 1]``), the influence ``G = dh/dW`` ``(n, s, n, k, m)``, updated as
    ``G' = H G + F`` with ``H = dh'/dh`` the layer's whole one-step state Jacobian (its implicit recurrence
    ``D`` and its explicit one through the recurrent weights) and ``F = v (x) Afresh``,
    ``Afresh[j, c, l, g] = delta_jl dh[j, c] / da[j, g]``. KF-RTRL keeps a Kronecker factorisation
    ``G[j, c, l, g, i] ~= A[j, c, l, g] u[i]`` instead and, with two fresh random signs ``c1, c2`` per
    example and step, updates it as::

      u' = c1 p1 u + c2 p2 v                                 # (m,)
      A' = c1 (H A) / p1 + c2 Afresh / p2                    # (n, s, n, k); H A: n k jvps of the step
      grad W[l, g, i] += sum_{j, c} delta[j, c] A'[j, c, l, g] u'[i]

    with ``delta = L dz/dh`` e-prop's same-step learning signal in h-space and ``p1 = sqrt(|H A| / |u|)``,
    ``p2 = sqrt(|Afresh| / |v|)`` (Frobenius norms, each with ``eps = 1e-7`` added to the denominator and to
    the result, as UORO's), which give each term's two factors equal norms and so minimise the variance.
    Unbiased: ``E[u' (x) A'] = u (x) H A + v (x) Afresh`` (the cross terms have sign ``c1 c2``, mean zero),
    so by induction ``E[u (x) A] = G`` and the gradient, linear in the factors, is unbiased: on one
    recurrent layer under a stateless readout its mean over keys is :func:`rtrl`'s gradient. What it
    drops: on a stack, each layer's factors cover its own state only (the influence of a layer's weights on
    the layers above is dropped, as e-prop's ``depth="spatial"``), and the signal passes down at the same
    step; under a leaky readout, the signal is the same-step ``d loss_t / d z_t`` (the readout's leak,
    which would filter the influence, is dropped). The readout's own gradient is exact, as in e-prop. A
    single key's estimate is noisy (less than UORO's, whose rank-one factor spans all parameters).

    Memory per example ``O(m + n^2 s k)`` per layer (RTRL: ``O(n^2 s k m)``); time per step ``O(n^3 k^2)``
    per layer (the ``n k`` columns of ``A`` pushed through the step by one vmapped ``jax.jvp``), plus the
    gradient's outer product ``O(n k m)`` and one random draw of ``2 R`` signs per example.

    Args:
      model: ``ep.cells.stack(recurrent layers..., readout)``, every recurrent layer a neuron cell.
      loss: ``loss(outputs_t, targets_t) -> scalar``.
      reg: must be ``None``: the firing-rate regulariser's time sum needs RTRL's ``n x |theta|`` per example
        (use :func:`uoro` or :func:`rtrl`); accepted so that every rule takes the keyword.
      unroll: time steps per iteration of the whole-sequence scan: the speed, not the result.

    Returns:
      ``grad_fn(params, inputs, targets, *, key) -> (loss, grads)``; ``key``, a ``jax.random.key``, is
      required (another key, another estimate; ``jax.vmap`` over keys averages them).

    Example::

      grad_fn = ep.kf_rtrl(model, loss)       # its mean over keys is ep.rtrl(model, loss)'s gradient
      loss_value, grads = jax.jit(grad_fn)(params, inputs, targets, key=jax.random.key(0))

    References:
      Mujika, Meier and Steger, "Approximating Real-Time Recurrent Learning with Random Kronecker Factors",
      NeurIPS 2018.
    """
    online = online_kf_rtrl(model, loss, reg=reg)
    return scan_rule("kf_rtrl", model, loss, online, unroll)

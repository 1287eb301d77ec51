"""OSTL (Bohnstingl et al. 2022) is ``ep.snap(n=1)``: its equations, written out in a Python loop, agree.

OSTL splits the gradient of a deep recurrent network into a spatial part (the same-step learning signal,
passed down through the layers above) and a temporal part (each layer's eligibility, carried through the
neuron's own Jacobian ``diag(ds^t / ds^{t-1})``, its self-recurrent synapse included). The reference here
takes, at every step and for every layer, the full Jacobian of the layer's step ``s^{t-1} -> s^t`` by
``jax.jacfwd`` and keeps each neuron's own block, and the immediate ``ds^t / dtheta`` by ``jax.jacfwd`` of
the layer's parameters; the learning signal is ``jax.grad`` of the step's loss by the layer's new state,
the layers above run at the same step. Float64, a GRU under a tanh RNN (every recurrent kernel's diagonal,
the autapses, kept) and a stateless readout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from helpers import assert_close, flat, rel_err

import eproptax as ep
from eproptax._cell import float_state, with_float_state

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 3, 4, 2, 5, 2


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def reference(model, params, inputs, targets):
    """OSTL's gradient, one example and one step at a time."""
    *hidden, readout = model.layers
    R = len(hidden)

    def layer_step(l, p, h, u):  # one layer's new state from its previous one and its input
        return hidden[l].dynamics(h, hidden[l].synapse(p, u, hidden[l].output(h)))

    def loss_from(l, p_all, hf_new, hs_new, z_prev, carry, y):  # the step's loss from layer l's new state
        z = hidden[l].output(with_float_state(hs_new[l], hf_new))
        for m in range(l + 1, R):
            z = hidden[m].output(hidden[m].dynamics(carry[m], hidden[m].synapse(p_all[m], z, z_prev[m])))
        return mse(readout.apply(p_all[R], carry[R], z)[1], y)

    @jax.jit
    def step(params, carry, traces, x, y):
        u, hs_new, grads, new_traces = x, [], [], []
        for l in range(R):
            h = carry[l]
            flat = lambda hf, p, h=h, l=l, u=u: float_state(layer_step(l, p, with_float_state(h, hf), u))
            hf = float_state(h)
            J = jax.jacfwd(flat)(hf, params[l])  # (n, s, n, s): the neuron's own block, autapse included
            own = jnp.stack([J[j, :, j, :] for j in range(N)])
            immediate = jax.jacfwd(flat, argnums=1)(hf, params[l])  # (n, s) + each parameter's shape
            new_traces.append(
                jax.tree_util.tree_map(lambda e, d: jnp.einsum("jce,je...->jc...", own, e) + d, traces[l], immediate)
            )
            hs_new.append(layer_step(l, params[l], h, u))
            u = hidden[l].output(hs_new[-1])
        z_prev = [hidden[m].output(carry[m]) for m in range(R)]
        for l in range(R):
            delta = jax.grad(loss_from, argnums=2)(l, params, float_state(hs_new[l]), hs_new, z_prev, carry, y)
            grads.append(jax.tree_util.tree_map(lambda e: jnp.einsum("jc,jc...->...", delta, e), new_traces[l]))
        z = hidden[R - 1].output(hs_new[-1])
        g_out = jax.grad(lambda p: mse(readout.apply(p, carry[R], z)[1], y))(params[R])
        new_carry = tuple(hs_new) + (readout.apply(params[R], carry[R], z)[0],)
        return new_carry, tuple(new_traces), tuple(grads) + (g_out,)

    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    for b in range(inputs.shape[0]):
        carry = model.init_carry(params)
        traces = tuple(
            jax.tree_util.tree_map(lambda w: jnp.zeros(float_state(carry[l]).shape + w.shape), params[l])
            for l in range(R)
        )
        for t in range(inputs.shape[1]):
            carry, traces, g = step(params, carry, traces, inputs[b, t], targets[b, t])
            grads = jax.tree_util.tree_map(lambda acc, g: acc + g / inputs.shape[0], grads, g)
    return grads


def test_ostl_is_snap_1_on_a_deep_stack():
    model = ep.cells.stack(
        ep.cells.gru(N_IN, N, dtype=F64), ep.cells.rnn(N, N, dtype=F64), ep.cells.readout(N, N_OUT, dtype=F64)
    )
    params = model.init(jax.random.key(7))
    inputs = jax.random.normal(jax.random.key(8), (BATCH, T, N_IN), F64)
    targets = jax.random.normal(jax.random.key(9), (BATCH, T, N_OUT), F64)
    _, grads = jax.jit(ep.snap(model, mse, n=1))(params, inputs, targets)
    assert_close(grads, reference(model, params, inputs, targets), 1e-12, "snap(n=1) vs OSTL's equations")
    _, eprop = jax.jit(ep.eprop(model, mse))(params, inputs, targets)
    assert rel_err(flat(grads[:2]), flat(eprop[:2])) > 1e-4  # the autapses matter: OSTL is not e-prop here

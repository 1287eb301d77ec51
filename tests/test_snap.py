"""SnAp-1 (``ep.snap``) against an independent masked RTRL written here, and against e-prop.

The reference runs RTRL on the recurrent layer's flattened state with ``jax.jacfwd`` in a Python loop, and
after every step zeroes each influence entry ``(neuron j's state, parameter theta)`` unless ``theta`` drives
neuron ``j`` (found from the synapse's Jacobian at random inputs: no layout of the parameters is assumed).
The readout's own influence is carried exactly through its own state, fed by the masked influence at the
same step, and met by the loss's error: the learning signal of step ``t`` meets the masked influence of
the new state, as in e-prop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import eproptax as ep
from eproptax._cell import float_state, with_float_state

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 3, 4, 2, 7, 2


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def network(cell: str, readout: str, autapses: bool = True):
    options = {"lif": dict(autapses=autapses), "alif": dict(autapses=autapses, beta=0.05, tau_adapt=10.0)}
    make = {"lif": ep.cells.lif, "alif": ep.cells.alif, "rnn": ep.cells.rnn, "gru": ep.cells.gru, "lstm": ep.cells.lstm}
    hidden = make[cell](N_IN, N, dtype=F64, **options.get(cell, {}))
    top = (ep.cells.leaky_readout if readout == "leaky" else ep.cells.readout)(N, N_OUT, dtype=F64)
    model = ep.cells.stack(hidden, top)
    params = model.init(jax.random.key(3))
    if cell in ("lif", "alif"):  # strong enough inputs that the neurons spike
        params = ({**params[0], "w_in": 6.0 * params[0]["w_in"], "w_rec": 2.0 * params[0]["w_rec"]}, params[1])
    inputs = (jax.random.uniform(jax.random.key(4), (BATCH, T, N_IN)) < 0.5).astype(F64)
    targets = jnp.sin(jnp.arange(T, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))
    return model, params, inputs, targets


def owners(layer, params, theta_of):
    """``(n, |theta|)``: whether each parameter drives each neuron's synaptic input (random probes)."""
    _, unravel = ravel_pytree(params)
    a_of = lambda th, x, z: layer.synapse(unravel(th), x, z)
    x, z = jax.random.normal(jax.random.key(5), (N_IN,), F64), jax.random.normal(jax.random.key(6), (N,), F64)
    jac = jax.jacfwd(a_of)(theta_of, x, z)  # (n, k, |theta|)
    return jnp.any(jac != 0, axis=1)


def reference(model, params, inputs, targets):
    """The batch-mean gradient for the recurrent layer's parameters, SnAp-1 by its definition: a scan over
    time of RTRL on the flattened state, masked after every step, vmapped over the examples."""
    hidden, top = model.layers
    theta, unravel = ravel_pytree(params[0])
    h0, r0 = model.init_carry(params)
    s, r_shape = float_state(h0).shape[-1], float_state(r0).shape
    row_owner = jnp.repeat(owners(hidden, params[0], theta), s, axis=0)  # rows (j, c), neuron-major

    def step(carry, xy):
        h, r, M, Y, grad = carry
        x, y_t = xy
        f = lambda v, th: float_state(hidden.apply(unravel(th), with_float_state(h, v.reshape(N, s)), x)[0])
        J_h, J_th = jax.jacfwd(lambda v, th: f(v, th).reshape(-1), argnums=(0, 1))(float_state(h).reshape(-1), theta)
        M = jnp.where(row_owner, J_h @ M + J_th, 0.0)
        h = hidden.apply(params[0], h, x)[0]
        z_of = lambda v: hidden.output(with_float_state(h, v.reshape(N, s)))
        r_new = lambda rv, v: float_state(top.apply(params[1], with_float_state(r, rv.reshape(r_shape)), z_of(v))[0])
        A, C = jax.jacfwd(lambda rv, v: r_new(rv, v).reshape(-1), argnums=(0, 1))(
            float_state(r).reshape(-1), float_state(h).reshape(-1)
        )
        Y = A @ Y + C @ M
        r, y = top.apply(params[1], r, z_of(float_state(h).reshape(-1)))
        dy_dr = jax.jacfwd(lambda rv: top.output(with_float_state(r, rv.reshape(r_shape))))(float_state(r).reshape(-1))
        return (h, r, M, Y, grad + jax.grad(mse)(y, y_t) @ dy_dr @ Y), None

    def one(x_seq, y_seq):
        zeros = lambda rows: jnp.zeros((rows, theta.size), F64)
        init = (h0, r0, zeros(N * s), zeros(float_state(r0).size), jnp.zeros_like(theta))
        return jax.lax.scan(step, init, (x_seq, y_seq))[0][-1]

    return unravel(jnp.mean(jax.jit(jax.vmap(one))(inputs, targets), axis=0))


def assert_tree_close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        scale = max(float(np.max(np.abs(np.asarray(y)))), 1e-300)
        assert float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) / scale <= tol


CASES = [("rnn", "linear"), ("gru", "linear"), ("lstm", "leaky"), ("alif", "leaky"), ("lif", "linear")]


@pytest.mark.parametrize("cell, readout", CASES, ids=[f"{c}+{r}" for c, r in CASES])
def test_snap1_is_masked_rtrl(cell, readout):
    """Autapses on (the classic cells always have a recurrent diagonal): SnAp-1 equals the masked RTRL."""
    model, params, inputs, targets = network(cell, readout)
    _, grads = jax.jit(ep.snap(model, mse))(params, inputs, targets)
    assert_tree_close(grads[0], reference(model, params, inputs, targets), 1e-10)


@pytest.mark.parametrize("cell, readout", [("lif", "leaky"), ("alif", "linear")], ids=["lif+leaky", "alif+linear"])
def test_snap1_is_eprop_without_autapses(cell, readout):
    model, params, inputs, targets = network(cell, readout, autapses=False)
    snap = jax.jit(ep.snap(model, mse))(params, inputs, targets)
    eprop = jax.jit(ep.eprop(model, mse))(params, inputs, targets)
    assert_tree_close(snap, eprop, 1e-12)


def test_snap1_keeps_the_autapse_that_eprop_drops():
    model, params, inputs, targets = network("rnn", "linear")
    snap = jax.jit(ep.snap(model, mse))(params, inputs, targets)[1][0]
    eprop = jax.jit(ep.eprop(model, mse))(params, inputs, targets)[1][0]
    assert not np.allclose(ravel_pytree(snap)[0], ravel_pytree(eprop)[0], rtol=1e-6)


def test_online_steps_and_chunks_equal_the_whole_sequence():
    model, params, inputs, targets = network("gru", "leaky")
    whole = jax.jit(ep.snap(model, mse, chunk=1))(params, inputs, targets)
    chunked = jax.jit(ep.snap(model, mse, chunk=3))(params, inputs, targets)
    online = ep.online.snap(model, mse)
    state = online.init(params, BATCH)
    step = jax.jit(online.step)
    for t in range(T):
        state, _ = step(params, state, inputs[:, t], targets[:, t])
    assert_tree_close(online.result(params, state), whole, 1e-12)
    assert_tree_close(chunked, whole, 1e-12)


def test_only_n_1():
    model, *_ = network("rnn", "linear")
    with pytest.raises(ValueError, match="`n` must be 1"):
        ep.snap(model, mse, n=2)

"""pp-prop (``ep.pp_prop``) against e-prop on LIF and against a hand-written loop of its equations.

The reference runs one example at a time in Python: at every step it takes the full Jacobians of the
cell's ``dynamics`` by ``jax.jacfwd`` (keeping each neuron's own block), filters the presynaptic vector
``[x, z_prev, 1]`` and the postsynaptic ``dh/da`` as pp-prop says, meets them with ``d loss_t / d h_t``
(``jax.grad`` through the stateless readout) and pulls the effective-weight gradient back to the cell's
parameters through ``synapse``, which is affine in its inputs: a bias is a weight on the constant 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close

import eproptax as ep
from eproptax._cell import float_state, with_float_state

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 3, 4, 2, 6, 2
CELLS = {
    "lif": lambda: ep.cells.lif(N_IN, N, dtype=F64),
    "alif": lambda: ep.cells.alif(N_IN, N, dtype=F64),
    "gru": lambda: ep.cells.gru(N_IN, N, dtype=F64),
}


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def network(cell):
    model = ep.cells.stack(CELLS[cell](), ep.cells.readout(N, N_OUT, dtype=F64))
    params = model.init(jax.random.key(3))
    scale = 4.0 if cell != "gru" else 1.0  # spiking cells: enough input to fire
    params = (jax.tree_util.tree_map(lambda w: scale * w, params[0]), params[1])
    inputs = (jax.random.uniform(jax.random.key(4), (BATCH, T, N_IN)) < 0.5).astype(F64)
    targets = jax.random.normal(jax.random.key(5), (BATCH, T, N_OUT), F64)
    return model, params, inputs, targets


def reference(model, params, inputs, targets, a_x, a_f):
    """pp-prop by its equations, one example and one step at a time (the module docstring)."""
    cell, readout = model.layers
    y_carry = model.init_carry(params)[1]  # the stateless readout's, never read

    @jax.jit
    def step(params, h, pre, post, power, x, y):
        z_prev = cell.output(h)
        a = cell.synapse(params[0], x, z_prev)
        dyn = lambda hf, a: float_state(cell.dynamics(with_float_state(h, hf), a))
        hf = float_state(h)
        J = jax.jacfwd(dyn)(hf, a)  # (n, s, n, s): keep each neuron's own block
        F = jax.jacfwd(dyn, argnums=1)(hf, a)  # (n, s, n, k)
        D = jnp.stack([J[j, :, j, :] for j in range(N)])
        dfda = jnp.stack([F[j, :, j, :] for j in range(N)])
        pre = a_x * pre + jnp.concatenate([x, z_prev, jnp.ones(1)])
        post = a_f * jnp.einsum("jce,jek->jck", D, post) + (1 - a_f) * dfda
        power = a_f * power
        h_new = cell.dynamics(h, a)
        out_of = lambda p, hf_new: readout.apply(p, y_carry, cell.output(with_float_state(h_new, hf_new)))[1]
        delta = jax.grad(lambda hf_new: mse(out_of(params[1], hf_new), y))(float_state(h_new))  # same step
        w = jnp.einsum("jc,jck->jk", delta, post / (1 - power))  # (n, k)
        # dW_eff[j, g, i] = w[j, g] pre[i]; through the affine synapse: inputs pre's parts, biases pre[-1]
        syn = lambda p: (
            cell.synapse(p, pre[:N_IN], pre[N_IN:-1]) + (pre[-1] - 1) * cell.synapse(p, jnp.zeros(N_IN), jnp.zeros(N))
        )
        g_cell = jax.grad(lambda p: jnp.sum(w * syn(p)))(params[0])
        g_out = jax.grad(lambda p: mse(out_of(p, float_state(h_new)), y))(params[1])
        return h_new, pre, post, power, (g_cell, g_out)

    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    for b in range(inputs.shape[0]):
        h = model.init_carry(params)[0]
        a = cell.synapse(params[0], inputs[b, 0], cell.output(h))
        pre, post, power = jnp.zeros(N_IN + N + 1), jnp.zeros((N, float_state(h).shape[1], a.shape[1])), 1.0
        for t in range(inputs.shape[1]):
            h, pre, post, power, g = step(params, h, pre, post, power, inputs[b, t], targets[b, t])
            grads = jax.tree_util.tree_map(lambda acc, g: acc + g / BATCH, grads, g)
    return grads


@pytest.mark.parametrize("cell", ["alif", "gru"])
def test_equals_its_equations_in_a_python_loop(cell):
    """On the GRU also in chunks of 4 steps (T = 6: one chunk, then two steps), reg included."""
    model, params, inputs, targets = network(cell)
    _, grads = jax.jit(ep.pp_prop(model, mse, (0.6, 0.3)))(params, inputs, targets)
    assert_close(grads, reference(model, params, inputs, targets, 0.6, 0.3), 1e-12, f"pp_prop on {cell}")
    if cell == "gru":
        _, chunked = jax.jit(ep.pp_prop(model, mse, (0.6, 0.3), chunk=4))(params, inputs, targets)
        assert_close(chunked, grads, 1e-12, "pp_prop in chunks")
        reg = ep.FiringRateReg(0.5, 0.1)
        step_reg = jax.jit(ep.pp_prop(model, mse, (0.6, 0.3), reg=reg, chunk=1))(params, inputs, targets)
        chunk_reg = jax.jit(ep.pp_prop(model, mse, (0.6, 0.3), reg=reg, chunk=4))(params, inputs, targets)
        assert_close(chunk_reg, step_reg, 1e-12, "pp_prop with reg in chunks")


def test_equals_eprop_on_lif_and_differs_on_alif():
    """The default decays (the membrane's, 0) give e-prop's trace where it factorises, and not elsewhere."""
    model, params, inputs, targets = network("lif")
    reg = ep.FiringRateReg(0.5, 0.1)
    for r in (None, reg):  # the regulariser's time sum of the eligibility too
        _, grads = jax.jit(ep.pp_prop(model, mse, reg=r))(params, inputs, targets)
        _, grads_e = jax.jit(ep.eprop(model, mse, reg=r))(params, inputs, targets)
        assert_close(grads, grads_e, 1e-13, f"pp_prop vs eprop on LIF, reg={r}")
    assert np.abs(np.asarray(grads_e[0]["w_rec"])).max() > 1e-3  # the recurrent weights learn something
    model, params, inputs, targets = network("alif")
    _, grads = jax.jit(ep.pp_prop(model, mse))(params, inputs, targets)
    _, grads_e = jax.jit(ep.eprop(model, mse))(params, inputs, targets)
    diff = np.abs(np.asarray(grads[0]["w_in"] - grads_e[0]["w_in"])).max()
    assert diff > 1e-6 * np.abs(np.asarray(grads_e[0]["w_in"])).max()  # the adaptation's trace is dropped


def test_online_stepped_by_hand_jit_vmap_optax():
    model, params, inputs, targets = network("alif")
    whole = jax.jit(ep.pp_prop(model, mse, 0.5))
    rule = ep.online.pp_prop(model, mse, 0.5)
    step = jax.jit(rule.step)
    state = rule.init(params, BATCH)
    for t in range(T):
        state, out = step(params, state, inputs[:, t], targets[:, t])
        assert out.shape == (BATCH, N_OUT)
    value, grads = rule.result(params, state)
    value_w, grads_w = whole(params, inputs, targets)
    np.testing.assert_allclose(value, value_w, rtol=1e-13)
    assert_close(grads, grads_w, 1e-12, "online vs whole sequence")
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    traces = []

    def counted(out, target):
        traces.append(1)
        return mse(out, target)

    grad_fn, optimizer = ep.pp_prop(model, counted, 0.5), optax.sgd(1e-2)

    @jax.jit
    def update(params, opt_state):
        value, grads = grad_fn(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new, opt_state = update(params, optimizer.init(params))
    count = len(traces)
    new, opt_state = update(new, opt_state)
    assert len(traces) == count  # the second call reuses the compiled program
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, new)
    _, batched = jax.jit(jax.vmap(whole, in_axes=(0, None, None)))(stacked, inputs, targets)
    assert_close(jax.tree_util.tree_map(lambda g: g[1], batched), whole(new, inputs, targets)[1], 1e-12, "vmap")


@pytest.mark.parametrize("decay", [1.0, -0.1, (0.5, float("nan")), (0.5,), (0.5, 0.5, 0.5), "0.5", True])
def test_bad_decay(decay):
    model = network("lif")[0]
    with pytest.raises(ValueError, match=r"pp_prop: `decay` must be (None, )?a decay in \[0, 1\)"):
        ep.pp_prop(model, mse, decay)


def test_vmap_over_the_decay():
    model, params, inputs, targets = network("lif")
    run = lambda a: ep.pp_prop(model, mse, (a, 0.0))(params, inputs, targets)[1]
    batched = jax.jit(jax.vmap(run))(jnp.array([0.2, 0.7]))
    assert_close(jax.tree_util.tree_map(lambda g: g[1], batched), jax.jit(run)(0.7), 1e-12, "vmap over a_x")

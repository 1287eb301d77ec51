"""Truncated BPTT (``ep.tbptt``) against BPTT and against a hand-written loop of windowed ``jax.grad``.

The reference cuts the sequence into windows of ``K`` steps in Python, runs ``jax.grad`` of each window's
loss from the carry the previous window ended in, that carry behind ``jax.lax.stop_gradient``, and sums.
With the regulariser, its weights ``c_reg (r_j - f_target) / T`` come from a forward pass first and each
window differentiates ``sum_t sum_j w_j z_j^t`` the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close, flat

import eproptax as ep

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 3, 5, 2, 7, 2
REG = ep.FiringRateReg(0.3, 0.05)


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def network(time=T):
    model = ep.cells.stack(ep.cells.lif(N_IN, N, dtype=F64), ep.cells.leaky_readout(N, N_OUT, dtype=F64))
    params = model.init(jax.random.key(3))
    params = ({**params[0], "w_in": 6.0 * params[0]["w_in"], "w_rec": 2.0 * params[0]["w_rec"]}, params[1])
    inputs = (jax.random.uniform(jax.random.key(4), (BATCH, time, N_IN)) < 0.5).astype(F64)
    targets = jnp.sin(jnp.arange(time, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))
    return model, params, inputs, targets


def reference(model, params, inputs, targets, K, reg=None):
    """Truncated BPTT by its definition, one example at a time, in a Python loop over the windows."""
    hidden = model.layers[0]

    def window_objective(p, carry, xs, ys, w):
        carry = jax.lax.stop_gradient(carry)
        total = 0.0
        for x, y in zip(xs, ys):
            carry, out = model.apply(p, carry, x)
            total = total + mse(out, y) + (jnp.sum(w * hidden.output(carry[0])) if w is not None else 0.0)
        return total, carry

    window_grad = jax.jit(jax.grad(window_objective, has_aux=True))  # compiled per window length
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    for b in range(inputs.shape[0]):
        w = None
        if reg is not None:  # the regulariser's weights, from a forward pass
            carry, zs = model.init_carry(params), []
            for x in inputs[b]:
                carry, _ = model.apply(params, carry, x)
                zs.append(hidden.output(carry[0]))
            w = reg.c_reg * (jnp.mean(jnp.stack(zs), 0) - reg.f_target) / inputs.shape[1]
        carry = model.init_carry(params)
        for start in range(0, inputs.shape[1], K):
            xs, ys = inputs[b, start : start + K], targets[b, start : start + K]
            g, carry = window_grad(params, carry, xs, ys, w)
            grads = jax.tree_util.tree_map(lambda a, c: a + c / inputs.shape[0], grads, g)
    return grads


_JIT = {}


def whole(K, reg=None):
    if (K, reg) not in _JIT:
        model = network()[0]
        _JIT[(K, reg)] = jax.jit(ep.tbptt(model, mse, window=K, reg=reg))
    return _JIT[(K, reg)]


@pytest.mark.parametrize("K, reg", [(T, None), (T, REG), (T + 3, None)], ids=["T", "T-reg", "T+3"])
def test_a_window_of_the_whole_sequence_is_bptt(K, reg):
    model, params, inputs, targets = network()
    value, grads = whole(K, reg)(params, inputs, targets)
    value_b, grads_b = jax.jit(ep.bptt(model, mse, reg=reg))(params, inputs, targets)
    np.testing.assert_allclose(value, value_b, rtol=1e-13)
    assert_close(grads, grads_b, 1e-12, f"tbptt(window={K}) vs bptt")


@pytest.mark.parametrize("reg", [None, REG], ids=["plain", "reg"])
@pytest.mark.parametrize("K", [1, 3])
def test_equals_windowed_grad_loop(K, reg):
    """``K = 3`` does not divide ``T = 7``: windows of 3, 3 and 1 steps."""
    model, params, inputs, targets = network()
    _, grads = whole(K, reg)(params, inputs, targets)
    assert_close(grads, reference(model, params, inputs, targets, K, reg), 1e-12, f"tbptt(window={K})")
    _, grads_b = jax.jit(ep.bptt(model, mse, reg=reg))(params, inputs, targets)
    assert np.linalg.norm(flat(grads) - flat(grads_b)) > 1e-3 * np.linalg.norm(flat(grads_b))  # truncation bites


@pytest.mark.parametrize("reg", [None, REG], ids=["plain", "reg"])
def test_online_stepped_by_hand_equals_the_whole_sequence(reg):
    """``result`` in the middle of a window includes its steps so far; ``reset`` ends the window there."""
    model, params, inputs, targets = network()
    rule = ep.online.tbptt(model, mse, 3, reg=reg)
    step, result = jax.jit(rule.step), jax.jit(rule.result)
    state = rule.init(params, BATCH)
    for t in range(T):
        state, out = step(params, state, inputs[:, t], targets[:, t])
        assert out.shape == (BATCH, N_OUT)
    value, grads = result(params, state)
    value_w, grads_w = whole(3, reg)(params, inputs, targets)
    np.testing.assert_allclose(value, value_w, rtol=1e-13)
    assert_close(grads, grads_w, 1e-12, "online vs whole sequence")
    if reg is None:  # updates every 2 steps: the windows end at the updates ([0, 2), [2, 4), ...)
        state, total = rule.init(params, BATCH), jax.tree_util.tree_map(jnp.zeros_like, params)
        for t in range(T):
            state, _ = step(params, state, inputs[:, t], targets[:, t])
            if t % 2 == 1 or t == T - 1:
                total = jax.tree_util.tree_map(jnp.add, total, result(params, state)[1])
                state = rule.reset(state)
        assert_close(total, reference(model, params, inputs, targets, 2), 1e-12, "windows ended by reset")


def test_memory_is_flat_in_time():
    """The compiled whole-sequence program's temporaries do not grow with ``T`` (only its inputs do)."""
    sizes = []
    for time in (12, 48):
        model, params, inputs, targets = network(time)
        compiled = jax.jit(ep.tbptt(model, mse, window=4)).lower(params, inputs, targets).compile()
        sizes.append(compiled.memory_analysis().temp_size_in_bytes)
        bptt = jax.jit(ep.bptt(model, mse)).lower(params, inputs, targets).compile()
        sizes.append(bptt.memory_analysis().temp_size_in_bytes)
    tbptt_12, bptt_12, tbptt_48, bptt_48 = sizes
    assert tbptt_48 == tbptt_12, sizes
    assert bptt_48 > bptt_12 + (48 - 12) * BATCH * N * 8, sizes  # the reference does grow


def test_jit_vmap_optax_and_no_second_trace():
    model, params, inputs, targets = network()
    traces = []

    def counted(out, target):
        traces.append(1)
        return mse(out, target)

    grad_fn = ep.tbptt(model, counted, window=3)
    optimizer = optax.sgd(1e-2)

    @jax.jit
    def update(params, opt_state, inputs, targets):
        value, grads = grad_fn(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = optimizer.init(params)
    new, opt_state, _ = update(params, opt_state, inputs, targets)
    count = len(traces)
    new, opt_state, _ = update(new, opt_state, inputs, targets)
    assert len(traces) == count  # the second call reuses the compiled program
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(new))
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
    # vmap over a batch of parameter sets equals a loop over them
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, new)
    values, grads = jax.jit(jax.vmap(whole(3), in_axes=(0, None, None)))(stacked, inputs, targets)
    for i, p in enumerate((params, new)):
        value_i, grads_i = whole(3)(p, inputs, targets)
        np.testing.assert_allclose(values[i], value_i, rtol=1e-13)
        assert_close(jax.tree_util.tree_map(lambda g: g[i], grads), grads_i, 1e-12, f"vmap[{i}]")


@pytest.mark.parametrize("window", [0, -2, 2.5, True, "4"])
def test_bad_window(window):
    model = network()[0]
    with pytest.raises(ValueError, match=r"tbptt: `window` must be .*got"):
        ep.tbptt(model, mse, window=window)
    with pytest.raises(ValueError, match=r"tbptt: `window`"):
        ep.online.tbptt(model, mse, window)

"""KF-RTRL (``eproptax._kf_rtrl``) against RTRL: unbiased over keys, reproducible per key, online == whole sequence.

The estimate is random, so the oracle is statistical, as UORO's (``test_uoro.py``): the mean of ``K``
estimates (one jitted ``jax.vmap`` over keys) must lie within ``Z`` standard errors of RTRL's exact gradient
in every component, and the same bound must reject a biased gradient (RTRL's recurrent-layer gradient times
0.9; the readout's gradient is exact, so only the recurrent layer's components are random), so that passing
it means something.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eproptax as ep
from eproptax._kf_rtrl import kf_rtrl, online_kf_rtrl

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 2, 3, 2, 5, 2
# keys averaged per cell: the fewest that reject the 10% bias with a margin (measured: the rnn's most
# decisive component needs about 1400 keys, the GRU's about 500), and standard errors allowed
K = {"rnn": 4000, "gru": 2000}
Z = 5.0
CELLS = {"rnn": ep.cells.rnn, "gru": ep.cells.gru}


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


@functools.cache
def network(cell: str):
    """A tiny ``cell + readout`` network (a tanh rnn, or a GRU with ``k = 4`` gates), its parameters and data."""
    model = ep.cells.stack(CELLS[cell](N_IN, N, dtype=F64), ep.cells.readout(N, N_OUT, dtype=F64))
    params = model.init(jax.random.key(3))
    inputs = jax.random.normal(jax.random.key(4), (BATCH, T, N_IN), F64)
    targets = jnp.sin(jnp.arange(T, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))
    return model, params, inputs, targets


def flat(tree) -> np.ndarray:
    """The leaves of ``tree`` raveled and concatenated."""
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


def recurrent_size(cell: str) -> int:
    """The recurrent layer's parameters: the first components of :func:`flat` (the random ones)."""
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(network(cell)[1][0]))


@functools.cache
def exact(cell: str) -> np.ndarray:
    """RTRL's gradient ``(|theta|,)``."""
    model, params, inputs, targets = network(cell)
    return flat(jax.jit(ep.rtrl(model, mse))(params, inputs, targets)[1])


@functools.cache
def estimates(cell: str) -> np.ndarray:
    """``(K, |theta|)`` KF-RTRL gradient estimates from ``K`` keys (one compiled ``vmap``)."""
    model, params, inputs, targets = network(cell)
    grad_fn, keys = kf_rtrl(model, mse), jax.random.split(jax.random.key(9), K[cell])
    _, grads = jax.jit(jax.vmap(lambda k: grad_fn(params, inputs, targets, key=k)))(keys)
    chex.assert_trees_all_equal_shapes(jax.tree_util.tree_map(lambda g: g[0], grads), params)
    return np.concatenate([np.asarray(leaf).reshape(K[cell], -1) for leaf in jax.tree_util.tree_leaves(grads)], 1)


def within(G: np.ndarray, expected: np.ndarray) -> bool:
    """Whether every component's mean over keys is within ``Z`` standard errors of ``expected``."""
    bound = Z * G.std(0, ddof=1) / np.sqrt(G.shape[0]) + 1e-12 * (1.0 + np.abs(expected))
    return bool(np.all(np.abs(G.mean(0) - expected) <= bound))


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_mean_over_keys_is_rtrl(cell):
    G, g, r = estimates(cell), exact(cell), recurrent_size(cell)
    assert within(G, g)
    assert not within(G[:, :r], 0.9 * g[:r])  # the bound is tight enough to reject a 10% bias
    assert np.all(np.std(G[:, :r], 0) > 0)  # every recurrent component is random: never the floor alone
    np.testing.assert_allclose(G[:, r:], np.broadcast_to(g[r:], G[:, r:].shape), rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def rnn_fn():
    """``jit(kf_rtrl)`` on the rnn network, traced at most once for the module."""
    model, params, inputs, targets = network("rnn")
    fn = jax.jit(chex.assert_max_traces(kf_rtrl(model, mse), n=1))
    return fn, (model, params, inputs, targets)


def test_the_key_decides_the_estimate(rnn_fn):
    fn, (_, params, inputs, targets) = rnn_fn
    a, b, c = (fn(params, inputs, targets, key=jax.random.key(i)) for i in (1, 2, 1))
    chex.assert_trees_all_equal(a, c)
    assert not np.allclose(flat(a[1][0]), flat(b[1][0]))
    np.testing.assert_array_equal(a[0], b[0])  # the loss is not random


def test_stepping_by_hand_is_the_whole_sequence(rnn_fn):
    fn, (model, params, inputs, targets) = rnn_fn
    rule, key = online_kf_rtrl(model, mse), jax.random.key(5)
    state, step = rule.init(params, BATCH, key=key), jax.jit(rule.step)
    for t in range(T):
        state, out = step(params, state, inputs[:, t], targets[:, t])
        assert out.shape == (BATCH, N_OUT)
    (value, grads), (whole_value, whole) = rule.result(params, state), fn(params, inputs, targets, key=key)
    np.testing.assert_allclose(value, whole_value, rtol=1e-12)
    np.testing.assert_allclose(flat(grads), flat(whole), rtol=1e-12, atol=1e-12)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


def test_jit_one_optax_step_without_a_second_trace():
    model, params, inputs, targets = network("rnn")
    traces = []

    def counted(out, target):
        traces.append(1)
        return mse(out, target)

    grad_fn, optimizer = kf_rtrl(model, counted), optax.sgd(1e-1)

    @jax.jit
    def update(params, opt_state, key):
        value, grads = grad_fn(params, inputs, targets, key=key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, grads

    new, opt_state, grads = update(params, optimizer.init(params), jax.random.key(10))
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    assert np.all(np.isfinite(flat(new))) and not np.allclose(flat(new), flat(params))
    count = len(traces)
    new, opt_state, _ = update(new, opt_state, jax.random.key(11))  # new parameters and key: no new trace
    assert len(traces) == count


def test_a_stack_under_a_leaky_readout():
    """Two recurrent layers (one spiking, with integer state) under a leaky readout: the readout's own
    gradient is exact (BPTT's), the layers' estimates are finite and shaped as their parameters."""
    model = ep.cells.stack(
        ep.cells.rnn(N_IN, N, dtype=F64), ep.cells.lif(N, N, dtype=F64), ep.cells.leaky_readout(N, N_OUT, dtype=F64)
    )
    params = model.init(jax.random.key(3))
    inputs, targets = network("rnn")[2:]
    value, grads = jax.jit(kf_rtrl(model, mse))(params, inputs, targets, key=jax.random.key(0))
    value_b, grads_b = jax.jit(ep.bptt(model, mse))(params, inputs, targets)
    np.testing.assert_allclose(value, value_b, rtol=1e-12)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    assert np.all(np.isfinite(flat(grads)))
    np.testing.assert_allclose(flat(grads[2]), flat(grads_b[2]), rtol=1e-10, atol=1e-12)


def test_the_plan_counts_the_state():
    model, params, *_ = network("gru")
    rule = online_kf_rtrl(model, mse)
    state = jax.eval_shape(lambda p: rule.init(p, BATCH, key=jax.random.key(0)), params)
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state._replace(key=None)))
    key_bytes = jax.random.key_data(jax.random.key(0)).nbytes
    assert rule.plan.cost(BATCH, itemsize=8).state_bytes == size + key_bytes


def test_a_key_is_required():
    model, params, inputs, targets = network("rnn")
    with pytest.raises(ValueError, match="kf_rtrl: `key` must be a jax.random.key"):
        kf_rtrl(model, mse)(params, inputs, targets)
    with pytest.raises(ValueError, match="kf_rtrl: `key` must be a jax.random.key"):
        online_kf_rtrl(model, mse).init(params, BATCH)
    with pytest.raises(ValueError, match="got key"):
        online_kf_rtrl(model, mse).init(params, BATCH, key=jax.random.split(jax.random.key(0), 2))


def test_reg_is_refused():
    model = network("rnn")[0]
    for build in (kf_rtrl, online_kf_rtrl):
        with pytest.raises(ValueError, match="kf_rtrl: `reg` is not supported.*use ep.uoro or ep.rtrl"):
            build(model, mse, reg=ep.FiringRateReg(0.5, 0.2))

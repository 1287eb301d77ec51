"""UORO (``eproptax._uoro``) against RTRL: unbiased over keys, reproducible per key, online == whole sequence.

The estimate is random, so the oracle is statistical: the mean of ``K`` estimates (one jitted ``jax.vmap``
over keys) must lie within ``Z`` standard errors of RTRL's exact gradient in every component, and the same
bound must reject a biased gradient (RTRL's times 0.9), so that passing it means something.
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
from eproptax._engine import scan_rule
from eproptax._uoro import _online, online_uoro, read_mask, uoro

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 2, 3, 2, 5, 2
K, Z = 4000, 5.0  # keys averaged; standard errors allowed
REG = ep.FiringRateReg(0.5, 0.2)


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


@functools.cache
def network(cell: str):
    """A tiny ``rnn + readout`` or ``lif + leaky_readout`` network, its parameters and data (batch 2)."""
    if cell == "rnn":
        model = ep.cells.stack(ep.cells.rnn(N_IN, N, dtype=F64), ep.cells.readout(N, N_OUT, dtype=F64))
        params = model.init(jax.random.key(3))
        inputs = jax.random.normal(jax.random.key(4), (BATCH, T, N_IN), F64)
    else:
        model = ep.cells.stack(ep.cells.lif(N_IN, N, dtype=F64), ep.cells.leaky_readout(N, N_OUT, dtype=F64))
        params = model.init(jax.random.key(3))
        params = ({"w_in": 6.0 * params[0]["w_in"], "w_rec": 2.0 * params[0]["w_rec"]}, params[1])
        inputs = (jax.random.uniform(jax.random.key(4), (BATCH, T, N_IN)) < 0.5).astype(F64)
    targets = jnp.sin(jnp.arange(T, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))
    return model, params, inputs, targets


def flat(tree) -> np.ndarray:
    """The leaves of ``tree`` raveled and concatenated."""
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


@functools.cache
def exact(cell: str, reg: bool) -> np.ndarray:
    """RTRL's gradient ``(|theta|,)``."""
    model, params, inputs, targets = network(cell)
    return flat(jax.jit(ep.rtrl(model, mse, reg=REG if reg else None))(params, inputs, targets)[1])


@functools.cache
def estimates(cell: str, scaled: bool, reg: bool, masked: bool = True) -> np.ndarray:
    """``(K, |theta|)`` UORO gradient estimates from ``K`` keys (one compiled ``vmap``); ``masked=False``: signs
    on every floating carry variable, read or not."""
    model, params, inputs, targets = network(cell)
    grad_fn = scan_rule("uoro", model, mse, _online(model, mse, REG if reg else None, scaled, masked))
    keys = jax.random.split(jax.random.key(9), K)
    _, grads = jax.jit(jax.vmap(lambda k: grad_fn(params, inputs, targets, key=k)))(keys)
    chex.assert_trees_all_equal_shapes(jax.tree_util.tree_map(lambda g: g[0], grads), params)
    return np.concatenate([np.asarray(leaf).reshape(K, -1) for leaf in jax.tree_util.tree_leaves(grads)], axis=1)


def within(G: np.ndarray, expected: np.ndarray) -> bool:
    """Whether every component's mean over keys is within ``Z`` standard errors of ``expected``."""
    bound = Z * G.std(0, ddof=1) / np.sqrt(G.shape[0]) + 1e-12 * (1.0 + np.abs(expected))
    return bool(np.all(np.abs(G.mean(0) - expected) <= bound))


@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "unscaled"])
def test_mean_over_keys_is_rtrl(scaled):
    G, g = estimates("rnn", scaled, False), exact("rnn", False)
    assert within(G, g)
    assert not within(G, 0.9 * g)  # the bound is tight enough to reject a 10% bias
    assert np.all(np.std(G, 0) > 0)  # every component is random: the bound is never the floor alone


def test_mean_over_keys_is_rtrl_with_the_regulariser():
    G, g, g0 = estimates("lif", True, True), exact("lif", True), exact("lif", False)
    assert np.linalg.norm(g - g0) > 0.1 * np.linalg.norm(g0)  # the regulariser's term matters
    assert within(G, g)
    assert not within(G, 0.9 * g) and not within(G, g0)


def test_scaling_reduces_the_variance():
    """Measured here (tiny rnn, T = 5): the scaled total variance is about 0.7 of the unscaled one."""
    scaled, unscaled = estimates("rnn", True, False), estimates("rnn", False, False)
    assert np.sum(np.var(scaled, 0)) < np.sum(np.var(unscaled, 0))


def test_the_signs_cover_only_what_the_next_step_reads():
    """LIF's potential is read (by the step and by the regulariser's outputs), the stateless readout's ``y``
    is not (each step recomputes it); the refractory counters are not floating, so not in the carry vector."""
    model = ep.cells.stack(ep.cells.lif(N_IN, N, dtype=F64), ep.cells.readout(N, N_OUT, dtype=F64))
    params = model.init(jax.random.key(0))
    carry, x = model.init_carry(params), jnp.zeros((N_IN,), F64)
    expected = [1.0] * N + [0.0] * N_OUT
    np.testing.assert_array_equal(read_mask(model, params, carry, x, reg=False), expected)
    np.testing.assert_array_equal(read_mask(model, params, carry, x, reg=True), expected)
    leaky = ep.cells.stack(ep.cells.lif(N_IN, N, dtype=F64), ep.cells.leaky_readout(N, N_OUT, dtype=F64))
    params = leaky.init(jax.random.key(0))
    assert read_mask(leaky, params, leaky.init_carry(params), x, reg=False).all()  # a leaky readout's y is read


def test_signs_on_unread_variables_only_add_variance():
    """The rnn's stateless readout keeps ``y`` in its carry: signs on it (unmasked) cost variance, no bias.
    Measured here: the masked estimates' mean squared error is about 0.6 of the unmasked ones'."""
    g = exact("rnn", False)
    masked, unmasked = estimates("rnn", True, False), estimates("rnn", True, False, masked=False)
    assert within(unmasked, g)  # unbiased either way
    error = lambda G: np.mean(np.sum((G - g) ** 2, axis=1))
    assert error(masked) < 0.8 * error(unmasked)


@pytest.fixture(scope="module")
def rnn_fn():
    """``jit(uoro)`` on the rnn network, traced at most once for the module."""
    model, params, inputs, targets = network("rnn")
    fn = jax.jit(chex.assert_max_traces(uoro(model, mse), n=1))
    return fn, (model, params, inputs, targets)


def test_the_key_decides_the_estimate(rnn_fn):
    fn, (_, params, inputs, targets) = rnn_fn
    a, b, c = (fn(params, inputs, targets, key=jax.random.key(i)) for i in (1, 2, 1))
    chex.assert_trees_all_equal(a, c)
    assert not np.allclose(flat(a[1]), flat(b[1]))
    np.testing.assert_array_equal(a[0], b[0])  # the loss is not random


def test_a_raw_key_is_its_typed_key(rnn_fn):
    fn, (model, params, inputs, targets) = rnn_fn
    raw = jax.jit(uoro(model, mse))(params, inputs, targets, key=jax.random.PRNGKey(4))
    chex.assert_trees_all_equal(raw, fn(params, inputs, targets, key=jax.random.wrap_key_data(jax.random.PRNGKey(4))))


def test_stepping_by_hand_is_the_whole_sequence(rnn_fn):
    fn, (model, params, inputs, targets) = rnn_fn
    rule, key = online_uoro(model, mse), jax.random.key(5)
    state, step = rule.init(params, BATCH, key=key), jax.jit(rule.step)
    for t in range(T):
        state, _ = step(params, state, inputs[:, t], targets[:, t])
    (value, grads), (whole_value, whole) = rule.result(params, state), fn(params, inputs, targets, key=key)
    np.testing.assert_allclose(value, whole_value, rtol=1e-12)
    np.testing.assert_allclose(flat(grads), flat(whole), rtol=1e-12, atol=1e-12)


def test_one_optax_step_without_a_second_trace(rnn_fn):
    fn, (_, params, inputs, targets) = rnn_fn
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)
    for i in range(2):  # the second call, with new parameters and key, must not trace again
        _, grads = fn(params, inputs, targets, key=jax.random.key(10 + i))
        chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
        updates, opt_state = optimizer.update(grads, opt_state)
        new = optax.apply_updates(params, updates)
        assert np.all(np.isfinite(flat(new))) and not np.allclose(flat(new), flat(params))
        params = new


def test_the_plan_counts_the_state():
    model, params, *_ = network("lif")
    rule = online_uoro(model, mse, reg=REG)
    state = jax.eval_shape(lambda p: rule.init(p, BATCH, key=jax.random.key(0)), params)
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state._replace(key=None)))
    key_bytes = jax.random.key_data(jax.random.key(0)).nbytes
    assert rule.plan.cost(BATCH, itemsize=8).state_bytes == size + key_bytes


def test_a_key_is_required():
    model, params, inputs, targets = network("rnn")
    with pytest.raises(ValueError, match="`key` must be a jax.random.key"):
        uoro(model, mse)(params, inputs, targets)
    with pytest.raises(ValueError, match="`key` must be a jax.random.key"):
        online_uoro(model, mse).init(params, BATCH)
    with pytest.raises(ValueError, match="got key"):
        online_uoro(model, mse).init(params, BATCH, key=jax.random.split(jax.random.key(0), 2))

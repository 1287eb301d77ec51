"""The random key in the online state, and the saved state's format version.

A rule that draws noise keeps a key in its online state (``init(params, batch_size, key=...)``), and its
whole-sequence form takes ``key=`` as a keyword of its ``grad_fn``. No shipped rule draws noise yet, so
the plumbing is tested with a small stochastic rule written here on the engine: e-prop whose accumulated
gradient receives fresh Gaussian noise every step, drawn from the state's key.
"""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eproptax as ep
from eproptax._engine import scan_rule

HERE = os.path.dirname(os.path.abspath(__file__))
F64 = jnp.float64
SIGMA = 0.1


def _problem():
    """The network, data and loss of ``fixtures/online_state_v1.npz`` (see there)."""
    model = ep.cells.stack(
        ep.cells.alif(3, 4, beta=0.05, tau_adapt=10.0, dtype=F64), ep.cells.leaky_readout(4, 2, dtype=F64)
    )
    params = model.init(jax.random.key(0))
    inputs = (jax.random.uniform(jax.random.key(1), (2, 5, 3)) < 0.5).astype(F64)
    targets = jnp.sin(jnp.arange(5.0))[None, :, None] * jnp.ones((2, 1, 2))
    return model, params, inputs, targets, lambda out, t: 0.5 * jnp.sum((out - t) ** 2)


def noisy_eprop(model, loss):
    """e-prop plus ``SIGMA`` times fresh standard normal noise on the accumulated gradient, every step."""
    base = ep.online.eprop(model, loss)

    def step(params, state, x, target):
        if state.key is None:
            raise ValueError("noisy_eprop: the state holds no key; pass init(params, batch_size, key=key).")
        key, sub = jax.random.split(state.key)
        state, out = base.step(params, state, x, target)
        leaves, treedef = jax.tree_util.tree_flatten(state.grads)
        noise = [
            SIGMA * jax.random.normal(k, g.shape, g.dtype) for k, g in zip(jax.random.split(sub, len(leaves)), leaves)
        ]
        grads = jax.tree_util.tree_unflatten(treedef, [g + n for g, n in zip(leaves, noise)])
        return state._replace(grads=grads, key=key), out

    return base._replace(step=step, chunk=None)


@pytest.fixture(scope="module")
def noisy():
    model, params, inputs, targets, loss = _problem()
    online = noisy_eprop(model, loss)
    online = online._replace(step=jax.jit(online.step))  # compiled once for the module's tests
    return online, jax.jit(scan_rule("noisy_eprop", model, loss, online)), (params, inputs, targets)


def test_whole_sequence_draws_from_the_key_it_is_given(noisy):
    _, grad_fn, args = noisy
    fn = jax.jit(chex.assert_max_traces(lambda key: grad_fn(*args, key=key), n=1))
    a, b, c = fn(jax.random.key(1)), fn(jax.random.key(2)), fn(jax.random.key(1))
    chex.assert_trees_all_equal(a, c)  # the same key, the same gradient
    assert not np.allclose(a[1][0]["w_in"], b[1][0]["w_in"])  # another key, other noise
    batched = jax.vmap(lambda key: grad_fn(*args, key=key))(jax.random.split(jax.random.key(3), 4))
    assert batched[1][0]["w_in"].shape == (4,) + args[0][0]["w_in"].shape
    assert len({float(v) for v in np.ravel(batched[1][0]["w_in"][:, 0, 0])}) == 4


def test_stepping_by_hand_from_the_same_key_is_the_whole_sequence(noisy):
    online, grad_fn, (params, inputs, targets) = noisy
    key = jax.random.key(7)
    state = online.init(params, inputs.shape[0], key=key)
    for t in range(inputs.shape[1]):
        state, _ = online.step(params, state, inputs[:, t], targets[:, t])
    chex.assert_trees_all_close(online.result(params, state), grad_fn(params, inputs, targets, key=key), rtol=1e-12)


def test_a_rule_that_needs_a_key_says_so(noisy):
    online, _, (params, inputs, targets) = noisy
    state = online.init(params, inputs.shape[0])
    with pytest.raises(ValueError, match="holds no key"):
        online.step(params, state, inputs[:, 0], targets[:, 0])


@pytest.mark.parametrize("rule", ["eprop", "eprop_m", "deep_eprop", "rtrl"])
def test_every_online_rule_keeps_the_key(rule):
    model, params, inputs, targets, loss = _problem()
    online = ep.online.eprop_m(model, loss, 1) if rule == "eprop_m" else getattr(ep.online, rule)(model, loss)
    key = jax.random.key(5)
    state = online.init(params, 2, key=key)
    assert online.init(params, 2).key is None
    state, _ = jax.jit(online.step)(params, state, inputs[:, 0], targets[:, 0])
    state = online.reset(state)
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(key))


def test_a_state_with_a_key_saves_and_loads(tmp_path, noisy):
    online, _, (params, inputs, targets) = noisy
    state = online.init(params, 2, key=jax.random.key(11))
    state, _ = online.step(params, state, inputs[:, 0], targets[:, 0])
    path = tmp_path / "state.npz"
    ep.online.save_state(path, state)
    restored = ep.online.load_state(path, like=online.init(params, 2, key=jax.random.key(0)))
    chex.assert_trees_all_equal(jax.tree_util.tree_map(_data, restored), jax.tree_util.tree_map(_data, state))


def test_a_state_saved_in_format_1_still_loads():
    """``fixtures/online_state_v1.npz`` was written by eproptax 51a0ae2 (format 1, before the key): e-prop's
    online state after 5 steps of :func:`_problem`, stepped eagerly. It loads into today's state, with the
    values today's rule reaches (stepped under jit here, one compile instead of an eager kernel per operation:
    equal to float64 rounding, the integer counters exactly)."""
    model, params, inputs, targets, loss = _problem()
    online = ep.online.eprop(model, loss)
    state = online.init(params, 2)
    step = jax.jit(online.step)
    for t in range(5):
        state, _ = step(params, state, inputs[:, t], targets[:, t])
    restored = ep.online.load_state(os.path.join(HERE, "fixtures", "online_state_v1.npz"), like=state)
    chex.assert_trees_all_equal_structs(restored, state)
    chex.assert_trees_all_close(restored, state, rtol=1e-12, atol=1e-15)
    with np.load(os.path.join(HERE, "fixtures", "online_state_v1.npz")) as data:
        assert str(data["__eproptax__"]) == "eproptax.online_state/1"


def _data(leaf):
    return jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf


@pytest.mark.parametrize("online", [False, True], ids=["per-sequence", "online"])
def test_train_gives_a_rule_that_draws_noise_a_fresh_key_every_step(noisy, online):
    """``ep.train`` hands a key to a rule that takes one (the rule raises without it): the same training key
    gives the same parameters, another gives others."""
    import optax

    rule, grad_fn, (params, inputs, targets) = noisy
    sampler = lambda key: (inputs, targets)  # the same batch every step: only the rule's noise varies
    kwargs = dict(steps=2, batch_size=2, progress=False, online_every=5 if online else None)
    fit = lambda key: ep.train(rule if online else grad_fn, sampler, params, optax.sgd(1.0), key=key, **kwargs)[0]
    a, b, c = fit(jax.random.key(1)), fit(jax.random.key(2)), fit(jax.random.key(1))
    chex.assert_trees_all_equal(a, c)
    assert not np.allclose(a[0]["w_in"], b[0]["w_in"])

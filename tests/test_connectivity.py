"""Sparse and sign-constrained connectivity (``mask_in``, ``mask_rec``, ``dale`` on lif, alif and rnn).

The masked cells are checked against the unmasked cells by the chain rule, in float64: a masked cell at
``params`` computes what the plain cell computes at the constrained weights ``w * mask`` (``dale * |w| *
mask``), so its gradient is the plain cell's gradient there, times the constraint's derivative (``mask``,
``dale * sign(w) * mask``). Every registered rule gives masked-out weights exactly zero gradient, and Dale's
signs hold after 100 Adam steps of every rule (a control without ``dale`` shows that those steps do flip signs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eproptax as ep
from eproptax._registry import keyed

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 3, 6, 2, 6, 2


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def masks(seed=0, n_in=N_IN, n=N):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return ep.cells.fan_in_mask(k1, (n, n_in), 2), ep.cells.fan_in_mask(k2, (n, n), 3, autapses=False)


DALE = ep.cells.dale_signs(N, 0.5)


def data(seed=4):
    inputs = (jax.random.uniform(jax.random.key(seed), (BATCH, T, N_IN)) < 0.6).astype(F64)
    targets = jnp.sin(jnp.arange(T, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))
    return inputs, targets


def spiking(make, **connectivity):
    options = dict(beta=0.05, tau_adapt=10.0) if make is ep.cells.alif else {}
    return make(N_IN, N, dtype=F64, threshold=0.02, **options, **connectivity)


@functools.cache
def masked_stack():
    """An ALIF layer and an RNN layer, both masked and with Dale's signs, under a leaky readout."""
    m_in, m_rec = masks()
    m_in2, m_rec2 = masks(1, n_in=N)
    model = ep.cells.stack(
        spiking(ep.cells.alif, mask_in=m_in, mask_rec=m_rec, dale=DALE),
        ep.cells.rnn(N, N, mask_in=m_in2.T, mask_rec=m_rec2.T, dale=DALE, dtype=F64),
        ep.cells.leaky_readout(N, N_OUT, dtype=F64),
    )
    params = model.init(jax.random.key(3))
    params = ({**params[0], "w_in": 4.0 * params[0]["w_in"]}, *params[1:])  # the ALIF neurons spike
    return model, params, (m_in, m_rec, m_in2.T, m_rec2.T)


@functools.cache
def grad_fn(name):
    model, *_ = masked_stack()
    return jax.jit(keyed(ep.rules[name], ep.make_rule(name, model, mse)))


@pytest.mark.parametrize("name", list(ep.rules))
def test_masked_weights_get_exactly_zero_gradient(name):
    model, params, (m_in, m_rec, m_in2, m_rec2) = masked_stack()
    _, grads = grad_fn(name)(params, *data())
    for g, mask in ((grads[0]["w_in"], m_in), (grads[0]["w_rec"], m_rec)):
        assert np.all(np.asarray(g)[~np.asarray(mask)] == 0)
        assert np.any(np.asarray(g)[np.asarray(mask)] != 0)
    for g, mask in ((grads[1]["i"]["kernel"], m_in2), (grads[1]["h"]["kernel"], m_rec2)):
        assert np.all(np.asarray(g)[~np.asarray(mask)] == 0)


@pytest.mark.parametrize("make", [ep.cells.lif, ep.cells.alif, ep.cells.rnn])
def test_a_masked_cell_is_the_plain_cell_at_the_constrained_weights(make):
    """Forward and BPTT gradient, by the chain rule through ``w -> dale * |w| * mask``."""
    m_in, m_rec = masks()
    if make is ep.cells.rnn:
        m_in, m_rec = m_in.T, m_rec.T
        cells = [make(N_IN, N, dtype=F64, **c) for c in (dict(mask_in=m_in, mask_rec=m_rec, dale=DALE), {})]
        w_keys, pre_axis = (("i", "kernel"), ("h", "kernel")), 0
    else:
        cells = [spiking(make, mask_in=m_in, mask_rec=m_rec, dale=DALE, autapses=True), spiking(make, autapses=True)]
        w_keys, pre_axis = (("w_in",), ("w_rec",)), 1
    masked, plain = (ep.cells.stack(c, ep.cells.readout(N, N_OUT, dtype=F64)) for c in cells)
    params = masked.init(jax.random.key(5))
    get = lambda p, path: functools.reduce(lambda d, k: d[k], path, p[0])
    sign = jnp.expand_dims(DALE, 1 - pre_axis)

    def put(p, values):
        layer = jax.tree_util.tree_map(lambda a: a, p[0])
        for path, v in zip(w_keys, values):
            functools.reduce(lambda d, k: d[k], path[:-1], layer)[path[-1]] = v
        return (layer, p[1])

    w_in, w_rec = (get(params, path) for path in w_keys)
    constrained = put(params, (w_in * m_in, sign * jnp.abs(w_rec) * m_rec))
    inputs, targets = data()
    if make is not ep.cells.rnn:
        inputs = 4.0 * inputs
    value, grads = ep.bptt(masked, mse)(params, inputs, targets)
    value_p, grads_p = ep.bptt(plain, mse)(constrained, inputs, targets)
    np.testing.assert_allclose(value, value_p, rtol=1e-13)
    g_in, g_rec = (get(grads_p, path) for path in w_keys)
    expected = put(grads_p, (g_in * m_in, g_rec * sign * jnp.sign(w_rec) * m_rec))
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def recurrent_weights(model, params):
    """The recurrent weights each layer uses (post x pre): ``dale * |w| * mask``, read from the synapse."""
    z = jnp.eye(N, dtype=F64)
    out = []
    for layer, p in zip(model.layers[:2], params[:2]):
        a0 = layer.synapse(p, jnp.zeros(layer.n_in, F64), jnp.zeros(N, F64))[:, 0]
        out.append(jax.vmap(lambda z: layer.synapse(p, jnp.zeros(layer.n_in, F64), z)[:, 0] - a0, out_axes=1)(z))
    return out


def adam_run(name, model, params, steps=100):
    rule = (
        grad_fn(name) if model is masked_stack()[0] else jax.jit(keyed(ep.rules[name], ep.make_rule(name, model, mse)))
    )
    opt = optax.adam(0.05)
    inputs, targets = data()

    @jax.jit
    def update(params, opt_state, g):
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    for _ in range(steps):
        params, opt_state = update(params, opt_state, rule(params, inputs, targets)[1])
    return params


@pytest.mark.parametrize("name", list(ep.rules))
def test_dales_signs_hold_after_100_adam_steps(name):
    model, params, (_, m_rec, _, m_rec2) = masked_stack()
    trained = adam_run(name, model, params)
    for w, mask in zip(recurrent_weights(model, trained), (m_rec, m_rec2.T)):
        w, mask = np.asarray(w), np.asarray(mask)
        assert np.all(w[:, np.asarray(DALE) > 0] >= 0) and np.all(w[:, np.asarray(DALE) < 0] <= 0)
        assert np.all(w[~mask] == 0)
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params))
    ]
    assert max(moved) > 1e-3  # the steps did train


def test_without_dale_the_same_steps_flip_signs():
    """The control: the same network without ``dale`` (signs drawn by ``init``) loses some of its signs."""
    m_in, m_rec = masks()
    model = ep.cells.stack(
        spiking(ep.cells.alif, mask_in=m_in, mask_rec=m_rec), ep.cells.leaky_readout(N, N_OUT, dtype=F64)
    )
    params = model.init(jax.random.key(3))
    params = ({**params[0], "w_in": 4.0 * params[0]["w_in"]}, params[1])
    trained = adam_run("bptt", model, params)
    before, after = np.sign(np.asarray(params[0]["w_rec"])), np.sign(np.asarray(trained[0]["w_rec"]))
    assert np.any((before * after)[np.asarray(m_rec)] < 0)


def test_init_stores_masked_weights_as_zero_and_dale_as_magnitudes():
    m_in, m_rec = masks()
    params = spiking(ep.cells.lif, mask_in=m_in, mask_rec=m_rec, dale=DALE).init(jax.random.key(0))
    assert np.all(np.asarray(params["w_in"])[~np.asarray(m_in)] == 0)
    assert np.all(np.asarray(params["w_rec"])[~np.asarray(m_rec)] == 0)
    assert np.all(np.asarray(params["w_rec"]) >= 0)


def test_snap_reads_the_mask_as_its_pattern():
    """SnAp-2 on a masked LIF layer (one state variable a neuron) keeps, per parameter neuron ``j``, ``j``'s
    own state and that of the neurons ``j`` projects to: ``1 +`` the largest fan-out rows."""
    m_rec = ep.cells.fan_in_mask(jax.random.key(2), (N, N), 1, autapses=False)
    model = ep.cells.stack(spiking(ep.cells.lif, mask_rec=m_rec), ep.cells.readout(N, N_OUT, dtype=F64))
    width = ep.online.snap(model, mse, 2).plan.blocks[0][0][1]
    assert width == 1 + np.asarray(m_rec).sum(0).max() < N


def test_draws():
    key = jax.random.key(0)
    mask = ep.cells.fan_in_mask(key, (50, 40), 7)
    assert mask.dtype == bool and mask.shape == (50, 40) and np.all(np.asarray(mask).sum(1) == 7)
    square = ep.cells.fan_in_mask(key, (30, 30), 29, autapses=False)
    assert not np.any(np.diag(np.asarray(square))) and np.all(np.asarray(square).sum(1) == 29)
    dense = np.asarray(ep.cells.bernoulli_mask(key, (200, 100), 0.1))
    assert dense.dtype == bool and abs(dense.mean() - 0.1) < 0.01
    signs = np.asarray(ep.cells.dale_signs(10, 0.8))
    assert list(signs) == [1.0] * 8 + [-1.0] * 2


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: ep.cells.lif(3, 4, mask_in=np.ones((3, 4), bool)),
            r"lif: `mask_in` must have shape \(4, 3\), got \(3, 4\)",
        ),
        (
            lambda: ep.cells.alif(3, 4, mask_rec=np.ones((4, 4))),
            r"alif: `mask_rec` must be a boolean array of shape \(4, 4\), got dtype float64",
        ),
        (
            lambda: ep.cells.rnn(3, 4, mask_in=np.ones((4, 3), bool)),
            r"rnn: `mask_in` must have shape \(3, 4\), got \(4, 3\)",
        ),
        (
            lambda: ep.cells.lif(3, 4, dale=np.array([1, -1, 0, 1])),
            r"lif: `dale` must be \+1 or -1, got 0 at index \(2,\)",
        ),
        (
            lambda: ep.cells.rnn(3, 4, dale=np.ones(3)),
            r"rnn: `dale` must have shape \(4,\), one sign per presynaptic neuron",
        ),
        (
            lambda: ep.cells.fan_in_mask(jax.random.key(0), (4, 4), 4, autapses=False),
            r"fan_in_mask: `k` must be at most 3",
        ),
        (lambda: ep.cells.bernoulli_mask(jax.random.key(0), (4, 4), 1.5), r"bernoulli_mask: `p` must be"),
    ],
)
def test_bad_connectivity(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------------------------------------
# Deep R
# ----------------------------------------------------------------------------------------------------------


def test_deep_r_removes_what_crossed_zero_and_draws_as_many_per_neuron():
    key = jax.random.key(0)
    mask = ep.cells.fan_in_mask(key, (40, 40), 8, autapses=False)
    signs = jnp.where(jax.random.bernoulli(jax.random.key(1), 0.8, (1, 40)), 1.0, -1.0)  # per presynaptic neuron
    w = jnp.where(mask, signs * jax.random.uniform(jax.random.key(2), (40, 40), minval=-0.3, maxval=1.0), 0.0)
    crossed = np.asarray(mask & (w * signs < 0))
    new_w, new_mask = ep.deep_r(jax.random.key(3), w, mask, signs, autapses=False)
    new_w, new_mask, old = np.asarray(new_w), np.asarray(new_mask), np.asarray(mask)
    assert crossed.sum() > 20
    assert np.all(new_mask.sum(1) == 8) and not np.any(np.diag(new_mask))  # the fan-in, no autapse drawn
    assert np.all(new_w[~new_mask] == 0) and np.all(new_w * np.asarray(signs) >= 0)
    kept = old & ~crossed
    assert np.all(new_mask[kept]) and np.array_equal(new_w[kept], np.asarray(w)[kept])
    drawn = new_mask & ~kept
    assert drawn.sum() == crossed.sum() and np.all(new_w[drawn] == 0)


def test_deep_r_l1_and_noise():
    """``theta <- theta - eta l1 + sqrt(2 eta T) nu`` on the active synapses (none removed: theta is large)."""
    mask = jnp.ones((100, 100), bool)
    w = -3.0 * jnp.ones((100, 100))  # inhibitory synapses, theta = 3
    new_w, new_mask = ep.deep_r(jax.random.key(0), w, mask, -1.0, learning_rate=0.1, l1=0.5, temperature=2.0)
    change = -(np.asarray(new_w) - np.asarray(w))  # in theta
    assert np.all(np.asarray(new_mask))
    np.testing.assert_allclose(change.mean(), -0.05, atol=0.01)
    np.testing.assert_allclose(change.std(), np.sqrt(2 * 0.1 * 2.0), rtol=0.02)


def test_deep_r_in_a_training_loop():
    """e-prop and Adam with Deep R (and its L1 term) after every update: one compiled step for every
    connectivity (the masks are traced), the fan-in and the signs kept, and an absent synapse has exactly
    zero weight and gradient."""
    n, n_in = 16, 4
    k1, k2 = jax.random.split(jax.random.key(0))
    mask_in, mask_rec = ep.cells.fan_in_mask(k1, (n, n_in), 2), ep.cells.fan_in_mask(k2, (n, n), 4, autapses=False)
    dale = ep.cells.dale_signs(n, 0.75)
    readout = ep.cells.leaky_readout(n, N_OUT, dtype=F64)
    build = lambda m_in, m_rec: ep.cells.stack(
        ep.cells.lif(n_in, n, dtype=F64, threshold=0.02, mask_in=m_in, mask_rec=m_rec, dale=dale), readout
    )
    params = build(mask_in, mask_rec).init(jax.random.key(1))
    params = ({**params[0], "w_in": 4.0 * params[0]["w_in"]}, params[1])
    signs_in = jnp.where(params[0]["w_in"] >= 0, 1.0, -1.0)
    opt = optax.adam(0.05)
    inputs = (jax.random.uniform(jax.random.key(4), (BATCH, 12, n_in)) < 0.6).astype(F64)
    targets = jnp.sin(jnp.arange(12, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))

    @jax.jit
    def train_step(params, opt_state, masks, key):
        _, grads = ep.eprop(build(*masks), mse)(params, inputs, targets)
        updates, opt_state = opt.update(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        w, masks = ep.deep_r(
            key,
            (new[0]["w_in"], new[0]["w_rec"]),
            masks,
            (signs_in, 1.0),
            learning_rate=0.05,
            l1=0.2,
            autapses=(True, False),
        )
        return ({**new[0], "w_in": w[0], "w_rec": w[1]}, new[1]), opt_state, masks, grads

    masks, opt_state, rewired = (mask_in, mask_rec), opt.init(params), 0
    for step in range(40):
        new_params, opt_state, new_masks, grads = train_step(params, opt_state, masks, jax.random.key(step))
        for g, m in zip((grads[0]["w_in"], grads[0]["w_rec"]), masks):
            assert np.all(np.asarray(g)[~np.asarray(m)] == 0)
        drawn = [np.asarray(new) & ~np.asarray(old) for new, old in zip(new_masks, masks)]
        params, rewired = new_params, rewired + sum(int(d.sum()) for d in drawn)
        masks = new_masks
        w_in, w_rec = np.asarray(params[0]["w_in"]), np.asarray(params[0]["w_rec"])
        assert np.all(np.asarray(masks[0]).sum(1) == 2) and np.all(np.asarray(masks[1]).sum(1) == 4)
        assert np.all(w_in[~np.asarray(masks[0])] == 0) and np.all(w_rec[~np.asarray(masks[1])] == 0)
        assert np.all(w_in * np.asarray(signs_in) >= 0) and np.all(w_rec >= 0)
    assert rewired > 0 and train_step._cache_size() == 1


def test_deep_r_on_index_tables():
    """Compressed weights: each removed slot takes a new partner (not one the neuron keeps, never itself) at
    weight zero; a kept slot keeps its partner and weight."""
    pre = ep.cells.fan_in_indices(jax.random.key(0), (40, 40), 8, autapses=False)
    w = jax.random.uniform(jax.random.key(2), (40, 8), minval=-0.3, maxval=1.0)
    crossed = np.asarray(w < 0)
    new_w, new_pre = ep.deep_r(jax.random.key(3), w, pre, 1.0, autapses=False, n_pre=40)
    new_w, new_pre, old = np.asarray(new_w), np.asarray(new_pre), np.asarray(pre)
    assert crossed.sum() > 20 and new_pre.shape == (40, 8) and new_pre.dtype == old.dtype
    assert np.all(new_pre[~crossed] == old[~crossed]) and np.array_equal(new_w[~crossed], np.asarray(w)[~crossed])
    assert np.all(new_w[crossed] == 0) and np.all(new_w >= 0)
    for row in range(40):  # no partner twice, no autapse, every new partner one the neuron did not keep
        assert len(set(new_pre[row])) == 8 and row not in new_pre[row]
        assert not set(new_pre[row][crossed[row]]) & set(old[row][~crossed[row]])


def test_deep_r_on_compressed_weights_in_a_training_loop():
    """e-prop, Adam and Deep R on a LIF layer storing its weights per synapse, the tables traced: one compiled
    step, the gathered layout's table follows the rewiring, and in the dense view an absent synapse has
    exactly zero weight and gradient, the signs hold."""
    n, n_in = 16, 4
    k1, k2 = jax.random.split(jax.random.key(0))
    tables = ep.cells.fan_in_indices(k1, (n, n_in), 2), ep.cells.fan_in_indices(k2, (n, n), 4, autapses=False)
    dale = ep.cells.dale_signs(n, 0.75)
    readout = ep.cells.leaky_readout(n, N_OUT, dtype=F64)
    build = lambda t_in, t_rec: ep.cells.stack(
        ep.cells.lif(n_in, n, dtype=F64, threshold=0.02, pre_in=t_in, pre_rec=t_rec, dale=dale), readout
    )
    params = build(*tables).init(jax.random.key(1))
    params = ({**params[0], "w_in": 4.0 * params[0]["w_in"]}, params[1])
    signs_in = jnp.where(params[0]["w_in"] >= 0, 1.0, -1.0)  # per slot
    opt = optax.adam(0.05)
    inputs = (jax.random.uniform(jax.random.key(4), (BATCH, 12, n_in)) < 0.6).astype(F64)
    targets = jnp.sin(jnp.arange(12, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))

    @jax.jit
    def train_step(params, opt_state, tables, key):
        _, grads = ep.eprop(build(*tables), mse)(params, inputs, targets)
        updates, opt_state = opt.update(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        w, tables = ep.deep_r(
            key, (new[0]["w_in"], new[0]["w_rec"]), tables, (signs_in, 1.0), l1=0.2, learning_rate=0.05,
            autapses=(True, False), n_pre=(n_in, n),
        )  # fmt: skip
        return ({**new[0], "w_in": w[0], "w_rec": w[1]}, new[1]), opt_state, tables, grads

    opt_state, rewired = opt.init(params), 0
    for step in range(40):
        params, opt_state, new_tables, grads = train_step(params, opt_state, tables, jax.random.key(step))
        rewired += int(np.sum(np.asarray(new_tables[1]) != np.asarray(tables[1])))
        for g, t, old_t, n_pre in zip((grads[0]["w_in"], grads[0]["w_rec"]), new_tables, tables, (n_in, n)):
            mask = np.asarray(ep.cells.to_dense(jnp.ones(t.shape, bool), old_t, n_pre))
            assert np.all(np.asarray(ep.cells.to_dense(g, old_t, n_pre))[~mask] == 0)  # not a synapse: no gradient
            assert t.shape == old_t.shape and all(len(set(row)) == t.shape[1] for row in np.asarray(t))
        assert np.all(np.asarray(params[0]["w_in"]) * np.asarray(signs_in) >= 0)
        assert np.all(np.asarray(params[0]["w_rec"]) >= 0)  # magnitudes: the cell applies Dale's signs
        tables = new_tables
    assert rewired > 0 and train_step._cache_size() == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: ep.deep_r(jax.random.key(0), jnp.ones((3, 3)), jnp.ones((3, 3)), 1.0),
            r"deep_r: each mask must be a boolean array \(or an int index table\)",
        ),
        (
            lambda: ep.deep_r(jax.random.key(0), jnp.ones((3, 2)), jnp.array([[0, 1], [1, 2], [0, 2]]), 1.0),
            r"deep_r: an index table of 2 synapses per neuron needs `n_pre`, .* an int >= 2; got None",
        ),
        (
            lambda: ep.deep_r(jax.random.key(0), jnp.ones((3, 3)), jnp.ones((3, 3), bool), 0.0),
            r"deep_r: `signs` must be \+1 or -1, got 0.0",
        ),
        (
            lambda: ep.deep_r(jax.random.key(0), jnp.ones((3, 3)), jnp.ones((3, 3), bool), jnp.ones(2)),
            r"deep_r: `signs` of shape \(2,\) do not broadcast",
        ),
        (
            lambda: ep.deep_r(jax.random.key(0), jnp.ones((3, 3)), jnp.ones((3, 3), bool), 1.0, l1=-1.0),
            r"deep_r: `l1` must be",
        ),
    ],
)
def test_bad_deep_r(call, message):
    with pytest.raises(ValueError, match=message):
        call()

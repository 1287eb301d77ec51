"""The gathered layout: e-prop's per-synapse traces kept only where synapses exist.

A sparse recurrent layer (``mask_in`` / ``mask_rec``) keeps, per neuron, the ``K`` presynaptic entries its
synapses read; the same rule with the layout switched off (``_plan.SPARSE_FRACTION = 0``) keeps the dense
``(n, m)`` traces, with zeros at the absent synapses. The two give the same gradients, in float64, on fixed
fan-in masks and on Bernoulli masks (rows of unequal length: padded), under both readouts, on two layers,
with the regulariser, for e-prop, SnAp-1, m-order e-prop's dense levels, deep e-prop (spatial and full)
and RTRL's influence columns; compressed weights (index tables) equal the masked network under every rule.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eproptax as ep
import eproptax._plan
from eproptax._registry import keyed

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 5, 12, 2, 9, 3


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def masks(key, n_in, draw):
    k1, k2 = jax.random.split(key)
    if draw == "fan_in":
        return ep.cells.fan_in_mask(k1, (N, n_in), 2), ep.cells.fan_in_mask(k2, (N, N), 3, autapses=False)
    return ep.cells.bernoulli_mask(k1, (N, n_in), 0.3), ep.cells.bernoulli_mask(k2, (N, N), 0.25)


@functools.cache
def network(cell, readout, layers=1, draw="fan_in"):
    keys = jax.random.split(jax.random.key(0), layers)
    hidden = []
    for i in range(layers):
        n_in = N_IN if i == 0 else N
        m_in, m_rec = masks(keys[i], n_in, draw)
        if cell == "rnn":
            hidden.append(ep.cells.rnn(n_in, N, mask_in=m_in.T, mask_rec=m_rec.T, dtype=F64))
        else:
            options = dict(beta=0.05, tau_adapt=10.0) if cell == "alif" else {}
            make = ep.cells.alif if cell == "alif" else ep.cells.lif
            hidden.append(make(n_in, N, dtype=F64, threshold=0.02, mask_in=m_in, mask_rec=m_rec, **options))
    top = (ep.cells.leaky_readout if readout == "leaky" else ep.cells.readout)(N, N_OUT, dtype=F64)
    model = ep.cells.stack(*hidden, top)
    params = model.init(jax.random.key(1))
    if cell != "rnn":  # the spiking neurons spike
        params = ({**params[0], "w_in": 4.0 * params[0]["w_in"]}, *params[1:])
    inputs = (jax.random.uniform(jax.random.key(2), (BATCH, T, N_IN)) < 0.6).astype(F64)
    targets = jnp.sin(jnp.arange(T, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))
    return model, params, inputs, targets


CASES = [
    ("eprop", "lif", "leaky", 1, "fan_in"),
    ("eprop", "lif", "stateless", 1, "bernoulli"),
    ("eprop", "alif", "leaky", 1, "bernoulli"),
    ("eprop", "alif", "stateless", 2, "fan_in"),
    ("eprop", "lif", "leaky", 2, "bernoulli"),
    ("eprop", "rnn", "stateless", 1, "fan_in"),
    ("eprop_reg", "alif", "leaky", 1, "fan_in"),
    ("snap", "lif", "leaky", 1, "bernoulli"),
    ("deep_eprop", "alif", "leaky", 2, "fan_in"),
    ("eprop_m1", "lif", "leaky", 1, "fan_in"),
    ("eprop_m2", "alif", "stateless", 2, "bernoulli"),
    ("deep_full", "alif", "leaky", 2, "fan_in"),
    ("rtrl", "alif", "stateless", 2, "bernoulli"),
    ("rtrl_reg", "lif", "leaky", 1, "fan_in"),
]
RULES = {
    "eprop": lambda m: ep.eprop(m, mse),
    "eprop_reg": lambda m: ep.eprop(m, mse, reg=ep.FiringRateReg(0.5, 0.05)),
    "snap": lambda m: ep.snap(m, mse),
    "deep_eprop": lambda m: ep.deep_eprop(m, mse, depth="spatial"),
    "eprop_m1": lambda m: ep.eprop_m(m, mse, 1),
    "eprop_m2": lambda m: ep.eprop_m(m, mse, 2),
    "deep_full": lambda m: ep.deep_eprop(m, mse, depth="full"),
    "rtrl": lambda m: ep.rtrl(m, mse),
    "rtrl_reg": lambda m: ep.rtrl(m, mse, reg=ep.FiringRateReg(0.5, 0.05)),
}


@pytest.mark.parametrize("rule, cell, readout, layers, draw", CASES)
def test_gathered_equals_dense(rule, cell, readout, layers, draw, monkeypatch):
    model, params, inputs, targets = network(cell, readout, layers, draw)
    online = ep.online.eprop(model, mse)
    assert all(d.pre is not None for d in online.plan.layers[:-1])  # the layout is on
    value, grads = jax.jit(RULES[rule](model))(params, inputs, targets)
    monkeypatch.setattr(eproptax._plan, "SPARSE_FRACTION", 0.0)
    assert ep.online.eprop(model, mse).plan.layers[0].pre is None  # and off
    value_d, grads_d = jax.jit(RULES[rule](model))(params, inputs, targets)
    np.testing.assert_allclose(value, value_d, rtol=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_d)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads[0]))


def test_the_layout_keeps_each_neurons_synapses():
    """Fixed fan-in: every neuron keeps its 2 inputs and 3 recurrent partners (LIF has no bias column), and
    the state's per-synapse arrays are ``(n, B, K)``; no chunked view is offered."""
    model, params, *_ = network("lif", "leaky")
    rule = ep.online.eprop(model, mse)
    d = rule.plan.layers[0]
    assert d.pre.shape == (N, 5) and d.valid is None and d.m == N_IN + N + 1
    state = jax.eval_shape(lambda p: rule.init(p, BATCH), params)
    assert state.traces.filtered[0][0].shape == (N, BATCH, 1, 5)
    assert rule.chunk is None
    with pytest.raises(ValueError, match=r"eprop: `chunk=8` has no chunked form on a sparse layer's gathered layout"):
        ep.eprop(model, mse, chunk=8)
    assert rule.plan.cost(BATCH, itemsize=8).state_bytes == sum(
        leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state)
    )


def test_rtrl_keeps_columns_only_for_synapses():
    """RTRL's influence on a sparse layer: ``(B, |carry|, n, k, K)``, each neuron's synapses (the readout's
    dense); its plan counts what it stores."""
    model, params, *_ = network("lif", "leaky")
    rule = ep.online.rtrl(model, mse)
    state = jax.eval_shape(lambda p: rule.init(p, BATCH), params)
    assert [M.shape for M in state.traces] == [(BATCH, N + N_OUT, N, 1, 5), (BATCH, N + N_OUT, N_OUT, 1, N + N_OUT + 1)]
    assert rule.plan.cost(BATCH, itemsize=8).state_bytes == sum(
        leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state)
    )


def test_a_dense_layer_and_a_traced_mask_keep_the_dense_layout():
    """A concrete mask gives the gathered layout even where a jit traces the rule's construction."""
    model, *_ = network("lif", "leaky")
    dense = ep.cells.stack(ep.cells.lif(N_IN, N, dtype=F64), ep.cells.leaky_readout(N, N_OUT, dtype=F64))
    assert ep.online.eprop(dense, mse).plan.layers[0].pre is None
    m_in, m_rec = masks(jax.random.key(0), N_IN, "fan_in")

    def layout(m_rec):
        traced = ep.cells.stack(ep.cells.lif(N_IN, N, dtype=F64, mask_rec=m_rec), ep.cells.readout(N, N_OUT, dtype=F64))
        return ep.online.eprop(traced, mse).plan.layers[0].pre

    seen = []
    jax.jit(lambda m: seen.append(layout(m)) or 0.0)(m_rec)  # a traced mask: the dense layout
    jax.jit(lambda x: seen.append(layout(m_rec)) or x)(0.0)  # a concrete mask, the rule built under jit
    assert seen[0] is None and seen[1].shape == (N, N_IN + 3)


@functools.cache
def against_dense():
    """The compiled e-prop program of a LIF(256) layer at 10% fixed fan-in, leaky readout, batch 16: its
    temporaries plus outputs in the gathered layout, and with its weights compressed, as fractions of the
    dense layout's."""
    n, n_in = 256, 32
    k1, k2 = jax.random.split(jax.random.key(0))
    m_in, m_rec = ep.cells.fan_in_mask(k1, (n, n_in), 3), ep.cells.fan_in_mask(k2, (n, n), 26, autapses=False)
    p_in, p_rec = ep.cells.fan_in_indices(k1, (n, n_in), 3), ep.cells.fan_in_indices(k2, (n, n), 26, autapses=False)
    masked = ep.cells.stack(ep.cells.lif(n_in, n, mask_in=m_in, mask_rec=m_rec), ep.cells.leaky_readout(n, 2))
    packed = ep.cells.stack(ep.cells.lif(n_in, n, pre_in=p_in, pre_rec=p_rec), ep.cells.leaky_readout(n, 2))
    inputs, targets = jnp.zeros((16, 10, n_in)), jnp.zeros((16, 10, 2))

    def memory(model):
        fn = jax.jit(keyed(ep.rules["eprop"], ep.eprop(model, mse)))
        analysis = fn.lower(model.init(jax.random.key(1)), inputs, targets).compile().memory_analysis()
        return analysis.temp_size_in_bytes + analysis.output_size_in_bytes

    gathered, packed = memory(masked), memory(packed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eproptax._plan, "SPARSE_FRACTION", 0.0)
        dense = memory(masked)
    return gathered / dense, packed / dense


def test_memory_follows_the_synapses():
    """Measured 0.26 masked: the traces shrink to a tenth; the dense gradient output and the presynaptic
    vector gathered each step (a trace-sized temporary) stay. A dense trace kept anywhere would be above
    0.35. Compressed, measured 0.165: the traces, one dense view of the weights for the forward product and
    the compressed gradients; the masked layer's dense gradient output and its scatter would put it above
    0.2."""
    masked, packed = against_dense()
    assert masked < 0.35 and packed < 0.2, (masked, packed)


# ----------------------------------------------------------------------------------------------------------
# Compressed weights: index tables (`pre_in`, `pre_rec`), the weights stored per synapse
# ----------------------------------------------------------------------------------------------------------


def tables(key, n_in):
    """The index tables of :func:`masks`' fixed fan-in draw: the same key, the same synapses."""
    k1, k2 = jax.random.split(key)
    return ep.cells.fan_in_indices(k1, (N, n_in), 2), ep.cells.fan_in_indices(k2, (N, N), 3, autapses=False)


@functools.cache
def compressed(cell, readout, layers=1):
    """:func:`network`'s fixed fan-in network with its weights compressed: ``(model, params, tables)``, the
    params the compressed entries of the masked network's (whose dense view they are)."""
    _, dense_params, *_ = network(cell, readout, layers, "fan_in")
    keys = jax.random.split(jax.random.key(0), layers)
    hidden, params, all_tables = [], [], []
    for i in range(layers):
        n_in = N_IN if i == 0 else N
        pre_in, pre_rec = tables(keys[i], n_in)
        options = dict(beta=0.05, tau_adapt=10.0) if cell == "alif" else {}
        make = ep.cells.alif if cell == "alif" else ep.cells.lif
        hidden.append(make(n_in, N, dtype=F64, threshold=0.02, pre_in=pre_in, pre_rec=pre_rec, **options))
        p = dense_params[i]
        params.append(
            {"w_in": ep.cells.to_compressed(p["w_in"], pre_in), "w_rec": ep.cells.to_compressed(p["w_rec"], pre_rec)}
        )
        all_tables.append((pre_in, pre_rec))
    top = (ep.cells.leaky_readout if readout == "leaky" else ep.cells.readout)(N, N_OUT, dtype=F64)
    return ep.cells.stack(*hidden, top), (*params, dense_params[-1]), tuple(all_tables)


def dense_view(grads, all_tables):
    """Compressed gradients (or params) as the masked network's ``(post, pre)`` ones; the readout's as they are."""
    hidden = [
        {
            "w_in": ep.cells.to_dense(g["w_in"], t_in, N_IN if i == 0 else N),
            "w_rec": ep.cells.to_dense(g["w_rec"], t_rec, N),
        }
        for i, (g, (t_in, t_rec)) in enumerate(zip(grads, all_tables))
    ]
    return (*hidden, grads[-1])


COMPRESSED = [
    ("eprop", "lif", "leaky", 1),
    ("eprop_reg", "alif", "stateless", 2),
    ("snap", "lif", "stateless", 1),
    ("deep_eprop", "alif", "leaky", 2),
    ("eprop_m2", "lif", "stateless", 2),
    ("snap2", "lif", "leaky", 1),
    ("rtrl", "alif", "leaky", 1),
    ("bptt", "lif", "leaky", 2),
]
EXACT_RULES = {
    **RULES,
    "snap2": lambda m: ep.snap(m, mse, 2),
    "rtrl": lambda m: ep.rtrl(m, mse),
    "bptt": lambda m: ep.bptt(m, mse),
}


@pytest.mark.parametrize("rule, cell, readout, layers", COMPRESSED)
def test_compressed_equals_masked(rule, cell, readout, layers):
    """Every rule on compressed weights gives the masked network's loss and, mapped by ``to_dense``, its
    gradients; the e-prop family keeps the cell's own table as its gathered layout."""
    model, params, all_tables = compressed(cell, readout, layers)
    masked, dense_params, inputs, targets = network(cell, readout, layers, "fan_in")
    for a, b in zip(jax.tree_util.tree_leaves(dense_view(params, all_tables)), jax.tree_util.tree_leaves(dense_params)):
        np.testing.assert_array_equal(a, b)  # the same network
    if rule not in ("rtrl", "bptt", "snap2"):
        plan = ep.online.eprop(model, mse).plan
        assert all(d.pre.shape == (N, 5) for d in plan.layers[:-1])
    value, grads = jax.jit(EXACT_RULES[rule](model))(params, inputs, targets)
    value_m, grads_m = jax.jit(EXACT_RULES[rule](masked))(dense_params, inputs, targets)
    np.testing.assert_allclose(value, value_m, rtol=1e-13)
    assert all(g["w_in"].shape == (N, 2) and g["w_rec"].shape == (N, 3) for g in grads[:-1])
    for a, b in zip(jax.tree_util.tree_leaves(dense_view(grads, all_tables)), jax.tree_util.tree_leaves(grads_m)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    assert all(np.any(np.asarray(g["w_rec"]) != 0) for g in grads[:-1])


def test_traced_tables_keep_the_gathered_layout():
    """Index tables passed traced (as Deep R's training loop does): still the gathered layout, their width."""
    pre_in, pre_rec = tables(jax.random.key(0), N_IN)
    seen = []

    def layout(pre_rec):
        model = ep.cells.stack(
            ep.cells.lif(N_IN, N, dtype=F64, pre_in=pre_in, pre_rec=pre_rec), ep.cells.readout(N, N_OUT, dtype=F64)
        )
        seen.append(ep.online.eprop(model, mse).plan.layers[0].pre)
        return 0.0

    jax.jit(layout)(pre_rec)
    assert isinstance(seen[0], jax.core.Tracer) and seen[0].shape == (N, 5)


def test_compressed_tables_and_conversions():
    """``fan_in_indices`` draws ``fan_in_mask``'s synapses; ``to_dense`` and ``to_compressed`` invert each other
    on them; the layer's table lists the inputs, then the recurrent partners offset by ``n_in``."""
    key = jax.random.key(3)
    pre = ep.cells.fan_in_indices(key, (N, N), 3, autapses=False)
    mask = ep.cells.fan_in_mask(key, (N, N), 3, autapses=False)
    assert pre.dtype == jnp.int32 and np.all(np.diff(np.asarray(pre), axis=1) > 0)
    np.testing.assert_array_equal(ep.cells.to_dense(jnp.ones((N, 3), bool), pre, N), mask)
    w = jax.random.normal(key, (N, 3))
    np.testing.assert_array_equal(ep.cells.to_compressed(ep.cells.to_dense(w, pre, N), pre), w)
    model, *_ = compressed("lif", "leaky")
    pre_in, pre_rec = tables(jax.random.split(jax.random.key(0), 1)[0], N_IN)
    np.testing.assert_array_equal(model.layers[0].synapses[0], np.concatenate([pre_in, pre_rec + N_IN], 1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pre_in=np.zeros((N, 2), np.int32)), r"lif: a compressed layer needs both index tables"),
        (dict(pre_in=np.zeros((N, 2)), pre_rec=np.zeros((N, 2))), r"lif: `pre_in` must be an integer index table"),
        (dict(pre_in=np.zeros((N, 1), int), pre_rec=np.zeros((N - 1, 1), int)), r"shape \(12, K\), got int64"),
        (dict(pre_in=np.full((N, 1), N_IN), pre_rec=np.ones((N, 1), int)), r"`pre_in` entries must be in \[0, 5\)"),
        (
            dict(pre_in=np.zeros((N, 2), int), pre_rec=np.ones((N, 2), int)),
            r"`pre_in` lists a presynaptic partner twice",
        ),
        (dict(pre_in=np.zeros((N, 1), int), pre_rec=np.zeros((N, 1), int)), r"`pre_rec` connects neuron 0 to itself"),
        (
            dict(pre_in=np.zeros((N, 1), int), pre_rec=np.ones((N, 1), int), mask_in=np.ones((N, N_IN), bool)),
            r"give either masks \(`mask_in`, `mask_rec`\) or index tables",
        ),
    ],
)
def test_bad_tables(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ep.cells.lif(N_IN, N, **kwargs)


def test_a_broken_synapse_table_is_a_contract_error():
    """``Cell.synapses`` is checked when a rule is built: an integer ``(n, K)`` table, weights ``(n, k, K)``."""
    good = compressed("lif", "leaky")[0].layers[0]
    pre, weights = good.synapses
    for synapses, message in (
        ((pre.astype(F64), weights), r"`synapses` pre must be an integer \(n=12, K\) index table"),
        ((pre, lambda p: weights(p)[:, :, :4]), r"weights\(params\) must return \(n=12, k=1, K=5\)"),
    ):
        layer = good._replace(synapses=synapses)
        with pytest.raises(ep.cells.ContractError, match=message):
            ep.eprop(ep.cells.stack(layer, ep.cells.readout(N, N_OUT, dtype=F64)), mse)

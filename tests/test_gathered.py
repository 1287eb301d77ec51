"""The gathered layout: e-prop's per-synapse traces kept only where synapses exist.

A sparse recurrent layer (``mask_in`` / ``mask_rec``) keeps, per neuron, the ``K`` presynaptic entries its
synapses read; the same rule with the layout switched off (``_plan.SPARSE_FRACTION = 0``) keeps the dense
``(n, m)`` traces, with zeros at the absent synapses. The two give the same gradients, in float64, on fixed
fan-in masks and on Bernoulli masks (rows of unequal length: padded), under both readouts, on two layers,
with the regulariser, for e-prop, SnAp-1 and spatial deep e-prop.
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
]
RULES = {
    "eprop": lambda m: ep.eprop(m, mse),
    "eprop_reg": lambda m: ep.eprop(m, mse, reg=ep.FiringRateReg(0.5, 0.05)),
    "snap": lambda m: ep.snap(m, mse),
    "deep_eprop": lambda m: ep.deep_eprop(m, mse, depth="spatial"),
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
    temporaries plus outputs in the gathered layout, as a fraction of the dense layout's."""
    n, n_in = 256, 32
    k1, k2 = jax.random.split(jax.random.key(0))
    m_in, m_rec = ep.cells.fan_in_mask(k1, (n, n_in), 3), ep.cells.fan_in_mask(k2, (n, n), 26, autapses=False)
    model = ep.cells.stack(ep.cells.lif(n_in, n, mask_in=m_in, mask_rec=m_rec), ep.cells.leaky_readout(n, 2))
    params = model.init(jax.random.key(1))
    inputs, targets = jnp.zeros((16, 10, n_in)), jnp.zeros((16, 10, 2))

    def memory():
        compiled = jax.jit(keyed(ep.rules["eprop"], ep.eprop(model, mse))).lower(params, inputs, targets).compile()
        analysis = compiled.memory_analysis()
        return analysis.temp_size_in_bytes + analysis.output_size_in_bytes

    gathered = memory()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eproptax._plan, "SPARSE_FRACTION", 0.0)
        return gathered / memory()


def test_memory_follows_the_synapses():
    """Measured 0.26: the traces shrink to a tenth; the dense gradient output and the presynaptic vector
    gathered each step (a trace-sized temporary) stay. A dense trace kept anywhere would be above 0.35."""
    assert against_dense() < 0.35

"""One implementation, two views: the online form stepped by hand equals the whole-sequence form."""

import jax
import numpy as np
import pytest
from helpers import Config, assert_close, mse, problem, run

import eproptax as ep

ONLINE = {
    "rtrl": lambda model, loss: ep.online.rtrl(model, loss),
    "eprop": lambda model, loss: ep.online.eprop(model, loss),
    "eprop_m1": lambda model, loss: ep.online.eprop_m(model, loss, 1),
    "deep_eprop": lambda model, loss: ep.online.deep_eprop(model, loss),
}
ONE_LAYER = Config(cells=("lif",), readout="leaky")
TWO_LAYERS = Config(cells=("lif", "lif"), readout="leaky", sizes=(4, 3))
CASES = [(rule, ONE_LAYER) for rule in ONLINE] + [("eprop", TWO_LAYERS), ("deep_eprop", TWO_LAYERS)]

_STEPS = {}


def online(rule, cfg):
    """The online rule with jitted functions (each compiled once per rule and configuration)."""
    if (rule, cfg) not in _STEPS:
        r = ONLINE[rule](problem(cfg).model, mse)
        _STEPS[(rule, cfg)] = ep.OnlineRule(
            jax.jit(r.init, static_argnums=1), jax.jit(r.step), jax.jit(r.result), jax.jit(r.reset)
        )
    return _STEPS[(rule, cfg)]


def stream(rule, cfg, steps, state=None):
    """Runs ``steps`` (an iterable of time indices) through the online rule by hand."""
    prob = problem(cfg)
    online_rule = online(rule, cfg)
    state = online_rule.init(prob.params, cfg.batch) if state is None else state
    outputs = []
    for t in steps:
        target_t = jax.tree_util.tree_map(lambda a: a[:, t], prob.targets)
        state, out = online_rule.step(prob.params, state, prob.inputs[:, t], target_t)
        outputs.append(out)
    return state, outputs


@pytest.mark.parametrize("rule,cfg", CASES, ids=[f"{r}-{c.id}" for r, c in CASES])
def test_stepped_by_hand_equals_whole_sequence(rule, cfg):
    prob = problem(cfg)
    online_rule = online(rule, cfg)
    state, outputs = stream(rule, cfg, range(cfg.time))
    assert int(state.steps) == cfg.time
    assert outputs[0].shape == (cfg.batch, cfg.n_out)
    value, grads = online_rule.result(prob.params, state)
    value_w, grads_w = run(rule, cfg)
    np.testing.assert_allclose(value, value_w, rtol=1e-13)
    assert_close(grads, grads_w, 1e-12, f"online {rule} vs whole sequence")


@pytest.mark.parametrize("rule", list(ONLINE))
def test_streaming_in_two_chunks(rule):
    """Without reset, two chunks accumulate to the whole sequence; with a reset, the windows add up."""
    cfg = ONE_LAYER
    prob = problem(cfg)
    online_rule = online(rule, cfg)
    split = 3
    first, _ = stream(rule, cfg, range(split))
    no_reset, _ = stream(rule, cfg, range(split, cfg.time), first)
    value_w, grads_w = run(rule, cfg)
    value, grads = online_rule.result(prob.params, no_reset)
    np.testing.assert_allclose(value, value_w, rtol=1e-13)
    assert_close(grads, grads_w, 1e-12, "two chunks, no reset")

    reset = online_rule.reset(first)
    jax.tree_util.tree_map(np.testing.assert_array_equal, (reset.carry, reset.traces), (first.carry, first.traces))
    zero_value, zero_grads = online_rule.result(prob.params, reset)
    assert float(zero_value) == 0.0
    assert not any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(zero_grads))
    second, _ = stream(rule, cfg, range(split, cfg.time), reset)
    assert int(second.steps) == cfg.time - split
    value_1, grads_1 = online_rule.result(prob.params, first)
    value_2, grads_2 = online_rule.result(prob.params, second)
    np.testing.assert_allclose(value_1 + value_2, value_w, rtol=1e-13)
    assert_close(jax.tree_util.tree_map(lambda a, b: a + b, grads_1, grads_2), grads_w, 1e-12, "windows add up")
    assert float(value_1) > 0 and float(value_2) > 0


@pytest.mark.parametrize("rule", ["eprop", "eprop_m1", "rtrl"])
def test_batch_axes_select_each_example(rule):
    """``rule.axes(state)`` names each per-example leaf's batch axis (e-prop keeps its compact traces
    neuron-major): example 1 of a batch of two, taken along those axes, is the state of example 1 alone."""
    cfg = Config(cells=("alif",), readout="leaky")  # compact own traces and a compact filtered trace
    prob = problem(cfg)
    online_rule = ONLINE[rule](prob.model, mse)
    step = jax.jit(online_rule.step)

    def states(examples):
        state = online_rule.init(prob.params, len(examples))
        for t in range(3):
            target_t = jax.tree_util.tree_map(lambda a: a[examples, t], prob.targets)
            state, _ = step(prob.params, state, prob.inputs[examples, t], target_t)
        return state

    both, alone = states([0, 1]), states([1])

    def example_1(axis, subtree):
        return subtree if axis is None else jax.tree_util.tree_map(lambda a: a.take(np.array([1]), axis), subtree)

    picked = jax.tree_util.tree_map(example_1, online_rule.axes(both), both, is_leaf=lambda x: x is None)
    assert_close((picked.carry, picked.traces), (alone.carry, alone.traces), 1e-12, f"{rule} example 1")

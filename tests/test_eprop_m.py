"""m-order e-prop: order 0 is e-prop, order >= T - 1 is BPTT, and alignment grows with the order.

The family (Martín-Sánchez, Bohté, Otte 2022) keeps the influence paths with at most ``order`` explicit
recurrent edges. The ladder here: order 0 == ``eprop`` (symmetric) -> order T - 1 and above == ``bptt`` ->
every order == ``bptt`` without recurrent weights -> cosine to BPTT does not decrease with the order, on
average over a fixed seed set -> online == whole sequence -> jit, vmap over a hyperparameter, no re-trace.

Compile time dominates, so every whole-sequence rule is jitted once per (rule, order, configuration) and
reused with other parameter values (zero recurrent weights, the alignment networks): the shapes of a
configuration never change.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CELLS,
    SPIKING,
    Config,
    assert_close,
    cosine,
    flat,
    model_of,
    mse,
    problem,
    rel_err,
    rule_fn,
    spike_counts,
    vmap_matches_loop,
    zero_recurrent,
)

import eproptax as ep

BASE_T = 8  # helpers' default length: the base configurations share compiled bptt / eprop with other files


def _cfg(cell: str, time: int = BASE_T) -> Config:
    return Config(cells=(cell,), readout="leaky", time=time)


@functools.cache
def _eprop_m(cfg: Config, order: int):
    """``jax.jit(ep.eprop_m(model, mse, order))`` for a configuration, compiled once per session."""
    return jax.jit(ep.eprop_m(model_of(cfg), mse, order))


def _bptt(cfg: Config):
    return rule_fn("bptt", cfg)


def _data(cfg: Config, params=None):
    prob = problem(cfg)
    return (prob.params if params is None else params), prob.inputs, prob.targets


def _recurrent_part(grads):
    return grads[0]


# ----------------------------------------------------------------------------------------------------------
# order 0 is e-prop
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_order_zero_is_eprop(cell):
    cfg = _cfg(cell)
    args = _data(cfg)
    value_e, grads_e = rule_fn("eprop", cfg)(*args)
    value_0, grads_0 = _eprop_m(cfg, 0)(*args)
    np.testing.assert_allclose(value_0, value_e, rtol=1e-12)
    assert_close(grads_0, grads_e, 1e-12, f"eprop_m(order=0) vs eprop on {cell}")
    assert np.abs(flat(_recurrent_part(grads_e))).max() > 0, "vacuous: e-prop's recurrent gradient is zero"


# ----------------------------------------------------------------------------------------------------------
# order >= T - 1 is the exact gradient, T from 2 to 30
# ----------------------------------------------------------------------------------------------------------

# (cell, T, orders >= T - 1): T - 1 everywhere, a larger order where T differs from the base length (one more
# compile per case; the larger orders only add trace levels that stay zero, which these cases check).
EXACT_CASES = [(cell, BASE_T, (BASE_T - 1,)) for cell in CELLS] + [
    ("gru", 2, (1, 3)),
    ("rnn", 30, (29, 31)),
    ("lif", 30, (29, 40)),
]


@pytest.mark.parametrize("cell,time,orders", EXACT_CASES, ids=[f"{c}-T{t}" for c, t, _ in EXACT_CASES])
def test_order_T_minus_1_is_bptt(cell, time, orders):
    cfg = _cfg(cell, time)
    args = _data(cfg)
    if cell in SPIKING:
        assert spike_counts(cfg, args[0])[0] > 0, "vacuous: the layer never spikes"
    value_b, grads_b = _bptt(cfg)(*args)
    assert np.abs(flat(_recurrent_part(grads_b))).max() > 0, "vacuous: the recurrent gradient is zero"
    for order in orders:
        value_m, grads_m = _eprop_m(cfg, order)(*args)
        np.testing.assert_allclose(value_m, value_b, rtol=1e-12)
        assert_close(grads_m, grads_b, 1e-10, f"eprop_m(order={order}) vs bptt on {cell}, T={time}")
    # and the truncation is real: lower orders are not exact on these recurrent networks
    _, grads_0 = _eprop_m(cfg, 0)(*args)
    assert rel_err(_recurrent_part(grads_0), _recurrent_part(grads_b)) > 1e-2
    if time == BASE_T:  # order 2 is compiled for these anyway (measured: 8e-5 (alif) to 0.36 (rnn))
        _, grads_2 = _eprop_m(cfg, 2)(*args)
        assert rel_err(_recurrent_part(grads_2), _recurrent_part(grads_b)) > 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_without_recurrent_weights_every_order_is_bptt(cell):
    cfg = _cfg(cell)
    params = zero_recurrent(problem(cfg).params, cfg)
    args = _data(cfg, params)
    if cell in SPIKING:
        assert spike_counts(cfg, params)[0] > 0, "vacuous: the layer never spikes"
    _, grads_b = _bptt(cfg)(*args)
    assert np.abs(flat(_recurrent_part(grads_b))).max() > 0
    for order in (0, 1, 2):
        _, grads_m = _eprop_m(cfg, order)(*args)
        assert_close(grads_m, grads_b, 1e-10, f"eprop_m(order={order}) vs bptt on {cell} with W_rec = 0")


# ----------------------------------------------------------------------------------------------------------
# Alignment with BPTT grows with the order (on average over random networks)
# ----------------------------------------------------------------------------------------------------------

ALIGN_GAIN = 2.0  # recurrent weights twice their default scale: the explicit recurrence matters
ALIGN_DELAY = 3  # the target is the input of three steps before: the network must remember
ALIGN_SEEDS = tuple(range(8))


def alignment_problem(cfg: Config, seed: int):
    """A random network with strong recurrent weights on a delayed-copy task, shaped like ``problem(cfg)``.

    Spiking layers get a positive input drive (as in ``helpers``) and ``ALIGN_GAIN`` times their default
    recurrent weights, with Poisson inputs of rate 0.3; classic cells get ``ALIGN_GAIN`` times their default
    ``h*`` kernels and Gaussian inputs. The target at step ``t`` is the input at ``t - ALIGN_DELAY`` (first
    ``n_out`` channels), scored from step ``ALIGN_DELAY`` on.
    """
    model, dtype = model_of(cfg), jnp.float64
    k_param, k_in = jax.random.split(jax.random.key(1000 + seed))
    params = list(model.init(k_param))
    p = params[0]
    shape = (cfg.batch, cfg.time, cfg.n_in)
    if cfg.cells[0] in SPIKING:
        params[0] = {**p, "w_in": 0.3 * p["w_in"] + 0.3 / np.sqrt(cfg.n_in), "w_rec": ALIGN_GAIN * p["w_rec"]}
        inputs = (jax.random.uniform(k_in, shape) < 0.3).astype(dtype)
    else:
        params[0] = {k: ({**v, "kernel": ALIGN_GAIN * v["kernel"]} if k.startswith("h") else v) for k, v in p.items()}
        inputs = jax.random.normal(k_in, shape, dtype)
    y = (
        jnp.zeros((cfg.batch, cfg.time, cfg.n_out), dtype)
        .at[:, ALIGN_DELAY:]
        .set(inputs[:, :-ALIGN_DELAY, : cfg.n_out])
    )
    mask = jnp.zeros((cfg.batch, cfg.time), dtype).at[:, ALIGN_DELAY:].set(1.0)
    return tuple(params), inputs, {"y": y, "mask": mask}


# Measured with this file's configuration (T = 8, n = 4, 8 seeds), mean cosine to BPTT for orders 0, 1, 2,
# whole gradient | recurrent layer only:
#   lif  0.968 0.997 1.000 | 0.910 0.989 0.999      alif 0.991 0.999 1.000 | 0.963 0.994 0.999
#   rnn  0.865 0.878 0.935 | 0.799 0.870 0.927      gru  0.905 0.985 0.997 | 0.871 0.977 0.995
#   lstm 0.958 0.995 0.999 | 0.925 0.992 0.999
# The ordering holds on the mean for every family, but not seed by seed: for the tanh RNN (no implicit
# recurrence, so order m is BPTT truncated to paths of m recurrent hops) 2 of the 8 seeds lose alignment
# from one order to the next, because the dropped longer paths can cancel part of the kept ones. The mean
# is what the issue asks for and what this test holds.


@pytest.mark.parametrize("cell", CELLS)
def test_alignment_does_not_decrease_with_order(cell):
    cfg = _cfg(cell)
    whole, recurrent = [], []
    for seed in ALIGN_SEEDS:
        args = alignment_problem(cfg, seed)
        _, grads_b = _bptt(cfg)(*args)
        grads = [_eprop_m(cfg, order)(*args)[1] for order in (0, 1, 2)]
        whole.append([cosine(g, grads_b) for g in grads])
        recurrent.append([cosine(_recurrent_part(g), _recurrent_part(grads_b)) for g in grads])
    whole, recurrent = np.mean(whole, axis=0), np.mean(recurrent, axis=0)
    print(
        f"\n{cell}: mean cosine to BPTT, orders 0 1 2: whole {np.round(whole, 4)}, recurrent layer "
        f"{np.round(recurrent, 4)}"
    )
    assert recurrent[0] < 0.99, "the explicit recurrence does not matter here: the test would be vacuous"
    for cos in (whole, recurrent):
        assert cos[0] <= cos[1] + 1e-12 and cos[1] <= cos[2] + 1e-12, cos


# ----------------------------------------------------------------------------------------------------------
# Online == whole sequence; jit, vmap over a hyperparameter, no re-trace
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell,order", [("lif", 2), ("gru", 1)])
def test_online_equals_whole_sequence(cell, order):
    cfg = _cfg(cell)
    params, inputs, targets = _data(cfg)
    rule = ep.online.eprop_m(model_of(cfg), mse, order)
    chex.clear_trace_counter()  # chex counts traces per function code, and every rule's `step` shares it
    step = jax.jit(chex.assert_max_traces(rule.step, n=1))
    result = jax.jit(rule.result)
    at = lambda t: jax.tree_util.tree_map(lambda a: a[:, t], targets)

    state = rule.init(params, cfg.batch)
    outputs = []
    for t in range(cfg.time):
        state, out = step(params, state, inputs[:, t], at(t))
        outputs.append(out)
    value, grads = result(params, state)
    value_w, grads_w = _eprop_m(cfg, order)(params, inputs, targets)
    np.testing.assert_allclose(value, value_w, rtol=1e-12)
    assert_close(grads, grads_w, 1e-12, f"online vs whole-sequence eprop_m(order={order}) on {cell}")

    # the outputs are the model's, and two windows split by `reset` add up to the whole sequence
    carry, reference = jax.vmap(model_of(cfg).init_carry, axis_size=cfg.batch, in_axes=None)(params), []
    for t in range(cfg.time):
        carry, out = jax.vmap(model_of(cfg).apply, in_axes=(None, 0, 0))(params, carry, inputs[:, t])
        reference.append(out)
    np.testing.assert_allclose(np.stack(outputs), np.stack(reference), rtol=1e-12, atol=1e-15)
    state, half = rule.init(params, cfg.batch), cfg.time // 2
    for t in range(half):
        state, _ = step(params, state, inputs[:, t], at(t))
    value_1, grads_1 = result(params, state)
    state = rule.reset(state)
    for t in range(half, cfg.time):
        state, _ = step(params, state, inputs[:, t], at(t))
    value_2, grads_2 = result(params, state)
    np.testing.assert_allclose(value_1 + value_2, value_w, rtol=1e-12)
    assert_close(jax.tree_util.tree_map(jnp.add, grads_1, grads_2), grads_w, 1e-12, "two windows vs whole")


def test_jit_vmap_over_a_hyperparameter_no_retrace():
    """``tau_mem`` traced inside a vmapped function: slices equal the unbatched rule and the static default;
    new values of the same shapes do not re-trace."""
    cfg = _cfg("lif")
    params, inputs, targets = _data(cfg)
    order = 2

    def grads_for(tau_mem, params, inputs, targets):
        layer = ep.cells.lif(cfg.n_in, cfg.sizes[0], tau_mem=tau_mem, dtype=jnp.float64)
        model = ep.cells.stack(layer, ep.cells.leaky_readout(cfg.sizes[0], cfg.n_out, dtype=jnp.float64))
        return ep.eprop_m(model, mse, order)(params, inputs, targets)

    taus = jnp.array([20.0, 5.0, 50.0])
    batched, values, grads, grads_i = vmap_matches_loop(grads_for, taus, params, inputs, targets)
    value_d, grads_d = _eprop_m(cfg, order)(params, inputs, targets)  # helpers' lif has tau_mem = 20
    np.testing.assert_allclose(values[0], value_d, rtol=1e-12)
    assert_close(jax.tree_util.tree_map(lambda g: g[0], grads), grads_d, 1e-12, "traced vs static tau_mem")
    assert rel_err(jax.tree_util.tree_map(lambda g: g[1], grads), grads_d) > 1e-3  # tau_mem really varies
    # new values of the same shapes: no new trace (assert_max_traces raises otherwise)
    params2, inputs2, targets2 = alignment_problem(cfg, 0)
    values2, grads2 = batched(taus[::-1], params2, inputs2, targets2)
    assert np.all(np.isfinite(flat(grads2))) and not np.allclose(values2, values)


@pytest.mark.parametrize("order", [-1, 1.5, "1"])
def test_order_must_be_a_non_negative_int(order):
    with pytest.raises(ValueError, match="order"):
        ep.eprop_m(model_of(_cfg("lif")), mse, order)

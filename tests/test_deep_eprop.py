"""deep e-prop: e-prop on one layer, exact without within-layer recurrence, better aligned than spatial.

Deep e-prop (Millidge 2025) carries e-prop's eligibility traces across stacked layers through the
implicit recurrence ``D`` and the same-step edge ``F`` from the layer below, and drops the within-layer
explicit recurrence ``J``. The ladder here: one layer == ``eprop`` (symmetric) -> stacks of two and three
layers with no recurrent weights == ``bptt`` -> with ``order >= T - 1`` == ``bptt`` on any stack -> with
recurrence, ``depth="full"`` at least as aligned with BPTT as ``"spatial"`` on average -> online == whole
sequence, a state whose size has no ``T`` in it -> jit, vmap over a hyperparameter, no re-trace.

Every whole-sequence rule is jitted once per (rule, options, configuration) and reused with other
parameter values (zero recurrent weights, the alignment networks).
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


def _stack(cells, readout, **kw) -> Config:
    return Config(cells=tuple(cells), readout=readout, sizes=(4,) * len(cells), **kw)


@functools.cache
def _deep(cfg: Config, depth: str = "full", order: int = 0):
    """``jax.jit(ep.deep_eprop(model, mse, depth=depth, order=order))``, compiled once per session."""
    return jax.jit(ep.deep_eprop(model_of(cfg), mse, depth=depth, order=order))


def _data(cfg: Config, params=None):
    prob = problem(cfg)
    return (prob.params if params is None else params), prob.inputs, prob.targets


def _hidden(grads):
    """The recurrent layers' gradients (the readout's is exact under every depth treatment)."""
    return grads[:-1]


def _assert_every_layer_learns(cfg, params, grads):
    for layer, count in zip(cfg.cells, spike_counts(cfg, params)):
        if layer in SPIKING:
            assert count > 0, f"vacuous: a {layer} layer never spikes"
    for i, g in enumerate(_hidden(grads)):
        assert np.abs(flat(g)).max() > 0, f"vacuous: layer {i} gets a zero gradient"


# ----------------------------------------------------------------------------------------------------------
# One recurrent layer: deep e-prop is e-prop
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_one_layer_is_eprop(cell):
    cfg = Config(cells=(cell,), readout="leaky")
    args = _data(cfg)
    value_e, grads_e = rule_fn("eprop", cfg)(*args)
    value_d, grads_d = _deep(cfg)(*args)
    np.testing.assert_allclose(value_d, value_e, rtol=1e-12)
    assert_close(grads_d, grads_e, 1e-12, f"deep_eprop vs eprop on one {cell} layer")
    _assert_every_layer_learns(cfg, args[0], grads_e)


def test_one_layer_every_depth_is_eprop():
    cfg = Config(cells=("lif",), readout="leaky")
    args = _data(cfg)
    _, grads_e = rule_fn("eprop", cfg)(*args)
    for depth in ("spatial", "collapsed"):
        assert_close(_deep(cfg, depth)(*args)[1], grads_e, 1e-12, f"deep_eprop(depth={depth!r}) on one layer")


# ----------------------------------------------------------------------------------------------------------
# No within-layer recurrent weights: deep e-prop (full) is the exact gradient
# ----------------------------------------------------------------------------------------------------------

DEEP_LIF = _stack(("lif",) * 3, "leaky")
DEEP_GRU = _stack(("gru",) * 3, "leaky")
GRU_LSTM = _stack(("gru", "lstm"), "leaky")
ZERO_R_CASES = [
    DEEP_LIF,
    DEEP_GRU,
    GRU_LSTM,
    _stack(("alif", "alif"), "linear"),
    _stack(("rnn", "rnn", "rnn"), "linear"),
    _stack(("lstm", "lstm"), "linear"),
    _stack(("lif", "alif", "rnn"), "leaky"),
]


@pytest.mark.parametrize("cfg", ZERO_R_CASES, ids=lambda c: c.id)
def test_without_recurrent_weights_full_is_bptt(cfg):
    params = zero_recurrent(problem(cfg).params, cfg)
    args = _data(cfg, params)
    value_b, grads_b = rule_fn("bptt", cfg)(*args)
    _assert_every_layer_learns(cfg, params, grads_b)
    value_d, grads_d = _deep(cfg)(*args)
    np.testing.assert_allclose(value_d, value_b, rtol=1e-12)
    assert_close(grads_d, grads_b, 1e-10, f"deep_eprop(full) vs bptt on {cfg.id} with R = 0")
    if cfg in (DEEP_LIF, DEEP_GRU):  # spatial is compiled for these anyway: depth really matters here
        assert rel_err(_hidden(_deep(cfg, "spatial")(*args)[1]), _hidden(grads_b)) > 1e-3


def test_order_T_minus_1_is_bptt_on_a_gru_lstm_stack():
    """With recurrence, ``order = T - 1`` restores every within-layer path: the exact gradient.

    Two-layer GRU/LSTM stacks carrying several trace levels under ``jit(vmap(scan(vmap(jvp))))`` were seen
    to give nondeterministic garbage with jax 0.10.2 on CPU (m-order e-prop issue): two calls must agree
    bitwise and match BPTT.
    """
    cfg = GRU_LSTM
    args = _data(cfg)
    _, grads_b = rule_fn("bptt", cfg)(*args)
    fn = _deep(cfg, "full", cfg.time - 1)
    value_1, grads_1 = fn(*args)
    value_2, grads_2 = fn(*args)
    np.testing.assert_array_equal(flat(grads_1), flat(grads_2))
    assert_close(grads_1, grads_b, 1e-10, "deep_eprop(full, order=T-1) vs bptt")
    assert rel_err(_hidden(_deep(cfg)(*args)[1]), _hidden(grads_b)) > 1e-3  # order 0 is not exact here


def test_collapsed_is_exact_through_a_linear_leaky_layer():
    """LIF (R = 0) -> linear leaky layer -> leaky readout: every layer above the LIF is a linear leaky
    integrator, so the cascade of scalar filters is the exact influence, at a fraction of full's memory."""
    dtype = jnp.float64
    cfg = Config(cells=("lif",), readout="leaky")  # the LIF layer, inputs and targets of the base problem
    hidden = ep.cells.leaky_readout(4, 4, tau_out=10.0, dtype=dtype)  # linear leaky units, no recurrence
    model = ep.cells.stack(model_of(cfg).layers[0], hidden, ep.cells.leaky_readout(4, cfg.n_out, dtype=dtype))
    prob = problem(cfg)
    lif = zero_recurrent(prob.params, cfg)[0]
    params = (lif,) + model.init(jax.random.key(3))[1:]
    args = (params, prob.inputs, prob.targets)
    _, grads_b = jax.jit(ep.bptt(model, mse))(*args)
    assert np.abs(flat(grads_b[0])).max() > 0, "vacuous: the LIF layer gets a zero gradient"
    _, grads_c = jax.jit(ep.deep_eprop(model, mse, depth="collapsed"))(*args)
    assert_close(grads_c, grads_b, 1e-10, "collapsed vs bptt through a linear leaky layer")
    _, grads_s = jax.jit(ep.deep_eprop(model, mse, depth="spatial"))(*args)
    assert rel_err(grads_s[0], grads_b[0]) > 1e-3  # spatial drops the hidden layer's leak
    online = {d: ep.online.deep_eprop(model, mse, depth=d) for d in ("collapsed", "full")}
    size = {d: _trace_size(jax.eval_shape(lambda p: rule.init(p, 1), params).traces) for d, rule in online.items()}
    assert size["collapsed"] < size["full"], size


# ----------------------------------------------------------------------------------------------------------
# With recurrence: full is at least as aligned with BPTT as spatial (on average over random networks)
# ----------------------------------------------------------------------------------------------------------

ALIGN_GAIN = 2.0  # recurrent weights twice their default scale
ALIGN_DELAY = 3  # delayed copy: the target is the input three steps earlier
ALIGN_SEEDS = tuple(range(6))


def alignment_problem(cfg: Config, seed: int):
    """A random recurrent stack on a delayed-copy task, shaped like ``problem(cfg)``.

    Spiking layers get a positive input drive (stronger above the first layer, which sees sparse spikes)
    and ``ALIGN_GAIN`` times their default recurrent weights; classic cells ``ALIGN_GAIN`` times their
    ``h*`` kernels. Inputs are Poisson spikes of rate 0.3 (spiking first layer) or Gaussian.
    """
    model, dtype = model_of(cfg), jnp.float64
    k_param, k_in = jax.random.split(jax.random.key(2000 + seed))
    params = list(model.init(k_param))
    for i, name in enumerate(cfg.cells):
        p = params[i]
        if name in SPIKING:
            offset = (0.3 if i == 0 else 0.8) / np.sqrt(p["w_in"].shape[1])
            params[i] = {**p, "w_in": 0.3 * p["w_in"] + offset, "w_rec": ALIGN_GAIN * p["w_rec"]}
        else:
            params[i] = {
                k: ({**v, "kernel": ALIGN_GAIN * v["kernel"]} if k.startswith("h") else v) for k, v in p.items()
            }
    shape = (cfg.batch, cfg.time, cfg.n_in)
    if cfg.cells[0] in SPIKING:
        inputs = (jax.random.uniform(k_in, shape) < 0.3).astype(dtype)
    else:
        inputs = jax.random.normal(k_in, shape, dtype)
    y = (
        jnp.zeros((cfg.batch, cfg.time, cfg.n_out), dtype)
        .at[:, ALIGN_DELAY:]
        .set(inputs[:, :-ALIGN_DELAY, : cfg.n_out])
    )
    mask = jnp.zeros((cfg.batch, cfg.time), dtype).at[:, ALIGN_DELAY:].set(1.0)
    return tuple(params), inputs, {"y": y, "mask": mask}


DEPTHS = ("spatial", "collapsed", "full")


def _cos(a, b) -> float:
    """Cosine similarity, 0 for an estimate that is exactly zero (it carries no direction)."""
    return cosine(a, b) if np.linalg.norm(flat(a)) > 0 else 0.0


@pytest.mark.parametrize("cfg", [DEEP_LIF, DEEP_GRU], ids=lambda c: c.id)
def test_full_at_least_as_aligned_as_spatial(cfg):
    whole, hidden, first, dead = [], [], [], dict.fromkeys(DEPTHS, 0)
    for seed in ALIGN_SEEDS:
        args = alignment_problem(cfg, seed)
        _, grads_b = rule_fn("bptt", cfg)(*args)
        assert np.linalg.norm(flat(grads_b[0])) > 0, "vacuous: BPTT's first-layer gradient is zero"
        grads = {depth: _deep(cfg, depth)(*args)[1] for depth in DEPTHS}
        whole.append([_cos(grads[d], grads_b) for d in DEPTHS])
        hidden.append([_cos(_hidden(grads[d]), _hidden(grads_b)) for d in DEPTHS])
        first.append([_cos(grads[d][0], grads_b[0]) for d in DEPTHS])
        for d in DEPTHS:
            dead[d] += int(np.linalg.norm(flat(grads[d][0])) == 0)
        if not any(layer.leak is not None for layer in model_of(cfg).layers[:-1]):
            # documented: with no leaky hidden layer, "collapsed" is "spatial"
            assert_close(grads["collapsed"], grads["spatial"], 1e-12, "collapsed vs spatial, no leaky layer")
    whole, hidden, first = (np.mean(a, axis=0) for a in (whole, hidden, first))
    print(
        f"\n{cfg.id}: mean cosine to BPTT over {len(ALIGN_SEEDS)} seeds, {DEPTHS}: whole {np.round(whole, 4)}, "
        f"hidden layers {np.round(hidden, 4)}, first layer {np.round(first, 4)}; seeds whose first-layer "
        f"estimate is exactly zero: {dead}"
    )
    spatial, full = DEPTHS.index("spatial"), DEPTHS.index("full")
    for cos in (whole, hidden, first):
        assert cos[full] >= cos[spatial] - 1e-12, cos
    assert first[spatial] < 0.99, "depth does not matter here: the comparison would be vacuous"


# ----------------------------------------------------------------------------------------------------------
# Online == whole sequence, a state with no T in it; jit, vmap over a hyperparameter, no re-trace
# ----------------------------------------------------------------------------------------------------------

ONLINE = _stack(("alif", "alif"), "linear")


def _trace_size(traces) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(traces))


def test_online_equals_whole_sequence_and_state_has_no_T():
    cfg = ONLINE
    params, inputs, targets = _data(cfg)
    rule = ep.online.deep_eprop(model_of(cfg), mse, depth="full")
    chex.clear_trace_counter()  # chex counts traces per function code, and every rule's `step` shares it
    step = jax.jit(chex.assert_max_traces(rule.step, n=1))
    at = lambda t: jax.tree_util.tree_map(lambda a: a[:, t], targets)

    state, sizes = rule.init(params, cfg.batch), {}
    initial = _trace_size(jax.eval_shape(lambda p: rule.init(p, cfg.batch), params).traces)
    for t in range(cfg.time):
        state, _ = step(params, state, inputs[:, t], at(t))
        sizes[t + 1] = _trace_size(state.traces)
    value, grads = jax.jit(rule.result)(params, state)
    value_w, grads_w = _deep(cfg)(params, inputs, targets)
    np.testing.assert_allclose(value, value_w, rtol=1e-12)
    assert_close(grads, grads_w, 1e-12, "online vs whole-sequence deep_eprop")
    assert set(sizes.values()) == {initial}, (initial, sizes)  # after 1, 2, ..., T steps: one size


def test_jit_vmap_over_a_hyperparameter_no_retrace():
    """``tau_mem`` traced inside a vmapped function: slices equal the unbatched rule; no re-trace."""
    cfg = _stack(("lif", "lif"), "leaky")
    params, inputs, targets = _data(cfg)

    def grads_for(tau_mem, params, inputs, targets):
        layers = [ep.cells.lif(n_in, 4, tau_mem=tau_mem, dtype=jnp.float64) for n_in in (cfg.n_in, 4)]
        model = ep.cells.stack(*layers, ep.cells.leaky_readout(4, cfg.n_out, dtype=jnp.float64))
        return ep.deep_eprop(model, mse)(params, inputs, targets)

    taus = jnp.array([20.0, 5.0, 50.0])
    batched, values, grads, grads_i = vmap_matches_loop(grads_for, taus, params, inputs, targets)
    assert rel_err(jax.tree_util.tree_map(lambda g: g[1], grads), grads_i) > 1e-3  # tau_mem really varies
    # new values of the same shapes: no new trace (assert_max_traces raises otherwise)
    params2, inputs2, targets2 = alignment_problem(cfg, 0)
    values2, _ = batched(taus[::-1], params2, inputs2, targets2)
    assert np.all(np.isfinite(values2)) and not np.allclose(values2, values)


@pytest.mark.parametrize("depth", ["deep", "Full", None])
def test_depth_must_be_named(depth):
    with pytest.raises(ValueError, match="depth"):
        ep.deep_eprop(model_of(DEEP_LIF), mse, depth=depth)

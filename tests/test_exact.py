"""The exact rules: bptt against finite differences, rtrl against bptt on every cell and on stacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CELLS, SPIKING, Config, assert_close, loss_fn, mse, problem, recurrent_traces, rel_err, run
from jax.flatten_util import ravel_pytree

import eproptax as ep

# ----------------------------------------------------------------------------------------------------------
# bptt against central finite differences (smooth cells)
# ----------------------------------------------------------------------------------------------------------

FD_CONFIGS = [
    Config(cells=("rnn",), readout="linear"),
    Config(cells=("lstm",), readout="leaky"),
    Config(cells=("gru",), readout="linear"),
]


@pytest.mark.parametrize("cfg", FD_CONFIGS, ids=lambda c: c.id)
def test_bptt_matches_finite_differences(cfg):
    prob = problem(cfg)
    theta, unravel = ravel_pytree(prob.params)
    objective = ep.sequence_loss(prob.model, mse)
    eps = 1e-5
    directions = eps * jnp.eye(theta.size, dtype=theta.dtype)
    at = jax.jit(jax.vmap(lambda d: objective(unravel(theta + d), prob.inputs, prob.targets)))
    fd = (at(directions) - at(-directions)) / (2 * eps)
    value, grads = run("bptt", cfg)
    g = ravel_pytree(grads)[0]
    np.testing.assert_allclose(value, loss_fn(cfg)(prob.params, prob.inputs, prob.targets), rtol=1e-14)
    assert np.max(np.abs(g - fd)) <= 1e-7 * np.max(np.abs(g)), rel_err(g, fd)
    assert np.count_nonzero(np.asarray(g)) > 0.8 * g.size  # the readout bias and every weight take part


# ----------------------------------------------------------------------------------------------------------
# rtrl == bptt, every cell with each readout, stacks of two and three layers, T from 1 to 50
# ----------------------------------------------------------------------------------------------------------


def _random_config(cells, readout, time, seed):
    """Small random sizes, drawn once per case from its seed."""
    rng = np.random.default_rng(seed)
    sizes = tuple(int(s) for s in rng.integers(2, 6, len(cells)))
    return Config(
        cells=tuple(cells),
        readout=readout,
        n_in=int(rng.integers(1, 5)),
        sizes=sizes,
        n_out=int(rng.integers(1, 4)),
        time=time,
        batch=int(rng.integers(1, 4)),
        seed=seed,
    )


_SINGLE_TIMES = {"lif": (7, 2), "alif": (7, 7), "rnn": (2, 7), "lstm": (7, 1), "gru": (1, 2)}
EXACT_CASES = [
    _random_config((cell,), readout, _SINGLE_TIMES[cell][i], seed=10 * i + k)
    for k, cell in enumerate(CELLS)
    for i, readout in enumerate(("leaky", "linear"))
]
EXACT_CASES += [
    _random_config(("lif", "alif"), "leaky", 50, seed=101),
    _random_config(("gru", "lstm"), "linear", 7, seed=102),
    _random_config(("rnn", "lif", "alif"), "leaky", 7, seed=104),
]


def _case_id(cfg):
    return f"{cfg.id}-T{cfg.time}-sizes{cfg.n_in}x{'x'.join(map(str, cfg.sizes))}x{cfg.n_out}-B{cfg.batch}"


@pytest.mark.parametrize("cfg", EXACT_CASES, ids=_case_id)
def test_rtrl_equals_bptt(cfg):
    prob = problem(cfg)
    model = prob.model
    # one compiled program per case (the sizes are all different): both rules and the spike trains
    both = jax.jit(
        lambda p, x, t: (ep.bptt(model, mse)(p, x, t), ep.rtrl(model, mse)(p, x, t), recurrent_traces(model, p, x))
    )
    (value_b, grads_b), (value_r, grads_r), outputs = both(prob.params, prob.inputs, prob.targets)
    for layer, z in zip(cfg.cells, outputs):
        if layer in SPIKING:
            assert np.sum(z) > 0, f"{layer} layer never spikes: the test would be vacuous"
    for i, g in enumerate(grads_b[:-1]):  # every recurrent layer really learns something
        assert np.abs(ravel_pytree(g)[0]).max() > 0, f"layer {i} gets a zero gradient"
    np.testing.assert_allclose(value_r, value_b, rtol=1e-12)
    assert_close(grads_r, grads_b, 1e-9, "rtrl vs bptt")


def test_rtrl_equals_bptt_on_a_single_cell():
    """A model that is one cell, not a stack: RTRL's columns are a neuron cell's effective weights (pulled
    back to its own parameters) or an opaque cell's raveled parameters; both equal BPTT, and the
    effective-weight columns cover a masked autapse (the LIF's ``w_rec`` diagonal) and the unused bias."""
    lif = ep.cells.lif(3, 4, dtype=jnp.float64)
    opaque = ep.Cell(lif.init, lif.init_carry, lif.apply, n_in=lif.n_in, n_out=lif.n_out)  # no split
    params = jax.tree_util.tree_map(lambda w: 3.0 * w, lif.init(jax.random.key(1)))
    inputs = (jax.random.uniform(jax.random.key(2), (2, 9, 3)) < 0.5).astype(jnp.float64)
    targets = jax.random.normal(jax.random.key(3), (2, 9, 4), jnp.float64)

    loss = lambda out, target: 0.5 * jnp.sum((out - target) ** 2)

    @jax.jit
    def grads(p, x, t):
        return [rule(model, loss)(p, x, t) for model in (lif, opaque) for rule in (ep.bptt, ep.rtrl)]

    (vb, gb), (vr, gr), (vb_o, gb_o), (vr_o, gr_o) = grads(params, inputs, targets)
    assert np.abs(ravel_pytree(gb)[0]).max() > 0
    for value, g, what in ((vr, gr, "neuron cell"), (vr_o, gr_o, "opaque cell"), (vb_o, gb_o, "opaque bptt")):
        np.testing.assert_allclose(value, vb, rtol=1e-12)
        assert_close(g, gb, 1e-9, f"rtrl vs bptt, single {what}")
    state = jax.eval_shape(lambda p: ep.online.rtrl(lif, loss).init(p, 2), params)
    assert [block.shape for block in state.traces] == [(2, 4, 4, 1, 3 + 4 + 1)]  # one block, shaped as W_eff

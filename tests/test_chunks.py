"""The chunked whole-sequence view (``chunk=K``) gives the per-step view's loss and gradients, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Config, assert_close, model_of, mse, opcodes, problem

import eproptax as ep
from eproptax._chunks import advance

# ----------------------------------------------------------------------------------------------------------
# The algebra alone, against stepping the recursion of _chunks' docstring
# ----------------------------------------------------------------------------------------------------------


def _stepped(slots, shared, A, F, v, c, d):
    """``X_t = A_t X_{t-1} + F_t v_t``, ``G += c_t . X_{t-1} + d_t v_t``, one step at a time, per example and
    neuron, every slot held as ``(n, B, k, m)`` (a shared slot broadcast over the neurons)."""
    n, B, k, m = next(x.shape for x, s in zip(slots, shared) if not s)
    X = jnp.stack([jnp.broadcast_to(x[None, :, None, :], (n, B, k, m)) if s else x for x, s in zip(slots, shared)])
    G = jnp.zeros((n, k, m))
    for t in range(A.shape[0]):
        G = G + jnp.einsum("bjs,sjbgi->jgi", c[t], X) + jnp.einsum("bjg,bi->jgi", d[t], v[t])
        X = jnp.einsum("bjse,ejbgi->sjbgi", A[t], X) + jnp.einsum("bjsg,bi->sjbgi", F[t], v[t])
    return X, G


@pytest.mark.parametrize("K", [1, 5])
def test_advance_equals_stepping(K):
    """Three slots: a shared leaky ``zbar``, a compact trace reading it and a filter stage reading both."""
    rng = np.random.default_rng(0)
    n, B, k, m, S = 3, 2, 1, 4, 3
    decay, gain = 0.8, 0.3
    A = rng.uniform(-1, 1, (K, B, n, S, S))
    A[..., 0, :] = 0.0
    A[..., 0, 0] = decay  # the shared row reads itself only, the same for every neuron
    A[..., 1, 2] = 0.0  # the trace does not read the filter
    F = rng.standard_normal((K, B, n, S, k))
    F[..., 0, :] = gain
    v, c, d = rng.standard_normal((K, B, m)), rng.standard_normal((K, B, n, S)), rng.standard_normal((K, B, n, k))
    slots = [rng.standard_normal((B, m)), rng.standard_normal((n, B, k, m)), rng.standard_normal((n, B, k, m))]
    shared = [True, False, False]
    structure = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]], bool)
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (A, F, v, c, d)]
        slots = [jnp.asarray(x) for x in slots]
        A_, F_, v_, c_, d_ = args
        new, grad = advance(slots, shared, structure, lambda x: x, (A_, F_, c_, d_), v_)
        X, G = _stepped(slots, shared, *args)
    np.testing.assert_allclose(new[0], X[0, 0, :, 0, :], rtol=1e-12, atol=1e-12)
    for s in (1, 2):
        np.testing.assert_allclose(new[s], X[s], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, G, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# The rules: chunk=3 over T = 8 (two chunks and two steps), chunk=8 (one chunk) against stepping
# ----------------------------------------------------------------------------------------------------------

CASES = {
    # stateless readout whose state dynamics never read (nothing carried for it), GRU gates (k = 4)
    "gru+linear": (Config(cells=("gru",), readout="linear"), "eprop", {}),
    # an unstored variable (h) under a leaky readout's filter
    "lstm+leaky": (Config(cells=("lstm",), readout="leaky"), "eprop", {}),
    # a shared zbar, a compact trace reading it, the filter and the regulariser's sum
    "alif+leaky reg": (Config(cells=("alif",), readout="leaky"), "eprop", {"reg": ep.FiringRateReg(0.5, 0.05)}),
    # two compact traces, random feedback
    "alif(generic)+linear feedback": (
        Config(cells=("alif",), readout="linear", generic=True),
        "eprop",
        {"feedback": True},
    ),
    # two layers, each with a cascade of two filter stages below (the LIF layer's leak and the readout's)
    "gru+lif collapsed reg": (
        Config(cells=("gru", "lif"), sizes=(4, 3), readout="leaky"),
        "deep_eprop",
        {"depth": "collapsed", "reg": ep.FiringRateReg(0.5, 0.05)},
    ),
    "lif+alif spatial": (
        Config(cells=("lif", "alif"), sizes=(4, 3), readout="leaky"),
        "deep_eprop",
        {"depth": "spatial"},
    ),
}


def _build(rule, cfg, options, **kw):
    model = model_of(cfg)
    options = dict(options)
    if options.pop("feedback", False):
        options["feedback"] = ep.random_feedback(jax.random.key(1), cfg.sizes[-1], cfg.n_out, jnp.float64)
    make = {"eprop": ep.eprop, "deep_eprop": ep.deep_eprop}[rule]
    return jax.jit(make(model, mse, **options, **kw))


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_view_equals_stepping(case):
    cfg, rule, options = CASES[case]
    prob = problem(cfg)
    args = (prob.params, prob.inputs, prob.targets)
    value, grads = _build(rule, cfg, options, chunk=1)(*args)
    for K in (3, 8) if case == "alif+leaky reg" else (3,):
        value_k, grads_k = _build(rule, cfg, options, chunk=K)(*args)
        assert_close(value_k, value, 1e-12, f"{case} chunk={K} loss")
        assert_close(grads_k, grads, 1e-12, f"{case} chunk={K} grads")
    assert float(np.abs(np.asarray(jax.tree_util.tree_leaves(grads)[0])).max()) > 0  # a gradient, not zeros


def test_chunked_eprop_without_recurrence_is_bptt():
    """With no recurrent weights e-prop is exact: the chunked view then equals BPTT."""
    cfg = Config(cells=("gru",), readout="leaky")
    prob = problem(cfg)
    params = list(prob.params)
    params[0] = {
        k: ({**v, "kernel": jnp.zeros_like(v["kernel"])} if k.startswith("h") else v) for k, v in params[0].items()
    }
    params = tuple(params)
    _, grads = _build("eprop", cfg, {}, chunk=3)(params, prob.inputs, prob.targets)
    _, exact = jax.jit(ep.bptt(prob.model, mse))(params, prob.inputs, prob.targets)
    assert_close(grads, exact, 1e-10, "chunked e-prop without recurrence vs BPTT")


@pytest.mark.parametrize("cell", ["gru", "lif"])
def test_default_chunk_is_the_platforms_for_gated_networks(cell, monkeypatch):
    """``chunk=None`` compiles the lowering platform's ``DEFAULT_CHUNK`` (set to 3 for the CPU here) for a
    network with a gated layer (a GRU: k = 4 entries per neuron), and steps a LIF network (k = 1)."""
    cfg = Config(cells=(cell,), readout="leaky")
    prob = problem(cfg)
    args = (prob.params, prob.inputs, prob.targets)

    def program(chunk):
        return jax.jit(ep.eprop(prob.model, mse, chunk=chunk)).lower(*args).compile()

    assert ep.DEFAULT_CHUNK["cpu"] == 64
    stepping = program(1)
    assert opcodes(program(None)) == opcodes(stepping)  # T = 8: a chunk of 64 steps would step it
    monkeypatch.setitem(ep.DEFAULT_CHUNK, "cpu", 3)
    chosen = program(None)
    expected = 3 if cell == "gru" else 1
    assert opcodes(chosen) == opcodes(program(expected)) != opcodes(program(4 - expected))
    assert_close(chosen(*args), stepping(*args), 1e-12, "the default chunk")


def test_only_level_zero_rules_have_a_chunked_form():
    model = model_of(Config(cells=("lif", "lif"), sizes=(4, 3)))
    assert ep.online.eprop(model, mse).chunk is not None
    assert ep.online.eprop_m(model, mse, 1).chunk is None
    assert ep.online.deep_eprop(model, mse, depth="full").chunk is None
    ep.eprop_m(model, mse, 1, chunk=1)  # no chunks: every rule accepts it
    with pytest.raises(ValueError, match=r"eprop_m: `chunk=4` needs a rule with a chunked form"):
        ep.eprop_m(model, mse, 1, chunk=4)
    with pytest.raises(ValueError, match=r"deep_eprop: `chunk=2`"):
        ep.deep_eprop(model, mse, depth="full", chunk=2)


@pytest.mark.parametrize("chunk", [0, 2.0, True])
def test_bad_chunk(chunk):
    model = model_of(Config())
    with pytest.raises(ValueError, match=rf"eprop: `chunk` must be a positive int.*got {chunk}"):
        ep.eprop(model, mse, chunk=chunk)

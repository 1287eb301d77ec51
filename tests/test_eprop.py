"""Structural properties of e-prop: where it is exact, what it drops, feedback, regularisation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    CELLS,
    READOUTS,
    SPIKING,
    Config,
    assert_close,
    cosine,
    layer_outputs,
    loss_fn,
    model_of,
    mse,
    nest_fixture,
    nest_problem,
    nest_refractory,
    nest_rule_fn,
    problem,
    rel_err,
    run,
    spike_counts,
    zero_recurrent,
)

import eproptax as ep

STANDARD = [Config(cells=(cell,), readout=readout) for cell in CELLS for readout in READOUTS]
ids = lambda cfg: cfg.id


def _spiking_check(cfg, params):
    for cell, count in zip(cfg.cells, spike_counts(cfg, params)):
        if cell in SPIKING:
            assert count > 0, f"{cell} never spikes: the test would be vacuous"


@pytest.mark.parametrize("cfg", STANDARD, ids=ids)
def test_eprop_is_exact_without_recurrent_weights(cfg):
    params = zero_recurrent(problem(cfg).params, cfg)
    _spiking_check(cfg, params)
    value_e, grads_e = run("eprop", cfg, params)
    value_b, grads_b = run("bptt", cfg, params)
    np.testing.assert_allclose(value_e, value_b, rtol=1e-12)
    assert_close(grads_e, grads_b, 1e-10, f"eprop vs bptt [{cfg.id}, no recurrence]")


@pytest.mark.parametrize("cfg", STANDARD, ids=ids)
def test_readout_gradient_is_always_exact(cfg):
    _spiking_check(cfg, problem(cfg).params)
    _, grads_e = run("eprop", cfg)
    _, grads_b = run("bptt", cfg)
    assert_close(grads_e[-1], grads_b[-1], 1e-10, f"readout [{cfg.id}]")


@pytest.mark.parametrize("cfg", STANDARD, ids=ids)
def test_eprop_differs_from_bptt_with_recurrence(cfg, record_property):
    _, grads_e = run("eprop", cfg)
    _, grads_b = run("bptt", cfg)
    err, cos = rel_err(grads_e[0], grads_b[0]), cosine(grads_e[0], grads_b[0])
    record_property("recurrent_layer_cosine_to_bptt", cos)
    record_property("recurrent_layer_rel_error", err)
    print(f"{cfg.id}: cosine {cos:.4f}, relative error {err:.3e}")
    assert err > 1e-3


@pytest.mark.parametrize("cell", ["lif", "alif"])
@pytest.mark.parametrize("readout", READOUTS)
def test_factorised_path_equals_generic_path(cell, readout):
    """LIF and ALIF declare their membrane's leak, so e-prop keeps its trace as zbar (LIF: its only trace;
    ALIF: beside the adaptation's per-synapse trace); dropping the declaration gives the generic path."""
    fast, generic = Config(cells=(cell,), readout=readout), Config(cells=(cell,), readout=readout, generic=True)
    prob = problem(fast)
    assert prob.model.layers[0].leak is not None and problem(generic).model.layers[0].leak is None
    for params in (prob.params, zero_recurrent(prob.params, fast)):
        value_f, grads_f = run("eprop", fast, params)
        value_g, grads_g = run("eprop", generic, params)
        np.testing.assert_allclose(value_f, value_g, rtol=1e-14)
        assert_close(grads_f, grads_g, 1e-12, f"factorised vs generic [{cell}, {readout}]")


def _detached(layer):
    """The layer with its recurrent input cut from autodiff: BPTT through it keeps only the paths through
    each neuron's own state, which is what e-prop's eligibility traces carry."""
    return ep.cells.make_cell(
        n_in=layer.n_in,
        n_out=layer.n_out,
        init=layer.init,
        init_carry=layer.init_carry,
        synapse=lambda p, x, z: layer.synapse(p, x, jax.lax.stop_gradient(z)),
        dynamics=layer.dynamics,
        output=layer.output,
        leak=layer.leak,
    )


DETACHED = [Config(cells=(cell,), readout=readout) for cell in ("lif", "alif", "lstm") for readout in READOUTS]


@pytest.mark.parametrize("cfg", DETACHED, ids=ids)
def test_eprop_is_bptt_with_the_recurrent_input_detached(cfg):
    """With its recurrence on, e-prop equals BPTT of a copy of the model whose synapse sees
    ``stop_gradient(z_prev)``: an independent reference for the traces of every state variable, including
    an LSTM's ``h``, which e-prop recomputes from ``c`` every step rather than carrying (see the next test)."""
    prob = problem(cfg)
    layer, readout = model_of(cfg).layers
    _spiking_check(cfg, prob.params)
    value_d, grads_d = jax.jit(ep.bptt(ep.cells.stack(_detached(layer), readout), mse))(
        prob.params, prob.inputs, prob.targets
    )
    value_e, grads_e = run("eprop", cfg)
    np.testing.assert_allclose(value_e, value_d, rtol=1e-12)
    assert_close(grads_e, grads_d, 1e-10, f"eprop vs detached bptt [{cfg.id}]")
    assert rel_err(grads_e[0], run("bptt", cfg)[1][0]) > 1e-3, "vacuous: the detached recurrence changes nothing"


def _pass_through(n_in, n, dtype):
    """A leaky tanh unit with a second state variable that ``dynamics`` passes through unchanged (no
    equation reads it: it is read only in being returned)."""
    rnn = ep.cells.rnn(n_in, n, dtype=dtype)
    return ep.cells.make_cell(
        n_in=n_in,
        n_out=n,
        init=rnn.init,
        init_carry=lambda p: (jnp.zeros(n, dtype), jnp.ones(n, dtype)),
        synapse=rnn.synapse,
        dynamics=lambda h, a: (0.9 * h[0] + 0.1 * a[:, 0], h[1]),
        output=lambda h: jnp.tanh(h[0]),
    )


@pytest.mark.parametrize(
    "cell,order,count", [("lstm", 0, 1), ("lstm", 1, 2), ("alif", 0, 1), ("lif", 0, 0), ("rnn", 0, 0), ("pass", 0, 2)]
)
def test_eprop_carries_only_the_traces_it_reads(cell, order, count):
    """A layer's own trace of a state variable that ``dynamics`` never reads (an LSTM's ``h``, a function of
    the new ``c`` and gates) has no effect on the next step's traces, so order-0 e-prop recomputes it each
    step instead of carrying it (a tanh RNN, ``h = tanh(a)``, carries none); the dense levels of
    ``eprop_m(1)`` read every variable, and a variable passed through unchanged is read. A leaky variable
    (LIF's and ALIF's membrane) carries the presynaptic ``zbar`` instead of a per-synapse trace."""
    layer = (
        _pass_through(3, 4, jnp.float64)
        if cell == "pass"
        else model_of(Config(cells=(cell,), readout="linear")).layers[0]
    )
    model = ep.cells.stack(layer, ep.cells.readout(4, 2, dtype=jnp.float64))
    params = model.init(jax.random.key(0))
    state = jax.eval_shape(lambda p: ep.online.eprop_m(model, mse, order).init(p, 2), params)
    own = state.traces.influence[(0, 0)][0]
    compact = [part.shape for part in own if part.shape[:2] in ((4, 2), (2, 4))]  # (n, B, k, m) or (B, n, k, m)
    zbar = [part.shape for part in own if part.shape == (2, 3 + 4 + 1)]
    assert len(compact) == count, f"{cell}, order {order}: {len(compact)} compact own traces, expected {count}"
    assert len(compact) + len(zbar) == len(own), f"{cell}: unexpected trace shapes {[p.shape for p in own]}"
    assert len(zbar) == (cell in ("lif", "alif")), f"{cell}: {len(zbar)} presynaptic traces"


# ----------------------------------------------------------------------------------------------------------
# Feedback
# ----------------------------------------------------------------------------------------------------------

FEEDBACK_CONFIGS = [Config(cells=("lif",), readout="leaky"), Config(cells=("gru",), readout="linear")]


@pytest.mark.parametrize("cfg", FEEDBACK_CONFIGS, ids=ids)
def test_feedback_w_out_transpose_is_symmetric(cfg):
    params = problem(cfg).params
    B = params[-1]["w_out"].T
    _, grads_b = run("eprop", cfg, params, B, variant="feedback")
    _, grads_s = run("eprop", cfg)
    assert_close(grads_b, grads_s, 1e-13, "feedback=W_out^T vs symmetric")


@pytest.mark.parametrize("cfg", FEEDBACK_CONFIGS, ids=ids)
def test_hand_set_feedback_changes_only_the_recurrent_layer(cfg):
    params = problem(cfg).params
    B = jnp.asarray(np.random.default_rng(5).standard_normal((4, 2)))
    _, grads_b = run("eprop", cfg, params, B, variant="feedback")
    _, grads_s = run("eprop", cfg)
    assert_close(grads_b[-1], grads_s[-1], 1e-14, "readout")
    assert rel_err(grads_b[0], grads_s[0]) > 1e-2


def nest_numpy(case, B):
    """NEST's e-prop equations (tests/fixtures/README.md), written out in NumPy, with feedback matrix ``B``."""
    cfg, rec = case["config"], case["config"]["rec"]
    dt, time, window = cfg["dt"], cfg["T"], cfg["learning_window"]
    alpha, kappa = np.exp(-dt / rec["tau_m"]), np.exp(-dt / cfg["out"]["tau_m"])
    zeta, zeta_out = 1.0 - alpha, 1.0 - kappa
    v_th, height, width = rec["V_th"], rec["surrogate_gradient_height"], rec["surrogate_gradient_width"]
    n_ref_steps = int(round(rec["t_ref"] / dt))
    x, y_target = np.asarray(case["inputs"]["x"]), np.asarray(case["inputs"]["y_target"])
    w = {k: np.asarray(v) for k, v in case["weights_before"].items()}
    n_rec, n_in = w["w_in"].shape
    v, z_prev, r, out = np.zeros(n_rec), np.zeros(n_rec), np.zeros(n_rec, int), np.zeros(w["w_out"].shape[0])
    zbar_in, zbar_rec, zbar_out = np.zeros(n_in), np.zeros(n_rec), np.zeros(n_rec)
    ebar_in, ebar_rec = np.zeros((n_rec, n_in)), np.zeros((n_rec, n_rec))
    g_in, g_rec, g_out = np.zeros_like(ebar_in), np.zeros_like(ebar_rec), np.zeros_like(w["w_out"])
    for k in range(time):
        r = np.maximum(r - 1, 0)
        v = alpha * v + zeta * (w["w_in"] @ x[k] + w["w_rec"] @ z_prev) - v_th * z_prev
        psi = np.where(r > 0, 0.0, height * np.maximum(0.0, 1.0 - np.abs(v - v_th) / width))
        z = ((v >= v_th) & (r == 0)).astype(float)
        r = np.where(z > 0, n_ref_steps, r)
        out = kappa * out + zeta_out * (w["w_out"] @ z)
        err = out - y_target[k] if k >= time - window else np.zeros_like(out)
        learning_signal = B @ err
        zbar_in = alpha * zbar_in + zeta * x[k]
        zbar_rec = alpha * zbar_rec + zeta * z_prev
        ebar_in = kappa * ebar_in + (1.0 - kappa) * psi[:, None] * zbar_in[None, :]
        ebar_rec = kappa * ebar_rec + (1.0 - kappa) * psi[:, None] * zbar_rec[None, :]
        g_in += learning_signal[:, None] * ebar_in
        g_rec += learning_signal[:, None] * ebar_rec
        zbar_out = kappa * zbar_out + zeta_out * z
        g_out += np.outer(err, zbar_out)
        z_prev = z
    g_rec *= 1.0 - np.eye(n_rec)  # NEST has no autapses: no synapse, no gradient
    return ({"w_in": g_in, "w_rec": g_rec}, {"w_out": g_out})


@pytest.mark.parametrize("name", ["lif", "lif_norec", "lif_tref_window"])
def test_numpy_reference_reproduces_nest(name):
    """The NumPy reimplementation used below is itself checked against NEST (symmetric feedback)."""
    case = nest_fixture()["cases"][name]
    B = np.asarray(case["weights_before"]["B"])
    np.testing.assert_array_equal(B, np.asarray(case["weights_before"]["w_out"]).T)
    g = case["gradients"]
    expected = ({"w_in": np.asarray(g["w_in"]), "w_rec": np.asarray(g["w_rec"])}, {"w_out": np.asarray(g["w_out"])})
    assert_close(nest_numpy(case, B), expected, 1e-12, f"numpy vs NEST[{name}]")


def test_hand_set_feedback_matches_numpy_nest():
    case, params, inputs, targets = nest_problem("lif")
    B = np.random.default_rng(7).standard_normal((5, 2))
    expected = nest_numpy(case, B)
    _, grads = nest_rule_fn("eprop", variant="feedback")(
        np.int32(nest_refractory(case)), params, jnp.asarray(B), inputs, targets
    )
    assert_close(grads, expected, 1e-10, "eprop(feedback=B) vs numpy NEST")
    symmetric = nest_numpy(case, np.asarray(case["weights_before"]["B"]))
    assert rel_err(expected[0], symmetric[0]) > 1e-2  # B really changed the recurrent gradients


@pytest.mark.parametrize("weight_decay", [0.0, 0.2])
def test_adaptive_feedback_follows_w_out(weight_decay):
    """B gets W_out's updates: B - W_out^T is constant; with weight decay on both it shrinks as (1 - wd)^k.

    As in Bellec et al. (2020), W_out and B are decayed alike: W_out <- W_out + U - wd W_out and
    B <- B + U^T - wd B (``adapt_feedback``) with U the optimiser's gradient update of W_out.
    """
    cfg = Config(cells=("lif",), readout="leaky")
    params = problem(cfg).params
    B = jnp.asarray(np.random.default_rng(3).standard_normal((4, 2)))
    diff0 = np.asarray(B - params[-1]["w_out"].T)
    optimizer = optax.sgd(0.5)
    opt_state = optimizer.init(params)
    w_out0 = params[-1]["w_out"]
    for k in range(1, 4):
        _, grads = run("eprop", cfg, params, B, variant="feedback")
        updates, opt_state = optimizer.update(grads, opt_state, params)
        B = ep.adapt_feedback(B, updates[-1]["w_out"], weight_decay=weight_decay)
        updates = (updates[0], {"w_out": updates[-1]["w_out"] - weight_decay * params[-1]["w_out"]})
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(B - params[-1]["w_out"].T, (1.0 - weight_decay) ** k * diff0, rtol=1e-12, atol=1e-14)
    assert rel_err(params[-1]["w_out"], w_out0) > 1e-3  # W_out (and so B) really moved


@pytest.mark.parametrize("rule", ["eprop", "eprop_m", "deep_eprop"])
def test_feedback_of_the_wrong_shape_raises(rule):
    cfg = Config(cells=("lif",), readout="leaky")
    model = problem(cfg).model
    make = {"eprop": ep.eprop, "eprop_m": lambda m, l, **k: ep.eprop_m(m, l, 1, **k), "deep_eprop": ep.deep_eprop}[rule]
    with pytest.raises(ValueError, match=r"feedback.*\(n_rec=4, n_out=2\).*\(2, 4\)"):
        make(model, mse, feedback=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="feedback"):
        make(model, mse, feedback="random")


# ----------------------------------------------------------------------------------------------------------
# Firing-rate regularisation
# ----------------------------------------------------------------------------------------------------------

REG = ep.FiringRateReg(0.5, 0.05)
REG_CONFIGS = [Config(cells=("lif",), readout="leaky"), Config(cells=("alif",), readout="linear")]


@pytest.mark.parametrize("cfg", REG_CONFIGS, ids=ids)
def test_rtrl_with_reg_equals_bptt_with_reg(cfg):
    value_b, grads_b = run("bptt", cfg, None, REG, variant="reg")
    value_r, grads_r = run("rtrl", cfg, None, REG, variant="reg")
    np.testing.assert_allclose(value_r, value_b, rtol=1e-12)
    assert_close(grads_r, grads_b, 1e-9, "rtrl vs bptt with reg")
    _, plain = run("bptt", cfg)
    assert rel_err(grads_b[0], plain[0]) > 1e-3  # the regulariser's gradient is not negligible


@pytest.mark.parametrize("cfg", REG_CONFIGS, ids=ids)
def test_eprop_with_reg_is_exact_without_recurrent_weights(cfg):
    params = zero_recurrent(problem(cfg).params, cfg)
    value_e, grads_e = run("eprop", cfg, params, REG, variant="reg")
    value_b, grads_b = run("bptt", cfg, params, REG, variant="reg")
    np.testing.assert_allclose(value_e, value_b, rtol=1e-12)
    assert_close(grads_e, grads_b, 1e-10, "eprop vs bptt with reg, no recurrence")


@pytest.mark.parametrize("cfg", REG_CONFIGS, ids=ids)
def test_loss_value_includes_the_reg_term(cfg):
    prob = problem(cfg)
    z = layer_outputs(cfg, prob.params)[0]  # the recurrent layer's spike trains, (B, T, n)
    rate = z.mean(axis=1)
    term = np.mean(0.5 * REG.c_reg * np.sum((rate - REG.f_target) ** 2, axis=-1))
    plain = loss_fn(cfg)(prob.params, prob.inputs, prob.targets)
    objective = loss_fn(cfg, reg=True)(prob.params, REG, prob.inputs, prob.targets)
    np.testing.assert_allclose(objective, plain + term, rtol=1e-13)
    assert term > 1e-3
    for rule in ("bptt", "rtrl", "eprop"):
        value, _ = run(rule, cfg, None, REG, variant="reg")
        np.testing.assert_allclose(value, objective, rtol=1e-12, err_msg=rule)

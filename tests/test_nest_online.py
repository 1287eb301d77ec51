"""Fidelity to NEST 3.10's current (online) e-prop: ``ep.nest.online_eprop`` with the current e-prop neurons.

Fixtures (tests/fixtures/nest_eprop_online.json, made by make_nest_online.py from the oracle): 6 cases recorded
from NEST (LIF, ALIF, psc_delta; with and without recurrence; gradient descent and Adam; updates at every step
and at presynaptic spikes; the moving-average regulariser; the ISI cutoff; dt = 0.5 ms; batch_size 3;
regression and classification) and the 4 scenarios of NEST's own ``test_eprop_plasticity.py``. Every case:
spikes exactly; ``V_m``, ``surrogate_gradient``, ``learning_signal``, the adaptation and the readout signals,
the stored weights every 50 steps and every weight that a spike carried (the weight recorder) to 1e-10. Every
scenario: the test's reference losses (its own tolerance, 1e-8, and NEST's recorded losses to 1e-10), the
recurrent spikes and the stored end weights. Then jit (one compilation per configuration, no re-trace), vmap
over the learning rate, ``run`` against ``step`` and the errors of bad input.
"""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eproptax.nest as nest

RTOL = 1e-10
FIXTURE = Path(__file__).parent / "fixtures" / "nest_eprop_online.json"


@functools.cache
def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def case_named(name: str) -> dict:
    for case in fixture()["cases"] + fixture()["scenarios"]:
        if case["name"] == name:
            return case
    raise KeyError(name)


CASES = tuple(case["name"] for case in fixture()["cases"])
SCENARIOS = tuple(case["name"] for case in fixture()["scenarios"])


def _ms(value):
    return float("inf") if value == "inf" else value


def learner_of(case: dict) -> nest.OnlineEprop:
    """The case's network as eproptax objects, from the parameters NEST reports (``f_target`` back to Hz)."""
    params = {k: _ms(v) for k, v in case["rec_params_full"].items() if k not in ("ignore_and_spike", "V_th_adapt")}
    params["f_target"] = params["f_target"] * 1000.0  # GetStatus reports spikes/ms; Create takes Hz
    rec = getattr(nest, case["rec_model"])(case["n_rec"], dt=case["dt"], **params)
    out = nest.eprop_readout(case["n_out"], dt=case["dt"], **{k: _ms(v) for k, v in case["out_params_full"].items()})
    opt = case["optimizer"]
    adam = {k: opt[k] for k in ("beta_1", "beta_2", "epsilon")} if opt["type"] == "adam" else {}
    keys = ("eta", "batch_size", "optimize_each_step", "Wmin", "Wmax")
    return nest.online_eprop(rec, out, optimizer=opt["type"], **{k: opt[k] for k in keys}, **adam)


def _generator(spec: dict, n_steps: int, width: int) -> np.ndarray:
    """A ``step_rate_generator``'s value in force in each step: the amplitude at step ``T`` from ``T`` on."""
    values = np.zeros((n_steps, width))
    for when, value in zip(spec["times_steps"], spec["values"]):
        values[when:] = value
    return values


def problem(case: dict):
    """``(weights, feedback, masks, inputs, targets, windows, drive)`` of a case, in NEST's step stamps."""
    scenario = "weights" in case
    data = fixture()["scenario_inputs"] if scenario else case
    n_steps, n_in, n_rec, n_out = case["n_steps"], case["n_in"], case["n_rec"], case["n_out"]
    inputs = np.zeros((n_steps, n_in))
    for i, stamps in enumerate(data["input_spike_steps"]):
        inputs[stamps, i] = 1.0
    drive = np.zeros((n_steps, n_rec))
    if case["trigger"]:  # the examples' last update: a weight-1000 spike into every parrot and recurrent neuron
        inputs[case["trigger"]["step"] + 1] += 1.0
        drive[case["trigger"]["step"]] = case["trigger"]["weight"]
    targets = _generator(data["target"], n_steps, n_out)
    windows = _generator(data["window"], n_steps, 1)[:, 0]
    if scenario:  # float32 values in their shortest form: read as float32, as NEST's test made them
        w = {
            k: np.asarray(v, np.float32).astype(np.float64)
            for k, v in fixture()["scenario_weights"][case["weights"]].items()
        }
        masks = None
    else:
        w = {k: np.asarray(v, np.float64) for k, v in case["weights_init"].items()}
        masks = nest.OnlineWeights(*(w[k].astype(bool) for k in ("mask_in", "mask_rec", "mask_out")))
    weights = nest.OnlineWeights(w["w_in"], w["w_rec"], w["w_out"])
    return weights, w["B"], masks, inputs, targets, windows, drive


_RUNS = {}


def recorded(name: str):
    """One jitted scan of ``step`` per case (compiled once, cached): the infos, and after every step the weights
    the next spikes carry and NEST's stored weights."""
    if name not in _RUNS:
        case = case_named(name)
        learner = learner_of(case)
        weights, feedback, masks, inputs, targets, windows, drive = problem(case)

        def body(state, xs):
            state, info = learner.step(state, *xs)
            return state, (info, learner.weights(state, stored=False), learner.weights(state))

        @jax.jit
        def simulate(weights, feedback, xs):
            state = learner.init(weights, feedback, masks=masks)
            return jax.lax.scan(body, state, xs)

        state, (info, carried, stored) = simulate(weights, feedback, (inputs, targets, windows, drive))
        _RUNS[name] = jax.tree_util.tree_map(np.asarray, (state, info, carried, stored))
    return _RUNS[name]


def spike_stamps(z: np.ndarray) -> list:
    """Per neuron, the stamps (step + 1) of its spikes."""
    return [[int(s) + 1 for s in np.nonzero(z[:, j])[0]] for j in range(z.shape[1])]


def assert_close(got, want, what, rtol=RTOL):
    """To ``rtol``, the absolute part scaled by the largest value; an all-zero series exactly."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    if not np.any(want):
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.max(np.abs(want)), err_msg=what)


# ----------------------------------------------------------------------------------------------------------
# The 6 recorded cases
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_case_spikes_and_recordings(name):
    case = case_named(name)
    _, info, _, _ = recorded(name)
    want = case["nest"]
    assert spike_stamps(info.rec.z) == want["rec_spike_steps"]
    assert sum(map(len, want["rec_spike_steps"])) > 20
    inputs = problem(case)[3]  # indexed by stamp already: the inputs as NEST's parrots sent them
    assert [list(np.nonzero(column)[0]) for column in inputs.T] == want["in_spike_steps"]
    n = len(want["rec_traces"]["V_m"])  # the multimeter never reports the last step
    series = {
        "V_m": info.rec.V_m,
        "surrogate_gradient": info.rec.psi,
        "V_th_adapt": info.rec.V_th_adapt,
        "adaptation": info.rec.adaptation,
    }
    for key, values in want["rec_traces"].items():
        if key == "learning_signal":
            continue
        assert_close(series[key][:n], values, key)
    for key, values in want["out_traces"].items():
        assert_close(getattr(info.out, key)[:n], values, key)


@pytest.mark.parametrize("name", CASES)
def test_case_learning_signal(name):
    """NEST's ``learning_signal`` recordable is ``L[s - 2]``, except where NEST had already erased the history
    entry (no synapse needed it; it then reads 0, at the first input step): every other entry to 1e-10."""
    case = case_named(name)
    _, info, _, _ = recorded(name)
    want = np.asarray(case["nest"]["rec_traces"]["learning_signal"])
    got = info.learning_signal[: len(want)]
    erased = (want == 0) & (got != 0)
    assert erased.sum() <= 0.01 * want.size
    kept = ~erased
    assert_close(got[kept], want[kept], "learning_signal")


@pytest.mark.parametrize("name", CASES)
def test_case_weights(name):
    """The stored weights (GetConnections) every 50 steps, and every weight that a spike carried."""
    case = case_named(name)
    _, _, carried, stored = recorded(name)
    groups = ("w_in", "w_rec", "w_out")
    for checkpoint in case["nest"]["weights_checkpoints"]:
        s = checkpoint["step"]  # after simulating s steps: the state after step s - 1
        for i, group in enumerate(groups):
            assert_close(stored[i][s - 1], checkpoint[group], f"{group} after {s} steps")
    initial = np.concatenate([np.ravel(case["weights_init"][g]) for g in groups])
    final = np.concatenate([np.ravel(stored[i][-1]) for i in range(3)])
    assert np.max(np.abs(final - initial)) > 1e-3  # the weights did learn
    record = case["nest"]["weight_recorder"]
    index = {"in_rec": 0, "rec_rec": 1, "rec_out": 2}
    got = np.array(
        [
            carried[index[g]][s, post, pre]
            for s, g, pre, post in zip(*(record[k] for k in ("stamp", "group", "pre", "post")))
        ]
    )
    want = np.asarray(record["weight"])
    assert len(want) > 500 and set(record["group"]) >= {"in_rec", "rec_out"}
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)


# ----------------------------------------------------------------------------------------------------------
# The 4 scenarios of NEST's test_eprop_plasticity.py::test_eprop_regression
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name):
    case = case_named(name)
    state, info, _, stored = recorded(name)
    readout = case["nest_readout"]
    steps = np.round(np.asarray(readout["times"]) / case["dt"]).astype(int) - 1  # step s is reported at (s+1) dt
    y, target = info.out.readout_signal[steps, 0], info.out.target_signal[steps, 0]
    assert_close(y, readout["readout_signal"], "readout_signal")
    # NEST's test asks for sines of steps_sequence // period = 100 // 1000 = 0 periods: its target is 0
    np.testing.assert_array_equal(target, readout["target_signal"])
    # the test's loss: 0.5 * mean over readouts and groups of the sum over each 100-step sequence
    loss = 0.5 * np.sum((y - target).reshape(5, 100) ** 2, axis=1)
    np.testing.assert_allclose(loss, case["loss_reference_in_test"], rtol=1e-8)  # the test's own assertion
    np.testing.assert_allclose(loss, case["loss_nest"], rtol=RTOL)
    lo, hi = case["nest_spike_recorder_window_ms"]
    stamps = [[s for s in row if lo < s * case["dt"] <= hi] for row in spike_stamps(info.rec.z)]
    assert stamps == case["nest_rec_spike_steps"] and sum(map(len, stamps)) > 100
    end, rows = case["nest_weights_end"], case["nest_weights_end"]["n_rows"]
    assert_close(stored[0][-1][:rows], end["w_in_rows"], "w_in")
    assert_close(stored[1][-1][:rows], end["w_rec_rows"], "w_rec")
    assert_close(stored[2][-1], end["w_out"], "w_out")


# ----------------------------------------------------------------------------------------------------------
# jit, vmap, run == step, the stored weights' laziness, bad input
# ----------------------------------------------------------------------------------------------------------

SMALL = "lif_ff_gd_each_regression"


@functools.cache
def small_run():
    """``learner.run`` jitted once for the small case; traced with the learning rate as an argument."""
    case = case_named(SMALL)
    learner = learner_of(case)
    weights, feedback, masks, inputs, targets, windows, drive = problem(case)

    @jax.jit
    def run(eta):
        state = learner.init(weights, feedback, masks=masks, eta=eta)
        state, info = learner.run(state, inputs, targets, windows, drive)
        return learner.weights(state), info.loss

    return run, case["optimizer"]["eta"]


def test_run_is_the_scan_of_step_and_jit_does_not_retrace():
    run, eta = small_run()
    weights, loss = run(jnp.float64(eta))
    state, info, _, stored = recorded(SMALL)
    for got, want in zip(weights, (s[-1] for s in stored)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loss, info.loss)
    run(jnp.float64(2 * eta))
    assert run._cache_size() == 1


def test_vmap_over_the_learning_rate():
    """Two learning rates in one vmapped run give the two separate runs (which differ)."""
    run, eta = small_run()
    etas = jnp.asarray([eta, 3 * eta])
    batched = jax.vmap(run)(etas)
    for i in range(2):
        single = run(etas[i])
        for got, want in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-15)
    assert np.max(np.abs(np.asarray(batched[0].w_out[0]) - np.asarray(batched[0].w_out[1]))) > 1e-4


def test_stored_weights_lag_behind_the_carried_ones():
    """With optimize_each_step, NEST stores a synapse's weight only at its presynaptic events (spikes, flush
    events): between them the stored and the carried weights differ, and the checkpoints above pin the stored
    ones."""
    name = "lif_rec_gd_each_dt05_reg_cutoff"
    _, _, carried, stored = recorded(name)
    assert any(np.max(np.abs(c[:-5] - s[:-5])) > 1e-6 for c, s in zip(carried, stored))


def _rec(**kw):
    return nest.eprop_iaf(3, C_m=1.0, E_L=0.0, V_m=0.0, V_th=0.5, tau_m=20.0, **kw)


def test_bad_input_raises_clear_errors():
    out = nest.eprop_readout(1, C_m=1.0, tau_m=25.0)
    with pytest.raises(ValueError, match="surrogate_gradient_function"):
        _rec(surrogate_gradient_function="sigmoid")
    with pytest.raises(ValueError, match="eprop_isi_trace_cutoff"):
        _rec(eprop_isi_trace_cutoff=-1.0)
    with pytest.raises(ValueError, match="kappa"):
        _rec(kappa=1.5)
    with pytest.raises(ValueError, match="`rec`"):
        nest.online_eprop(out, out)
    with pytest.raises(ValueError, match="`out`"):
        nest.online_eprop(_rec(), _rec())
    with pytest.raises(ValueError, match="dt"):
        nest.online_eprop(_rec(dt=0.5), out)
    with pytest.raises(ValueError, match="optimizer"):
        nest.online_eprop(_rec(), out, optimizer="sgd")
    with pytest.raises(ValueError, match="batch_size"):
        nest.online_eprop(_rec(), out, batch_size=0)
    learner = nest.online_eprop(_rec(), out)
    w = nest.OnlineWeights(np.zeros((3, 2)), np.zeros((3, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"weights.w_out"):
        learner.init(w._replace(w_out=np.zeros((3, 1))), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="feedback"):
        learner.init(w, np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"masks.w_in"):
        learner.init(w, np.zeros((3, 1)), masks=nest.OnlineWeights(np.ones((2, 3)), np.ones((3, 3)), np.ones((1, 3))))


def test_float32_under_strict_promotion():
    """A float32 network stays float32 (no silent promotion, ``jax_numpy_dtype_promotion="strict"``) and follows
    the float64 run closely; Adam's catch-up loop runs too."""
    case = case_named("lif_rec_adam_spike_reg")
    weights, feedback, masks, inputs, targets, windows, drive = problem(case)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    with jax.numpy_dtype_promotion("strict"):
        learner = learner_of(case)
        state = learner.init(nest.OnlineWeights(*map(f32, weights)), f32(feedback), masks=masks)
        state, info = jax.jit(learner.run)(state, *map(f32, (inputs, targets, windows, drive)))
    assert all(leaf.dtype != np.float64 for leaf in jax.tree_util.tree_leaves((state, info)))
    _, want, _, stored = recorded("lif_rec_adam_spike_reg")
    assert np.all(np.isfinite(state.rec_out.w))
    np.testing.assert_allclose(info.out.V_m[:100], want.out.V_m[:100], rtol=1e-3, atol=1e-4)

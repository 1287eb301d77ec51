"""NEST's own legacy e-prop regression test, replayed with eproptax's public API.

``tests/fixtures/nest_eprop_bsshslm_2020_regression.json`` (written by ``benchmarks/record_nest_regression.py``)
holds what NEST 3.10's ``test_eprop_bsshslm_2020_plasticity.py`` builds and computes: the sine-wave regression
(100 LIF neurons, gradient descent) and the evidence accumulation (50 LIF + 50 ALIF neurons, Adam,
``average_gradient``) with batches of 1 and 2, five iterations each; the inputs, targets, parameters and
initial weights; the test's own reference losses; and NEST's weights after every iteration (a fixed sample of
300 synapses per weight matrix). Each scenario is replayed in a few lines: ``ep.cells.lif`` or
``ep.cells.lsnn``, ``ep.cells.leaky_readout``, ``ep.nest.value_and_grad`` (e-prop with NEST's feedback
weights, learning window, ``average_gradient`` and regulariser) and ``optax.chain(ep.nest.adam or
ep.nest.gradient_descent, ep.nest.clip)``.

One NEST artefact is replayed explicitly (``nest_gradient``): NEST computes a synapse's gradient for a
sequence when the presynaptic neuron next spikes; when that spike comes at step 1 of the next sequence the
learning signal of the previous sequence's last step has not reached the neuron yet, and that step's term is
missing from the gradient (docs/nest.md, "Where NEST differs").
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import FIXTURES

import eproptax as ep

RTOL = 1e-10
SCENARIOS = ("sine_regression", "evidence_batch1", "evidence_batch2")


@functools.cache
def fixture() -> dict:
    with open(FIXTURES / "nest_eprop_bsshslm_2020_regression.json") as f:
        return json.load(f)


def data(s):
    """Inputs ``(n_seq, T, n_in)`` and targets ``(n_seq, T, n_out)`` on logical steps, float64."""
    x = np.zeros((len(s["x"]), s["T"], s["n_in"]))
    for q, neurons in enumerate(s["x"]):
        for i, steps in enumerate(neurons):
            x[q, steps, i] = 1.0
    y = np.asarray(s["y"]["unique"])[np.asarray(s["y"]["index"])]
    return x, y


def float32(values):
    """The test's weights: float32 numbers (stored as their shortest float32 decimals), as float64."""
    return jnp.asarray(np.asarray(values, np.float32).astype(np.float64))


def nest_model(s):
    """The network as a NEST user writes it: NEST's parameters, one to one."""
    lif, *adapt = s["rec"]
    common = dict(
        tau_mem=lif["tau_m"],
        threshold=lif["V_th"],
        dt=s["dt"],
        zeta=1.0 if lif["regular_spike_arrival"] else None,
        n_refractory=max(int(round(lif["t_ref"] / s["dt"])) - 1, 0),
        surrogate_height=lif["surrogate_gradient_height"],
        surrogate_width=lif["surrogate_gradient_width"],
        dtype=jnp.float64,
    )
    if adapt:
        (a,) = adapt
        cell = ep.cells.lsnn(s["n_in"], lif["n"], a["n"], tau_adapt=a["adapt_tau"], beta=a["adapt_beta"], **common)
    else:
        cell = ep.cells.lif(s["n_in"], lif["n"], **common)
    out = s["out"]
    zeta_out = 1.0 if out["regular_spike_arrival"] else None
    readout = ep.cells.leaky_readout(
        s["n_rec"], s["n_out"], tau_out=out["tau_m"], dt=s["dt"], zeta_out=zeta_out, dtype=jnp.float64
    )
    return ep.cells.stack(cell, readout)


def nest_optimizer(s):
    o = s["optimizer"]
    if o["optimizer"] == "adam":
        step = ep.nest.adam(o["eta"], o["beta_1"], o["beta_2"], o["epsilon"])
    else:
        step = ep.nest.gradient_descent(o["eta"])
    return optax.chain(step, ep.nest.clip(o["Wmin"], o["Wmax"]))


@functools.cache
def grad_fn(name):
    """The jitted rule of a scenario; ``targets = {"y", "keep"}``, ``keep`` the weight of each step's loss (1
    but where :func:`nest_gradient` drops a step)."""
    s = fixture()["scenarios"][name]
    nest_loss = {"mean_squared_error": ep.nest.mean_squared_error, "cross_entropy": ep.nest.cross_entropy}
    loss = nest_loss[s["out"]["loss"]]
    rec = s["rec"][0]
    fn = ep.nest.value_and_grad(
        nest_model(s),
        lambda o, t: t["keep"] * loss(o, t["y"]),
        feedback=float32(s["feedback"]),
        learning_window=s["learning_window"],
        average_gradient=s["average_gradient"],
        reg=ep.nest.firing_rate_reg(rec["c_reg"], rec["f_target"] * 1000.0, s["dt"]),  # NEST stores spikes/ms
    )
    return jax.jit(fn)


def nest_gradient(name, params, x, y, x_next):
    """The gradient NEST applies for one batch: e-prop's, less the last step's learning-signal term of each
    input synapse whose presynaptic neuron spikes at step 1 of the sequence that follows (``x_next``, one per
    example; ``None`` after the last sequence)."""
    keep = np.ones(y.shape[:2])
    (objective, info), grads = grad_fn(name)(params, x, {"y": y, "keep": keep})
    w_in = np.asarray(grads[0]["w_in"])
    for b, nxt in enumerate(x_next):
        late = nxt is not None and np.any(nxt[1] > 0)
        if late:  # the batch mean less example b's last step: grads - that = example b's last-step term / batch
            keep_b = keep.copy()
            keep_b[b, -1] = 0.0
            _, without = grad_fn(name)(params, x, {"y": y, "keep": keep_b})
            w_in = w_in - (nxt[1] > 0)[None, :] * (np.asarray(grads[0]["w_in"]) - np.asarray(without[0]["w_in"]))
    return info, (dict(grads[0], w_in=jnp.asarray(w_in)), grads[1])


@functools.cache
def replay(name):
    """NEST's training loop: per iteration, NEST's loss and the sampled weights after the update."""
    s = fixture()["scenarios"][name]
    x, y = data(s)
    w = s["weights_initial"]
    params = ({"w_in": float32(w["w_in"]), "w_rec": float32(w["w_rec"])}, {"w_out": float32(w["w_out"])})
    optimizer = nest_optimizer(s)
    opt_state = optimizer.init(params)
    B, losses, weights = s["batch_size"], [], []
    for it in range(s["n_iter"]):
        batch = slice(it * B, (it + 1) * B)
        x_next = [x[q + 1] if q + 1 < len(x) else None for q in range(it * B, (it + 1) * B)]
        info, grads = nest_gradient(name, params, jnp.asarray(x[batch]), jnp.asarray(y[batch]), x_next)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(info.loss))
        flat = {**params[0], **params[1]}
        weights.append({k: np.asarray(flat[k])[tuple(np.asarray(idx).T)] for k, idx in s["sample"].items()})
    return np.asarray(losses), weights


@pytest.mark.parametrize("name", SCENARIOS)
def test_losses_match_nest_reference(name):
    """The test file's own NEST reference losses (12 digits), and the losses NEST 3.10 computed when recorded."""
    s = fixture()["scenarios"][name]
    losses, _ = replay(name)
    np.testing.assert_allclose(losses, s["loss_nest_reference"], rtol=RTOL)
    np.testing.assert_allclose(losses, s["loss_nest"], rtol=RTOL)


@pytest.mark.parametrize("name", SCENARIOS)
def test_weights_match_nest_after_each_iteration(name):
    s = fixture()["scenarios"][name]
    _, weights = replay(name)
    for it, (ours, theirs) in enumerate(zip(weights, s["weights_after"])):
        for key in ours:
            want = np.asarray(theirs[key])
            err = np.max(np.abs(ours[key] - want)) / np.max(np.abs(want))
            assert err <= RTOL, f"{name}, iteration {it + 1}, {key}: relative error {err:.2e}"
            initial = np.asarray(float32(s["weights_initial"][key]))[tuple(np.asarray(s["sample"][key]).T)]
            assert np.max(np.abs(want - initial)) > 1e-4, "NEST's weights moved"

"""NEST 3.10's current e-prop neurons as library cells (``ep.nest.eprop_iaf(...).cell(n_in)``, docs/nest.md).

(1) A cell run forward over a recorded case's input spikes, with the case's initial weights held fixed, is the
``NestNeuron``'s own forward (``NestNeuron.step``, what ``ep.nest.online_eprop`` drives and what
tests/test_nest_online.py checks against NEST): the same spikes; ``V_m``, surrogate gradient and readout ``V_m``
to 1e-13 (bit for bit in most runs). (2) ``ep.rtrl`` equals ``ep.bptt`` on a stack of a NEST recurrent cell and
a NEST readout cell, and ``ep.eprop`` runs on it (and gives the same gradient with the declared ``leak`` as
without). (3) Every cell passes ``ep.cells.check``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, mse
from test_nest_online import _ms, case_named, problem

import eproptax as ep
import eproptax.nest as nest

# (recorded case, the model run on its inputs and weights, NEST parameters changed from the case's)
FORWARD = {
    "eprop_iaf": ("lif_rec_adam_spike_reg", "eprop_iaf", {}),
    "eprop_iaf_adapt": ("alif_rec_gd_spike_cutoff_class", "eprop_iaf_adapt", {}),
    "eprop_iaf_psc_delta": ("psc_delta_rec_gd_each_batch3", "eprop_iaf_psc_delta", {}),
    # absolute voltages, I_e, adaptation and refractory input together, on the psc_delta case's inputs
    "eprop_iaf_psc_delta_adapt": (
        "psc_delta_rec_gd_each_batch3",
        "eprop_iaf_psc_delta_adapt",
        dict(E_L=-70.0, V_m=-70.0, V_th=-69.5, V_reset=-70.2, I_e=0.01, adapt_beta=0.3, adapt_tau=30.0),
    ),
}


def _neurons(name):
    case_name, model, changes = FORWARD[name]
    case = case_named(case_name)
    params = {k: _ms(v) for k, v in case["rec_params_full"].items() if k not in ("ignore_and_spike", "V_th_adapt")}
    params = {**params, "f_target": params["f_target"] * 1000.0, **changes}
    out_params = {k: _ms(v) for k, v in case["out_params_full"].items()}
    out_params.update({k: changes[k] for k in ("E_L", "V_m", "I_e") if k in changes})
    rec = getattr(nest, model)(case["n_rec"], dt=case["dt"], **params)
    out = nest.eprop_readout(case["n_out"], dt=case["dt"], **out_params)
    return case, params, rec, out


@functools.cache
def forward(name):
    """The NestNeuron's forward and the cells' forward over the case's inputs, in one jitted scan."""
    case, params, rec, out = _neurons(name)
    weights, _, masks, inputs, *_ = problem(case)
    w_in, w_rec, w_out = (np.where(m, w, 0.0) for m, w in zip(masks, weights))
    rec_cell = rec.cell(case["n_in"], mask_in=masks.w_in, mask_rec=masks.w_rec, dtype=jnp.float64)
    out_cell = out.cell(case["n_rec"], mask=masks.w_out, dtype=jnp.float64)

    def body(carry, x):
        h, ho, z, c, co, zc = carry
        # NEST (NestNeuron.step, as online_eprop calls it): the readout integrates the spikes of the previous step
        h, info = rec.step(h, w_in @ x + w_rec @ z, jnp.int32(0))
        ho, info_out = out.step(ho, w_out @ z, 0.0, 0.0)
        # the cells: apply, and psi = dz/dv from the cell's output
        c, z_cell = rec_cell.apply({"w_in": weights.w_in, "w_rec": weights.w_rec}, c, x)
        psi = jax.jvp(lambda v: rec_cell.output(c._replace(v=v)), (c.v,), (jnp.ones_like(c.v),))[1]
        co, y = out_cell.apply({"w_out": weights.w_out}, co, zc)
        ref = (info.z, info.psi, info.V_m, info_out.V_m)
        return (h, ho, info.z, c, co, z_cell), (ref, (z_cell, psi, c.v, y))

    @jax.jit
    def run(inputs):
        c = rec_cell.init_carry({"w_in": jnp.asarray(weights.w_in)})
        co = out_cell.init_carry({"w_out": jnp.asarray(weights.w_out)})
        zeros = jnp.zeros(case["n_rec"])
        carry = (rec.init(jnp.float64), out.init(jnp.float64), zeros, c, co, zeros)
        return jax.lax.scan(body, carry, inputs)[1]

    ref, got = jax.tree_util.tree_map(np.asarray, run(jnp.asarray(inputs)))
    return params, ref, got


@pytest.mark.parametrize("name", tuple(FORWARD))
def test_cell_forward_is_the_nest_neuron(name):
    params, (z, psi, V_m, V_out), (z_cell, psi_cell, v_cell, y_cell) = forward(name)
    assert 20 < z.sum() < 0.5 * z.size  # the case spikes, not all the time
    np.testing.assert_array_equal(z_cell, z)
    close(psi_cell, psi, "surrogate gradient")
    assert np.count_nonzero(psi) > 0.05 * psi.size
    # NEST's V_m is after the reset; the cell's state holds v before it (the reset is the next step's first act)
    E_L = params["E_L"]
    if "psc_delta" in name:
        post = np.where(z_cell > 0, params["V_reset"] - E_L, v_cell)
    else:
        post = np.where(z_cell > 0, v_cell - (params["V_th"] - E_L), v_cell)
    close(post + E_L, V_m, "V_m")
    close(y_cell, V_out, "readout V_m")


def close(got, want, what, rtol=1e-13):
    """To ``rtol`` of the series' largest value: the same arithmetic, compiled in another program (XLA may fuse
    ``a * b + c`` differently: measured up to 3e-15, and bit for bit in most runs)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.max(np.abs(want)), err_msg=what)


# ----------------------------------------------------------------------------------------------------------
# The rules on a stack of a NEST recurrent cell and a NEST readout cell
# ----------------------------------------------------------------------------------------------------------

T, BATCH, N_IN, N_REC, N_OUT = 30, 2, 3, 5, 2
COMMON = dict(C_m=1.0, E_L=-70.0, V_m=-70.0, V_th=-69.0, tau_m=10.0, t_ref=2.0, I_e=0.02)
COMMON.update(surrogate_gradient_height=0.5, surrogate_gradient_width=0.5)
MODELS = {
    "eprop_iaf": {},
    "eprop_iaf_adapt": dict(adapt_beta=0.5, adapt_tau=20.0),
    "eprop_iaf_psc_delta": dict(V_reset=-70.3),
    "eprop_iaf_psc_delta_adapt": dict(V_reset=-70.3, refractory_input=True, adapt_beta=0.5, adapt_tau=20.0),
}


def stack_of(model: str, generic: bool = False):
    rec = getattr(nest, model)(N_REC, **COMMON, **MODELS[model]).cell(N_IN, dtype=jnp.float64)
    out = nest.eprop_readout(N_OUT, E_L=-1.0, V_m=-1.0, I_e=0.1, tau_m=20.0).cell(N_REC, dtype=jnp.float64)
    if generic:  # the recurrent layer without its leak (e-prop's per-synapse traces); the readout keeps its own
        rec = rec._replace(leak=None)
    return ep.cells.stack(rec, out)


@functools.cache
def data():
    rng = np.random.default_rng(0)
    params = (
        {
            "w_in": jnp.asarray(0.25 + 0.3 * rng.standard_normal((N_REC, N_IN))),
            "w_rec": jnp.asarray(0.3 * rng.standard_normal((N_REC, N_REC))),
        },
        {"w_out": jnp.asarray(rng.standard_normal((N_OUT, N_REC)) / np.sqrt(N_REC))},
    )
    inputs = jnp.asarray((rng.uniform(size=(BATCH, T, N_IN)) < 0.5).astype(np.float64))
    targets = {"y": jnp.asarray(rng.standard_normal((BATCH, T, N_OUT))), "mask": jnp.ones((BATCH, T))}
    return params, inputs, targets


@pytest.mark.parametrize("model", ("eprop_iaf_adapt", "eprop_iaf_psc_delta_adapt"))
def test_rtrl_equals_bptt_and_eprop_runs(model):
    cell = stack_of(model)
    params, inputs, targets = data()
    loss_b, g_b = jax.jit(ep.bptt(cell, mse))(params, inputs, targets)
    loss_r, g_r = jax.jit(ep.rtrl(cell, mse))(params, inputs, targets)
    loss_e, g_e = jax.jit(ep.eprop(cell, mse))(params, inputs, targets)
    # the network spikes, not all the time, and the gradient reaches the recurrent weights
    z = jax.vmap(
        lambda x: jax.lax.scan(lambda c, xt: cell.layers[0].apply(params[0], c, xt), cell.init_carry(params)[0], x)[1]
    )(inputs)
    assert 0.05 < float(jnp.mean(z)) < 0.6
    assert np.count_nonzero(np.asarray(g_b[0]["w_rec"])) >= N_REC
    np.testing.assert_allclose(loss_r, loss_b, rtol=1e-12)
    np.testing.assert_allclose(loss_e, loss_b, rtol=1e-12)
    assert_close(g_r, g_b, 1e-9, "rtrl vs bptt")
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(g_e))
    assert_close(g_e[1], g_b[1], 1e-9, "eprop's readout gradient is exact")
    assert np.all(np.diagonal(np.asarray(g_b[0]["w_rec"])) == 0)  # no autapses


def test_eprop_with_the_declared_leak_is_eprop_without():
    """``eprop_iaf`` and ``eprop_readout`` declare their membranes leaky: e-prop's factorised traces give the
    gradient of its per-synapse ones."""
    params, inputs, targets = data()
    _, g_leak = jax.jit(ep.eprop(stack_of("eprop_iaf"), mse))(params, inputs, targets)
    _, g_full = jax.jit(ep.eprop(stack_of("eprop_iaf", generic=True), mse))(params, inputs, targets)
    assert_close(g_leak, g_full, 1e-10, "leak vs generic")


def test_cells_pass_the_contract_and_declare_leak_only_where_true():
    for model, extra in MODELS.items():
        cell = getattr(nest, model)(N_REC, **COMMON, **extra).cell(N_IN, dtype=jnp.float64)
        ep.cells.check(cell)
        if "psc_delta" in model:  # the reset to V_reset and the refractory hold are not a leaky integrator
            assert cell.leak is None
        else:
            assert cell.leak is not None
        clamped = getattr(nest, model)(N_REC, **COMMON, **extra, V_min=-80.0).cell(N_IN, dtype=jnp.float64)
        assert clamped.leak is None  # max(v, V_min) can act
    readout = nest.eprop_readout(N_OUT, E_L=-1.0, V_m=-1.0).cell(N_REC, dtype=jnp.float64)
    ep.cells.check(readout)
    assert readout.leak is not None
    ep.cells.check(nest.eprop_iaf_adapt(N_REC).cell(N_IN))  # float32, NEST's defaults
    ep.cells.check(stack_of("eprop_iaf_psc_delta"))

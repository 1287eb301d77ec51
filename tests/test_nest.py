"""Fidelity to NEST's e-prop (``eprop_iaf_bsshslm_2020``): gradients and recordings of the three fixtures.

The NEST-compatible configuration (see ``helpers.nest_model``): ``lif`` with NEST's ``tau_m``, ``V_th``,
the piecewise-linear surrogate with ``surrogate_gradient_height`` and ``surrogate_gradient_width``,
``n_refractory = max(n_ref_steps - 1, 0)`` and ``zeta = 1 - alpha``; ``leaky_readout`` with ``tau_out`` =
the readout's ``tau_m``; the learning window as a 0/1 mask in the targets; the loss ``0.5 * mask * sum (y -
y*)^2`` on a batch of one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import NEST_CASES, assert_close, nest_model, nest_problem, nest_refractory, nest_rule_fn

RTOL = 1e-10


def nest_gradients(case, dtype=np.float64):
    g = case["gradients"]
    return (
        {"w_in": np.asarray(g["w_in"], dtype), "w_rec": np.asarray(g["w_rec"], dtype)},
        {"w_out": np.asarray(g["w_out"], dtype)},
    )


_RECORD = {}


def recordings(name, dtype=np.float64):
    """Runs the NEST model forward once; records v, spikes, psi (jvp of the output), readout and error."""
    case, params, inputs, targets = nest_problem(name, dtype)
    key = np.dtype(dtype).name
    if key not in _RECORD:

        def record(n_ref, params, inputs, targets):
            model = nest_model(case, dtype, n_ref)
            lif = model.layers[0]

            def body(carry, xt):
                carry, y = model.apply(params, carry, xt[0])
                h = carry[0]
                psi = jax.jvp(lambda v: lif.output(h._replace(v=v)), (h.v,), (jnp.ones_like(h.v),))[1]
                err = (y - xt[1]["y"]) * xt[1]["mask"]
                return carry, dict(
                    rec_V_m=h.v,
                    rec_spikes=lif.output(h),
                    rec_surrogate_gradient=psi,
                    out_V_m=y,
                    out_error_signal=err,
                    rec_learning_signal=params[1]["w_out"].T @ err,
                )

            tree = jax.tree_util.tree_map(lambda a: a[0], targets)
            return jax.lax.scan(body, model.init_carry(params), (inputs[0], tree))[1]

        _RECORD[key] = jax.jit(record)
    return case, _RECORD[key](np.int32(nest_refractory(case)), params, inputs, targets)


def _check_recordings(case, rec, rtol):
    """Spikes exactly; every other series to ``rtol`` (absolute part scaled by the series' largest value)."""
    expected = case["recordings"]
    np.testing.assert_array_equal(rec["rec_spikes"], np.asarray(expected["rec_spikes"]))
    assert np.sum(rec["rec_spikes"]) > 10
    for name in ("rec_V_m", "rec_surrogate_gradient", "rec_learning_signal", "out_V_m", "out_error_signal"):
        want = np.asarray(expected[name])
        assert np.any(want != 0), name
        np.testing.assert_allclose(rec[name], want, rtol=rtol, atol=rtol * np.max(np.abs(want)), err_msg=name)


@pytest.mark.parametrize("name", NEST_CASES)
def test_recordings_match_nest(name):
    case, rec = recordings(name)
    _check_recordings(case, rec, RTOL)
    # NEST records the target only inside the learning window: the window is the mask of the targets
    _, _, _, targets = nest_problem(name)
    np.testing.assert_array_equal(
        case["recordings"]["out_target_signal"],
        np.asarray(case["inputs"]["y_target"]) * np.asarray(targets["mask"][0])[:, None],
    )


def test_refractory_case_has_blocked_steps():
    """In lif_tref_window the counter blocks 2 steps (t_ref = 3 ms) and the surrogate is zero there."""
    case, rec = recordings("lif_tref_window")
    assert nest_refractory(case) == 2
    z, psi = np.asarray(rec["rec_spikes"]), np.asarray(rec["rec_surrogate_gradient"])
    after = np.zeros_like(z, dtype=bool)
    after[1:] |= z[:-1] > 0
    after[2:] |= z[:-2] > 0
    assert after.any() and np.all(z[after] == 0) and np.all(psi[after] == 0)


@pytest.mark.parametrize("name", NEST_CASES)
def test_eprop_gradients_match_nest(name):
    case, params, inputs, targets = nest_problem(name)
    loss, grads = nest_rule_fn("eprop")(np.int32(nest_refractory(case)), params, inputs, targets)
    assert_close(grads, nest_gradients(case), RTOL, f"eprop vs NEST[{name}]")
    errors = np.asarray(case["recordings"]["out_error_signal"])
    np.testing.assert_allclose(loss, 0.5 * np.sum(errors**2), rtol=RTOL)


def test_bptt_matches_nest_without_recurrence():
    """lif_norec: zero recurrent weights make e-prop exact, so NEST's gradient is the BPTT gradient."""
    case, params, inputs, targets = nest_problem("lif_norec")
    assert np.all(np.asarray(params[0]["w_rec"]) == 0)
    _, grads = nest_rule_fn("bptt")(np.int32(nest_refractory(case)), params, inputs, targets)
    assert_close(grads, nest_gradients(case), RTOL, "bptt vs NEST[lif_norec]")


def test_bptt_differs_from_nest_with_recurrence():
    """The converse: with recurrent weights NEST's (e-prop) gradient is not the BPTT gradient."""
    case, params, inputs, targets = nest_problem("lif")
    _, grads = nest_rule_fn("bptt")(np.int32(nest_refractory(case)), params, inputs, targets)
    expected = nest_gradients(case)
    assert_close(grads[1], expected[1], RTOL, "readout (always exact)")
    with pytest.raises(AssertionError):
        assert_close(grads[0], expected[0], 1e-3)


def test_float32_matches_nest():
    """float32 parameters and inputs: about 1e-5 relative, as NEST's README expects."""
    name = "lif"
    case, params, inputs, targets = nest_problem(name, np.float32)
    loss, grads = nest_rule_fn("eprop", np.float32)(np.int32(nest_refractory(case)), params, inputs, targets)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
    assert_close(grads, nest_gradients(case), 1e-5, f"float32 eprop vs NEST[{name}]")
    _, rec = recordings(name, np.float32)
    _check_recordings(case, rec, 1e-5)

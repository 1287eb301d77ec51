"""Every rule composes with JAX: grads mirror params, jit, vmap over hyperparameters and seeds, optax."""

import traceback

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import FEEDBACK_RULES, RULES, Config, assert_close, mse, opcodes, problem, rel_err, run

import eproptax as ep

F64 = jnp.float64
LIF = Config(cells=("lif",), readout="leaky")


def _finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("rule", list(RULES))
def test_grads_mirror_params(rule):
    prob = problem(LIF)
    value, grads = run(rule, LIF)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(prob.params)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, prob.params)
    assert np.shape(value) == () and _finite((value, grads))


@pytest.mark.parametrize("rule", list(RULES))
def test_vmap_over_a_hyperparameter(rule):
    """tau_mem traced: the cell is built inside the vmapped function; equals a loop over the values."""
    prob = problem(LIF)

    def fn(tau, params, inputs, targets):
        model = ep.cells.stack(ep.cells.lif(3, 4, tau_mem=tau, dtype=F64), ep.cells.leaky_readout(4, 2, dtype=F64))
        return RULES[rule](model, mse)(params, inputs, targets)

    taus = jnp.array([5.0, 20.0, 60.0], F64)
    values, grads = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(taus, prob.params, prob.inputs, prob.targets)
    one = jax.jit(fn)
    for i, tau in enumerate(taus):
        value_i, grads_i = one(tau, prob.params, prob.inputs, prob.targets)
        np.testing.assert_allclose(values[i], value_i, rtol=1e-13)
        assert_close(jax.tree_util.tree_map(lambda g: g[i], grads), grads_i, 1e-12, f"vmap[{i}] vs loop")
    # a traced tau_mem = 20 gives what the cell built with the Python float 20.0 gives
    value_static, grads_static = run(rule, LIF)
    np.testing.assert_allclose(values[1], value_static, rtol=1e-13)
    assert_close(jax.tree_util.tree_map(lambda g: g[1], grads), grads_static, 1e-12, "traced vs static tau")
    assert rel_err(jax.tree_util.tree_map(lambda g: g[0], grads), grads_static) > 1e-2  # tau matters


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_vmap_over_the_feedback_seed(rule):
    """Random feedback drawn from a key inside the vmapped function; equals a loop over the keys."""
    prob = problem(LIF)

    def fn(key, params, inputs, targets):
        B = ep.random_feedback(key, 4, 2, F64)
        return RULES[rule](prob.model, mse, feedback=B)(params, inputs, targets)

    keys = jax.random.split(jax.random.key(11), 3)
    values, grads = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(keys, prob.params, prob.inputs, prob.targets)
    for i in range(len(keys)):
        B = ep.random_feedback(keys[i], 4, 2, F64)
        assert B.shape == (4, 2) and B.dtype == F64
        value_i, grads_i = run(rule, LIF, None, B, variant="feedback")
        np.testing.assert_allclose(values[i], value_i, rtol=1e-13)
        assert_close(jax.tree_util.tree_map(lambda g: g[i], grads), grads_i, 1e-12, f"vmap[{i}] vs loop")
    first, second = (jax.tree_util.tree_map(lambda g: g[i], grads[0]) for i in (0, 1))
    assert rel_err(first, second) > 1e-3  # the seed matters


@pytest.mark.parametrize("rule", list(RULES))
def test_optax_step_under_jit_traces_once(rule):
    """float32 LSTM (flax parameter tree): one adam step per call, no re-trace on new data."""
    cfg = Config(cells=("lstm",), readout="linear", dtype="float32")
    prob = problem(cfg)
    grad_fn = RULES[rule](prob.model, mse)
    optimizer = optax.adam(1e-2)
    chex.clear_trace_counter()  # the counter is keyed by the function's code, shared by parametrised runs

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(params, opt_state, inputs, targets):
        loss, grads = grad_fn(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    params, opt_state = prob.params, optimizer.init(prob.params)
    # optax's adam computes decay ** count (float ** int32), which strict dtype promotion rejects
    with jax.numpy_dtype_promotion("standard"):
        new_params, opt_state, loss, grads = train_step(params, opt_state, prob.inputs, prob.targets)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
    assert loss.dtype == jnp.float32 and _finite((loss, grads, new_params))
    assert rel_err(new_params, params) > 1e-4
    rng = np.random.default_rng(1)
    inputs2 = jnp.asarray(rng.standard_normal(prob.inputs.shape).astype(np.float32))
    targets2 = {
        "y": jnp.asarray(rng.standard_normal(prob.targets["y"].shape).astype(np.float32)),
        "mask": prob.targets["mask"],
    }
    with jax.numpy_dtype_promotion("standard"):
        newer, _, loss2, grads2 = train_step(new_params, opt_state, inputs2, targets2)  # raises if re-traced
    assert _finite((loss2, grads2, newer)) and float(loss2) != float(loss)


# ----------------------------------------------------------------------------------------------------------
# Strict promotion: the target configuration of conftest.py (this test pins what fails until then)
# ----------------------------------------------------------------------------------------------------------

STRICT_CONFIGS = [
    Config(cells=("lif",), readout="leaky"),
    Config(cells=("lif",), readout="linear"),
    Config(cells=("gru",), readout="leaky"),
    Config(cells=("lif",), readout="leaky", dtype="float32"),
]


def _where(error):
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "eproptax" in f.filename]
    if not frames:
        return "outside eproptax"
    f = frames[-1]
    return f"{f.filename.split('eproptax')[-1].lstrip('/')}:{f.lineno}: {f.line}"


PROMOTION = {
    "rank_raise": lambda: jax.numpy_rank_promotion("raise"),
    "dtype_strict": lambda: jax.numpy_dtype_promotion("strict"),
}


@pytest.mark.parametrize("mode", list(PROMOTION))
@pytest.mark.parametrize("rule", list(RULES))
def test_runs_under_strict_promotion(rule, mode):
    """Tracing every rule (jax.eval_shape: no compile) with rank promotion 'raise' or dtype promotion 'strict'."""
    failures = []
    for cfg in STRICT_CONFIGS:
        prob = problem(cfg)
        for reg in (None, ep.FiringRateReg(0.5, 0.05)):
            kwargs = {} if reg is None else {"reg": reg}
            try:
                with PROMOTION[mode]():
                    jax.eval_shape(RULES[rule](prob.model, mse, **kwargs), prob.params, prob.inputs, prob.targets)
            except Exception as error:  # noqa: BLE001 - every failure is reported below
                message = str(error).splitlines()[0][:100]
                failures.append(
                    f"{cfg.id} {cfg.dtype}{' reg' if reg else ''}: {type(error).__name__} at "
                    f"{_where(error)} ({message})"
                )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("rule", list(RULES))
def test_unroll_changes_speed_only(rule):
    """Three steps per scan iteration over T = 8 (a remainder of two) give the rule's gradient to rounding."""
    cfg = Config(cells=("alif",), readout="leaky")  # compact per-synapse traces (s = 2)
    prob = problem(cfg)
    value, grads = run(rule, cfg)
    value3, grads3 = jax.jit(RULES[rule](prob.model, mse, unroll=3))(prob.params, prob.inputs, prob.targets)
    assert_close(value3, value, 1e-12, "loss")
    assert_close(grads3, grads, 1e-12, "grads")


@pytest.mark.parametrize("rule", ["bptt", "eprop"])
def test_default_unroll_is_the_platforms(rule, monkeypatch):
    """``unroll=None`` compiles the program of the lowering platform's ``DEFAULT_UNROLL`` (set to 3 for the CPU
    here): the choice is staged out with ``lax.platform_dependent`` and made when lowering."""
    cfg = Config(cells=("lif",), readout="leaky", time=6)
    prob = problem(cfg)
    args = (prob.params, prob.inputs, prob.targets)

    def program(unroll):
        return jax.jit(RULES[rule](prob.model, mse, unroll=unroll)).lower(*args).compile()

    assert ep.DEFAULT_UNROLL["cpu"] == 1
    assert opcodes(program(None)) == opcodes(program(1))
    monkeypatch.setitem(ep.DEFAULT_UNROLL, "cpu", 3)
    chosen = program(None)
    assert opcodes(chosen) == opcodes(program(3)) != opcodes(program(1))
    assert_close(chosen(*args), run(rule, cfg), 1e-12, "unroll 3 by default")

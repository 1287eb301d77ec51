"""``ep.nest``'s optimizers and conventions, and ``ep.cells.lsnn``: against independent references.

NEST's Adam against a NumPy transcription of ``WeightOptimizerAdam::optimize_`` (and not ``optax.adam``); the
clip against ``np.clip``; ``value_and_grad``'s window, ``average_gradient`` and regulariser against the same
objective built by hand with ``ep.eprop`` / ``ep.bptt``; ``lsnn`` against ``ep.tasks.network``'s mixed population
under BPTT, RTRL and e-prop (exactly, float64).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eproptax as ep


def nest_adam_numpy(w, grads, eta, beta_1, beta_2, epsilon):
    """NEST 3.10's ``WeightOptimizerAdam::optimize_``, one call per step, in NumPy float64."""
    m, v, b1p, b2p, out = np.zeros_like(w), np.zeros_like(w), 1.0, 1.0, []
    for g in grads:
        b1p *= beta_1
        b2p *= beta_2
        alpha = eta * np.sqrt(1.0 - b2p) / (1.0 - b1p)
        m = beta_1 * m + (1.0 - beta_1) * g
        v = beta_2 * v + (1.0 - beta_2) * g * g
        w = w - alpha * m / (np.sqrt(v) + epsilon)
        out.append(w)
    return out


def run_optax(optimizer, w, grads):
    params, state, out = {"w": jnp.asarray(w)}, optimizer.init({"w": jnp.asarray(w)}), []
    update = jax.jit(optimizer.update)
    for g in grads:
        updates, state = update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.asarray(params["w"]))
    return out


@pytest.fixture(scope="module")
def adam_problem():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(64)
    grads = [rng.standard_normal(64) * 10.0 ** rng.uniform(-4, 0, 64) for _ in range(6)] + [np.zeros(64)]
    return w, grads


def test_adam_is_nests_adam(adam_problem):
    w, grads = adam_problem
    args = (5e-3, 0.9, 0.999, 1e-8)
    ours = run_optax(ep.nest.adam(*args), w, grads)
    for a, b in zip(ours, nest_adam_numpy(w, grads, *args)):
        np.testing.assert_array_max_ulp(a, b, maxulp=2)
    # optax.adam adds eps after the bias correction: another optimizer
    theirs = run_optax(optax.adam(args[0], args[1], args[2], eps=args[3]), w, grads)
    assert np.max(np.abs(theirs[0] - ours[0])) > 1e-6
    # ... which is optax.adam with eps_t = eps / sqrt(1 - beta_2^t) at step t (here the first)
    first = run_optax(optax.adam(args[0], args[1], args[2], eps=args[3] / np.sqrt(1 - args[2])), w, grads[:1])
    np.testing.assert_allclose(first[0], ours[0], rtol=1e-13)


def test_gradient_descent_and_clip(adam_problem):
    w, grads = adam_problem
    grads = [100.0 * g for g in grads]  # large enough to reach the bounds
    ours = run_optax(optax.chain(ep.nest.gradient_descent(0.05), ep.nest.clip(-1.0, 1.5)), w, grads)
    previous = [w] + ours[:-1]  # each step from our own previous weights (a bound may be off by a rounding)
    expected = [np.clip(p - 0.05 * g, -1.0, 1.5) for p, g in zip(previous, grads)]
    for a, b in zip(ours, expected):  # NEST's weights: exactly where the bounds do not bind, else within a rounding
        free = (b > -1.0) & (b < 1.5)
        np.testing.assert_array_equal(a[free], b[free])
        np.testing.assert_allclose(a, b, rtol=0, atol=4e-16)
        assert np.all((a >= -1.0) & (a <= 1.5))
    assert np.any(ours[-1] == 1.5) and np.any(ours[-1] == -1.0) and np.any((ours[-1] > -1.0) & (ours[-1] < 1.5))


def test_clip_lands_inside_the_bounds():
    """Bounds far from the weights (``bound - w`` inexact): still inside, and untouched where not binding."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal(4096) * 10.0 ** rng.uniform(-3, 3, 4096)
    u = rng.standard_normal(4096) * 10.0 ** rng.uniform(-3, 3, 4096)
    lo, hi = -0.3, 0.7
    updates, _ = ep.nest.clip(lo, hi).update({"w": u}, optax.EmptyState(), {"w": w})
    new = w + np.asarray(updates["w"])
    assert np.all((new >= lo) & (new <= hi))
    free = (w + u >= lo) & (w + u <= hi)
    assert free.any() and np.array_equal(np.asarray(updates["w"])[free], u[free])
    bound = ~free  # within one rounding of the update
    assert np.all(
        np.abs(new - np.clip(w + u, lo, hi))[bound] <= 2 * np.spacing(np.abs(w - np.clip(w + u, lo, hi)))[bound]
    )


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="adam: `beta_1` must be a decay in \\[0, 1\\), got 1.0"):
        ep.nest.adam(1e-3, beta_1=1.0)
    with pytest.raises(ValueError, match="adam: `epsilon`"):
        ep.nest.adam(epsilon=-1.0)
    with pytest.raises(ValueError, match="gradient_descent: `eta`"):
        ep.nest.gradient_descent(-1.0)
    with pytest.raises(ValueError, match="clip: `w_min` must be <= `w_max`"):
        ep.nest.clip(1.0, -1.0)
    with pytest.raises(ValueError, match="clip: the update needs `params`"):
        ep.nest.clip().update({"w": jnp.zeros(2)}, optax.EmptyState())
    with pytest.raises(ValueError, match="value_and_grad: `rule` must be one of"):
        ep.nest.value_and_grad(None, None, rule="nope")
    with pytest.raises(ValueError, match="`learning_window` must be a positive int"):
        ep.nest.value_and_grad(None, None, learning_window=0)
    with pytest.raises(ValueError, match="window_weights: `learning_window` must be at most the sequence length"):
        ep.nest.window_weights(10, 11)
    with pytest.raises(ValueError, match="lsnn: `n_lif \\+ n_alif` must be positive"):
        ep.cells.lsnn(3, 0, 0)
    with pytest.raises(ValueError, match="lsnn: `beta` must be a scalar or have shape \\(2,\\)"):
        ep.cells.lsnn(3, 1, 2, beta=jnp.ones(3))
    with pytest.raises(ValueError, match="network: `zeta_out` is the leaky readout's gain"):
        ep.tasks.network(jax.random.key(0), 3, 2, cell="rnn", zeta_out=1.0)


# ----------------------------------------------------------------------------------------------------------
# The mixed population and the conventions, on one small NEST-like network (T = 12, batch 2, float64)
# ----------------------------------------------------------------------------------------------------------

N_IN, N_LIF, N_ALIF, N_OUT, T, BATCH = 3, 3, 3, 2, 12, 2
CELL = dict(tau_mem=20.0, tau_adapt=15.0, threshold=0.6, zeta=1.0, n_refractory=2, surrogate_height=0.5)
BETA = 0.3


@functools.cache
def small():
    """``(model, params, inputs, y)``: ``ep.tasks.network``'s mixed population (half adaptive) and its readout."""
    model, params = ep.tasks.network(
        jax.random.key(0), N_IN, N_OUT, cell="alif", n_rec=N_LIF + N_ALIF, adaptive_fraction=0.5, beta=BETA,
        zeta_out=None, dtype=jnp.float64, **CELL,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    params = ({"w_in": jnp.asarray(1.5 + rng.standard_normal((6, 3))), "w_rec": params[0]["w_rec"]}, params[1])
    inputs = jnp.asarray((rng.uniform(size=(BATCH, T, N_IN)) < 0.5).astype(np.float64))
    y = jnp.asarray(np.eye(N_OUT)[rng.integers(0, N_OUT, (BATCH, T))])
    return model, params, inputs, y


def lsnn_model():
    cell = ep.cells.lsnn(N_IN, N_LIF, N_ALIF, beta=BETA, dtype=jnp.float64, **CELL)
    return ep.cells.stack(cell, ep.cells.leaky_readout(N_LIF + N_ALIF, N_OUT, tau_out=20.0, dtype=jnp.float64))


@pytest.mark.parametrize("rule", ["bptt", "rtrl", "eprop"])
def test_lsnn_is_the_mixed_population(rule):
    model, params, inputs, y = small()
    make = getattr(ep, rule)
    loss_a, grads_a = jax.jit(make(model, ep.nest.cross_entropy))(params, inputs, y)
    loss_b, grads_b = jax.jit(make(lsnn_model(), ep.nest.cross_entropy))(params, inputs, y)
    assert float(loss_a) == float(loss_b)
    for a, b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)):
        np.testing.assert_array_equal(a, b)
    _, outs = ep.tasks.forward(model, params, inputs)
    spikes = np.asarray(outs[0])
    assert spikes[..., :N_LIF].sum() > 0 and spikes[..., N_LIF:].sum() > 0  # both kinds fire
    assert np.any(np.asarray(grads_b[0]["w_rec"]) != 0)


def test_lsnn_without_adaptive_neurons_is_lif():
    _, params, inputs, y = small()
    options = {k: v for k, v in CELL.items() if k != "tau_adapt"}
    readout = ep.cells.leaky_readout(6, N_OUT, tau_out=20.0, dtype=jnp.float64)
    lif = ep.cells.stack(ep.cells.lif(N_IN, 6, dtype=jnp.float64, **options), readout)
    mixed = ep.cells.stack(ep.cells.lsnn(N_IN, 6, 0, dtype=jnp.float64, **options), readout)
    a = ep.bptt(lif, ep.nest.cross_entropy)(params, inputs, y)
    b = ep.bptt(mixed, ep.nest.cross_entropy)(params, inputs, y)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(u, v)


WINDOW, REG = 5, ep.nest.firing_rate_reg(300.0, 10.0)


@pytest.mark.parametrize("rule", ["eprop", "bptt"])
def test_value_and_grad_is_the_hand_built_objective(rule):
    """``learning_window`` + ``average_gradient`` = loss weights ``1 / window`` on the window and
    ``FiringRateReg(c_reg / window)``; the reported loss excludes the regulariser, whose part is reported apart."""
    _, params, inputs, y = small()
    model = lsnn_model()
    fn = ep.nest.value_and_grad(
        model, ep.nest.cross_entropy, rule=rule, learning_window=WINDOW, average_gradient=True, reg=REG
    )
    (objective, info), grads = jax.jit(fn)(params, inputs, y)
    weights = ep.nest.window_weights(T, WINDOW, average_gradient=True)
    np.testing.assert_array_equal(weights, (np.arange(T) >= T - WINDOW) / WINDOW)
    targets = {"y": y, "w": jnp.broadcast_to(jnp.asarray(weights), (BATCH, T))}
    loss = lambda o, t: t["w"] * ep.nest.cross_entropy(o, t["y"])
    reg = ep.FiringRateReg(REG.c_reg / WINDOW, REG.f_target)
    expected_objective, expected_grads = getattr(ep, rule)(model, loss, reg=reg)(params, inputs, targets)
    task = ep.sequence_loss(model, loss)(params, inputs, targets)
    np.testing.assert_allclose(objective, expected_objective, rtol=1e-13)
    np.testing.assert_allclose(info.loss, task, rtol=1e-13)
    np.testing.assert_allclose(info.loss + info.reg, objective, rtol=1e-13)
    assert float(info.reg) > 1e-3 * float(info.loss)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * np.max(np.abs(b)))

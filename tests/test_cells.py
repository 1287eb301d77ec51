"""The cell contract and the cells' documented semantics, checked against autodiff and naive loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Config, loss_fn, mse, problem, run

import eproptax as ep

F64 = jnp.float64
N_IN, N = 3, 4

NEURON_CELLS = {
    "lif": lambda: ep.cells.lif(N_IN, N, n_refractory=2, dtype=F64),
    "lif_attached_reset": lambda: ep.cells.lif(N_IN, N, detach_reset=False, dtype=F64),
    "alif": lambda: ep.cells.alif(N_IN, N, beta=0.05, tau_adapt=10.0, n_refractory=1, dtype=F64),
    "rnn": lambda: ep.cells.rnn(N_IN, N, dtype=F64),
    "lstm": lambda: ep.cells.lstm(N_IN, N, dtype=F64),
    "gru": lambda: ep.cells.gru(N_IN, N, dtype=F64),
    "leaky_readout": lambda: ep.cells.leaky_readout(N_IN, N, bias=True, dtype=F64),
    "readout": lambda: ep.cells.readout(N_IN, N, dtype=F64),
}


def random_carry(cell, params, key):
    """A carry with random floats around the LIF threshold (some neurons above it) and counters in 0..2."""
    carry = cell.init_carry(params)
    leaves, treedef = jax.tree_util.tree_flatten(carry)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, leaf in zip(keys, leaves):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            out.append(0.03 + 0.03 * jax.random.normal(k, leaf.shape, leaf.dtype))
        else:
            out.append(jax.random.randint(k, leaf.shape, 0, 3).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


@pytest.mark.parametrize("name", list(NEURON_CELLS))
def test_apply_is_the_split_composition(name, keys):
    cell = NEURON_CELLS[name]()
    params = cell.init(keys[0])
    for k in jax.random.split(keys[1], 3):
        carry = random_carry(cell, params, k)
        x = jax.random.normal(jax.random.fold_in(k, 1), (N_IN,), F64)
        new, out = cell.apply(params, carry, x)
        a = cell.synapse(params, x, cell.output(carry))
        h = cell.dynamics(carry, a)
        assert a.ndim == 2 and a.shape[0] == cell.n_out
        jax.tree_util.tree_map(np.testing.assert_array_equal, new, h)
        np.testing.assert_array_equal(out, cell.output(h))
        assert out.shape == (cell.n_out,)


def test_stack_apply_runs_layers_in_sequence(keys):
    """Layer l + 1 sees layer l's output of the same step."""
    lower, upper = ep.cells.gru(N_IN, N, dtype=F64), ep.cells.leaky_readout(N, 2, dtype=F64)
    model = ep.cells.stack(lower, upper)
    params = model.init(keys[0])
    carry = (random_carry(lower, params[0], keys[1]), random_carry(upper, params[1], keys[2]))
    x = jax.random.normal(keys[3], (N_IN,), F64)
    new, out = model.apply(params, carry, x)
    c0, z0 = lower.apply(params[0], carry[0], x)
    c1, z1 = upper.apply(params[1], carry[1], z0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new, (c0, c1))
    np.testing.assert_array_equal(out, z1)
    nested = ep.cells.stack(ep.cells.stack(lower), upper)
    assert len(nested.layers) == 2


def _jacobians(cell, h_prev, a):
    """``D = d v / d v_prev`` and ``dh/da`` of the single differentiable state, by jax.jacfwd."""
    field = h_prev._fields[0]  # v (LIF) or y (readout)

    def state(v, aa):
        return getattr(cell.dynamics(h_prev._replace(**{field: v}), aa), field)

    D = jax.jacfwd(state, argnums=0)(getattr(h_prev, field), a)
    dfda = jax.jacfwd(state, argnums=1)(getattr(h_prev, field), a)
    return D, dfda


LEAKY = {
    "lif": (lambda: ep.cells.lif(N_IN, N, tau_mem=15.0, dt=1.5, dtype=F64), 15.0, 1.5, None),
    "lif_zeta_1": (lambda: ep.cells.lif(N_IN, N, tau_mem=20.0, zeta=1.0, dtype=F64), 20.0, 1.0, 1.0),
    "leaky_readout": (lambda: ep.cells.leaky_readout(N_IN, N, tau_out=30.0, dtype=F64), 30.0, 1.0, None),
    "leaky_readout_zeta": (
        lambda: ep.cells.leaky_readout(N_IN, N, tau_out=7.0, zeta_out=0.5, dtype=F64),
        7.0,
        1.0,
        0.5,
    ),
}


@pytest.mark.parametrize("name", list(LEAKY))
def test_declared_leak_matches_autodiff(name, keys):
    make, tau, dt, gain = LEAKY[name]
    cell = make()
    decay_expected = np.exp(-dt / tau)
    gain_expected = 1.0 - decay_expected if gain is None else gain
    decay, declared_gain = cell.leak
    np.testing.assert_allclose(decay, decay_expected, rtol=1e-15)
    np.testing.assert_allclose(declared_gain, gain_expected, rtol=1e-15)
    params = cell.init(keys[0])
    for k in jax.random.split(keys[1], 3):  # states with neurons above threshold: the reset is active
        h_prev = random_carry(cell, params, k)
        a = jax.random.normal(jax.random.fold_in(k, 1), (N, 1), F64)
        D, dfda = _jacobians(cell, h_prev, a)
        np.testing.assert_allclose(D, decay * np.eye(N), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(dfda[:, :, 0], declared_gain * np.eye(N), rtol=1e-14, atol=1e-15)


def test_alif_declares_its_membrane_leak(keys):
    """ALIF's membrane, with the reset detached, is a leaky integrator of the input (``D_vv = alpha``,
    ``D_va = 0``, ``dv/da = zeta``: its declared ``leak``); the adaptation is not (``D_av = psi``)."""
    cell = ep.cells.alif(N_IN, N, tau_mem=15.0, dt=1.5, zeta=0.7, beta=0.05, tau_adapt=10.0, dtype=F64)
    (decay, gain), adaptation = cell.leak
    np.testing.assert_allclose(decay, np.exp(-1.5 / 15.0), rtol=1e-15)
    assert gain == 0.7 and adaptation is None
    params = cell.init(keys[0])
    state = lambda h: jnp.stack([h.v, h.a])
    d_adapt_d_v = []
    for k in jax.random.split(keys[1], 3):
        h_prev = random_carry(cell, params, k)
        a = jax.random.normal(jax.random.fold_in(k, 1), (N, 1), F64)
        new = lambda v, adapt, aa: state(cell.dynamics(h_prev._replace(v=v, a=adapt), aa))
        D_v, D_a, dfda = jax.jacfwd(new, argnums=(0, 1, 2))(h_prev.v, h_prev.a, a)  # (2, N, N), (2, N, N), (2, N, N, 1)
        np.testing.assert_allclose(D_v[0], decay * np.eye(N), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(D_a[0], np.zeros((N, N)), atol=1e-15)
        np.testing.assert_allclose(dfda[0, :, :, 0], gain * np.eye(N), rtol=1e-14, atol=1e-15)
        d_adapt_d_v.append(np.diag(D_v[1]))
    assert np.any(np.abs(np.concatenate(d_adapt_d_v)) > 1e-3), "vacuous: no neuron near threshold"
    assert ep.cells.alif(N_IN, N, detach_reset=False, dtype=F64).leak is None


@pytest.mark.parametrize(
    "leak,k,message",
    [(((0.9, 0.1),), 1, "one pair or None per differentiable state variable"), ((0.9, 0.1), 3, "k = 3")],
)
def test_bad_leak_is_named(leak, k, message):
    rnn = ep.cells.rnn(N_IN, N, dtype=F64)
    cell = ep.cells.make_cell(
        n_in=N_IN,
        n_out=N,
        init=rnn.init,
        init_carry=lambda p: (jnp.zeros(N, F64),) * 2,
        synapse=lambda p, x, z: jnp.tile(rnn.synapse(p, x, z), (1, k)),
        dynamics=lambda h, a: (0.9 * h[0] + 0.1 * a[:, 0], h[1] + a[:, -1]),
        output=lambda h: jnp.tanh(h[0]),
        leak=leak if k == 1 else ((0.9, 0.1), None),
    )
    model = ep.cells.stack(cell, ep.cells.readout(N, 2, dtype=F64))
    with pytest.raises(ValueError, match=message):
        ep.online.eprop(model, mse).init(model.init(jax.random.key(0)), 1)


def test_attached_reset_declares_no_leak():
    """With the reset in the gradient, D = alpha - threshold * psi(v_prev): not a constant leak."""
    cell = ep.cells.lif(N_IN, N, detach_reset=False, dtype=F64)
    assert cell.leak is None
    h_prev = ep.cells.LIFState(jnp.array([0.02, 0.03, 0.05, 0.2], F64), jnp.zeros(N, jnp.int32))
    D, _ = _jacobians(cell, h_prev, jnp.zeros((N, 1), F64))
    alpha = np.exp(-1 / 20.0)
    psi = 10.0 * np.maximum(0.0, 1.0 - np.abs(np.asarray(h_prev.v) - 0.03) / 0.03)
    np.testing.assert_allclose(np.diag(D), alpha - 0.03 * psi, rtol=1e-14)
    assert np.any(np.abs(np.diag(D) - alpha) > 1e-3)


# ----------------------------------------------------------------------------------------------------------
# A naive Python loop over apply against sequence_loss's scan
# ----------------------------------------------------------------------------------------------------------

LOOP_CONFIGS = [
    Config(cells=("lif",), readout="leaky"),
    Config(cells=("alif",), readout="linear"),
    Config(cells=("gru",), readout="leaky"),
    Config(cells=("lif", "lstm"), readout="linear", sizes=(4, 3)),
]


def naive_loss(cfg, params, reg=None):
    prob = problem(cfg)
    model, inputs, targets = prob.model, np.asarray(prob.inputs), jax.tree_util.tree_map(np.asarray, prob.targets)
    apply = jax.jit(model.apply)
    totals = []
    for b in range(cfg.batch):
        carry, total, spikes = model.init_carry(params), 0.0, 0.0
        for t in range(cfg.time):
            carry, out = apply(params, carry, inputs[b, t])
            total += float(mse(out, {"y": targets["y"][b, t], "mask": targets["mask"][b, t]}))
            spikes = spikes + np.asarray(model.layers[0].output(carry[0]))
        if reg is not None:
            total += 0.5 * reg.c_reg * float(np.sum((spikes / cfg.time - reg.f_target) ** 2))
        totals.append(total)
    return np.mean(totals)


@pytest.mark.parametrize("cfg", LOOP_CONFIGS, ids=lambda c: c.id)
def test_python_loop_equals_sequence_loss(cfg):
    prob = problem(cfg)
    expected = naive_loss(cfg, prob.params)
    np.testing.assert_allclose(loss_fn(cfg)(prob.params, prob.inputs, prob.targets), expected, rtol=1e-13)


def test_python_loop_equals_sequence_loss_with_reg():
    cfg = LOOP_CONFIGS[0]
    prob = problem(cfg)
    reg = ep.FiringRateReg(0.3, 0.05)
    expected = naive_loss(cfg, prob.params, reg)
    got = loss_fn(cfg, reg=True)(prob.params, reg, prob.inputs, prob.targets)
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    assert abs(expected - naive_loss(cfg, prob.params)) > 1e-3  # the regulariser is not negligible here


# ----------------------------------------------------------------------------------------------------------
# Surrogate pseudo-derivatives
# ----------------------------------------------------------------------------------------------------------

SHAPES = {
    "piecewise_linear": lambda u: np.maximum(0.0, 1.0 - np.abs(u)),
    "exponential": lambda u: np.exp(-np.abs(u)),
    "fast_sigmoid": lambda u: 1.0 / (1.0 + np.abs(u)) ** 2,
    "arctan": lambda u: 1.0 / (1.0 + (np.pi * u) ** 2),
}


def test_surrogate_names_are_the_documented_ones():
    assert set(ep.cells.SURROGATES) == set(SHAPES)
    with pytest.raises(ValueError, match="surrogate"):
        ep.cells.spike_fn("sigmoid")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_surrogate_pseudo_derivative(shape):
    spike = ep.cells.spike_fn(shape)
    height, width = 0.7, 0.04
    x = jnp.linspace(-0.1, 0.1, 41, dtype=F64)
    np.testing.assert_array_equal(spike(x, height, width), (np.asarray(x) >= 0).astype(np.float64))
    grad = jax.vmap(jax.grad(spike), in_axes=(0, None, None))(x, height, width)
    expected = height * SHAPES[shape](np.asarray(x) / width)
    np.testing.assert_allclose(grad, expected, rtol=1e-14, atol=1e-16)
    # forward mode gives the same pseudo-derivative (custom_jvp, transposed by reverse mode)
    _, tangent = jax.jvp(lambda v: spike(v, height, width), (x,), (jnp.ones_like(x),))
    np.testing.assert_allclose(tangent, expected, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_lif_output_derivative_uses_its_surrogate(shape):
    threshold, height, width = 0.03, 3.0, 0.02
    cell = ep.cells.lif(
        N_IN, N, threshold=threshold, surrogate=shape, surrogate_height=height, surrogate_width=width, dtype=F64
    )
    v = jnp.array([0.0, 0.025, 0.031, 0.06], F64)
    refractory = jnp.array([0, 0, 1, 0], jnp.int32)
    psi = jax.jvp(lambda vv: cell.output(ep.cells.LIFState(vv, refractory)), (v,), (jnp.ones_like(v),))[1]
    expected = height * SHAPES[shape]((np.asarray(v) - threshold) / width) * (np.asarray(refractory) == 0)
    np.testing.assert_allclose(psi, expected, rtol=1e-14, atol=1e-16)


# ----------------------------------------------------------------------------------------------------------
# Refractory period, autapses, adaptation
# ----------------------------------------------------------------------------------------------------------


def run_cell(cell, params, inputs):
    """Python loop over apply; returns the list of carries and the outputs, shape (T, n)."""
    carry, carries, outs = cell.init_carry(params), [], []
    for x in inputs:
        carry, out = cell.apply(params, carry, x)
        carries.append(carry)
        outs.append(np.asarray(out))
    return carries, np.stack(outs)


@pytest.mark.parametrize("name", ["lif", "alif"])
@pytest.mark.parametrize("n_refractory", [0, 1, 3])
def test_refractory_blocks_exactly_n_steps(name, n_refractory):
    """Driven far above threshold, a neuron fires at 0, r + 1, 2 (r + 1), ...: exactly r steps blocked."""
    make = ep.cells.lif if name == "lif" else lambda *a, **k: ep.cells.alif(*a, beta=0.0, **k)
    cell = make(1, 2, n_refractory=n_refractory, dtype=F64)
    params = {"w_in": jnp.array([[20.0], [0.0]], F64), "w_rec": jnp.zeros((2, 2), F64)}
    time = 12
    carries, z = run_cell(cell, params, jnp.ones((time, 1), F64))
    expected = np.zeros(time)
    expected[:: n_refractory + 1] = 1.0
    np.testing.assert_array_equal(z[:, 0], expected)
    np.testing.assert_array_equal(z[:, 1], np.zeros(time))
    v = np.array([c.v[0] for c in carries])
    assert np.all(v >= 0.03)  # the voltage stays above threshold: only the counter blocks the spikes
    # no pseudo-derivative while refractory
    for carry, spiked in zip(carries, expected):
        psi = jax.jvp(lambda vv: cell.output(carry._replace(v=vv)), (carry.v,), (jnp.ones_like(carry.v),))[1]
        blocked = int(carry.refractory[0]) > 0
        assert blocked == (not spiked)
        if blocked:
            assert float(psi[0]) == 0.0


def test_autapses_are_excluded():
    """The diagonal of w_rec has no effect and a zero gradient (bptt and eprop), unless autapses=True."""
    cfg = Config(cells=("lif",), readout="leaky")
    prob = problem(cfg)
    p0 = prob.params
    assert np.all(np.diag(np.asarray(p0[0]["w_rec"])) == 0.0)  # init draws no self-connections
    with_diag = (dict(p0[0], w_rec=p0[0]["w_rec"] + 5.0 * jnp.eye(4, dtype=F64)), p0[1])
    loss = loss_fn(cfg)
    assert loss(with_diag, prob.inputs, prob.targets) == loss(p0, prob.inputs, prob.targets)
    for rule in ("bptt", "eprop"):
        _, grads = run(rule, cfg, with_diag)
        g_rec = np.asarray(grads[0]["w_rec"])
        np.testing.assert_array_equal(np.diag(g_rec), np.zeros(4))
        assert np.abs(g_rec).sum() > 0  # the off-diagonal weights do learn
    model = ep.cells.stack(ep.cells.lif(3, 4, autapses=True, dtype=F64), ep.cells.leaky_readout(4, 2, dtype=F64))
    objective = ep.sequence_loss(model, mse)
    assert objective(with_diag, prob.inputs, prob.targets) != objective(p0, prob.inputs, prob.targets)


def test_alif_threshold_adaptation():
    """a^t = rho a^{t-1} + z^{t-1}, z^t = H(v^t - threshold - beta a^t) when not refractory."""
    beta, tau_adapt, threshold = 0.2, 5.0, 0.03
    cell = ep.cells.alif(2, 3, beta=beta, tau_adapt=tau_adapt, threshold=threshold, dtype=F64)
    params = {"w_in": jnp.array([[2.0, 1.0], [1.5, 0.0], [0.0, 0.8]], F64), "w_rec": jnp.zeros((3, 3), F64)}
    inputs = (jax.random.uniform(jax.random.key(3), (30, 2)) < 0.6).astype(F64)
    carries, z = run_cell(cell, params, inputs)
    rho = np.exp(-1.0 / tau_adapt)
    a_prev, z_prev = np.zeros(3), np.zeros(3)
    blocked_by_adaptation = 0
    for carry, z_t in zip(carries, z):
        a = np.asarray(carry.a)
        np.testing.assert_allclose(a, rho * a_prev + z_prev, rtol=1e-14, atol=1e-16)
        v = np.asarray(carry.v)
        free = np.asarray(carry.refractory) == 0
        np.testing.assert_array_equal(z_t, ((v >= threshold + beta * a) & free).astype(float))
        blocked_by_adaptation += int(np.sum((v >= threshold) & (v < threshold + beta * a)))
        a_prev, z_prev = a, z_t
    assert z.sum() > 3
    assert blocked_by_adaptation > 0  # the adaptation did suppress spikes


# ----------------------------------------------------------------------------------------------------------
# The contract checks accept every shipped cell, the documented examples and the flax adapters
# ----------------------------------------------------------------------------------------------------------


def leaky_tanh(n_in, n, lam=0.9):
    """docs/cells.md's "Writing a neuron model" example, as written there."""

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"w_in": jax.random.normal(k1, (n, n_in)) / n_in**0.5, "w_rec": jax.random.normal(k2, (n, n)) / n**0.5}

    return ep.cells.make_cell(
        n_in=n_in,
        n_out=n,
        init=init,
        init_carry=lambda p: jnp.zeros(n, p["w_in"].dtype),
        synapse=lambda p, x, z: (p["w_in"] @ x + p["w_rec"] @ z)[:, None],
        dynamics=lambda h, a: lam * h + (1 - lam) * a[:, 0],
        output=jnp.tanh,
        leak=(lam, 1 - lam),
    )


ACCEPTED = {
    **NEURON_CELLS,
    "alif_autapses_attached_reset": lambda: ep.cells.alif(N_IN, N, autapses=True, detach_reset=False, dtype=F64),
    "lif_float32": lambda: ep.cells.lif(N_IN, N, surrogate="arctan"),
    "docs_leaky_tanh": lambda: leaky_tanh(N_IN, N),
    "stack": lambda: ep.cells.stack(
        ep.cells.alif(N_IN, N, dtype=F64), ep.cells.gru(N, N, dtype=F64), ep.cells.leaky_readout(N, 2, dtype=F64)
    ),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_contract_check_accepts_shipped_cells(name):
    ep.cells.check(ACCEPTED[name]())


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_contract_check_accepts_flax_adapters(api):
    flax = pytest.importorskip("flax")
    del flax
    from flax import linen, nnx

    for kind in ("SimpleCell", "LSTMCell", "GRUCell"):
        if api == "linen":
            cell = ep.cells.from_flax(getattr(linen, kind)(features=N, param_dtype=F64), N_IN)
        else:
            cell = ep.cells.from_nnx(getattr(nnx, kind)(N_IN, N, param_dtype=F64, dtype=F64, rngs=nnx.Rngs(0)))[0]
        assert cell.synapse is not None
        ep.cells.check(cell)


def test_contract_check_skips_probes_of_traced_hyperparameters():
    """Built inside ``jax.vmap`` over ``tau_mem`` the probes cannot read values: the rule builds (shape checks
    only) and computes the gradient of each time constant's network."""
    p = problem(Config(cells=("lif",), readout="leaky"))

    def grads(tau):
        model = ep.cells.stack(ep.cells.lif(3, 4, tau_mem=tau, dtype=F64), ep.cells.leaky_readout(4, 2, dtype=F64))
        return ep.eprop(model, mse)(p.params, p.inputs, p.targets)[0]

    losses = jax.vmap(grads)(jnp.array([10.0, 20.0]))
    assert losses.shape == (2,) and bool(jnp.all(jnp.isfinite(losses))) and losses[0] != losses[1]


def test_contract_check_skips_points_outside_a_cells_domain():
    """A neuron-wise cell whose output is not finite at some probe states (``sqrt`` of a negative state) passes:
    a point where a function is not finite is not measured."""
    base = ep.cells.rnn(N_IN, N, dtype=F64)
    cell = ep.cells.make_cell(
        n_in=N_IN,
        n_out=N,
        init=base.init,
        init_carry=base.init_carry,
        synapse=base.synapse,
        dynamics=lambda h, a: h._replace(h=0.9 * h.h + 0.1 * a[:, 0]),
        output=lambda h: jnp.sqrt(h.h),
        leak=(0.9, 0.1),
    )
    ep.cells.check(cell)

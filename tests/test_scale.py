"""Composable at scale: vmap sweeps, optimiser sweeps, streaming and checkpoints, dtypes, flax cells, checks.

Exactness is checked in float64 against an independent reference: a Python loop over the same function
(sweeps), separate optax runs (inject_hyperparams), the whole-sequence rule (streaming), flax's own
``nn.RNN`` / module calls and ``jax.grad`` through them (adapters), ``bptt`` (rtrl, e-prop without
recurrent weights). Multi-device data parallelism is in test_sharding.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import eproptax as ep

jax.config.update("jax_enable_x64", True)

F64, F32, BF16 = jnp.float64, jnp.float32, jnp.bfloat16
B, T, N_IN, N_REC, N_OUT = 3, 12, 3, 4, 2
CHUNK = 4  # T = 3 chunks


def loss(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


RULES = {
    "bptt": lambda m, **kw: ep.bptt(m, loss, **kw),
    "rtrl": lambda m, **kw: ep.rtrl(m, loss, **kw),
    "eprop": lambda m, **kw: ep.eprop(m, loss, **kw),
    "eprop_m1": lambda m, **kw: ep.eprop_m(m, loss, 1, **kw),
    "deep_eprop": lambda m, **kw: ep.deep_eprop(m, loss, **kw),
}
ONLINE = {
    "rtrl": lambda m, **kw: ep.online.rtrl(m, loss, **kw),
    "eprop": lambda m, **kw: ep.online.eprop(m, loss, **kw),
    "eprop_m1": lambda m, **kw: ep.online.eprop_m(m, loss, 1, **kw),
    "deep_eprop": lambda m, **kw: ep.online.deep_eprop(m, loss, **kw),
}


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def max_rel(a, b):
    """Largest |a - b| over the leaves, relative to the largest |b|."""
    num = max(float(jnp.max(jnp.abs(x.astype(F64) - y.astype(F64)))) for x, y in zip(leaves(a), leaves(b)))
    den = max(float(jnp.max(jnp.abs(y.astype(F64)))) for y in leaves(b))
    return num / max(den, 1e-300)


def flat(tree):
    return jnp.concatenate([x.astype(F64).ravel() for x in leaves(tree)])


def cosine(a, b):
    a, b = flat(a), flat(b)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def data(key, dtype=F64, batch=B, time=T, n_in=N_IN, n_out=N_OUT, scale=2.0):
    k1, k2 = jax.random.split(key)
    inputs = (scale * jax.random.normal(k1, (batch, time, n_in), F64)).astype(dtype)
    targets = jax.random.normal(k2, (batch, time, n_out), F64).astype(dtype)
    return inputs, targets


def lif_model(tau_mem=20.0, threshold=0.03, width=None, *, layers=1, dtype=F64):
    recurrent = [
        ep.cells.lif(
            N_IN if i == 0 else N_REC, N_REC, tau_mem=tau_mem, threshold=threshold, surrogate_width=width, dtype=dtype
        )
        for i in range(layers)
    ]
    return ep.cells.stack(*recurrent, ep.cells.leaky_readout(N_REC, N_OUT, dtype=dtype))


INPUTS, TARGETS = data(jax.random.key(1))


# ----------------------------------------------------------------------------------------------------------
# vmap over cell hyperparameters, over the feedback seed, over the optimiser's learning rate
# ----------------------------------------------------------------------------------------------------------

# (tau_mem, threshold, surrogate width): three networks that spike differently
HYPER = jnp.array([[10.0, 0.02, 0.01], [20.0, 0.03, 0.03], [30.0, 0.05, 0.1]], F64)


@functools.cache
def swept(name):
    """The vmapped sweep and the Python loop over the same function, for one rule (deep_eprop: 2 layers)."""
    layers = 2 if name == "deep_eprop" else 1

    def one(hyper, params):  # the cell and the rule are built inside: the hyperparameters are traced
        return RULES[name](lif_model(*hyper, layers=layers))(params, INPUTS, TARGETS)

    params = lif_model(layers=layers).init(jax.random.key(0))
    vmapped = jax.jit(jax.vmap(one, in_axes=(0, None)))(HYPER, params)
    single = jax.jit(one)
    looped = [single(hyper, params) for hyper in HYPER]
    return vmapped, looped, single


@pytest.mark.parametrize("name", list(RULES))
def test_vmap_over_hyperparameters_equals_loop(name):
    vmapped, looped, single = swept(name)
    for i, reference in enumerate(looped):
        got = jax.tree_util.tree_map(lambda a: a[i], vmapped)
        assert max_rel(got, reference) < 1e-12, name
    # the sweep is not trivial: the three networks have different gradients
    assert max_rel(looped[0][1], looped[2][1]) > 1e-3
    # float64 in, float64 out, shaped like params; the loop compiled once for three hyperparameter values
    assert all(g.dtype == F64 for g in leaves(vmapped[1]))
    assert single._cache_size() == 1


def test_vmap_over_feedback_seed_equals_loop():
    model = lif_model()
    params = model.init(jax.random.key(0))

    def one(key):  # the feedback matrix is an argument of the rule, drawn inside the vmapped function
        feedback = ep.random_feedback(key, N_REC, N_OUT, F64)
        return ep.eprop(model, loss, feedback=feedback)(params, INPUTS, TARGETS)

    keys = jax.random.split(jax.random.key(7), 3)
    vmapped = jax.jit(jax.vmap(one))(keys)
    single = jax.jit(one)
    for i, key in enumerate(keys):
        assert max_rel(jax.tree_util.tree_map(lambda a: a[i], vmapped), single(key)) < 1e-12
    grads = vmapped[1]
    # the seed moves the recurrent layer's gradient only; the readout's gradient is exact whatever B is
    assert float(jnp.max(jnp.abs(grads[0]["w_in"][0] - grads[0]["w_in"][1]))) > 1e-4
    np.testing.assert_allclose(grads[1]["w_out"][0], grads[1]["w_out"][1], rtol=1e-12)


def test_inject_hyperparams_vmapped_over_learning_rate_equals_separate_runs():
    model = lif_model()
    params = model.init(jax.random.key(0))
    lrs = jnp.array([1e-3, 1e-2, 5e-2], F64)

    def train(opt, params, steps=2):
        grad_fn = ep.eprop(model, loss)
        state = opt.init(params)
        for _ in range(steps):
            _, grads = grad_fn(params, INPUTS, TARGETS)
            updates, state = opt.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        return params

    # several networks (one per learning rate) trained in one compiled program
    many = jax.jit(jax.vmap(lambda lr: train(optax.inject_hyperparams(optax.adam)(learning_rate=lr), params)))(lrs)
    # separate runs: plain optax.adam, one run per learning rate (passed as an argument: one compilation)
    alone = jax.jit(lambda lr: train(optax.adam(lr), params))
    for i, lr in enumerate(lrs):
        assert max_rel(jax.tree_util.tree_map(lambda a: a[i], many), alone(lr)) < 1e-12
    assert max_rel(jax.tree_util.tree_map(lambda a: a[0], many), jax.tree_util.tree_map(lambda a: a[2], many)) > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Streaming: chunks, reset, save / restore, a long stream
# ----------------------------------------------------------------------------------------------------------

REG = ep.FiringRateReg(c_reg=0.5, f_target=0.1)


def time_major(a):
    return jnp.swapaxes(a, 0, 1)


@functools.cache
def online(name, with_reg):
    """The online rule and a jitted chunk runner (a ``lax.scan`` of ``rule.step`` over a chunk)."""
    kw = {"reg": REG} if with_reg else {}
    rule = ONLINE[name](lif_model(), **kw)

    @jax.jit
    def run(params, state, inputs, targets):
        def body(state, xt):
            state, _ = rule.step(params, state, xt[0], xt[1])
            return state, None

        return jax.lax.scan(body, state, (time_major(inputs), time_major(targets)))[0]

    return rule, run, jax.jit(RULES[name](lif_model(), **kw)), jax.jit(rule.result)


def chunks(inputs, targets):
    return [(inputs[:, s : s + CHUNK], targets[:, s : s + CHUNK]) for s in range(0, inputs.shape[1], CHUNK)]


@pytest.mark.parametrize("name", list(ONLINE))
def test_online_in_chunks_equals_one_piece(name):
    rule, run, whole, result = online(name, True)  # with the regulariser: rates over the whole stream
    params = lif_model().init(jax.random.key(0))
    state = rule.init(params, B)
    for x, y in chunks(INPUTS, TARGETS):
        state = run(params, state, x, y)
    assert int(state.steps) == T
    assert max_rel(result(params, state), whole(params, INPUTS, TARGETS)) < 1e-12


def test_online_windows_with_reset_sum_to_one_piece():
    rule, run, whole, result = online("eprop", False)
    params = lif_model().init(jax.random.key(0))
    state = rule.init(params, B)
    total_loss, total_grads = 0.0, jax.tree_util.tree_map(jnp.zeros_like, params)
    for x, y in chunks(INPUTS, TARGETS):
        state = run(params, state, x, y)
        value, grads = result(params, state)
        total_loss, total_grads = total_loss + value, jax.tree_util.tree_map(jnp.add, total_grads, grads)
        state = rule.reset(state)  # new window: the carry and the traces run on
        assert int(state.steps) == 0 and float(state.loss) == 0.0
    ref_loss, ref_grads = whole(params, INPUTS, TARGETS)
    assert abs(float(total_loss) - float(ref_loss)) < 1e-12 * abs(float(ref_loss))
    assert max_rel(total_grads, ref_grads) < 1e-12


@pytest.mark.parametrize("dtype", [F64, BF16], ids=["float64", "bfloat16"])
def test_save_restore_mid_stream_is_bit_exact(tmp_path, dtype):
    rule, run, _, result = online("eprop", False)  # the same jitted functions trace once per dtype
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), lif_model().init(jax.random.key(0)))
    inputs, targets = INPUTS.astype(dtype), TARGETS.astype(dtype)
    (x1, y1), (x2, y2), (x3, y3) = chunks(inputs, targets)
    state = run(params, run(params, rule.init(params, B), x1, y1), x2, y2)
    path = tmp_path / "state.npz"
    ep.online.save_state(path, state)
    restored = ep.online.load_state(path, like=rule.init(params, B))
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(leaves(restored), leaves(state)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert any(a.dtype == dtype for a in leaves(state.carry))  # the carry runs in the params' dtype
    # resume: the restored stream and the uninterrupted one agree to the last bit
    resumed, straight = run(params, restored, x3, y3), run(params, state, x3, y3)
    for a, b in zip(leaves((resumed, result(params, resumed))), leaves((straight, result(params, straight)))):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="shape"):
        ep.online.load_state(path, like=rule.init(params, B + 1))


def test_long_stream_runs_with_constant_memory():
    """100,000 steps through rule.step, 1,000 per jitted chunk, an SGD update and a reset after each."""
    model = ep.cells.stack(ep.cells.lif(2, 3, tau_mem=10.0, threshold=0.2), ep.cells.leaky_readout(3, 1))
    rule = ep.online.eprop(model, loss)
    params = model.init(jax.random.key(0))
    batch, length, n_chunks = 1, 1000, 100

    @jax.jit
    def chunk(params, state, key, start):
        spikes = (jax.random.uniform(key, (length, batch, 2), F32) < 0.3).astype(F32)
        phase = (start + jnp.arange(length, dtype=jnp.int32)).astype(F32) * (2 * np.pi / 200)
        targets = jnp.broadcast_to(jnp.sin(phase)[:, None, None], (length, batch, 1))

        def body(state, xt):
            return rule.step(params, state, xt[0], xt[1])[0], None

        state, _ = jax.lax.scan(body, state, (spikes, targets))
        value, grads = rule.result(params, state)
        params = jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads)
        return params, rule.reset(state), value

    state = rule.init(params, batch)
    nbytes = sum(leaf.nbytes for leaf in leaves(state))
    values = []
    for i in range(n_chunks):
        params, state, value = chunk(
            params, state, jax.random.fold_in(jax.random.key(3), i), jnp.asarray(i * length, jnp.int32)
        )
        assert sum(leaf.nbytes for leaf in leaves(state)) == nbytes
        values.append(value)
    values = np.asarray(values)
    assert chunk._cache_size() == 1
    assert np.all(np.isfinite(values)) and all(bool(jnp.all(jnp.isfinite(p))) for p in leaves(params))
    assert all(leaf.dtype == F32 for leaf in leaves(params))
    assert nbytes < 2000  # O(synapses) for a 2 -> 3 -> 1 network, whatever the stream's length


# ----------------------------------------------------------------------------------------------------------
# dtypes: float32 by default, float64, bfloat16 weights and inputs with float32 traces
# ----------------------------------------------------------------------------------------------------------


@functools.cache
def low_precision(name, dtype):
    """A rule on the default network (deep_eprop: 2 layers) with params, inputs and targets in ``dtype``."""
    layers = 2 if name == "deep_eprop" else 1
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), lif_model(layers=layers).init(jax.random.key(0)))
    model = lif_model(layers=layers, dtype=dtype)  # Python-float hyperparameters: weakly typed
    return params, jax.jit(RULES[name](model))(params, INPUTS.astype(dtype), TARGETS.astype(dtype))


def float64_reference(name):
    """The same network in float64: the sweep's middle point has the default hyperparameters."""
    assert tuple(HYPER[1].tolist()) == (20.0, 0.03, 0.03)  # tau_mem, threshold, width = threshold
    return swept(name)[1][1]


@pytest.mark.parametrize("name", list(RULES))
def test_float32_default(name):
    assert all(p.dtype == F32 for p in leaves(lif_model(dtype=F32).init(jax.random.key(0))))
    assert all(p.dtype == F32 for p in leaves(ep.cells.lstm(N_IN, N_REC).init(jax.random.key(0))))
    params, (value, grads) = low_precision(name, F32)
    assert value.dtype == F32
    assert [g.dtype for g in leaves(grads)] == [F32] * len(leaves(params))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    # float32 agrees with float64 on the same network (the same spikes: only rounding differs)
    value64, grads64 = float64_reference(name)
    assert value64.dtype == F64 and all(g.dtype == F64 for g in leaves(grads64))
    assert abs(float(value) - float(value64)) < 1e-5 * abs(float(value64))
    assert max_rel(grads, grads64) < 1e-4


@pytest.mark.parametrize("name", list(RULES))
def test_bfloat16_weights_and_inputs(name):
    params, (value, grads) = low_precision(name, BF16)
    assert [g.dtype for g in leaves(grads)] == [BF16] * len(leaves(params))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves(grads)) and bool(jnp.isfinite(value))
    _, (value32, grads32) = low_precision(name, F32)
    assert cosine(grads, grads32) > 0.9
    assert abs(float(value) - float(value32)) < 0.05 * abs(float(value32))
    assert value.dtype == F32  # traces, gradient and loss accumulate in float32, bptt's loss included


# ----------------------------------------------------------------------------------------------------------
# flax adapters
# ----------------------------------------------------------------------------------------------------------

try:
    from flax import linen as nn
    from flax import nnx
except ImportError:  # flax is an optional dependency (the `flax` and `test` extras install it)
    nn = nnx = None
needs_flax = pytest.mark.skipif(nn is None, reason="the flax adapters need the optional dependency flax")

FLAX_CELLS = ["SimpleCell", "LSTMCell", "GRUCell"]


def flax_cell(api, kind, **kw):
    if api == "linen":
        return getattr(nn, kind)(features=N_REC, param_dtype=F64, **kw)
    return getattr(nnx, kind)(N_IN, N_REC, param_dtype=F64, dtype=F64, rngs=nnx.Rngs(0), **kw)


def zero_recurrent(params):
    """Zeroes the recurrent kernels (linen's ``h*``, nnx's ``dense_h`` and ``h*``): e-prop is then exact."""

    def zero(path, leaf):
        top = path[0].key
        return jnp.zeros_like(leaf) if top.startswith("h") or top == "dense_h" else leaf

    return jax.tree_util.tree_map_with_path(zero, params)


def flax_reference(api, fc):
    """``(params, inputs) -> hidden outputs (B, T, n)`` computed by flax itself."""
    if api == "linen":
        return lambda p, x: nn.RNN(fc).apply({"params": {"cell": p}}, x)
    graphdef, state, rest = nnx.split(fc, nnx.Param, ...)

    def run(p, x):
        st = jax.tree_util.tree_map(lambda v: v, state)
        nnx.replace_by_pure_dict(st, p)
        module = nnx.merge(graphdef, st, rest)
        carry = module.initialize_carry(x[:, 0].shape, rngs=nnx.Rngs(0))
        return jnp.swapaxes(jax.lax.scan(lambda c, xt: module(c, xt), carry, jnp.swapaxes(x, 0, 1))[1], 0, 1)

    return run


def adapt(api, fc):
    if api == "linen":
        cell = ep.cells.from_flax(fc, N_IN)
        return cell, cell.init(jax.random.key(5))
    return ep.cells.from_nnx(fc)


@functools.cache
def flax_case(api, kind, custom):
    fc = flax_cell(api, kind, **({"activation_fn": jax.nn.soft_sign} if custom else {}))
    cell, cell_params = adapt(api, fc)
    model = ep.cells.stack(cell, ep.cells.readout(N_REC, N_OUT, dtype=F64))
    params = (cell_params, model.layers[1].init(jax.random.key(6)))
    reference = flax_reference(api, fc)

    def hidden(params, inputs):  # the adapter run as a cell of this library
        def one(x):
            return jax.lax.scan(lambda c, xt: cell.apply(params, c, xt), cell.init_carry(params), x)[1]

        return jax.vmap(one)(inputs)

    def ref_objective(params, inputs, targets):  # the same objective through flax's own code
        h = reference(params[0], inputs)
        out = h @ params[1]["w_out"].T + params[1]["b_out"][None, None, :]
        return jnp.mean(jnp.sum(jax.vmap(jax.vmap(loss))(out, targets), axis=1))

    @jax.jit
    def run(params):
        got = {
            "hidden": hidden(params[0], INPUTS),
            "flax_hidden": reference(params[0], INPUTS),
            "flax_grad": jax.value_and_grad(ref_objective)(params, INPUTS, TARGETS),
            "bptt": ep.bptt(model, loss)(params, INPUTS, TARGETS),
        }
        if api == "linen":  # rtrl is generic (no split): once per cell kind is enough
            got["rtrl"] = ep.rtrl(model, loss)(params, INPUTS, TARGETS)
        if cell.synapse is not None:
            flat_params = (zero_recurrent(params[0]), params[1])
            got["eprop_no_rec"] = ep.eprop(model, loss)(flat_params, INPUTS, TARGETS)
            got["bptt_no_rec"] = ep.bptt(model, loss)(flat_params, INPUTS, TARGETS)
        return got

    return cell, model, params, run(params)


@needs_flax
@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("kind", FLAX_CELLS)
def test_flax_adapter(api, kind):
    cell, model, params, got = flax_case(api, kind, False)
    assert cell.synapse is not None  # a neuron cell: every rule applies
    # same parameter tree as flax: linen's "params" collection, nnx's Param state as a pure dict
    fc = flax_cell(api, kind)
    flax_params = (
        fc.init(jax.random.key(5), fc.initialize_carry(jax.random.key(0), (N_IN,)), INPUTS[0, 0])["params"]
        if api == "linen"
        else nnx.to_pure_dict(nnx.state(fc, nnx.Param))
    )
    assert jax.tree_util.tree_structure(params[0]) == jax.tree_util.tree_structure(flax_params)
    assert max_rel(params[0], flax_params) == 0.0
    # outputs equal flax's own over a sequence; bptt equals jax.grad through flax; rtrl equals bptt
    assert max_rel(got["hidden"], got["flax_hidden"]) < 1e-14
    assert max_rel(got["bptt"], got["flax_grad"]) < 1e-12
    if "rtrl" in got:
        assert max_rel(got["rtrl"], got["bptt"]) < 1e-10
    # e-prop runs, grads shaped like flax's params, and is exact without recurrent kernels (the e-prop
    # trace then misses no path: the cell's implicit recurrence, LSTM's c -> c, is kept)
    assert jax.tree_util.tree_structure(got["eprop_no_rec"][1]) == jax.tree_util.tree_structure(params)
    assert max_rel(got["eprop_no_rec"], got["bptt_no_rec"]) < 1e-12


@needs_flax
def test_flax_lstm_carry_is_c_then_h():
    fc = nn.LSTMCell(features=N_REC, param_dtype=F64)
    cell = ep.cells.from_flax(fc, N_IN)
    params = cell.init(jax.random.key(0))
    c0 = (jnp.linspace(-1.0, 1.0, N_REC, dtype=F64), jnp.linspace(0.5, -0.5, N_REC, dtype=F64))
    (c, h), out = fc.apply({"params": params}, c0, INPUTS[0, 0])
    state, out2 = cell.apply(params, ep.cells.LSTMState(*c0), INPUTS[0, 0])
    assert isinstance(state, ep.cells.LSTMState)
    np.testing.assert_array_equal(state.c, c)
    np.testing.assert_array_equal(state.h, h)
    np.testing.assert_array_equal(out2, out)


@needs_flax
@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_flax_custom_activation_is_opaque(api):
    cell, model, params, got = flax_case(api, "GRUCell", True)
    assert cell.synapse is None
    assert max_rel(got["hidden"], got["flax_hidden"]) < 1e-14
    assert max_rel(got["bptt"], got["flax_grad"]) < 1e-12
    if "rtrl" in got:
        assert max_rel(got["rtrl"], got["bptt"]) < 1e-10
    with pytest.raises(ValueError, match="synapse/dynamics/output"):
        ep.eprop(model, loss)


@needs_flax
def test_from_flax_bad_arguments():
    with pytest.raises(TypeError, match="from_nnx"):
        ep.cells.from_flax(nnx.GRUCell(N_IN, N_REC, rngs=nnx.Rngs(0)), N_IN)
    with pytest.raises(ValueError, match="n_in"):
        ep.cells.from_flax(nn.GRUCell(features=N_REC), 0)
    with pytest.raises(TypeError, match="from_flax"):
        ep.cells.from_nnx(nn.GRUCell(features=N_REC))


# ----------------------------------------------------------------------------------------------------------
# Finite checks
# ----------------------------------------------------------------------------------------------------------


@functools.cache
def checked_eprop():
    model = lif_model()
    return model.init(jax.random.key(0)), jax.jit(ep.check_finite(ep.eprop(model, loss)))


def test_check_finite_passes_clean_inputs_through():
    params, checked = checked_eprop()
    err, (value, grads) = checked(params, INPUTS, TARGETS)
    assert err.get() is None
    ref_value, ref_grads = online("eprop", False)[2](params, INPUTS, TARGETS)  # the unchecked rule
    assert max_rel((value, grads), (ref_value, ref_grads)) < 1e-12


def test_check_finite_reports_the_time_step():
    params, checked = checked_eprop()
    bad = INPUTS.at[1, 7, 2].set(jnp.nan).at[2, 9, 0].set(jnp.inf)
    err, _ = checked(params, bad, TARGETS)
    assert "`inputs`" in err.get() and "time step 7" in err.get() and "example 1" in err.get()
    err, _ = checked(params, INPUTS, TARGETS.at[0, 4, 1].set(jnp.inf))
    assert "`targets`" in err.get() and "time step 4" in err.get()
    with pytest.raises(checkify.JaxRuntimeError, match="time step 7"):
        checked(params, bad, TARGETS)[0].throw()


def test_check_finite_names_the_parameter_leaf():
    params, checked = checked_eprop()
    bad = (dict(params[0], w_rec=params[0]["w_rec"].at[0, 1].set(jnp.nan)), params[1])
    err, _ = checked(bad, INPUTS, TARGETS)
    assert "`params[0]['w_rec']` has 1 NaN or Inf" in err.get()


def test_check_finite_reports_gradients():
    model = lif_model()
    params = model.init(jax.random.key(0))
    sqrt_loss = lambda out, target: jnp.sum(jnp.sqrt(jnp.abs(out - target)))  # infinite slope at 0
    checked = jax.jit(ep.check_finite(ep.bptt(model, sqrt_loss)))
    err, (value, _) = checked(params, jnp.zeros_like(INPUTS), jnp.zeros_like(TARGETS))  # silent: out == target
    assert float(value) == 0.0
    assert "`grads[" in err.get() and "although the loss is finite" in err.get()


def test_check_finite_raise_mode():
    def grad_fn(params, inputs, targets):  # any function of the rules' signature
        return jnp.sum(params["w"]) * jnp.sum(inputs), params

    params = {"w": jnp.ones(2, F64)}
    checked = ep.check_finite(grad_fn, raise_=True)
    value, grads = checked(params, INPUTS, TARGETS)  # finite: returns (loss, grads) as grad_fn does
    assert float(value) == 2 * float(jnp.sum(INPUTS)) and np.array_equal(grads["w"], params["w"])
    with pytest.raises(checkify.JaxRuntimeError, match=r"`inputs` contains NaN or Inf first at time step 3"):
        checked(params, INPUTS.at[0, 3, 0].set(jnp.inf), TARGETS)
    with pytest.raises(checkify.JaxRuntimeError, match=r"`params\['w'\]` has 1 NaN"):
        checked({"w": params["w"].at[1].set(jnp.nan)}, INPUTS, TARGETS)

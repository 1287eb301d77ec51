"""SnAp-1 (``ep.snap``) against an independent masked RTRL written here, and against e-prop.

The reference runs RTRL on the recurrent layer's flattened state with ``jax.jacfwd`` in a Python loop, and
after every step zeroes each influence entry ``(neuron j's state, parameter theta)`` unless ``theta`` drives
neuron ``j`` (found from the synapse's Jacobian at random inputs: no layout of the parameters is assumed).
The readout's own influence is carried exactly through its own state, fed by the masked influence at the
same step, and met by the loss's error: the learning signal of step ``t`` meets the masked influence of
the new state, as in e-prop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import eproptax as ep
import eproptax._plan
import eproptax._snap
from eproptax._cell import float_state, with_float_state
from eproptax._engine import scan_rule
from eproptax._snap import Block, masked_rule, reach

F64 = jnp.float64
N_IN, N, N_OUT, T, BATCH = 3, 4, 2, 7, 2


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def network(cell: str, readout: str, autapses: bool = True):
    options = {"lif": dict(autapses=autapses), "alif": dict(autapses=autapses, beta=0.05, tau_adapt=10.0)}
    make = {"lif": ep.cells.lif, "alif": ep.cells.alif, "rnn": ep.cells.rnn, "gru": ep.cells.gru, "lstm": ep.cells.lstm}
    hidden = make[cell](N_IN, N, dtype=F64, **options.get(cell, {}))
    top = (ep.cells.leaky_readout if readout == "leaky" else ep.cells.readout)(N, N_OUT, dtype=F64)
    model = ep.cells.stack(hidden, top)
    params = model.init(jax.random.key(3))
    if cell in ("lif", "alif"):  # strong enough inputs that the neurons spike
        params = ({**params[0], "w_in": 6.0 * params[0]["w_in"], "w_rec": 2.0 * params[0]["w_rec"]}, params[1])
    inputs = (jax.random.uniform(jax.random.key(4), (BATCH, T, N_IN)) < 0.5).astype(F64)
    targets = jnp.sin(jnp.arange(T, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))
    return model, params, inputs, targets


def owners(layer, params, theta_of):
    """``(n, |theta|)``: whether each parameter drives each neuron's synaptic input (random probes)."""
    _, unravel = ravel_pytree(params)
    a_of = lambda th, x, z: layer.synapse(unravel(th), x, z)
    x, z = jax.random.normal(jax.random.key(5), (N_IN,), F64), jax.random.normal(jax.random.key(6), (N,), F64)
    jac = jax.jacfwd(a_of)(theta_of, x, z)  # (n, k, |theta|)
    return jnp.any(jac != 0, axis=1)


def reference(model, params, inputs, targets):
    """The batch-mean gradient for the recurrent layer's parameters, SnAp-1 by its definition: a scan over
    time of RTRL on the flattened state, masked after every step, vmapped over the examples."""
    hidden, top = model.layers
    theta, unravel = ravel_pytree(params[0])
    h0, r0 = model.init_carry(params)
    s, r_shape = float_state(h0).shape[-1], float_state(r0).shape
    row_owner = jnp.repeat(owners(hidden, params[0], theta), s, axis=0)  # rows (j, c), neuron-major

    def step(carry, xy):
        h, r, M, Y, grad = carry
        x, y_t = xy
        f = lambda v, th: float_state(hidden.apply(unravel(th), with_float_state(h, v.reshape(N, s)), x)[0])
        J_h, J_th = jax.jacfwd(lambda v, th: f(v, th).reshape(-1), argnums=(0, 1))(float_state(h).reshape(-1), theta)
        M = jnp.where(row_owner, J_h @ M + J_th, 0.0)
        h = hidden.apply(params[0], h, x)[0]
        z_of = lambda v: hidden.output(with_float_state(h, v.reshape(N, s)))
        r_new = lambda rv, v: float_state(top.apply(params[1], with_float_state(r, rv.reshape(r_shape)), z_of(v))[0])
        A, C = jax.jacfwd(lambda rv, v: r_new(rv, v).reshape(-1), argnums=(0, 1))(
            float_state(r).reshape(-1), float_state(h).reshape(-1)
        )
        Y = A @ Y + C @ M
        r, y = top.apply(params[1], r, z_of(float_state(h).reshape(-1)))
        dy_dr = jax.jacfwd(lambda rv: top.output(with_float_state(r, rv.reshape(r_shape))))(float_state(r).reshape(-1))
        return (h, r, M, Y, grad + jax.grad(mse)(y, y_t) @ dy_dr @ Y), None

    def one(x_seq, y_seq):
        zeros = lambda rows: jnp.zeros((rows, theta.size), F64)
        init = (h0, r0, zeros(N * s), zeros(float_state(r0).size), jnp.zeros_like(theta))
        return jax.lax.scan(step, init, (x_seq, y_seq))[0][-1]

    return unravel(jnp.mean(jax.jit(jax.vmap(one))(inputs, targets), axis=0))


def assert_tree_close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        scale = max(float(np.max(np.abs(np.asarray(y)))), 1e-300)
        assert float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) / scale <= tol


CASES = [("rnn", "linear"), ("gru", "linear"), ("lstm", "leaky"), ("alif", "leaky"), ("lif", "linear")]


@pytest.mark.parametrize("cell, readout", CASES, ids=[f"{c}+{r}" for c, r in CASES])
def test_snap1_is_masked_rtrl(cell, readout):
    """Autapses on (the classic cells always have a recurrent diagonal): SnAp-1 equals the masked RTRL."""
    model, params, inputs, targets = network(cell, readout)
    _, grads = jax.jit(ep.snap(model, mse))(params, inputs, targets)
    assert_tree_close(grads[0], reference(model, params, inputs, targets), 1e-10)


@pytest.mark.parametrize("cell, readout", [("lif", "leaky"), ("alif", "linear")], ids=["lif+leaky", "alif+linear"])
def test_snap1_is_eprop_without_autapses(cell, readout):
    model, params, inputs, targets = network(cell, readout, autapses=False)
    snap = jax.jit(ep.snap(model, mse))(params, inputs, targets)
    eprop = jax.jit(ep.eprop(model, mse))(params, inputs, targets)
    assert_tree_close(snap, eprop, 1e-12)


def test_snap1_keeps_the_autapse_that_eprop_drops():
    model, params, inputs, targets = network("rnn", "linear")
    snap = jax.jit(ep.snap(model, mse))(params, inputs, targets)[1][0]
    eprop = jax.jit(ep.eprop(model, mse))(params, inputs, targets)[1][0]
    assert not np.allclose(ravel_pytree(snap)[0], ravel_pytree(eprop)[0], rtol=1e-6)


def test_online_steps_and_chunks_equal_the_whole_sequence():
    model, params, inputs, targets = network("gru", "leaky")
    whole = jax.jit(ep.snap(model, mse, chunk=1))(params, inputs, targets)
    chunked = jax.jit(ep.snap(model, mse, chunk=3))(params, inputs, targets)
    online = ep.online.snap(model, mse)
    state = online.init(params, BATCH)
    step = jax.jit(online.step)
    for t in range(T):
        state, _ = step(params, state, inputs[:, t], targets[:, t])
    assert_tree_close(online.result(params, state), whole, 1e-12)
    assert_tree_close(chunked, whole, 1e-12)


def ring_rnn(n_in, n, hops=(1,), gain=1.0):
    """A tanh RNN whose recurrent weights are masked to a ring: neuron ``j`` reads ``j +- h`` for ``h`` in
    ``hops`` (no autapse), so SnAp-n's pattern grows by one neighbour on each side per step."""
    offsets = (np.arange(n)[:, None] - np.arange(n)[None, :]) % n
    ring = jnp.asarray(np.isin(offsets, [h % n for h in hops] + [-h % n for h in hops]), F64)

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "w_in": jax.random.normal(k1, (n, n_in), F64),
            "w_rec": jax.random.normal(k2, (n, n), F64),
            "b": 0.1 * jax.random.normal(k3, (n,), F64),
        }

    return ep.cells.make_cell(
        n_in=n_in,
        n_out=n,
        init=init,
        init_carry=lambda p: jnp.zeros(n, F64),
        synapse=lambda p, x, z: (p["w_in"] @ x + gain * (ring * p["w_rec"]) @ z + p["b"])[:, None],
        dynamics=lambda h, a: jnp.tanh(a[:, 0]),
        output=lambda h: h,
    )


def masked_rtrl(model, params, inputs, targets, n, reg=None):
    """SnAp-n by its definition on a stack of two layers, on flattened states and parameters. The pattern is
    the whole stack's one-step Jacobians' at a random point (``I = dF/dtheta != 0``, ``A = dF/dc != 0``),
    ``mask = I or A I or ... or A^(n-1) I``. Layer by layer, each masked after its update::

      M0 = mask0 * (dF0/dc0 M0 + dF0/dtheta)
      M1 = mask1 * (dF1/dc1 M1 + dF1/dc0' M0 + dF1/dtheta)      (c0' the new state of layer 0)

    and ``grad += dloss_t/dc1 M1``: the loss of step ``t`` meets the masked influence of the new state. With
    ``reg``, the rates' gradient ``c_reg (r_j - f) / T sum_t dz_j/dc0 M0`` is added per example."""
    theta, unravel = ravel_pytree(params)
    c0, unravel_c = ravel_pytree(model.init_carry(params))
    size0 = ravel_pytree(model.init_carry(params)[0])[0].size
    step = lambda c, th, x: ravel_pytree(model.apply(unravel(th), unravel_c(c), x)[0])[0]
    point = (jax.random.normal(jax.random.key(7), c0.shape, F64), theta, jax.random.normal(jax.random.key(8), (N_IN,)))
    A, I = (np.asarray(j) != 0 for j in jax.jacfwd(step, argnums=(0, 1))(*point))
    mask, power = I.copy(), I.copy()
    for _ in range(n - 1):
        power = (A.astype(int) @ power.astype(int)) > 0
        mask |= power
    (bottom, top), split = model.layers, lambda c: (c[:size0], c[size0:])
    unravel_l = lambda c0v, c1v: unravel_c(jnp.concatenate([c0v, c1v]))

    def f0(c0v, th, x):
        return ravel_pytree(bottom.apply(unravel(th)[0], unravel_l(c0v, jnp.zeros(c0.size - size0))[0], x)[0])[0]

    def f1(c1v, c0_new, th):
        u = bottom.output(unravel_l(c0_new, c1v)[0])
        return ravel_pytree(top.apply(unravel(th)[1], unravel_l(c0_new, c1v)[1], u)[0])[0]

    z_of = lambda c0v: bottom.output(unravel_l(c0v, jnp.zeros(c0.size - size0))[0])

    @jax.jit
    def body(carry, xy):
        (c, M, grad), (zsum, dzsum) = carry
        (c0v, c1v), (M0, M1), x = split(c), split(M), xy[0]
        J00, I0 = jax.jacfwd(f0, argnums=(0, 1))(c0v, theta, x)
        new0 = f0(c0v, theta, x)
        M0 = jnp.where(mask[:size0], J00 @ M0 + I0, 0.0)
        J11, J10, I1 = jax.jacfwd(f1, argnums=(0, 1, 2))(c1v, new0, theta)
        M1 = jnp.where(mask[size0:], J11 @ M1 + J10 @ M0 + I1, 0.0)
        new1 = f1(c1v, new0, theta)
        g = jax.grad(lambda c1: mse(top.output(unravel_l(new0, c1)[1]), xy[1]))(new1)
        rates = (zsum + z_of(new0), dzsum + jax.jacfwd(z_of)(new0) @ M0)
        return ((jnp.concatenate([new0, new1]), jnp.concatenate([M0, M1]), grad + g @ M1), rates), None

    def one(x_seq, y_seq):
        n_z = z_of(c0[:size0]).size
        init = (c0, jnp.zeros((c0.size, theta.size), F64), jnp.zeros_like(theta))
        (*_, grad), (zsum, dzsum) = jax.lax.scan(
            body, (init, (jnp.zeros(n_z), jnp.zeros((n_z, theta.size)))), (x_seq, y_seq)
        )[0]
        if reg is None:
            return grad
        return grad + reg.c_reg * (zsum / T - reg.f_target) / T @ dzsum

    return unravel(jnp.mean(jax.vmap(one)(inputs, targets), axis=0)), mask.mean()


RING = 6


def ring_network(readout="linear"):
    top = (ep.cells.leaky_readout if readout == "leaky" else ep.cells.readout)(RING, N_OUT, dtype=F64)
    model = ep.cells.stack(ring_rnn(N_IN, RING), top)
    params = model.init(jax.random.key(3))
    inputs = jax.random.normal(jax.random.key(4), (BATCH, T, N_IN), F64)
    targets = jnp.sin(jnp.arange(T, dtype=F64))[None, :, None] * jnp.ones((BATCH, 1, N_OUT))
    return model, params, inputs, targets


@pytest.mark.parametrize("n, readout", [(1, "linear"), (1, "leaky"), (2, "linear"), (2, "leaky"), (4, "leaky")])
def test_snap_n_is_masked_rtrl_on_a_sparse_ring(n, readout):
    """On a ring, the pattern grows by a neighbour on each side per step: sparse for n < 4, dense at n = 4
    (6 neurons), where SnAp-n is RTRL. ``n = 1`` runs on e-prop's traces, ``n >= 2`` on RTRL's influence."""
    model, params, inputs, targets = ring_network(readout)
    _, grads = jax.jit(ep.snap(model, mse, n))(params, inputs, targets)
    reference, density = masked_rtrl(model, params, inputs, targets, n)
    assert_tree_close(grads, reference, 1e-12)
    _, exact = jax.jit(ep.rtrl(model, mse))(params, inputs, targets)
    if n < 4:
        assert density < 1 and not np.allclose(ravel_pytree(grads)[0], ravel_pytree(exact)[0], rtol=1e-6)
    else:
        assert_tree_close(grads, exact, 1e-12)


@pytest.mark.parametrize("cell, readout, layers", [("rnn", "linear", 2)])
def test_snap_n_is_rtrl_when_the_pattern_is_complete(cell, readout, layers):
    """A dense recurrent layer with n = 2, and a stack, whose layers above are reached at the same step: the
    pattern is complete, so ``snap(n)`` runs RTRL's program; the layered masked step, run on the same masks,
    gives RTRL's gradient too (its layer-by-layer factoring of the chain rule drops nothing)."""
    model, params, inputs, targets = network(cell, readout)
    if layers == 2:
        model = ep.cells.stack(model.layers[0], ep.cells.rnn(N, N, dtype=F64), model.layers[1])
        params = model.init(jax.random.key(5))
    masks, complete = reach(model, 2)
    assert masks[0].all() and bool(complete)  # the bottom layer's parameters reach every state variable
    rtrl = jax.jit(ep.rtrl(model, mse))
    snap = ep.snap(model, mse, 2)
    assert jax.jit(snap).lower(params, inputs, targets).as_text() == rtrl.lower(params, inputs, targets).as_text()
    layered = jax.jit(scan_rule("snap", model, mse, masked_rule(model, mse, None, masks)))
    assert_tree_close(layered(params, inputs, targets), rtrl(params, inputs, targets), 1e-12)


def test_snap_n_online_equals_the_whole_sequence():
    model, params, inputs, targets = ring_network()
    online = ep.online.snap(model, mse, 2)
    state, step = online.init(params, BATCH), jax.jit(online.step)
    for t in range(T):
        state, _ = step(params, state, inputs[:, t], targets[:, t])
    assert_tree_close(online.result(params, state), jax.jit(ep.snap(model, mse, 2))(params, inputs, targets), 1e-12)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_n(n):
    model, *_ = network("rnn", "linear")
    with pytest.raises(ValueError, match=r"snap: `n` must be a positive int, got"):
        ep.snap(model, mse, n=n)


def test_random_feedback_needs_n_1():
    model, *_ = network("rnn", "linear")
    with pytest.raises(ValueError, match=r"snap: `feedback` must be 'symmetric' for n >= 2"):
        ep.snap(model, mse, n=2, feedback=ep.random_feedback(jax.random.key(0), N, N_OUT, F64))


def test_snap_n_needs_neuron_layers():
    hidden = ep.cells.lif(N_IN, N, dtype=F64)
    model = ep.cells.stack(hidden._replace(synapse=None), ep.cells.readout(N, N_OUT, dtype=F64))
    with pytest.raises(ValueError, match=r"snap: with n >= 2 every layer must be a neuron cell .* got layer 0"):
        ep.snap(model, mse, n=2)


def test_snap_n_with_reg_is_masked_rtrl():
    """The firing-rate regulariser's gradient runs on the kept entries too: ``dz/dc M0`` summed over time."""
    model, params, inputs, targets = ring_network("leaky")
    reg = ep.FiringRateReg(0.3, 0.1)
    _, grads = jax.jit(ep.snap(model, mse, 2, reg=reg))(params, inputs, targets)
    reference, _ = masked_rtrl(model, params, inputs, targets, 2, reg)
    assert_tree_close(grads, reference, 1e-12)


def ring_stack(n):
    model = ep.cells.stack(ring_rnn(N_IN, n), ep.cells.readout(n, N_OUT, dtype=F64))
    return model, model.init(jax.random.key(3))


def test_snap_n_stores_only_the_patterns_entries():
    """On a ring, SnAp-2 reaches each neuron and its two neighbours: the hidden layer's block keeps 3 rows per
    neuron, not RTRL's ``n``; its parameters reach every readout unit; the readout's parameters reach only their
    own unit, and never the layer below. The plan counts the state it makes."""
    n = 12
    model, params = ring_stack(n)
    rule = ep.online.snap(model, mse, 2)
    state = jax.eval_shape(lambda p: rule.init(p, BATCH), params)
    widths = jax.tree_util.tree_map(lambda a: a.shape[2], state.traces)
    assert widths == ((3, N_OUT), (None, 1))
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state))
    assert rule.plan.cost(BATCH, itemsize=8).state_bytes == size


def against_rtrl():
    """SnAp-2's compiled whole-sequence program on a ring of 24 (3 of 24 rows kept), as fractions of RTRL's
    with its dense columns: ``(temporary bytes, FLOPs)``."""
    model, params = ring_stack(24)
    inputs = jnp.zeros((BATCH, T, N_IN), F64)
    targets = jnp.zeros((BATCH, T, N_OUT), F64)

    def measure(grad_fn):
        compiled = jax.jit(grad_fn).lower(params, inputs, targets).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return np.array([compiled.memory_analysis().temp_size_in_bytes, cost["flops"]])

    snap = measure(ep.snap(model, mse, 2))
    with pytest.MonkeyPatch.context() as patch:  # RTRL's dense influence (the ring is sparse: it would gather)
        patch.setattr(eproptax._plan, "SPARSE_FRACTION", 0.0)
        return snap / measure(ep.rtrl(model, mse))


def test_snap_n_memory_and_work_follow_the_pattern():
    """Measured 0.20 and 0.10: no dense influence is built and then masked."""
    memory, work = against_rtrl()
    assert memory < 0.3 and work < 0.3, (memory, work)


def test_a_dense_masked_influence_fails_that_bound(monkeypatch):
    """The control: every block stored whole, the mask applied to it (the layout of a traced pattern), costs
    what RTRL costs (measured 1.64 and 1.03)."""

    def dense(masks, sizes):
        split = np.cumsum([0, *sizes])
        return tuple(tuple(Block(None, m[split[l] : split[l + 1]].T) for l in range(len(sizes))) for m in masks)

    monkeypatch.setattr(eproptax._snap, "layout", dense)
    memory, work = against_rtrl()
    assert memory > 0.9 and work > 0.9, (memory, work)


def test_a_traced_pattern_gives_the_same_gradients():
    """A cell built inside ``jax.vmap`` over a gain on its recurrent weights has a traced pattern: every block is
    stored whole with the traced mask applied, and the gradients are those of the cells built one by one."""
    _, params, inputs, targets = ring_network()
    top = ep.cells.readout(RING, N_OUT, dtype=F64)
    grads_at = lambda gain: ep.snap(ep.cells.stack(ring_rnn(N_IN, RING, gain=gain), top), mse, 2)(
        params, inputs, targets
    )
    gains = jnp.array([1.0, 0.5], F64)
    batched = jax.jit(jax.vmap(grads_at))(gains)
    for i, gain in enumerate([1.0, 0.5]):
        assert_tree_close(jax.tree_util.tree_map(lambda a: a[i], batched), jax.jit(lambda: grads_at(gain))(), 1e-12)

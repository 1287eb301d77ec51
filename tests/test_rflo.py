"""RFLO (Murray 2019) is e-prop with random feedback on a leaky rate RNN under a stateless readout.

The references are hand-written NumPy loops in float64 that re-run the network from its parameters and
accumulate the traces of Murray's paper; nothing of eproptax is used but ``init``. With
``alpha = dt / tau``, ``u^t = w_in x^t + w_rec z^{t-1} + b``, ``y^t = w_out z^t + b_out``, ``e^t = y^t - y*^t``
and a fixed feedback ``B`` (n, n_out), per example (the objective is the batch mean of the sum over time):

``form="rate"`` (Murray's network, ``h^t = (1 - alpha) h^{t-1} + alpha phi(u^t)``, ``z = h``)::

  p_ij^t = (1 - alpha) p_ij^{t-1} + alpha phi'(u_i^t) z_j^{t-1}     grad w_rec[i, j] = sum_t (B e^t)_i p_ij^t
  q_ik^t = (1 - alpha) q_ik^{t-1} + alpha phi'(u_i^t) x_k^t         grad w_in[i, k]  = sum_t (B e^t)_i q_ik^t
  r_i^t  = (1 - alpha) r_i^{t-1}  + alpha phi'(u_i^t)               grad b_i         = sum_t (B e^t)_i r_i^t

``form="current"`` (``h^t = (1 - alpha) h^{t-1} + alpha u^t``, ``z = phi(h)``): the same traces without
``phi'`` (they are the same for every postsynaptic neuron), and ``phi'(h_i^t)`` multiplies the learning signal:
``grad w_rec[i, j] = sum_t (B e^t)_i phi'(h_i^t) p_j^t``. The readout's gradient is exact in both:
``grad w_out = sum_t e^t z^t^T``, ``grad b_out = sum_t e^t``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, rel_err

import eproptax as ep

N_IN, N, N_OUT, BATCH, T = 3, 5, 2, 2, 8
TAU, DT = 4.0, 1.0
ALPHA = DT / TAU
FORMS = ("current", "rate")


def mse(y, target):
    return 0.5 * jnp.sum((y - target) ** 2)


def network(form, tau=TAU):
    """``leaky_rnn(form)`` under a stateless readout; ``form="elman"``: ``ep.cells.rnn`` instead."""
    layer = (
        ep.cells.rnn(N_IN, N, dtype=jnp.float64)
        if form == "elman"
        else ep.cells.leaky_rnn(N_IN, N, tau=tau, dt=DT, form=form, dtype=jnp.float64)
    )
    return ep.cells.stack(layer, ep.cells.readout(N, N_OUT, dtype=jnp.float64))


@functools.cache
def grad_fn(rule, form, feedback="symmetric", tau=TAU):
    """A jitted ``ep.<rule>`` for :func:`network` (``feedback="random"``: :func:`random_b`), compiled once."""
    kw = {} if rule == "bptt" else {"feedback": random_b() if feedback == "random" else feedback}
    return jax.jit(getattr(ep, rule)(network(form, tau), mse, **kw))


def make_problem(form, seed=0):
    """A model, params in :func:`network`'s layout (drawn with NumPy: eager ``jax.random`` calls compile one by
    one, seconds on a small CPU), inputs ``(BATCH, T, N_IN)`` and targets ``(BATCH, T, N_OUT)``."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape))
    rec = {"w_in": normal(N, N_IN) / N_IN**0.5, "w_rec": 1.5 * normal(N, N) / N**0.5, "b": 0.3 * normal(N)}
    out = {"w_out": normal(N_OUT, N) / N**0.5, "b_out": 0.3 * normal(N_OUT)}
    return network(form), (rec, out), normal(BATCH, T, N_IN), normal(BATCH, T, N_OUT)


def rflo_reference(form, params, inputs, targets, feedback, alpha=ALPHA):
    """Murray's RFLO for the network of ``form``, in NumPy float64: ``(loss, (rec_grads, out_grads))``."""
    rec, out = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    w_in, w_rec, b, w_out, b_out = rec["w_in"], rec["w_rec"], rec["b"], out["w_out"], out["b_out"]
    B = np.asarray(feedback, np.float64)
    g = {"w_in": np.zeros_like(w_in), "w_rec": np.zeros_like(w_rec), "b": np.zeros_like(b)}
    g_out = {"w_out": np.zeros_like(w_out), "b_out": np.zeros_like(b_out)}
    total = 0.0
    for x_seq, y_seq in zip(np.asarray(inputs), np.asarray(targets)):
        h = np.zeros(N)
        z = np.tanh(h) if form == "current" else h
        p, q, r = np.zeros((N, N)), np.zeros((N, N_IN)), np.zeros(N)
        for x, y_star in zip(x_seq, y_seq):
            z_prev = z
            u = w_in @ x + w_rec @ z_prev + b
            if form == "current":
                h = (1 - alpha) * h + alpha * u
                z = np.tanh(h)
                post, psi = np.ones(N), 1 - z**2  # trace without phi'; phi'(h^t) on the learning signal
            else:
                h = (1 - alpha) * h + alpha * np.tanh(u)
                z = h
                post, psi = 1 - np.tanh(u) ** 2, np.ones(N)  # Murray's phi'(u^t) in the trace
            p = (1 - alpha) * p + alpha * np.outer(post, z_prev)
            q = (1 - alpha) * q + alpha * np.outer(post, x)
            r = (1 - alpha) * r + alpha * post
            y = w_out @ z + b_out
            e = y - y_star
            signal = (B @ e) * psi
            g["w_rec"] += signal[:, None] * p
            g["w_in"] += signal[:, None] * q
            g["b"] += signal * r
            g_out["w_out"] += np.outer(e, z)
            g_out["b_out"] += e
            total += 0.5 * np.sum(e**2)
    mean = lambda tree: {k: v / len(inputs) for k, v in tree.items()}
    return total / len(inputs), (mean(g), mean(g_out))


def random_b(seed=7):
    return ep.random_feedback(jax.random.key(seed), N, N_OUT, jnp.float64)


@pytest.mark.parametrize("form", FORMS)
def test_random_eprop_is_rflo(form):
    """``ep.eprop(model, mse, feedback=B)`` is RFLO's update, recurrent layer and readout, to 1e-10."""
    _, params, inputs, targets = make_problem(form)
    B = random_b()
    assert B.shape == (N, N_OUT)
    loss, grads = grad_fn("eprop", form, "random")(params, inputs, targets)
    ref_loss, ref_grads = rflo_reference(form, params, inputs, targets, B)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert_close(grads, ref_grads, 1e-10, f"eprop(feedback=B) vs RFLO [{form}]")
    assert all(np.linalg.norm(leaf) > 1e-3 for leaf in jax.tree_util.tree_leaves(ref_grads)), "vacuous test"


@pytest.mark.parametrize("form", FORMS)
def test_feedback_matters_and_rflo_is_approximate(form):
    """Symmetric feedback is the same rule with ``B = w_out^T``: it differs from the random-feedback update,
    and both differ from BPTT in the recurrent layer (the explicit recurrence is dropped) while the readout's
    gradient is BPTT's in both."""
    _, params, inputs, targets = make_problem(form)
    _, random_grads = grad_fn("eprop", form, "random")(params, inputs, targets)
    _, sym_grads = grad_fn("eprop", form)(params, inputs, targets)
    _, exact = grad_fn("bptt", form)(params, inputs, targets)
    _, sym_ref = rflo_reference(form, params, inputs, targets, np.asarray(params[1]["w_out"]).T)
    assert_close(sym_grads, sym_ref, 1e-10, f"eprop(symmetric) vs reference with B = w_out^T [{form}]")
    assert rel_err(random_grads[0], sym_grads[0]) > 0.1
    assert rel_err(random_grads[0], exact[0]) > 0.1
    assert rel_err(sym_grads[0], exact[0]) > 1e-3
    assert_close(random_grads[1], exact[1], 1e-10, f"readout, random feedback vs bptt [{form}]")
    assert_close(sym_grads[1], exact[1], 1e-10, f"readout, symmetric vs bptt [{form}]")


@pytest.mark.parametrize("form", FORMS)
def test_alpha_one_is_the_elman_rnn(form):
    """With ``tau == dt`` (``alpha = 1``) both forms are ``ep.cells.rnn`` with its kernels transposed, and
    e-prop (per-synapse traces on ``rnn``; the factorised ``zbar`` on the current form) agrees."""
    _, params, inputs, targets = make_problem(form)
    rec, out = params
    elman_params = ({"i": {"kernel": rec["w_in"].T, "bias": rec["b"]}, "h": {"kernel": rec["w_rec"].T}}, out)
    loss_l, (g_rec, g_out) = grad_fn("eprop", form, "random", tau=DT)(params, inputs, targets)
    loss_e, (e_rec, e_out) = grad_fn("eprop", "elman", "random")(elman_params, inputs, targets)
    np.testing.assert_allclose(loss_l, loss_e, rtol=1e-12)
    mapped = {"w_in": e_rec["i"]["kernel"].T, "w_rec": e_rec["h"]["kernel"].T, "b": e_rec["i"]["bias"]}
    assert_close((g_rec, g_out), (mapped, e_out), 1e-10, f"leaky_rnn(alpha=1) vs rnn [{form}]")
    _, ref = rflo_reference(form, params, inputs, targets, random_b(), alpha=1.0)
    assert_close((g_rec, g_out), ref, 1e-10, f"leaky_rnn(alpha=1) vs RFLO reference [{form}]")


@pytest.mark.parametrize("form", FORMS)
def test_cell_passes_the_contract(form):
    cell = ep.cells.leaky_rnn(N_IN, N, tau=TAU, dt=DT, form=form, dtype=jnp.float64)
    ep.cells.check(cell)  # level "neuron": affine synapse, neuron-wise dynamics and output, the leak promise
    assert cell.leak == ((1 - ALPHA, ALPHA) if form == "current" else None)
    ep.cells.check(ep.cells.leaky_rnn(N_IN, N, tau=jnp.linspace(1.0, 8.0, N), form=form))  # one tau per neuron
    ep.cells.check(ep.cells.leaky_rnn(N_IN, N, activation=jax.nn.sigmoid, bias=False, form=form))
    params = cell.init(jax.random.key(0))
    rec = make_problem(form)[1][0]
    assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(jnp.shape, rec)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))
    carry = cell.init_carry(params)
    assert isinstance(carry, ep.cells.LeakyRNNState) and carry.h.shape == (N,) and carry.h.dtype == jnp.float64


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        (dict(n_in=0), ("`n_in`", "positive int", "got 0")),
        (dict(n_rec=2.0), ("`n_rec`", "positive int", "got 2.0")),
        (dict(tau=0.0), ("`tau`", "> 0", "got 0.0")),
        (dict(tau=float("nan")), ("`tau`", "finite", "got nan")),
        (dict(dt=-1.0), ("`dt`", "> 0", "got -1.0")),
        (dict(tau=0.5), ("`dt` must be <= `tau`", "(0, 1]", "dt=1.0 and tau=0.5")),
        (dict(tau=2.0, dt=3.0), ("`dt` must be <= `tau`", "dt=3.0 and tau=2.0")),
        (dict(tau=np.array([4.0, 0.5, 4.0])), ("`dt` must be <= `tau`", "tau=0.5 at index (1,)")),
        (dict(activation="tanh"), ("`activation`", "callable", "got 'tanh'")),
        (dict(form="murray"), ("`form`", "'current', 'rate'", "got 'murray'")),
        (dict(bias=1), ("`bias`", "True or False", "got 1")),
        (dict(dtype=jnp.int32), ("`dtype`", "floating dtype")),
    ],
    ids=lambda v: "-".join(f"{k}" for k in v) if isinstance(v, dict) else None,
)
def test_hyperparameters_are_validated(kwargs, parts):
    args = {"n_in": N_IN, "n_rec": N, **kwargs}
    n_in, n_rec = args.pop("n_in"), args.pop("n_rec")
    with pytest.raises(ValueError) as info:
        ep.cells.leaky_rnn(n_in, n_rec, **args)
    message = str(info.value)
    assert message.startswith("leaky_rnn: "), message
    position = 0
    for part in parts:
        found = message.find(part, position)
        assert found >= 0, f"{part!r} not in order in {message!r}"
        position = found + len(part)


def test_hyperparameters_may_be_traced():
    """``tau`` may be vmapped over (the comparison with ``dt`` is skipped for a traced value)."""
    alphas = jax.vmap(lambda tau: ep.cells.leaky_rnn(N_IN, N, tau=tau).leak[1])(jnp.array([2.0, 4.0]))
    np.testing.assert_allclose(alphas, [0.5, 0.25])

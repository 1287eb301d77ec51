"""Every misuse gets a clear error: one table of bad inputs, each with its exception and a message naming the argument.

The table covers the cell contract (checked when a rule is built), the dtype policy, shapes, sizes and online
state, ``ep.train``. Each case raises before anything is compiled, so the table runs in seconds.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import RULES, Config, mse, problem

import eproptax as ep

F64 = jnp.float64


class Case(NamedTuple):
    id: str
    call: Any  # a function of no arguments that must raise
    error: type
    match: str  # a regex the message must match: the argument's name and the value


@functools.cache
def prob():
    return problem(Config(cells=("lif",), readout="leaky"))  # n_in=3, n=4, n_out=2, B=2, T=8, float64


def lif_with(**parts):
    """A LIF network (3 inputs, 4 neurons, leaky readout of 2) whose recurrent layer has ``parts`` replaced."""
    base = ep.cells.lif(3, 4, dtype=F64)
    fields = {f: parts.get(f, getattr(base, f)) for f in ("init", "init_carry", "synapse", "dynamics", "output")}
    cell = ep.cells.make_cell(n_in=3, n_out=4, leak=parts.get("leak", base.leak), **fields)
    return ep.cells.stack(cell, ep.cells.leaky_readout(4, 2, dtype=F64))


_LIF = ep.cells.lif(3, 4, dtype=F64)
BROKEN = {  # name -> (network, the part of the contract the message names)
    "tanh_synapse": (lif_with(synapse=lambda p, x, z: jnp.tanh(_LIF.synapse(p, x, z))), r"`synapse` is not affine"),
    "product_synapse": (
        lif_with(synapse=lambda p, x, z: _LIF.synapse(p, x, z) * (1 + jnp.sum(x) * jnp.sum(z))),
        r"`synapse` is not affine",
    ),
    "rolled_dynamics": (
        lif_with(dynamics=lambda h, a: _LIF.dynamics(h._replace(v=jnp.roll(h.v, 1)), a)),
        r"`dynamics` is not neuron-wise: the output of neuron \d depends on `h_prev` of neuron \d",
    ),
    "mixing_input": (
        lif_with(dynamics=lambda h, a: _LIF.dynamics(h, a + jnp.mean(a))),
        r"`dynamics` is not neuron-wise: .* depends on `a` of neuron",
    ),
    "mixing_output": (
        lif_with(output=lambda h: _LIF.output(h._replace(v=h.v + 0.5 * jnp.mean(h.v)))),
        r"`output` is not neuron-wise",
    ),
    "wrong_leak": (lif_with(leak=(0.9, 0.1)), r"`leak` declares state variable 0 \(\.v\).*decay 0\.9 and gain 0\.1"),
    "malformed_leak": (lif_with(leak=(0.9, 0.1, 0.2)), r"leak: expected a pair"),
    "cancelling_reads": (None, r"`leak` declares state variable 2 \(\['v'\]\)"),  # built below
    "tanh_synapse_bfloat16": (None, r"`synapse` is not affine"),
    "state_of_two_columns": (None, r"`init_carry` leaf \['v'\] has shape \(4, 2\).*shape \(n,\)"),
}


def _conductance(leak):
    """``v' = 0.9 v + 0.1 a + 0.5 (g1 - g2)``, ``g' = 0.5 g``: ``v`` reads ``g1`` and ``g2``, whose effects cancel
    along a tangent of ones (the state is a dict: its floating variables are g1, g2, v in that order)."""
    zeros = lambda p: {k: jnp.zeros(4, F64) for k in ("g1", "g2", "v")}
    dynamics = lambda h, a: {
        "g1": 0.5 * h["g1"] + a[:, 0],
        "g2": 0.5 * h["g2"],
        "v": 0.9 * h["v"] + 0.1 * a[:, 0] + 0.5 * (h["g1"] - h["g2"]),
    }
    return ep.cells.make_cell(
        n_in=3,
        n_out=4,
        init=_LIF.init,
        init_carry=zeros,
        synapse=_LIF.synapse,
        dynamics=dynamics,
        output=lambda h: jnp.tanh(h["v"]),
        leak=leak,
    )


_BF16 = ep.cells.lif(3, 4, dtype=jnp.bfloat16)
BROKEN["cancelling_reads"] = (
    ep.cells.stack(_conductance((None, None, (0.9, 0.1))), ep.cells.leaky_readout(4, 2, dtype=F64)),
    BROKEN["cancelling_reads"][1],
)
_BF16_TANH = ep.cells.make_cell(
    n_in=3,
    n_out=4,
    init=_BF16.init,
    init_carry=_BF16.init_carry,
    synapse=lambda p, x, z: jnp.tanh(_BF16.synapse(p, x, z)),
    dynamics=_BF16.dynamics,
    output=_BF16.output,
    leak=_BF16.leak,
)
BROKEN["tanh_synapse_bfloat16"] = (
    ep.cells.stack(_BF16_TANH, ep.cells.leaky_readout(4, 2, dtype=jnp.bfloat16)),
    BROKEN["tanh_synapse_bfloat16"][1],
)
BROKEN["state_of_two_columns"] = (
    lif_with(
        init_carry=lambda p: {"v": jnp.zeros((4, 2), F64)},
        dynamics=lambda h, a: {"v": 0.9 * h["v"] + a},
        output=lambda h: jnp.tanh(h["v"][:, 0]),
        leak=None,
    ),
    BROKEN["state_of_two_columns"][1],
)
SHAPE_BROKEN = {  # broken shapes: every rule relies on them, bptt included
    "dtype_changing_dynamics": (
        lif_with(dynamics=lambda h, a: _LIF.dynamics(h, a)._replace(v=(0.9 * h.v + a[:, 0]).astype(jnp.float32))),
        r"`dynamics` changes carry leaf \.v from float64\[4\] to float32\[4\]",
    ),
    "structure_changing_dynamics": (
        lif_with(dynamics=lambda h, a: (_LIF.dynamics(h, a).v, h.refractory)),
        r"`dynamics` must return a carry with the structure of `init_carry`'s",
    ),
    "carry_of_other_n": (
        lif_with(init_carry=lambda p: ep.cells.LIFState(jnp.zeros(5, F64), jnp.zeros(5, jnp.int32))),
        r"`init_carry` leaf \.v has shape \(5,\).*n_out=4",
    ),
    "synapse_without_entry_axis": (
        lif_with(synapse=lambda p, x, z: _LIF.synapse(p, x, z)[:, 0]),
        r"`synapse` must return shape \(n=4, k\).*got \(4,\)",
    ),
    "mixed_dtype_init": (
        lif_with(init=lambda k: {**_LIF.init(k), "w_in": _LIF.init(k)["w_in"].astype(jnp.float32)}),
        r"`init` returns parameters of several floating dtypes",
    ),
}
NEURON_RULES = ("eprop", "eprop_m1", "deep_eprop", "snap")
FACTORIES = {**RULES, "snap": ep.snap}


def _contract_cases():
    cases = []
    for name, (model, match) in BROKEN.items():
        rules = NEURON_RULES + (("rtrl",) if "synapse" in name else ())
        cases += [
            Case(f"contract-{name}-{r}", lambda m=model, r=r: FACTORIES[r](m, mse), ep.cells.ContractError, match)
            for r in rules
        ]
        cases.append(Case(f"contract-{name}-check", lambda m=model: ep.cells.check(m), ep.cells.ContractError, match))
    for name, (model, match) in SHAPE_BROKEN.items():
        cases += [
            Case(f"contract-{name}-{r}", lambda m=model, r=r: FACTORIES[r](m, mse), ep.cells.ContractError, match)
            for r in ("rtrl", "eprop")
        ]
        cases.append(
            Case(
                f"contract-{name}-bptt",
                lambda m=model: ep.bptt(m, mse),
                ep.cells.ContractError,
                r"bptt: (layer 0: )?`(init|apply)` "
                r"(fails on the shapes|changes carry leaf|must return|returns parameters)",
            )
        )
    opaque = ep.cells.Cell(
        init=_LIF.init,
        init_carry=_LIF.init_carry,
        apply=lambda p, c, x: (c, _LIF.apply(p, c, x)[1][:2]),
        n_in=3,
        n_out=4,
    )
    cases.append(
        Case(
            "contract-opaque-output-shape-bptt",
            lambda: ep.bptt(opaque, mse),
            ep.cells.ContractError,
            r"`apply` must return outputs of shape \(n_out=4,\), got \(2,\)",
        )
    )
    cases.append(Case("contract-check-level", lambda: ep.cells.check(_LIF, level="all"), ValueError, r"`level`.*'all'"))
    return cases


ALL = ("bptt", "rtrl", "eprop", "eprop_m1", "deep_eprop", "snap")


def _call(rule, params=None, inputs=None, targets=None):
    """``rule``'s grad_fn on the shared problem, with some of its arguments replaced."""
    p = prob()
    fn = FACTORIES[rule](p.model, mse)
    return lambda: fn(
        p.params if params is None else params(p),
        p.inputs if inputs is None else inputs(p),
        p.targets if targets is None else targets(p),
    )


def _empty(axis):
    return lambda p: jax.tree_util.tree_map(lambda a: jnp.take(a, jnp.arange(0), axis=axis), p.targets)


def _mixed(p):
    return ({**p.params[0], "w_in": p.params[0]["w_in"].astype(jnp.float32)}, p.params[1])


def _data_cases():
    cases = []
    for r in ALL:
        cases += [
            Case(
                f"dtype-mixed-params-{r}",
                _call(r, params=_mixed),
                ValueError,
                r"`params` mixes floating dtypes \(params\[0\]\['w_in'\] is float32, params\[0\]\['w_rec'\] is float64",
            ),
            Case(
                f"size-no-steps-{r}",
                _call(r, inputs=lambda p: p.inputs[:, :0], targets=_empty(1)),
                ValueError,
                r"`inputs` must hold at least one sequence of at least one step.*\(2, 0, 3\).*time=0",
            ),
            Case(
                f"size-empty-batch-{r}",
                _call(r, inputs=lambda p: p.inputs[:0], targets=_empty(0)),
                ValueError,
                r"`inputs` must hold at least one sequence.*\(0, 8, 3\).*batch=0",
            ),
            Case(
                f"targets-not-matching-outputs-{r}",
                _call(r, targets=lambda p: {**p.targets, "y": jnp.zeros((2, 8, 3))}),
                ValueError,
                r"`loss\(outputs_t, targets_t\)` fails .*\(n_out=2,\).*'y': 'float64\[3\]'.*`targets` match",
            ),
        ]
    return cases


def _online_step_with(change):
    def call():
        p = prob()
        online = ep.online.eprop(p.model, mse)
        state = online.init(p.params, 2)
        params, state, x, target = change(p, online, state)
        return online.step(params, state, x, target)

    return call


def _state_cases():
    at0 = lambda p: jax.tree_util.tree_map(lambda a: a[:, 0], p.targets)
    bad_rule = ep.OnlineRule(init=lambda *a: None, step=None, result=lambda *a: None, reset=lambda s: s)
    chunky = ep.OnlineRule(init=print, step=print, result=print, reset=print, chunk="yes")
    return [
        Case(
            "online-step-params-missing-layer",
            _online_step_with(lambda p, o, s: ((p.params[0], {}), s, p.inputs[:, 0], at0(p))),
            ValueError,
            r"`params` does not match the model",
        ),
        Case(
            "online-step-params-mixed-dtypes",
            _online_step_with(lambda p, o, s: (_mixed(p), s, p.inputs[:, 0], at0(p))),
            ValueError,
            r"`params` mixes floating dtypes",
        ),
        Case(
            "online-step-targets-not-matching",
            _online_step_with(lambda p, o, s: (p.params, s, p.inputs[:, 0], {**at0(p), "y": jnp.zeros((2, 5))})),
            ValueError,
            r"`loss\(outputs_t, targets_t\)` fails",
        ),
        Case(
            "online-rule-field-not-callable-train",
            lambda: ep.train(
                bad_rule, _sampler, prob().params, optax.sgd(0.1), steps=1, key=jax.random.key(0), online_every=2
            ),
            TypeError,
            r"`OnlineRule.step` must be a function, got NoneType",
        ),
        Case(
            "online-rule-chunk-not-callable",
            lambda: ep.online.batch_sharding(chunky, None, None, "batch"),
            TypeError,
            r"`OnlineRule.chunk` must be a function or None, got str",
        ),
    ]


def _sampler(key):
    p = prob()
    return p.inputs, p.targets


def _train(**kw):
    p = prob()
    args = dict(
        rule_fn=ep.bptt(p.model, mse),
        task_or_sampler=_sampler,
        params=p.params,
        optimizer=optax.sgd(0.1),
        steps=2,
        key=jax.random.key(0),
    )
    return lambda: ep.train(**{**args, **kw})


def _train_cases():
    return [
        Case("train-steps-0", _train(steps=0), ValueError, r"train: `steps` must be .*, got 0"),
        Case("train-steps-float", _train(steps=2.5), ValueError, r"train: `steps` must be .*, got 2\.5"),
        Case("train-batch-0", _train(batch_size=0), ValueError, r"train: `batch_size` must be .*, got 0"),
        Case(
            "train-online-every-0",
            _train(rule_fn=ep.online.eprop(prob().model, mse), online_every=0),
            ValueError,
            r"train: `online_every` must be .*, got 0",
        ),
        Case("train-rule-not-callable", _train(rule_fn=42), TypeError, r"train: `rule_fn` must be .*got int"),
        Case(
            "train-unknown-rule-name",
            _train(rule_fn="eprp", model=prob().model, task_or_sampler=ep.tasks.adding()),
            ValueError,
            r"eprp",
        ),
    ]


CASES = _contract_cases() + _data_cases() + _state_cases() + _train_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_clear_error(case):
    with pytest.raises(case.error, match=case.match):
        case.call()


def _nan_inputs_at(step):
    """The shared problem's batch, with NaN inputs at training step ``step`` only (``ep.train`` draws the batch
    of step ``i`` from the ``i``-th split of its key)."""
    key = jax.random.key(0)
    for _ in range(step + 1):
        key, k = jax.random.split(key)
    bad_key = jax.random.key_data(k)

    def sampler(k):
        bad = jnp.all(jax.random.key_data(k) == bad_key)
        return jnp.where(bad, jnp.nan, prob().inputs), prob().targets

    return sampler


@pytest.mark.parametrize("online", [False, True])
def test_train_stops_at_the_first_non_finite_step(online):
    """The step whose loss and gradient went bad is named, with the first bad gradient leaf, and ``.params`` are
    the parameters that step started from: those of a run of that many steps."""
    p = prob()
    rule = ep.online.eprop(p.model, mse) if online else ep.eprop(p.model, mse)
    run = lambda steps: ep.train(
        rule,
        _nan_inputs_at(2),
        p.params,
        optax.sgd(0.1),
        steps=steps,
        key=jax.random.key(0),
        progress=False,
        **({"online_every": 4} if online else {}),
    )
    with pytest.raises(ep.NonFiniteError) as info:
        run(5)
    assert info.value.step == 2
    assert "stopped at step 2 of 5" in str(info.value)
    assert "the gradient is not finite, first in grads[0]['w_in']" in str(info.value)  # NaN input: no spike
    chex.assert_trees_all_equal(info.value.params, run(2)[0])


@pytest.mark.parametrize("rule", ["rtrl", "eprop", "eprop_m1", "deep_eprop"])
def test_float32_params_with_float64_data_compute_in_float32(rule):
    """The dtype policy under x64: float64 inputs and targets are cast to the float32 parameters' dtype (no
    scan-carry type error), so the result is the float32 problem's, bit for bit."""
    p = problem(Config(cells=("lif",), readout="leaky", dtype="float32"))
    fn = FACTORIES[rule](p.model, mse)
    as64 = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(F64) if a.dtype == jnp.float32 else a, tree)
    loss32, grads32 = fn(p.params, p.inputs, p.targets)
    loss64, grads64 = fn(p.params, as64(p.inputs), as64(p.targets))
    assert loss64.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads64))
    assert loss64 == loss32 and all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree_util.tree_leaves(grads64), jax.tree_util.tree_leaves(grads32))
    )


@pytest.mark.parametrize("rule", ["rtrl", "eprop"])
def test_result_of_an_empty_window_is_zero_not_nan(rule):
    """``result`` before any ``step`` (or right after ``reset``): a zero loss and zero gradients, the firing-rate
    regulariser included (its rate over no steps is undefined)."""
    p = prob()
    online = {"rtrl": ep.online.rtrl, "eprop": ep.online.eprop}[rule](p.model, mse, reg=ep.FiringRateReg(0.5, 0.1))
    loss, grads = jax.jit(online.result)(p.params, online.init(p.params, 2))
    assert float(loss) == 0.0
    assert all(bool(jnp.all(g == 0)) for g in jax.tree_util.tree_leaves(grads))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(p.params)

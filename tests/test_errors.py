"""Bad input fails early with a ValueError naming the argument, what was expected and what was received."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RULES, Config, mse, problem

import eproptax as ep

CFG = Config(cells=("lif",), readout="leaky")  # n_in=3, n=4, n_out=2, B=2, T=8
ALL = list(RULES) + ["sequence_loss"]


def _fn(rule, model, loss=mse):
    if rule == "sequence_loss":
        return ep.sequence_loss(model, loss)
    return RULES[rule](model, loss)


@pytest.fixture(scope="module")
def prob():
    return problem(CFG)


@pytest.mark.parametrize("rule", ALL)
def test_wrong_n_in(rule, prob):
    inputs = jnp.zeros((2, 8, 5), jnp.float64)
    with pytest.raises(ValueError, match=r"`inputs`.*n_in=3.*\(2, 8, 5\)"):
        _fn(rule, prob.model)(prob.params, inputs, prob.targets)


@pytest.mark.parametrize("rule", ALL)
def test_missing_time_axis(rule, prob):
    targets = jax.tree_util.tree_map(lambda a: a[:, 0], prob.targets)
    with pytest.raises(ValueError, match=r"`inputs`.*\(batch, time, n_in=3\).*\(2, 3\)"):
        _fn(rule, prob.model)(prob.params, prob.inputs[:, 0], targets)


@pytest.mark.parametrize("rule", ALL)
def test_targets_with_another_length(rule, prob):
    targets = {"y": prob.targets["y"][:, :7], "mask": prob.targets["mask"]}
    with pytest.raises(ValueError, match=r"`targets`.*'y'.*\(batch, time\) = \(2, 8\).*\(2, 7, 2\)"):
        _fn(rule, prob.model)(prob.params, prob.inputs, targets)


@pytest.mark.parametrize("rule", ALL)
def test_non_scalar_loss(rule, prob):
    def per_output(out, target):
        return 0.5 * (out - target["y"]) ** 2  # forgot to sum: shape (n_out,)

    with pytest.raises(ValueError, match=r"`loss.*scalar.*\(2,\)"):
        _fn(rule, prob.model, per_output)(prob.params, prob.inputs, prob.targets)


@pytest.mark.parametrize("rule", ALL)
def test_params_not_matching_the_model(rule, prob):
    missing = (prob.params[0], {})  # readout params dropped
    with pytest.raises(ValueError, match=r"`params` does not match the model"):
        _fn(rule, prob.model)(missing, prob.inputs, prob.targets)
    wrong_shape = ({**prob.params[0], "w_rec": jnp.zeros((3, 3), jnp.float64)}, prob.params[1])
    with pytest.raises(ValueError, match=r"`params`.*'w_rec'.*\(3, 3\).*expected \(4, 4\)"):
        _fn(rule, prob.model)(wrong_shape, prob.inputs, prob.targets)


@pytest.mark.parametrize("rule", ["eprop", "eprop_m1", "deep_eprop"])
def test_eprop_family_needs_a_readout(rule):
    with pytest.raises(ValueError, match=r"`model`.*readout.*single cell"):
        RULES[rule](ep.cells.lif(3, 4), mse)


def test_unknown_depth():
    model = problem(CFG).model
    with pytest.raises(ValueError, match=r"`depth`.*'sideways'"):
        ep.deep_eprop(model, mse, depth="sideways")
    with pytest.raises(ValueError, match=r"`depth`.*'sideways'"):
        ep.online.deep_eprop(model, mse, depth="sideways")


@pytest.mark.parametrize("order", [-1, 1.5])
def test_bad_order(order):
    model = problem(CFG).model
    with pytest.raises(ValueError, match=rf"`order`.*{order}"):
        ep.eprop_m(model, mse, order)
    with pytest.raises(ValueError, match=rf"`order`.*{order}"):
        ep.online.eprop_m(model, mse, order)


@pytest.mark.parametrize("rule", ["rtrl", "eprop"])
def test_online_step_with_wrong_input_shape(rule, prob):
    online = {"rtrl": ep.online.rtrl, "eprop": ep.online.eprop}[rule](prob.model, mse)
    state = online.init(prob.params, 2)
    targets_t = jax.tree_util.tree_map(lambda a: a[:, 0], prob.targets)
    with pytest.raises(ValueError, match=r"`inputs_t`.*\(batch=2, n_in=3\).*\(2, 5\)"):
        online.step(prob.params, state, np.zeros((2, 5)), targets_t)
    with pytest.raises(ValueError, match=r"`inputs_t`.*\(batch=2, n_in=3\).*\(3, 3\)"):
        online.step(prob.params, state, np.zeros((3, 3)), targets_t)


@pytest.mark.parametrize("unroll", [0, 1.5, True])
@pytest.mark.parametrize("rule", ALL)
def test_bad_unroll(rule, unroll):
    model = problem(CFG).model
    make = ep.sequence_loss if rule == "sequence_loss" else RULES[rule]
    with pytest.raises(ValueError, match=rf"`unroll`.*positive int.*{unroll}"):
        make(model, mse, unroll=unroll)

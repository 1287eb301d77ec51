"""Tasks, the training helper and ``eproptax train``.

Task generators: jittable, vmappable over keys, deterministic per key, shaped as documented, and each one's
targets checked against its inputs by an independent reading of the task's definition. Training: every rule
lowers the loss by a clear margin on a tiny network, whole-sequence and online, compiling its step once.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close

import eproptax as ep
from eproptax import tasks

# Small versions of every task (the defaults are the papers' sizes).
SMALL = {
    "evidence": lambda **kw: tasks.evidence_accumulation(dt=25.0, **kw),
    "store_recall": lambda **kw: tasks.store_recall(n_periods=4, period_steps=5, n_population=3, **kw),
    "pattern": lambda **kw: tasks.pattern_generation(n_in=8, time_steps=24, periods=(24.0, 12.0), rate=0.2, **kw),
    "copy": lambda **kw: tasks.delayed_copy(n_symbols=3, length=3, delay=4, **kw),
    "adding": lambda **kw: tasks.adding(time_steps=10, **kw),
    "digits": lambda **kw: tasks.digits(row_steps=2, recall_steps=3, n_population=2, **kw),
}


@pytest.fixture(scope="module", params=sorted(SMALL))
def task(request):
    return SMALL[request.param]()


@pytest.fixture(scope="module")
def sample_jit():
    return jax.jit(lambda task_sample, key: task_sample(key, 3), static_argnums=0)


def _tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_sample_shapes_jit_vmap_and_determinism(task, sample_jit):
    key = jax.random.key(3)
    inputs, targets = sample_jit(task.sample, key)
    assert inputs.shape == (3, task.time_steps, task.n_in)
    assert inputs.dtype == jnp.float32
    assert "mask" in targets
    for leaf in jax.tree_util.tree_leaves(targets):
        assert leaf.shape[:2] == (3, task.time_steps)
    # the mask weights sum to one per sequence: the sequence loss is a mean over the steps that count
    np.testing.assert_allclose(np.sum(targets["mask"], axis=1), 1.0, rtol=1e-6)
    # vmap over keys == one call per key; same key -> same batch
    keys = jnp.stack([key, jax.random.key(4)])
    both = jax.jit(jax.vmap(lambda k: task.sample(k, 3)))(keys)
    assert _tree_equal(jax.tree_util.tree_map(lambda a: a[0], both), (inputs, targets))
    other = sample_jit(task.sample, jax.random.key(4))
    assert _tree_equal(jax.tree_util.tree_map(lambda a: a[1], both), other)
    if task.name == "pattern":  # a frozen pattern: every key gives the same example
        assert _tree_equal(other, (inputs, targets))
    else:
        assert not np.array_equal(other[0], inputs)


def test_network_runs_and_metric_is_a_scalar(task, sample_jit):
    model, params = task.network(jax.random.key(0), n_rec=5)
    inputs, targets = sample_jit(task.sample, jax.random.key(1))

    @jax.jit
    def run(params, inputs, targets):
        outputs, layer_outputs = tasks.forward(model, params, inputs)
        loss = ep.sequence_loss(model, task.loss)(params, inputs, targets)
        return outputs, layer_outputs[0], task.metric(outputs, targets), loss

    outputs, first_layer, value, loss = run(params, inputs, targets)
    assert outputs.shape == (3, task.time_steps, task.n_out)
    assert first_layer.shape == (3, task.time_steps, 5)
    assert value.shape == () and np.isfinite(value) and np.isfinite(loss)


# ------------------------------------------------------------------------------------------------------
# Each task's targets, re-derived from its inputs
# ------------------------------------------------------------------------------------------------------


def test_evidence_label_is_the_side_with_more_cues():
    # rate 1000 Hz at dt = 25 ms: an active population fires at every step, so the cues are readable
    task = tasks.evidence_accumulation(dt=25.0, rate_hz=1000.0, noise_hz=0.0, n_population=2)
    inputs, targets = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 64)
    inputs = np.asarray(inputs)
    population = inputs.reshape(64, task.time_steps, 4, 2).max(-1)  # (B, T, populations)
    cue, spacing = 4, 2  # 100 ms and 50 ms at 25 ms per step
    starts = [c * (cue + spacing) + spacing for c in range(7)]
    left = sum(population[:, s, 0] for s in starts)
    right = sum(population[:, s, 1] for s in starts)
    np.testing.assert_array_equal(left + right, 7)
    np.testing.assert_array_equal(np.asarray(targets["label"][:, -1]), (right > left).astype(int))
    recall = np.asarray(targets["mask"]) > 0
    assert recall[:, -6:].all() and not recall[:, :-6].any()  # 150 ms of recall
    np.testing.assert_array_equal(population[:, :, 2], recall)  # the recall population fires then
    assert 0.3 < np.mean(targets["label"][:, -1]) < 0.7  # both sides occur


def test_store_recall_label_is_the_bit_at_store():
    task = tasks.store_recall(n_periods=5, period_steps=3, rate=1.0, noise_rate=0.0, n_population=2)
    inputs, targets = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 32)
    population = np.asarray(inputs).reshape(32, 5, 3, 4, 2).max(-1)[:, :, 0]  # (B, periods, populations)
    store, recall = population[:, :, 2].argmax(1), population[:, :, 3].argmax(1)
    assert (population[:, :, 2].sum(1) == 1).all() and (population[:, :, 3].sum(1) == 1).all()
    assert (recall > store).all()
    bit_at_store = population[np.arange(32), store, 1]
    np.testing.assert_array_equal(np.asarray(targets["label"][:, 0]), bit_at_store)
    mask = np.asarray(targets["mask"]).reshape(32, 5, 3) > 0
    np.testing.assert_array_equal(mask.any(-1).argmax(1), recall)


def test_delayed_copy_recall_repeats_the_symbols():
    task = tasks.delayed_copy(n_symbols=4, length=3, delay=2)
    inputs, targets = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 8)
    symbols = np.asarray(inputs[:, :3, :4]).argmax(-1)
    np.testing.assert_array_equal(np.asarray(targets["label"][:, -3:]), symbols)
    assert np.all(np.asarray(inputs[:, 3:5]) == 0) and np.all(np.asarray(inputs[:, -3:, 4]) == 1)


def test_adding_target_is_the_sum_of_the_marked_values():
    task = tasks.adding(time_steps=12)
    inputs, targets = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 16)
    inputs = np.asarray(inputs)
    assert (inputs[:, :6, 1].sum(1) == 1).all() and (inputs[:, 6:, 1].sum(1) == 1).all()
    expected = np.sum(inputs[..., 0] * inputs[..., 1], axis=1)
    np.testing.assert_allclose(np.asarray(targets["y"][:, -1, 0]), expected, rtol=1e-6)
    assert np.all(np.asarray(targets["mask"][:, :-1]) == 0)


def test_digits_rows_are_the_sklearn_images():
    from sklearn.datasets import load_digits

    data = load_digits()
    task = tasks.digits(encoding="analog", row_steps=1, recall_steps=2, split="test")
    inputs, targets = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 4)
    for x, label in zip(np.asarray(inputs), np.asarray(targets["label"][:, -1])):
        image = x[:8, :8] * 16
        match = np.all(np.abs(data.images - image[None]) < 1e-4, axis=(1, 2))
        assert match.any() and label in data.target[match]
        np.testing.assert_array_equal(x[:, 8], [0] * 8 + [1, 1])


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"eproptax\[datasets\]"):
        tasks.digits()


def test_pattern_targets_and_nmse():
    task = SMALL["pattern"]()
    _, targets = task.sample(jax.random.key(0), 1)
    y = targets["y"]
    assert float(jnp.abs(y[0, 0, 0])) == 0.0 and float(jnp.max(jnp.abs(y))) == pytest.approx(1.0)
    assert float(task.metric(y, targets)) == 0.0
    # predicting zero: mean(y^2) / var(y), computed here with numpy
    y_np = np.asarray(y[0, :, 0])
    assert float(task.metric(jnp.zeros_like(y), targets)) == pytest.approx(np.mean(y_np**2) / np.var(y_np), rel=1e-5)


def test_losses_and_window_accuracy():
    out = jnp.array([2.0, -1.0])
    ce = tasks.cross_entropy(out, {"label": jnp.array(1), "mask": jnp.array(0.5)})
    assert float(ce) == pytest.approx(-0.5 * np.log(np.exp(-1.0) / (np.exp(2.0) + np.exp(-1.0))), rel=1e-6)
    se = tasks.squared_error(jnp.array([1.0, 2.0]), {"y": jnp.array([0.0, 4.0]), "mask": jnp.array(1.0)})
    assert float(se) == pytest.approx(2.5)
    mask = jnp.array([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])
    label = jnp.array([[0, 0, 0], [1, 1, 1]])
    outputs = jnp.array(
        [
            [[9.0, 0.0], [1.0, 0.0], [1.0, 0.0]],  # first step (masked out) is ignored
            [[0.0, 9.0], [1.0, 0.0], [1.0, 0.0]],
        ]
    )
    assert float(tasks.window_accuracy(outputs, {"label": label, "mask": mask})) == 0.5
    assert float(tasks.step_accuracy(outputs, {"label": label, "mask": mask})) == 0.5


def test_network_options_and_errors():
    model, params = tasks.network(jax.random.key(0), 3, 2, cell="alif", n_rec=4, layers=2, adaptive_fraction=0.5)
    assert len(model.layers) == 3 and params[1]["w_in"].shape == (4, 4)
    model, params = tasks.network(jax.random.key(0), 3, 2, cell="gru", n_rec=4)
    assert set(params[1]) == {"w_out", "b_out"}  # a linear readout for a classic cell
    # a task's spiking defaults do not follow a change of cell
    evidence = tasks.evidence_accumulation(dt=25.0)
    _, params = evidence.network(jax.random.key(0), cell="lif", n_rec=4)
    assert params[0]["w_in"].shape == (4, evidence.n_in)
    _, params = evidence.network(jax.random.key(0), cell="lstm", n_rec=4)
    assert params[0]["ii"]["kernel"].shape == (evidence.n_in, 4)
    with pytest.raises(ValueError, match="cell"):
        tasks.network(jax.random.key(0), 3, 2, cell="transformer")
    with pytest.raises(ValueError, match="takes no options"):
        tasks.network(jax.random.key(0), 3, 2, cell="lstm", tau_mem=3.0)
    with pytest.raises(ValueError, match="n_cues"):
        tasks.evidence_accumulation(n_cues=4)


# ------------------------------------------------------------------------------------------------------
# Training: every rule lowers the loss
# ------------------------------------------------------------------------------------------------------

RULES = {
    "bptt": (1, lambda model, loss: ep.bptt(model, loss)),
    "rtrl": (1, lambda model, loss: ep.rtrl(model, loss)),
    "eprop": (1, lambda model, loss: ep.eprop(model, loss)),
    "eprop_m(1)": (1, lambda model, loss: ep.eprop_m(model, loss, 1)),
    "deep_eprop": (2, lambda model, loss: ep.deep_eprop(model, loss)),
}
STEPS = 25


def _tiny(layers):
    task = SMALL["pattern"]()
    model, params = task.network(
        jax.random.key(0), n_rec=6, layers=layers, input_scale=3.0 if layers == 1 else 2.0, tau_out=5.0
    )
    return task, model, params


@pytest.fixture(scope="module")
def standard_promotion():
    # optax's bias correction mixes a Python float and an int32 count, which strict promotion refuses
    with jax.numpy_dtype_promotion("standard"):
        yield


def _counting(task):
    """The task's sampler, counting its calls: ``ep.train`` calls it once per trace of its step."""
    calls = []

    def sampler(key):
        calls.append(1)
        return task.sample(key, 1)

    return sampler, calls


@pytest.mark.parametrize("rule", sorted(RULES))
def test_training_lowers_the_loss(rule, standard_promotion):
    layers, make = RULES[rule]
    task, model, params = _tiny(layers)
    sampler, calls = _counting(task)
    new, history = ep.train(
        make(model, task.loss),
        sampler,
        params,
        optax.adam(2e-2),
        steps=STEPS,
        key=jax.random.key(1),
        model=model,
        metric=task.metric,
        progress=False,
    )
    assert len(calls) == 1  # one compilation for all the steps
    loss, metric = history["loss"], history["metric"]
    assert loss.shape == metric.shape == (STEPS,)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(metric))
    assert loss[-1] < 0.5 * loss[0], f"{rule}: loss {loss[0]:.4f} -> {loss[-1]:.4f}"
    assert metric[-1] < 0.5 * metric[0]
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
    # the recurrent layer learns too, not only the readout
    assert not np.allclose(new[0]["w_in"], params[0]["w_in"])


def test_online_training_every_k_steps(standard_promotion, capsys):
    task, model, params = _tiny(1)
    sampler, calls = _counting(task)
    # every = 5 does not divide T = 24: four windows of 5 steps and a last one of 4
    new, history = ep.train(
        ep.online.eprop(model, task.loss),
        sampler,
        params,
        optax.adam(2e-2),
        steps=STEPS,
        key=jax.random.key(1),
        metric=task.metric,
        online_every=5,
        desc="online",
    )
    assert len(calls) == 1
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert np.isfinite(history["metric"]).all()
    assert "online" in capsys.readouterr().err  # the progress bar went to stderr


def test_online_windows_cover_the_sequence_once(standard_promotion):
    # with a zero learning rate the windows' losses add up to the sequence loss, and the outputs seen
    # while stepping are the forward pass's
    task, model, params = _tiny(1)
    _, history = ep.train(
        ep.online.eprop(model, task.loss),
        task,
        params,
        optax.sgd(0.0),
        steps=1,
        key=jax.random.key(1),
        batch_size=1,
        online_every=5,
        progress=False,
    )
    inputs, targets = task.sample(jax.random.key(0), 1)
    expected = ep.sequence_loss(model, task.loss)(params, inputs, targets)
    assert history["loss"][0] == pytest.approx(float(expected), rel=1e-5)
    outputs, _ = tasks.forward(model, params, inputs)
    assert history["metric"][0] == pytest.approx(float(task.metric(outputs, targets)), rel=1e-5)


def test_train_checks_its_arguments(standard_promotion):
    task, model, params = _tiny(1)
    grad_fn = ep.eprop(model, task.loss)
    with pytest.raises(ValueError, match="online_every"):
        ep.train(grad_fn, task, params, optax.sgd(0.1), steps=1, key=jax.random.key(0), online_every=3)
    with pytest.raises(ValueError, match="online_every"):
        ep.train(ep.online.eprop(model, task.loss), task, params, optax.sgd(0.1), steps=1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="task_or_sampler"):
        ep.train(grad_fn, 3, params, optax.sgd(0.1), steps=1, key=jax.random.key(0))


def test_train_builds_a_rule_by_name(standard_promotion):
    task, model, params = _tiny(1)
    # the same rule and steps by name and by factory: the same parameters
    run = lambda rule, **kw: ep.train(
        rule, task, params, optax.adam(2e-2), steps=2, key=jax.random.key(1), batch_size=1, progress=False, **kw
    )
    by_name, history = run("eprop_m", model=model, rule_options={"order": 2})
    direct, _ = run(ep.eprop_m(model, task.loss, 2), model=model)
    assert_close(by_name, direct, 1e-6, "ep.train('eprop_m')")
    assert np.isfinite(history["metric"]).all()  # the metric came from model=
    _, history = run("eprop", model=model, online_every=5)  # the online form
    assert np.isfinite(history["loss"]).all()
    with pytest.raises(ValueError, match="needs `model=`"):
        run("eprop")
    with pytest.raises(ValueError, match="needs a tasks.Task"):
        ep.train(
            "eprop", lambda k: task.sample(k, 1), params, optax.sgd(0.1), steps=1, key=jax.random.key(0), model=model
        )
    with pytest.raises(ValueError, match="`rule_options` configures a rule given by name"):
        run(ep.eprop(model, task.loss), rule_options={"order": 1})
    with pytest.raises(ValueError, match="eprop takes no option `order`"):
        run("eprop", model=model, rule_options={"order": 1})


def test_train_with_a_sampler_and_no_metric(standard_promotion):
    task, model, params = _tiny(1)
    sampler = lambda key: task.sample(key, 1)
    _, history = ep.train(
        ep.bptt(model, task.loss), sampler, params, optax.adam(1e-2), steps=2, key=jax.random.key(0), progress=False
    )
    assert np.isnan(history["metric"]).all() and np.isfinite(history["loss"]).all()


def test_cli_train_writes_history_and_figures(tmp_path, standard_promotion, capsys):
    from eproptax._cli import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--task",
            "copy",
            "--rule",
            "eprop_m",
            "--order",
            "1",
            "--hidden",
            "4",
            "--steps",
            "3",
            "--batch",
            "2",
            "--eval-batch",
            "4",
            "--task-option",
            "length=2",
            "--task-option",
            "delay=1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    record = json.loads((out / "history.json").read_text())
    assert len(record["loss"]) == 3 and record["metric_name"] == "accuracy"
    assert 0.0 <= record["final"]["accuracy"] <= 1.0
    assert (out / "learning_curves.png").stat().st_size > 0 and (out / "raster.png").stat().st_size > 0
    assert "final accuracy" in capsys.readouterr().out
